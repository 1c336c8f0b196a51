"""Rebuild the embedded default bundle (drums + bass) from seed, stage by stage.

    python scripts/build_default_bundle.py --work runs/default [--install]

Stages (each is skipped when its output exists and resumes when interrupted):

1. ``data``: ``lass-make-dataset synth-drums-bass --hours 10 --seed 0``
2. ``codec``: ``lass-train-vqvae`` (hop 64, 1024 codes, 1500 steps, seed 0)
3. ``prior``: ``lass-train-prior`` one shared class-conditioned prior over drums and bass
   (Llama-style, 3 layers, width 256, 4 heads, 1 key/value head, context 512), trained in
   the phases of ``PRIOR_PHASES``: 1500 steps (warm-up, cosine decay), then resumed with
   the schedule stretched to 3500 steps (a warm restart: the learning rate goes back up to
   the longer cosine's value at step 1500 and decays again)
4. ``counts``: ``lass-count-likelihood`` on 6 hours of training mixtures, counted as two
   parts (1 hour with seed 0, then 5 hours with seed 1; each part resumes) and merged
   with ``lass-merge-counts``
5. ``tune``: the likelihood's smoothing and minimum count, lambda of beam search (10 beams)
   and the output
   (decode or mask) chosen on validation mixtures (never test), then the window overlap of
   the priors (half the context, or a quarter when that costs at most 0.1 dB: a new window
   re-reads fewer tokens), then the number of beams (10, or a wider beam when it gains at
   least ``BEAM_GAIN_DB`` on validation)
6. ``sampler``: on the same ``CHECK_MIXTURES`` validation mixtures, the beam search so far
   against the mean of ``SAMPLES`` posterior samples (ancestral sampling, ``SAMPLE_GRID``
   lambdas and temperatures; the stems are the mixture under the Wiener masks of the
   samples' mean magnitude; of the settings within ``SAMPLE_TIE_DB`` of the best, the
   first in the grid's order); sampling replaces the beams when it gains at least
   ``SAMPLER_GAIN_DB``
7. ``mask``: the mask output's STFT size and EM iterations (``MASK_GRID``; see
   :func:`lass.separator.soft_masks`) on the same validation mixtures, separated once with
   the bundle's settings; the best replaces the plain 2048-sample ratio masks when it gains
   at least ``MASK_GAIN_DB``
8. ``shifts``: on the same validation mixtures, the sampled candidates spread over delayed
   copies of each mixture (``SHIFT_GRID``: copies x samples per copy, the same number of
   search rows and decodings as the bundle's samples; see
   :attr:`lass.separator.SeparationSettings.shifts`); of the settings within
   ``SHIFT_TIE_DB`` of the best, the one with the fewest copies (each copy is one more
   encoding and mixture token sequence), which replaces one copy when it gains at least
   ``SHIFT_GAIN_DB``
9. ``evidence``: ``lass-fit-evidence`` (``EVIDENCE_HOURS`` of training mixtures, seed
   ``EVIDENCE_SEED``, ``EVIDENCE_EPOCHS`` epochs): the token evidence model, the learned
   likelihood of each source's token from the mixture's encoder output; then, on the same
   validation mixtures with the bundle's settings, its weight and lambda (``EVIDENCE_GRID``,
   and weight 0: the counts alone); of the settings within ``EVIDENCE_TIE_DB`` of the best,
   the first, which the bundle takes when it gains at least ``EVIDENCE_GAIN_DB``
10. ``assemble``: the bundle in ``WORK/bundle`` (``bundle.json`` with every sha256);
   ``--install`` copies it to ``lass/bundles/default`` and prints the rows of
   ``checkpoints.md``.

Commands run on the CPU unless ``--device cuda``; ``--threads`` sets CPU threads. The
numbers of a build (times, validation bits, the lambda grid) go to ``WORK/build.json``.
Alternatives measured and not taken (a latent likelihood, a smaller prior, ...) are in
docs/default-bundle.md with their figures; the build makes only what the bundle ships.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bundle_stages import install, run_stage

from lass.bundle import write_bundle

DESCRIPTION = ("Drums and bass. Trained on 10 hours of synthetic songs: procedural grooves in "
               "12 styles and bass lines, rendered with one General MIDI soundfont (FluidR3 "
               "GM), 22.05 kHz mono. Expect weaker stems on real recordings and other "
               "timbres.")
CODEC_STEPS = 1500
PRIOR_PHASES = (1500, 3500)  # total steps after each phase; each later phase resumes
COUNT_PARTS = ((1.0, 0), (5.0, 1))  # (hours, seed): mixture n of a part is f(seed, n)
# (smoothing, alpha, min_count) of the likelihood, and the lambdas tried with it
GRID = ((("none", 1.0, 1), (3.0, 4.0, 5.0)), (("backoff", 0.01, 1), (3.0, 4.0, 5.0)),
        (("none", 1.0, 2), (3.0, 4.0, 5.0, 7.0)), (("none", 1.0, 3), (5.0, 7.0)))
OVERLAP_TOLERANCE_DB = 0.1
TUNE_MIXTURES = 12
BEAMS = 10
WIDER_BEAMS = (20,)  # tried after the grid; kept when they gain BEAM_GAIN_DB or more
BEAM_GAIN_DB = 0.2
CHECK_MIXTURES = 48  # validation mixtures of the sampler, mask, shifts and evidence stages
SAMPLES = 10  # posterior samples whose masks (or decodings) are averaged
SAMPLE_GRID = ((5.0, 1.0), (5.0, 1.5), (3.0, 1.5), (7.0, 1.5), (5.0, 2.0))  # (lambda, temperature)
SAMPLER_GAIN_DB = 0.2
SAMPLE_TIE_DB = 0.1  # sampling settings closer than this to the best count as tied
SAMPLE_KEYS = tuple(f"ancestral {lam:g} {t:g}" for lam, t in SAMPLE_GRID)  # build.json keys
SCORE_BATCH = 8  # validation mixtures searched as one batch
MASK_GRID = tuple((fft, em) for fft in (2048, 4096, 8192, 16384) for em in (0, 1))
MASK_GAIN_DB = 0.2
MASK_KEYS = tuple(f"fft {fft} em {em}" for fft, em in MASK_GRID)  # build.json keys
# (copies, samples per copy): SAMPLES candidates in all
SHIFT_GRID = ((1, SAMPLES), (2, SAMPLES // 2), (5, SAMPLES // 5), (SAMPLES, 1))
SHIFT_GAIN_DB = 0.2
SHIFT_TIE_DB = 0.1
SHIFT_KEYS = tuple(f"shifts {n} samples {c}" for n, c in SHIFT_GRID)  # build.json keys
EVIDENCE_HOURS, EVIDENCE_SEED, EVIDENCE_EPOCHS = 1.5, 0, 6
EVIDENCE_GRID = ((0.0, 5.0), (0.5, 5.0), (1.0, 5.0), (1.5, 5.0), (1.0, 3.0))  # (weight, lambda)
EVIDENCE_GAIN_DB = 0.2
EVIDENCE_TIE_DB = 0.1
EVIDENCE_KEYS = tuple(f"weight {w:g} lambda {lam:g}" for w, lam in EVIDENCE_GRID)


def _train_prior(codec: Path, data: Path, out: Path, phases: tuple[int, ...],
                 options: list[str], dev: list[str], log: dict[str, Any], stage: str) -> None:
    """``lass-train-prior`` of the shared drums + bass prior into ``out`` (seed 0), phase by
    phase: each phase runs to its total steps, resuming the run (a warm restart of the
    stretched schedule); a phase the run has reached already is skipped. ``options``: the
    architecture's; the seconds go to ``log`` as ``stage`` (the first phase) and
    ``stage-STEPS``."""
    for phase, steps in enumerate(phases):
        summary = out / "summary.json"
        if summary.is_file() and json.loads(summary.read_text())["step"] >= steps:
            continue
        run_stage(["lass-train-prior", "--codec", str(codec), "--data", str(data), "--stem",
              "drums", "bass", "--conditional", "--out", str(out), *options, "--steps",
              str(steps), "--seed", "0", *dev] + (["--resume"] if out.exists() else []),
             log, stage if phase == 0 else f"{stage}-{steps}")


def _validation(bundle: Path, data: Path, count: int) -> tuple[Any, list[Any], list[Any], float]:
    """The bundle's separator, the first ``count`` validation mixtures (seed 1; the
    tuning's are the first 12), their mixed signals and the mixing gain."""
    from lass.data import StemDataset, chunk_samples, find_tracks, mix_gain
    from lass.evaluate import evaluation_mixtures, mixture_of
    from lass.separator import Separator

    sep = Separator.from_pretrained(bundle)
    assert sep.bundle is not None
    rate = sep.codec.sample_rate
    tracks = find_tracks(data, "valid", list(sep.stems), "auto")
    ds = StemDataset(tracks, sample_rate=rate, chunk=chunk_samples(3.0, rate),
                     stems=list(sep.stems))
    mixtures = evaluation_mixtures(ds, count, seed=1)
    return (sep, mixtures, [mixture_of(m.stems, sep.mix_rule) for m in mixtures],
            mix_gain(2, sep.mix_rule))


def _search_all(sep: Any, mixed_all: list[Any], settings: Any) -> list[Any]:
    """The separations of every mixture of ``mixed_all``, ``SCORE_BATCH`` per search."""
    rate = sep.codec.sample_rate
    return [r for i in range(0, len(mixed_all), SCORE_BATCH)
            for r in sep.separate_many(mixed_all[i: i + SCORE_BATCH], rate, settings)]


def _stems_sdr(estimates: Any, references: Any) -> float:
    """Plain SDR averaged over the stems of one mixture."""
    from lass.evaluate import plain_sdr

    return float(np.mean([plain_sdr(e, r) for e, r in zip(estimates, references, strict=True)]))


def _scorer(bundle: Path, data: Path, count: int = TUNE_MIXTURES
            ) -> tuple[Any, Callable[..., dict[str, float]]]:
    """The bundle's separator and ``score(lam, overlap, beams)``: mean SDR (decode and mask)
    on the first ``count`` validation mixtures (the tuning's are the first 12)."""
    from lass.sampling import BeamSearch
    from lass.separator import SeparationSettings, combine_candidates

    sep, mixtures, mixed_all, gain = _validation(bundle, data, count)

    def score(lam: float, overlap: int | None, beams: int = BEAMS, sampler: Any = None,
              candidates: int = 1, combine: str = "rerank") -> dict[str, float]:
        sdr: dict[str, list[float]] = {"decode": [], "mask": []}
        chosen = sampler or BeamSearch(beams)
        settings = SeparationSettings(sampler=chosen, lam=lam, output="decode",
                                      context_overlap=overlap, candidates=candidates,
                                      combine=combine)
        results = _search_all(sep, mixed_all, settings)
        for m, mixed, res in zip(mixtures, mixed_all, results, strict=True):
            for kind, values in sdr.items():
                values.append(_stems_sdr(combine_candidates(mixed, res.candidates, combine, kind),
                                         gain * m.stems))
        out = {kind: float(np.mean(values)) for kind, values in sdr.items()}
        lik = sep.likelihood
        what = f"{lik.smoothing} {lik.alpha:g} min count {lik.min_count}"
        print(f"{what}, lambda {lam}, overlap {overlap or 'half'}, {chosen}, {candidates} "
              f"candidates ({combine}): valid SDR decode {out['decode']:.2f} dB, mask "
              f"{out['mask']:.2f} dB", file=sys.stderr, flush=True)
        return out

    return sep, score


def _tune(bundle: Path, data: Path, log: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """Smoothing, lambda and output with the best mean SDR on validation mixtures, then the
    window overlap; returns the choices (also logged under ``tune``)."""
    from likelihood import CountLikelihood

    sep, score = _scorer(bundle, data)
    # Scores are kept in the log as they come, so an interrupted tuning resumes.
    grid: dict[str, dict[str, float]] = log.setdefault("tune_grid", {})
    for (smoothing, alpha, min_count), lambdas in GRID:
        sep.likelihood = CountLikelihood.load(sep.bundle.likelihood, smoothing, alpha,
                                              min_count=min_count)
        for lam in lambdas:
            key = f"{smoothing} {alpha:g} {min_count} {lam:g}"
            if key not in grid:
                grid[key] = score(lam, None)
                log_path.write_text(json.dumps(log, indent=1) + "\n")
    best_key = max(grid, key=lambda key: max(grid[key].values()))
    smoothing, alpha_text, min_text, lam_text = best_key.split()
    output = max(grid[best_key], key=lambda k: grid[best_key][k])
    sep.likelihood = CountLikelihood.load(sep.bundle.likelihood, smoothing, float(alpha_text),
                                          min_count=int(min_text))
    quarter = max(1, next(iter(sep.priors.values())).context_length // 4)
    short = score(float(lam_text), quarter)
    overlap = quarter if short[output] >= grid[best_key][output] - OVERLAP_TOLERANCE_DB else None
    choice = {"smoothing": smoothing, "alpha": float(alpha_text), "min_count": int(min_text),
              "lam": float(lam_text), "output": output, "context_overlap": overlap}
    log["tune"] = {"mixtures": TUNE_MIXTURES, "beams": BEAMS, "grid": grid,
                   "overlap_grid": {"half": grid[best_key], str(quarter): short}, **choice}
    return choice


def _tune_beams(bundle: Path, data: Path, log: dict[str, Any], log_path: Path) -> int:
    """Beams of the shipped sampler: ``BEAMS``, or the widest of ``WIDER_BEAMS`` that gains
    ``BEAM_GAIN_DB`` on validation (with the tuned likelihood, lambda, overlap and output);
    logged under ``tune.beams_grid``."""
    tune = log["tune"]
    _sep, score = _scorer(bundle, data)  # the bundle already holds the tuned likelihood
    grid: dict[str, dict[str, float]] = tune.setdefault("beams_grid", {})
    grid.setdefault(str(BEAMS), tune["overlap_grid"][str(tune["context_overlap"])
                                                     if tune["context_overlap"] else "half"])
    for beams in WIDER_BEAMS:
        if str(beams) not in grid:
            grid[str(beams)] = score(tune["lam"], tune["context_overlap"], beams)
            log_path.write_text(json.dumps(log, indent=1) + "\n")
    output = tune["output"]
    best = BEAMS
    for beams in WIDER_BEAMS:
        if grid[str(beams)][output] >= grid[str(best)][output] + BEAM_GAIN_DB:
            best = beams
    tune["num_beams"] = best
    return best


def _tune_sampler(bundle: Path, data: Path, log: dict[str, Any], log_path: Path
                  ) -> dict[str, Any]:
    """The tuned beam search against the mean of ``SAMPLES`` posterior samples (ancestral,
    each ``SAMPLE_GRID`` lambda and temperature) on ``CHECK_MIXTURES`` validation mixtures
    (logged under ``sampler``); sampling replaces the beams when it gains
    ``SAMPLER_GAIN_DB``."""
    from lass.sampling import Ancestral

    tune = log["tune"]
    entry: dict[str, Any] = log.setdefault("sampler", {})
    grid: dict[str, dict[str, float]] = entry.setdefault("grid", {})
    _sep, score = _scorer(bundle, data, CHECK_MIXTURES)  # the bundle with the tuned counts
    if "beam" not in grid:  # the tuned beam search on the same mixtures
        grid["beam"] = score(tune["lam"], tune["context_overlap"], tune["num_beams"])
        log_path.write_text(json.dumps(log, indent=1) + "\n")
    for key, (lam, temperature) in zip(SAMPLE_KEYS, SAMPLE_GRID, strict=True):
        if key not in grid:
            grid[key] = score(lam, tune["context_overlap"], sampler=Ancestral(temperature),
                              candidates=SAMPLES, combine="mean")
            log_path.write_text(json.dumps(log, indent=1) + "\n")
    return _choose_sampler(log)


def _tune_mask(bundle: Path, data: Path, log: dict[str, Any], log_path: Path) -> None:
    """Stage 8: mask SDR of every ``MASK_GRID`` point on ``CHECK_MIXTURES`` validation
    mixtures, each separated once with the bundle's settings (logged under ``mask``)."""
    from lass.separator import combine_candidates

    sep, mixtures, mixed_all, gain = _validation(bundle, data, CHECK_MIXTURES)
    s = sep.settings
    results = _search_all(sep, mixed_all, s)
    grid: dict[str, float] = {}
    for key, (fft, em) in zip(MASK_KEYS, MASK_GRID, strict=True):
        sdr = [_stems_sdr(combine_candidates(mixed, res.candidates, s.combine, "mask",
                                             s.rerank_top, fft, em), gain * m.stems)
               for m, mixed, res in zip(mixtures, mixed_all, results, strict=True)]
        grid[key] = float(np.mean(sdr))
        print(f"mask STFT {fft}, {em} EM updates: valid SDR {grid[key]:.2f} dB",
              file=sys.stderr, flush=True)
    best = max(MASK_KEYS, key=lambda k: grid[k])
    fft, em = MASK_GRID[MASK_KEYS.index(best)]
    log["mask"] = {"mixtures": CHECK_MIXTURES, "grid": grid, "fft": fft, "iterations": em,
                   "use": grid[best] >= grid[MASK_KEYS[0]] + MASK_GAIN_DB}
    log_path.write_text(json.dumps(log, indent=1) + "\n")


def _score_grid(bundle: Path, data: Path, log: dict[str, Any], log_path: Path, name: str,
                points: dict[str, dict[str, Any]], setup: Callable[[Any], None] | None = None
                ) -> dict[str, float]:
    """Plain SDR on ``CHECK_MIXTURES`` validation mixtures of the bundle's settings with each
    point's ``changes`` (``points``: key -> changes), kept in ``log[name]["grid"]`` as they
    come (with the seconds each took), so an interrupted stage resumes; ``setup`` may
    change the separator first."""
    from dataclasses import replace

    entry: dict[str, Any] = log.setdefault(name, {})
    grid: dict[str, float] = entry.setdefault("grid", {})
    todo = {key: changes for key, changes in points.items() if key not in grid}
    if not todo:  # all scored: no separator, no mixtures
        return grid
    sep, mixtures, mixed_all, gain = _validation(bundle, data, CHECK_MIXTURES)
    if setup is not None:
        setup(sep)
    for key, changes in todo.items():
        start = time.perf_counter()
        results = _search_all(sep, mixed_all, replace(sep.settings, **changes))
        grid[key] = float(np.mean([
            _stems_sdr(np.stack([r.stems[st] for st in sep.stems]), gain * m.stems)
            for m, r in zip(mixtures, results, strict=True)]))
        entry.setdefault("seconds", {})[key] = round(time.perf_counter() - start, 1)
        print(f"{name}, {key}: valid SDR {grid[key]:.2f} dB", file=sys.stderr, flush=True)
        log_path.write_text(json.dumps(log, indent=1) + "\n")
    return grid


def _first_within(grid: dict[str, float], keys: tuple[str, ...], tie: float) -> str:
    """Of ``keys`` (in order of preference), the first whose score is within ``tie`` dB of
    the best (closer differences on the validation mixtures count as noise)."""
    top = max(grid[k] for k in keys)
    return next(k for k in keys if grid[k] >= top - tie)


def _tune_shifts(bundle: Path, data: Path, log: dict[str, Any], log_path: Path) -> None:
    """Stage 9: SDR of every ``SHIFT_GRID`` point on ``CHECK_MIXTURES`` validation mixtures
    with the bundle's other settings, and the choice (logged under ``shifts``)."""
    grid = _score_grid(bundle, data, log, log_path, "shifts", {
        key: {"shifts": shifts, "candidates": samples}
        for key, (shifts, samples) in zip(SHIFT_KEYS, SHIFT_GRID, strict=True)})
    best = _first_within(grid, SHIFT_KEYS, SHIFT_TIE_DB)
    shifts, samples = SHIFT_GRID[SHIFT_KEYS.index(best)]
    log["shifts"].update(mixtures=CHECK_MIXTURES, shifts=shifts, samples=samples,
                         use=grid[best] >= grid[SHIFT_KEYS[0]] + SHIFT_GAIN_DB)
    log_path.write_text(json.dumps(log, indent=1) + "\n")


def _tune_evidence(bundle: Path, evidence: Path, data: Path, log: dict[str, Any],
                   log_path: Path) -> None:
    """Stage 10: SDR of every ``EVIDENCE_GRID`` point (evidence weight, lambda) on
    ``CHECK_MIXTURES`` validation mixtures with the bundle's other settings, and the choice
    (logged under ``evidence``)."""
    from likelihood.evidence import TokenEvidence

    def setup(sep: Any) -> None:
        model = TokenEvidence.load(evidence)
        model.check_codec(sep.codec.codebook_size, sep.codec.embedding_dim, sep.codec.identity())
        sep.evidence = model

    grid = _score_grid(bundle, data, log, log_path, "evidence", {
        key: {"evidence_weight": weight, "lam": lam}
        for key, (weight, lam) in zip(EVIDENCE_KEYS, EVIDENCE_GRID, strict=True)}, setup)
    best = _first_within(grid, EVIDENCE_KEYS, EVIDENCE_TIE_DB)
    weight, lam = EVIDENCE_GRID[EVIDENCE_KEYS.index(best)]
    log["evidence"].update(mixtures=CHECK_MIXTURES, weight=weight, lam=lam,
                           use=weight > 0 and grid[best] >= grid[EVIDENCE_KEYS[0]]
                           + EVIDENCE_GAIN_DB)
    log_path.write_text(json.dumps(log, indent=1) + "\n")


def _choose_sampler(log: dict[str, Any]) -> dict[str, Any]:
    """Stage 7's decision from its grid: of the ``SAMPLE_GRID`` settings within
    ``SAMPLE_TIE_DB`` of the best, the first (closer differences on 48 mixtures are noise,
    and the grid lists the settings in order of preference); it replaces the beams when it
    gains ``SAMPLER_GAIN_DB``."""
    output = log["tune"]["output"]
    entry: dict[str, Any] = log["sampler"]
    grid: dict[str, dict[str, float]] = entry["grid"]
    top = max(grid[k][output] for k in SAMPLE_KEYS)
    best = next(k for k in SAMPLE_KEYS if grid[k][output] >= top - SAMPLE_TIE_DB)
    _, lam_text, temperature_text = best.split()
    entry.update(mixtures=CHECK_MIXTURES, samples=SAMPLES, lam=float(lam_text),
                 temperature=float(temperature_text), beam_sdr=grid["beam"][output],
                 sampled_sdr=grid[best][output],
                 use=grid[best][output] >= grid["beam"][output] + SAMPLER_GAIN_DB)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="existing data set (skips stage 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", default="0")
    p.add_argument("--install", action="store_true")
    args = p.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "build.json"
    log: dict[str, Any] = json.loads(log_path.read_text()) if log_path.is_file() else {}
    dev = ["--device", args.device, "--threads", args.threads]
    data = args.data or work / "data"
    if not (data / "dataset.json").is_file() or '"complete": true' not in (
            data / "dataset.json").read_text():
        run_stage(["lass-make-dataset", "synth-drums-bass", "--hours", "10", "--seed", "0",
              "--out", str(data)], log, "data")
    codec = work / "codec"
    if not (codec / "summary.json").is_file():
        run_stage(["lass-train-vqvae", "--data", str(data), "--out", str(codec), "--steps",
              str(CODEC_STEPS), "--seed", "0", *dev] + (["--resume"] if codec.exists() else []),
             log, "codec")
    prior = work / "prior"
    _train_prior(codec / "model", data, prior, PRIOR_PHASES, [], dev, log, "prior")
    counts = work / "counts.npz"
    if not counts.is_file():
        parts = []
        for hours, seed in COUNT_PARTS:
            part = work / f"counts_{hours:g}h_seed{seed}.npz"
            if not part.is_file():
                run_stage(["lass-count-likelihood", "--codec", str(codec / "model"), "--data",
                      str(data), "--sources", "drums", "bass", "--hours", str(hours), "--seed",
                      str(seed), "--out", str(part), *dev], log, f"counts-{hours:g}h-seed{seed}")
            parts.append(str(part))
        run_stage(["lass-merge-counts", "--out", str(counts), *parts], log, "counts-merge")
    bundle = work / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir()
    shutil.copytree(codec / "model", bundle / "codec")
    shutil.copytree(prior / "model", bundle / "prior")
    shutil.copy2(counts, bundle / "likelihood.npz")
    sampler: dict[str, Any] = {"kind": "beam", "num_beams": BEAMS, "lam": 3.0,
                               "output": "mask"}
    likelihood: dict[str, Any] = {"smoothing": "none", "alpha": 1.0, "min_count": 1}
    extra: dict[str, Any] = {}  # the token evidence model, once stage 9 chose it

    def assemble() -> None:
        write_bundle(bundle, name="default", description=DESCRIPTION, sample_rate=22050,
                     stems=("drums", "bass"),
                     mix="mean", codec="codec", priors={"drums": "prior", "bass": "prior"},
                     prior_classes={"drums": 0, "bass": 1}, likelihood="likelihood.npz",
                     sampler=sampler, **likelihood, **extra)

    assemble()
    if "tune" not in log or "min_count" not in log["tune"]:
        start = time.perf_counter()
        _tune(bundle, data, log, log_path)
        log.setdefault("seconds", {})["tune"] = round(time.perf_counter() - start, 1)
    tune = log["tune"]
    sampler.update(lam=tune["lam"], output=tune["output"])
    if tune["context_overlap"] is not None:
        sampler["context_overlap"] = tune["context_overlap"]
    likelihood.update(smoothing=tune["smoothing"], alpha=tune["alpha"],
                      min_count=tune["min_count"])
    assemble()
    if "num_beams" not in tune:
        start = time.perf_counter()
        _tune_beams(bundle, data, log, log_path)
        log.setdefault("seconds", {})["tune-beams"] = round(time.perf_counter() - start, 1)
    sampler["num_beams"] = tune["num_beams"]
    assemble()
    done = log.get("sampler", {})
    if "use" not in done or any(k not in done["grid"] for k in SAMPLE_KEYS):  # a point added
        start = time.perf_counter()
        _tune_sampler(bundle, data, log, log_path)
        seconds = log.setdefault("seconds", {})
        seconds["tune-sampler"] = round(seconds.get("tune-sampler", 0.0)
                                        + time.perf_counter() - start, 1)
    _choose_sampler(log)
    if log["sampler"]["use"]:
        chosen = log["sampler"]
        sampler.pop("num_beams", None)
        sampler.update(kind="ancestral", temperature=chosen["temperature"],
                       candidates=chosen["samples"], combine="mean", lam=chosen["lam"])
        assemble()
    if sampler["output"] == "mask":
        done = log.get("mask", {})
        if "use" not in done or any(k not in done["grid"] for k in MASK_KEYS):
            start = time.perf_counter()
            _tune_mask(bundle, data, log, log_path)
            log.setdefault("seconds", {})["tune-mask"] = round(time.perf_counter() - start, 1)
        if log["mask"]["use"]:
            sampler.update(mask_fft=log["mask"]["fft"], mask_iterations=log["mask"]["iterations"])
            assemble()
    if sampler["kind"] == "ancestral":  # the samples (SAMPLES) spread over shifted copies
        done = log.get("shifts", {})
        if "use" not in done or any(k not in done["grid"] for k in SHIFT_KEYS):
            start = time.perf_counter()
            _tune_shifts(bundle, data, log, log_path)
            log.setdefault("seconds", {})["tune-shifts"] = round(time.perf_counter() - start, 1)
        if log["shifts"]["use"]:
            sampler.update(shifts=log["shifts"]["shifts"], candidates=log["shifts"]["samples"])
            assemble()
    # the token evidence model, added to the counts
    evidence = work / "evidence.npz"
    if not evidence.is_file():
        run_stage(["lass-fit-evidence", "--codec", str(codec / "model"), "--data", str(data),
              "--sources", "drums", "bass", "--hours", str(EVIDENCE_HOURS), "--seed",
              str(EVIDENCE_SEED), "--epochs", str(EVIDENCE_EPOCHS), "--out", str(evidence),
              *dev], log, "evidence-fit")
    done = log.get("evidence", {})
    if "use" not in done or any(k not in done["grid"] for k in EVIDENCE_KEYS):
        start = time.perf_counter()
        _tune_evidence(bundle, evidence, data, log, log_path)
        log.setdefault("seconds", {})["tune-evidence"] = round(time.perf_counter() - start,
                                                               1)
    if log["evidence"]["use"]:
        shutil.copy2(evidence, bundle / "evidence.npz")
        extra["evidence"] = "evidence.npz"
        sampler.update(evidence_weight=log["evidence"]["weight"], lam=log["evidence"]["lam"])
        assemble()
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    files = sorted(f for f in bundle.rglob("*") if f.is_file())
    total = sum(f.stat().st_size for f in files)
    print(f"bundle {bundle}: {len(files)} files, {total / 1e6:.1f} MB; sampler {sampler}, "
          f"likelihood {likelihood}")
    if args.install:
        install(bundle, "default")


if __name__ == "__main__":
    main()
