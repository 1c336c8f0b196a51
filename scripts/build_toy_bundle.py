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
   training mixtures, ``EVIDENCE_EPOCHS`` epochs)
6. ``tune``: on ``TUNE_MIXTURES`` validation mixtures (never test), mean SI-SDR of the mask
   output of beam search (``BEAMS`` beams) over ``GRID`` (lambda, evidence weight); then
   the ancestral sampler's (``SAMPLES`` samples, combined by their mean) at the
   ``SAMPLE_GRID`` temperatures with the best lambda and weight; the bundle takes sampling
   when it gains at least ``SAMPLER_GAIN_DB``; last the mask output's STFT size and EM
   updates (``MASK_GRID``) for the chosen sampler, taken when they gain at least
   ``MASK_GAIN_DB`` over 2048 samples without updates
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
import sys
from pathlib import Path
from typing import Any

from build_default_bundle import install, run_stage

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
EVIDENCE_HOURS = 1.0
EVIDENCE_EPOCHS = 6
PRIOR_TOP = 16  # a 4 x 4 x 4 x 4 grid of the sources' likeliest tokens per step
SMOOTHING = ("votes", 1.0)
TUNE_MIXTURES = 24
BEAMS = 10
GRID = ((0.0, 1.0), (1.0, 1.0), (3.0, 1.0), (6.0, 1.0), (10.0, 1.0), (6.0, 0.5), (6.0, 2.0))
# (lambda, evidence weight)
SAMPLES = 10
SAMPLE_GRID = (1.0, 1.5)  # temperatures, at the beam search's best lambda and weight
SAMPLER_GAIN_DB = 0.2
MASK_GRID = ((2048, 0), (4096, 0), (8192, 0), (4096, 1), (8192, 1))  # (STFT size, EM updates)
MASK_GAIN_DB = 0.2


def _valid_si_sdr(bundle: Path, data: Path, out: Path, method: str, options: list[str]
                  ) -> float:
    """Mean SI-SDR (dB, over the stems and ``TUNE_MIXTURES`` validation mixtures) of one
    ``lass-evaluate`` method; the results file resumes."""
    subprocess.run(["lass-evaluate", "--data", str(data), "--split", "valid", "--bundle",
                    str(bundle), "--mixtures", str(TUNE_MIXTURES), "--seconds", "1",
                    "--methods", method, "--out", str(out), *options], check=True,
                   stdout=subprocess.DEVNULL)
    summary = json.loads(out.read_text())["summary"][method]
    return float(summary["si_sdr"]["avg mean"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--install", action="store_true")
    args = p.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "build.json"
    log: dict[str, Any] = json.loads(log_path.read_text()) if log_path.is_file() else {}
    dev = ["--device", args.device]
    data = work / "data"
    if not (data / "dataset.json").is_file() or '"complete": true' not in (
            data / "dataset.json").read_text():
        run_stage(["lass-make-dataset", "toy", "--items", str(ITEMS), "--seconds", "1", "--seed",
              "0", "--out", str(data)], log, "data")
    codec = work / "codec"
    if not (codec / "summary.json").is_file():
        run_stage(["lass-train-vqvae", "--data", str(data), "--stems", *STEMS, "--out", str(codec),
              *CODEC, "--seed", "0", *dev] + (["--resume"] if codec.exists() else []),
             log, "codec")
    prior = work / "prior"
    if not (prior / "summary.json").is_file():
        run_stage(["lass-train-prior", "--codec", str(codec / "model"), "--data", str(data),
              "--stem", *STEMS, "--conditional", "--out", str(prior), *PRIOR, "--seed", "0",
              *dev] + (["--resume"] if prior.exists() else []), log, "prior")
    counts = work / "counts.npz"
    if not counts.is_file():
        full = work / "counts-full.npz"
        if not full.is_file():
            run_stage(["lass-count-likelihood", "--codec", str(codec / "model"), "--data",
                  str(data), "--sources", *STEMS, "--hours", str(COUNT_HOURS),
                  "--chunk-seconds", "1", "--gain-db", "0", "0", "--seed", "0", "--out",
                  str(full), *dev], log, "counts")
        run_stage(["lass-merge-counts", str(full), "--min-count", str(COUNT_MIN), "--out",
              str(counts)], log, "counts-prune")
    evidence = work / "evidence.npz"
    if not evidence.is_file():
        run_stage(["lass-fit-evidence", "--codec", str(codec / "model"), "--data", str(data),
              "--sources", *STEMS, "--hours", str(EVIDENCE_HOURS), "--chunk-seconds", "1",
              "--gain-db", "0", "0", "--seed", "0", "--epochs", str(EVIDENCE_EPOCHS),
              "--valid-hours", "0.05", "--out", str(evidence), *dev], log, "evidence")
    tune = log.setdefault("tune", {})
    bundle = work / "bundle"

    def assemble(sampler: dict[str, Any]) -> None:
        if bundle.exists():
            shutil.rmtree(bundle)
        mask = ["--mask-fft", str(sampler.get("mask_fft", 2048)), "--mask-iterations",
                str(sampler.get("mask_iterations", 0))]
        cmd = ["lass-make-bundle", *mask, "--codec", str(codec / "model"), "--shared-prior",
               str(prior / "model"), "--likelihood", str(counts), "--smoothing", SMOOTHING[0],
               "--alpha", str(SMOOTHING[1]), "--prior-top", str(PRIOR_TOP), "--evidence",
               str(evidence), "--evidence-weight", str(sampler["weight"]), "--lam",
               str(sampler["lam"]), "--output", "mask", "--name", "toy", "--description",
               DESCRIPTION, "--out", str(bundle)]
        if sampler["kind"] == "beam":
            cmd += ["--sampler", "beam", "--beams", str(BEAMS)]
        else:
            cmd += ["--sampler", "ancestral", "--candidates", str(SAMPLES), "--temperature",
                    str(sampler["temperature"]), "--combine", "mean"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    (work / "tune").mkdir(exist_ok=True)
    first = {"kind": "beam", "lam": GRID[0][0], "weight": GRID[0][1]}
    assemble(first)
    beam_grid = tune.setdefault("beam", {})
    for lam, weight in GRID:
        key = f"lambda {lam:g} weight {weight:g}"
        if key not in beam_grid:
            beam_grid[key] = _valid_si_sdr(
                bundle, data, work / "tune" / f"beam-{lam:g}-{weight:g}.json", "lass-beam-mask",
                ["--beams", str(BEAMS), "--lam", str(lam), "--evidence-weight", str(weight)])
            print(f"beam {key}: valid SI-SDR {beam_grid[key]:.2f} dB", file=sys.stderr)
            log_path.write_text(json.dumps(log, indent=1) + "\n")
    lam, weight = max(GRID, key=lambda g: beam_grid[f"lambda {g[0]:g} weight {g[1]:g}"])
    best: dict[str, Any] = {"kind": "beam", "lam": lam, "weight": weight,
                            "si_sdr": beam_grid[f"lambda {lam:g} weight {weight:g}"]}
    sample_grid = tune.setdefault("ancestral", {})
    for temp in SAMPLE_GRID:
        key = f"lambda {lam:g} weight {weight:g} temperature {temp:g}"
        if key not in sample_grid:
            sample_grid[key] = _valid_si_sdr(
                bundle, data, work / "tune" / f"ancestral-{lam:g}-{weight:g}-{temp:g}.json",
                "lass-ancestral-mask-mean",
                ["--candidates", str(SAMPLES), "--temperature", str(temp), "--lam", str(lam),
                 "--evidence-weight", str(weight)])
            print(f"ancestral {key}: valid SI-SDR {sample_grid[key]:.2f} dB", file=sys.stderr)
            log_path.write_text(json.dumps(log, indent=1) + "\n")
    temp = max(SAMPLE_GRID,
               key=lambda t: sample_grid[f"lambda {lam:g} weight {weight:g} temperature {t:g}"])
    sampled = sample_grid[f"lambda {lam:g} weight {weight:g} temperature {temp:g}"]
    if sampled >= best["si_sdr"] + SAMPLER_GAIN_DB:
        best = {"kind": "ancestral", "lam": lam, "weight": weight, "temperature": temp,
                "si_sdr": sampled}
    assemble(best)
    method = "lass-beam-mask" if best["kind"] == "beam" else "lass-ancestral-mask-mean"
    mask_grid = tune.setdefault("mask", {})
    for fft, em in MASK_GRID:
        key = f"fft {fft} em {em}"
        if key not in mask_grid:
            mask_grid[key] = _valid_si_sdr(
                bundle, data, work / "tune" / f"mask-{fft}-{em}.json", method,
                ["--mask-fft", str(fft), "--mask-iterations", str(em)])
            print(f"mask {key}: valid SI-SDR {mask_grid[key]:.2f} dB", file=sys.stderr)
            log_path.write_text(json.dumps(log, indent=1) + "\n")
    fft, em = max(MASK_GRID, key=lambda g: mask_grid[f"fft {g[0]} em {g[1]}"])
    if mask_grid[f"fft {fft} em {em}"] >= mask_grid["fft 2048 em 0"] + MASK_GAIN_DB:
        best.update(mask_fft=fft, mask_iterations=em, si_sdr=mask_grid[f"fft {fft} em {em}"])
        assemble(best)
    tune["chosen"] = best
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    files = sorted(f for f in bundle.rglob("*") if f.is_file())
    total = sum(f.stat().st_size for f in files)
    print(f"bundle {bundle}: {len(files)} files, {total / 1e6:.1f} MB; settings {best}")
    if args.install:
        install(bundle, "toy")


if __name__ == "__main__":
    main()
