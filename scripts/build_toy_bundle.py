"""Rebuild the shipped `toy` bundle (four ToyData oscillators) from seed, stage by stage.

    python scripts/build_toy_bundle.py --work runs/toy [--install]

The sources are the thesis' four oscillators as :class:`lass.data.ToyData` makes them
(sine, sawtooth, square, triangle; 22050 Hz; amplitude 0.2 to 1.0; frequencies from the 88
piano keys below Nyquist; random phase; mixture = mean). Stages (each is skipped when its
output exists; the training stages resume when interrupted):

1. ``data``: ``lass-make-dataset toy --items 3000 --seconds 1 --seed 0`` (train / valid /
   test items; the test items are never used to train or tune)
2. ``codec``: ``lass-train-vqvae`` on the four stems (hop 64, 512 codes, 16 channels, 2500
   steps, seed 0)
3. ``prior``: ``lass-train-prior`` one shared class-conditioned prior over the four stems
   (Llama-style, 3 layers, width 192, 4 heads, 1 key/value head, context 256; 1500 steps)
4. ``counts``: ``lass-count-likelihood --sources sine sawtooth square triangle`` on
   ``COUNT_HOURS`` hours of training mixtures (random re-pairings of 1 s items, no extra
   gain: ToyData draws the amplitudes), the 5-tuples (mixture token, four source tokens),
   into ``counts-full.npz``; then ``lass-merge-counts --min-count COUNT_MIN`` keeps the
   tuples counted at least twice and each source's pair counts of the whole table (97.5% of
   the distinct 5-tuples are counted once: 26 MB of noise)
5. ``evidence``: ``lass-fit-evidence`` for the four sources (``EVIDENCE_HOURS`` hours of
   training mixtures, ``EVIDENCE_EPOCHS`` epochs, ``EVIDENCE_OPTIONS``: the model reads the
   mixture's samples besides the encoder's outputs, over +-33 steps)
6. ``tune``: on 24 validation mixtures of 1 s (never test), ``TUNING``: mean SI-SDR of the
   mask output of beam search (``BEAMS`` beams) over a grid of (lambda, evidence weight);
   then the ancestral sampler's (``SAMPLES`` samples, combined by their mean) at two
   temperatures with the best lambda and weight, taken when it gains at least 0.2 dB; last
   the mask output's STFT size and EM updates for the chosen sampler, taken when they gain
   at least 0.2 dB over 2048 samples without updates (``bundle_stages.tune_stage``)
7. ``assemble``: the bundle in ``WORK/bundle`` (``bundle.json`` with every sha256);
   ``--install`` copies it to ``lass/bundles/toy`` and prints the rows of
   ``checkpoints.md``.

The likelihood uses the ``votes`` smoothing: with four sources almost every tuple of a
mixture is unseen in counting, and each step also scores the grid of the sources' likeliest
tokens (``PRIOR_TOP``; 4 per source) at the naive-Bayes value of their per-source votes.
Commands run on the CPU unless ``--device cuda``. The numbers of a build go to
``WORK/build.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bundle_stages import (
    BuildLog,
    Tuning,
    bundle_report,
    counts_stage,
    evidence_stage,
    install,
    run_stage,
    sampler_options,
    tune_stage,
)

STEMS = ("sine", "sawtooth", "square", "triangle")
DESCRIPTION = ("The thesis' four ToyData oscillators (sine, sawtooth, square, triangle; one "
               "note each, piano-key frequencies, random phase and amplitude), 1 s items at "
               "22.05 kHz.")
ITEMS = 3000
CODEC = ["--steps", "2500", "--channels", "16", "--codebook-size", "512"]
PRIOR = ["--context", "256", "--width", "192", "--layers", "3", "--heads", "4", "--kv-heads",
         "1", "--steps", "1500"]
COUNT_HOURS = 6.0
COUNT_MIN = 2
EVIDENCE_HOURS = 8.0
EVIDENCE_EPOCHS = 4
EVIDENCE_OPTIONS = ("--waveform", "--dilations", "1", "2", "4", "8", "16")
PRIOR_TOP = 16  # a 4 x 4 x 4 x 4 grid of the sources' likeliest tokens per step
SMOOTHING = ("votes", 1.0)
BEAMS = 10
SAMPLES = 10
TUNING = Tuning(
    grid=((6.0, 1.0), (0.0, 2.0), (3.0, 2.0), (6.0, 2.0), (10.0, 2.0), (6.0, 3.0), (6.0, 4.0),
          (10.0, 4.0), (3.0, 6.0), (6.0, 6.0), (6.0, 8.0), (10.0, 8.0), (6.0, 12.0),
          (6.0, 16.0)),
    mixtures=24, seconds=1.0, beams=BEAMS, samples=SAMPLES, temperatures=(1.0, 1.5),
    sampler_gain_db=0.2,
    mask_grid=((2048, 0), (4096, 0), (8192, 0), (4096, 1), (8192, 1)), gain_db=0.2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--install", action="store_true")
    args = p.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    build = BuildLog(work / "build.json")
    log = build.data
    dev = ["--device", args.device]
    data = work / "data"
    if not (data / "dataset.json").is_file() or not json.loads(
            (data / "dataset.json").read_text()).get("complete"):
        run_stage(["lass-make-dataset", "toy", "--items", str(ITEMS), "--seconds", "1", "--seed",
                   "0", "--out", str(data)], log, "data")
    codec = work / "codec"
    if not (codec / "summary.json").is_file():
        run_stage(["lass-train-vqvae", "--data", str(data), "--stems", *STEMS, "--out",
                   str(codec), *CODEC, "--seed", "0", *dev]
                  + (["--resume"] if codec.exists() else []), log, "codec")
    prior = work / "prior"
    if not (prior / "summary.json").is_file():
        run_stage(["lass-train-prior", "--codec", str(codec / "model"), "--data", str(data),
                   "--stem", *STEMS, "--conditional", "--out", str(prior), *PRIOR, "--seed",
                   "0", *dev] + (["--resume"] if prior.exists() else []), log, "prior")
    counts = counts_stage(work, codec / "model", data, STEMS, COUNT_HOURS, COUNT_MIN, dev, log)
    evidence = evidence_stage(work, codec / "model", data, STEMS, EVIDENCE_HOURS,
                              EVIDENCE_EPOCHS, dev, log, EVIDENCE_OPTIONS)
    build.save()
    bundle = work / "bundle"

    def assemble(sampler: dict[str, Any]) -> None:
        if bundle.exists():
            shutil.rmtree(bundle)
        subprocess.run(["lass-make-bundle", "--codec", str(codec / "model"), "--shared-prior",
                        str(prior / "model"), "--likelihood", str(counts), "--smoothing",
                        SMOOTHING[0], "--alpha", str(SMOOTHING[1]), "--prior-top",
                        str(PRIOR_TOP), "--evidence", str(evidence), "--output", "mask",
                        "--name", "toy", "--description", DESCRIPTION, "--out", str(bundle),
                        *sampler_options(sampler, BEAMS, SAMPLES)],
                       check=True, stdout=subprocess.DEVNULL)

    best = tune_stage(work, bundle, data, TUNING, assemble, build)
    bundle_report(bundle, best)
    if args.install:
        install(bundle, "toy")


if __name__ == "__main__":
    main()
