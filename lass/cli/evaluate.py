"""``lass-evaluate``: SDR table of separation methods on test mixtures of a stem data set.

    lass-evaluate --data data/synth --split test --bundle path/to/bundle --mixtures 100

Mixtures are chunks (``--seconds``, 3 s as the paper) of the split whose stems are all
non-silent, mixed with the bundle's rule, in a fixed seeded order. Every method's stems are
scored with museval's BSSEval v4 SDR (window = hop = 1 s, median over windows), plain SDR
and SI-SDR; the table gives per stem and on average the mean and the median over mixtures.
``--out results.json`` keeps every per-mixture number; results already there are reused, so
an interrupted evaluation resumes.

``--without STEM`` leaves a stem out of the same mixtures (say ``other``, to test drums+bass
songs with a three-stem model): that stem has no SDR, and the ``energy_db`` table says how
much of the input each method put into it (relative to the mixture, dB; lower is better).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lass.bundle import bundle_method
from lass.cli import run_cli
from lass.cli.common import resolve_device
from lass.data import StemDataset, chunk_samples, find_tracks, mix_gain
from lass.errors import DataError
from lass.evaluate import (
    LassSearches,
    OtherSeparations,
    evaluation_mixtures,
    lass_samplers,
    make_methods,
    mixture_of,
    parse_lass_method,
    score,
)
from lass.image_evaluate import DEFAULT_IMAGE_METHODS
from lass.images import ImageSeparator
from lass.separator import SeparatesAudio, Separator, load_separator
from lass.settings import add_setting_options, given_options
from lass.supervised import load_supervised
from vqvae.files import write_text_atomic

PROG = "lass-evaluate"
#: The separation settings lass-evaluate takes for its LASS methods (the sampler and its
#: samples come from each method's name and --beams, --top-k, --candidates, --temperature).
EVALUATE_SETTINGS = ("lam", "context_overlap", "mask_fft", "mask_iterations", "shifts",
                     "evidence_weight", "prior_top", "rerank_top", "refine_steps", "refine_lr",
                     "refine_penalty")
#: Recorded in the results' config whether given or not (the others only when given).
RECORDED = ("lam", "context_overlap", "mask_fft", "mask_iterations", "shifts",
            "evidence_weight")
DEFAULT_METHODS = ["average", "hpss", "nmf", "oracle-decode", "oracle-mask", "lass-beam-decode",
                   "lass-beam-mask", "lass-greedy-decode", "lass-greedy-mask"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None,
                   help="stem data set root (audio bundles; image bundles evaluate on MNIST)")
    p.add_argument("--bundle", default=None, help="bundle (default: the embedded default)")
    p.add_argument("--split", default="test")
    p.add_argument("--layout", default="auto")
    p.add_argument("--mixtures", type=int, default=100)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: {' '.join(DEFAULT_METHODS)}; image bundles: "
                        f"{' '.join(DEFAULT_IMAGE_METHODS)} (see lass.image_evaluate)")
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--candidates", type=int, default=None,
                   help="samples per mixture of the sampling samplers (ancestral, topk; "
                        "default: the bundle's)")
    p.add_argument("--temperature", type=float, default=None,
                   help="temperature of the sampling samplers (default: the bundle's, or 1)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="mixtures whose LASS searches (and Langevin or posterior separations) "
                        "run as one batch (faster per mixture on a CPU; 1: one at a time; "
                        "default 8, images 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results JSON (resumable)")
    p.add_argument("--supervised", type=Path, default=None, metavar="MODEL",
                   help="a lass-train-supervised network: the method 'supervised' (it must "
                        "separate the bundle's stems)")
    p.add_argument("--langevin", type=Path, default=None, metavar="BUNDLE",
                   help="a Langevin bundle (WaveNet or flow priors) of the same stems: the "
                        "method 'langevin'")
    p.add_argument("--posterior", type=Path, default=None, metavar="BUNDLE",
                   help="an amortised-posterior bundle of the same stems: the method "
                        "'posterior'")
    p.add_argument("--without", nargs="+", default=[], metavar="STEM",
                   help="leave these stems out of the mixtures (their SDRs are NaN; the "
                        "energy_db table gives what each method put in them)")
    p.add_argument("--device", default="auto")
    add_setting_options(p.add_argument_group(
        "settings of the LASS methods", "each defaults to the bundle's"), EVALUATE_SETTINGS)
    return p


def summarise(results: dict[str, list[dict[str, Any]]], stems: Sequence[str]
              ) -> dict[str, dict[str, dict[str, float]]]:
    """method -> metric -> {"<stem> mean", "<stem> median", "avg mean", "avg median"}."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method, rows in results.items():
        table[method] = {}
        for metric in ("museval", "sdr", "si_sdr", "energy_db"):
            if not all(metric in r for r in rows):
                continue  # results files written before energy_db was measured
            values = np.array([r[metric] for r in rows], dtype=np.float64)  # (n, stems)
            entry: dict[str, float] = {}
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a left-out stem: all NaN
                for i, stem in enumerate(stems):
                    entry[f"{stem} mean"] = float(np.nanmean(values[:, i]))
                    entry[f"{stem} median"] = float(np.nanmedian(values[:, i]))
                entry["avg mean"] = float(np.nanmean(values))
                entry["avg median"] = float(np.nanmedian(values))
            table[method][metric] = entry
        secs = [r["seconds"] for r in rows if "seconds" in r]
        table[method]["seconds"] = {"per mixture": float(np.median(secs)) if secs else
                                    float("nan")}
    return table


def format_table(table: dict[str, dict[str, dict[str, float]]], stems: Sequence[str],
                 metric: str) -> str:
    """A markdown table of one metric (mean over mixtures, median in parentheses)."""
    cols = [*stems, "avg"]
    lines = [f"| method ({metric}, dB: mean (median)) | " + " | ".join(cols)
             + " | s/mixture |", "|---|" + "---|" * (len(cols) + 1)]
    for method, metrics in table.items():
        m = metrics[metric]
        cells = [f"{m[f'{c} mean']:.2f} ({m[f'{c} median']:.2f})" for c in cols]
        secs = metrics.get("seconds", {}).get("per mixture", float("nan"))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {secs:.2f} |")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    device = resolve_device(args.device)
    if args.batch is not None and args.batch < 1:
        raise DataError("--batch must be at least 1")
    if bundle_method(args.bundle) == "image":
        return _main_images(args, device)
    if args.data is None:
        raise DataError("--data is needed: the stem data set to make mixtures from")
    if args.methods is None:
        args.methods = DEFAULT_METHODS
    if args.batch is None:
        args.batch = 8
    separator = Separator.from_pretrained(args.bundle, device=device)
    given = given_options(args, EVALUATE_SETTINGS)
    separator = separator.with_settings(**given) if given else separator
    separator.check_settings(separator.settings)
    rate = separator.codec.sample_rate
    tracks = find_tracks(args.data, args.split, list(separator.stems), args.layout)
    data = StemDataset(tracks, sample_rate=rate, chunk=chunk_samples(args.seconds, rate),
                       stems=list(separator.stems))
    mixtures = evaluation_mixtures(data, args.mixtures, args.seed)
    for stem in args.without:
        if stem not in separator.stems:
            raise DataError(f"--without {stem}: the bundle's stems are {list(separator.stems)}")
        if len(args.without) >= len(separator.stems):
            raise DataError("--without leaves no stem in the mixtures")
        keep = np.array([s not in args.without for s in separator.stems])[:, None]
        mixtures = [replace(m, stems=m.stems * keep) for m in mixtures]
    if args.candidates is None:
        args.candidates = separator.settings.candidates
    if args.temperature is None:
        args.temperature = float(getattr(separator.settings.sampler, "temperature", 1.0))
    searches = LassSearches.for_methods(separator, args.methods, beams=args.beams,
                                        top_k=args.top_k, candidates=args.candidates,
                                        temperature=args.temperature)
    supervised = None
    if "supervised" in args.methods:
        if args.supervised is None:
            raise DataError("the method 'supervised' needs --supervised MODEL")
        supervised = load_supervised(args.supervised, device=device)
        if supervised.stems != separator.stems:
            raise DataError(f"--supervised {args.supervised} separates "
                            f"{list(supervised.stems)}, the bundle {list(separator.stems)}")
        if supervised.config.sample_rate != rate:
            raise DataError(f"--supervised {args.supervised} works at "
                            f"{supervised.config.sample_rate} Hz, the bundle at {rate} Hz")
    others: dict[str, SeparatesAudio] = {}
    for name in ("langevin", "posterior"):
        path = getattr(args, name)
        if name not in args.methods:
            continue
        if path is None:
            raise DataError(f"the method '{name}' needs --{name} BUNDLE")
        if bundle_method(path) != name:
            raise DataError(f"--{name} {path} is a {bundle_method(path)} bundle")
        other = load_separator(path, device=device)
        if isinstance(other, ImageSeparator):
            raise DataError(f"--{name} {path} separates images")
        if tuple(other.stems) != tuple(separator.stems):
            raise DataError(f"--{name} {path} separates {list(other.stems)}, the bundle "
                            f"{list(separator.stems)}")
        others[name] = other
    batched = OtherSeparations(others, separator.stems, rate)
    methods = make_methods(separator, args.methods, searches=searches, supervised=supervised,
                           others=batched)
    lass_methods = [m for m in methods if m.startswith("lass-")]
    kinds = lass_samplers(args.methods)
    config = {"data": str(args.data), "split": args.split, "seconds": args.seconds,
              "seed": args.seed, "bundle": separator.bundle.sha256 if separator.bundle else None,
              "beams": args.beams, "top_k": args.top_k, "candidates": args.candidates,
              "temperature": args.temperature,
              "supervised": str(args.supervised) if supervised is not None else None,
              **{name: other.bundle.sha256 for name, other in others.items()},
              **{k: getattr(separator.settings, k) for k in RECORDED},
              **{k: v for k, v in given.items() if k not in RECORDED}}
    if args.without:
        config["without"] = list(args.without)
    done: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    if args.out is not None and args.out.is_file():
        saved = json.loads(args.out.read_text(encoding="utf-8"))
        if saved.get("config") == config:
            for m in methods:
                done[m] = saved.get("per_mixture", {}).get(m, [])

    def save() -> None:
        if args.out is not None:
            payload = {"config": config, "stems": list(separator.stems),
                       "summary": summarise(done, separator.stems), "per_mixture": done}
            write_text_atomic(args.out, json.dumps(payload, indent=1) + "\n")

    bar = tqdm(total=len(mixtures) * len(methods), desc="evaluating", unit="sep",
               file=sys.stderr, dynamic_ncols=True)
    def finished(name: str, index: int) -> bool:
        return any(r["index"] == index for r in done[name])

    for first in range(0, len(mixtures), args.batch):
        group = mixtures[first: first + args.batch]
        mixed = [mixture_of(m.stems, separator.mix_rule) for m in group]
        # one batched search per sampler for the mixtures some LASS method still needs
        searches.prefetch(kinds,
                          [x for m, x in zip(group, mixed, strict=True)
                           if any(not finished(n, m.index) for n in lass_methods)])
        for name in others:  # the other bundles' separators, one batch each
            batched.prefetch([name], [x for m, x in zip(group, mixed, strict=True)
                                      if not finished(name, m.index)])
        for mixture, x in zip(group, mixed, strict=True):
            refs = mix_gain(len(separator.stems), separator.mix_rule) * mixture.stems  # true
            # contributions: each source scaled by the mixing rule
            for name, method in methods.items():
                if finished(name, mixture.index):
                    bar.update(1)
                    continue
                start = time.perf_counter()
                est = method(x, mixture.stems)
                seconds = time.perf_counter() - start
                if name.startswith("lass-"):
                    seconds += searches.seconds(parse_lass_method(name)[0], x)
                if name in others:
                    seconds += batched.seconds(name, x)
                done[name].append({"index": mixture.index, "track": mixture.track,
                                   "start": mixture.start, "seconds": seconds,
                                   **score(est, refs, rate)})
                bar.update(1)
            save()
    bar.close()
    table = summarise(done, separator.stems)
    metrics = ["museval", "sdr", "si_sdr"] + (["energy_db"] if args.without else [])
    for metric in metrics:
        print(format_table(table, separator.stems, metric))
        print()
    if args.out is not None:
        print(f"per-mixture results: {args.out}")
    return 0


def _main_images(args: argparse.Namespace, device: str) -> int:
    """PSNR table of an image bundle's methods on MNIST mixtures (lass.image_evaluate)."""
    from lass.image_evaluate import evaluate_images, format_image_table

    separator = ImageSeparator.from_pretrained(args.bundle, device=device)
    if args.candidates is not None:
        separator = separator.with_settings(candidates=args.candidates)
    if args.temperature is not None:
        separator = separator.with_settings(temperature=args.temperature)
    if args.lam is not None:
        separator = separator.with_settings(lam=args.lam)
    if getattr(args, "refine", None) is not None:
        separator = separator.with_settings(refine_steps=args.refine)
    result = evaluate_images(separator, split=args.split, mixtures=args.mixtures,
                             methods=args.methods or DEFAULT_IMAGE_METHODS, seed=args.seed,
                             batch=args.batch or 256,
                             log=lambda line: print(line, file=sys.stderr))
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    print(format_image_table(result["table"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-evaluate``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
