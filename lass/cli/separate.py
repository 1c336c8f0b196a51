"""``lass-separate``: separate audio files into stems with a LASS bundle.

    lass-separate mix.wav                      # the embedded default bundle
    lass-separate songs/ -m path/to/bundle -o separated --beams 10

Inputs are files, folders (their audio files) or glob patterns; what libsndfile cannot read
(m4a, aac, the audio of a video) is decoded with ffmpeg. Multichannel input is separated
from its downmix and the masks are applied to each channel, so each stem keeps the input's
channels. For each input, ``OUT/<bundle>/<track>/<stem>.wav`` is written (same length,
channels and sample rate as the input; the stems add up to the input, per channel) with
``separation.json`` (settings, seed, bundle sha256, timings). A bad input is reported in one
line and skipped; the exit status is then non-zero. Up to ``--batch`` inputs of one length
and sample rate are searched together (faster per input; each gets the stems it would get
alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from lass.cli import EXIT_ERROR, run_cli
from lass.cli.common import resolve_device
from lass.data.audio import read_any, rms_db, write_text_atomic, write_wav
from lass.errors import DataError, LassError
from lass.langevin import LangevinSeparator
from lass.sampling import Ancestral, TopK, TopP
from lass.separator import (
    COMBINES,
    MAX_CHANNELS,
    OUTPUTS,
    SeparationResult,
    SeparationSettings,
    Separator,
    make_sampler,
)

PROG = "lass-separate"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".m4a", ".aac", ".opus",
                  ".wma", ".mp4", ".mkv", ".webm", ".mov")
SILENCE_DB = -90.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="audio files, folders or glob patterns")
    p.add_argument("-m", "--model", default=None,
                   help="bundle directory or name (default: the embedded default bundle)")
    p.add_argument("-o", "--out", type=Path, default=Path("separated"))
    p.add_argument("--sampler", choices=["beam", "greedy", "ancestral", "topk", "topp"],
                   default=None, help="default: the bundle's")
    p.add_argument("--beams", type=int, default=None,
                   help="beams of the beam sampler, per shifted copy of the input (see "
                        "--shifts: the default bundle separates 5 copies; --shifts 1 --combine "
                        "best for N beams in all and the best one out)")
    p.add_argument("--top-k", type=int, default=None,
                   help="candidates of --sampler topk (default 16)")
    p.add_argument("--top-p", type=float, default=None,
                   help="probability mass of --sampler topp (default 0.9)")
    p.add_argument("--temperature", type=float, default=None,
                   help="of the sampling samplers (default: the bundle's for its own sampler, "
                        "else 1)")
    p.add_argument("--resample", type=float, default=None, metavar="FRACTION",
                   help="ancestral: resample the samples as particles whenever their effective "
                        "number falls below FRACTION of them (0: independent samples)")
    p.add_argument("--candidates", type=int, default=None,
                   help="samples per input for the sampling samplers (combined as --combine "
                        "says)")
    p.add_argument("--combine", choices=COMBINES, default=None,
                   help="several candidates: keep the best-scoring, the one that mixes back "
                        "best, or average their decodings/masks (default: the bundle's)")
    p.add_argument("--lam", type=float, default=None, help="likelihood weight")
    p.add_argument("--refine", type=int, default=None, metavar="STEPS",
                   help="latent refinement steps (0: off)")
    p.add_argument("--output", choices=OUTPUTS, default=None)
    p.add_argument("--mask-fft", type=int, default=None, metavar="N",
                   help="STFT size of the mask output, at the bundle's sample rate (default: "
                        "the bundle's)")
    p.add_argument("--mask-iterations", type=int, default=None, metavar="N",
                   help="EM updates of the stems' powers before masking (default: the "
                        "bundle's)")
    p.add_argument("--context-overlap", type=int, default=None, metavar="TOKENS",
                   help="tokens carried into the next window of a prior (default: the bundle's)")
    p.add_argument("--shifts", type=int, default=None, metavar="N",
                   help="separate N copies of the input delayed by fractions of a token's hop "
                        "and pool their candidates, each copy with --candidates samples "
                        "(1: the input alone; default: the bundle's)")
    p.add_argument("--prior-top", type=int, default=None, metavar="N",
                   help="also score pairs of the priors' N likeliest tokens that counting never "
                        "saw (smoothed likelihood; 0: off; default: the bundle's)")
    p.add_argument("--evidence-weight", type=float, default=None, metavar="MU",
                   help="weight of the bundle's token evidence model (the learned likelihood "
                        "of the mixture's encoder output; 0: the counts alone; default: the "
                        "bundle's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, metavar="N",
                   help="inputs of equal length and rate, up to N at a time, are searched as "
                        "one batch (faster per input on a CPU; the same stems)")
    p.add_argument("--float32", action="store_true", help="write 32-bit float WAVs")
    p.add_argument("--no-verify", action="store_true", help="skip the bundle's sha256 checks")
    p.add_argument("--method", choices=["lass", "langevin"], default="lass",
                   help="langevin: annealed Langevin with a bundle of WaveNet priors")
    return p


def expand_inputs(items: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Audio files named by ``items`` (files, folders, globs) and the items that named none."""
    files: list[Path] = []
    missing: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
        elif p.exists():
            found = [p]
        else:
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
        if not found:
            missing.append(item)
        files += found
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values()), missing


# What each sampler option sets, and on which samplers it exists.
_SAMPLER_OPTIONS = {"temperature": ("--temperature", (Ancestral, TopK, TopP), "temperature"),
                    "top_k": ("--top-k", (TopK,), "k"), "top_p": ("--top-p", (TopP,), "p"),
                    "resample": ("--resample", (Ancestral,), "resample")}


def check_args(args: argparse.Namespace) -> None:
    """Refuse settings out of range with one line, before any model is loaded or input read."""
    ints = {"--beams": args.beams, "--candidates": args.candidates, "--top-k": args.top_k,
            "--shifts": args.shifts, "--batch": args.batch}
    for flag, value in ints.items():
        if value is not None and value < 1:
            raise LassError(f"{flag} must be at least 1, not {value}")
    if args.temperature is not None and not (math.isfinite(args.temperature)
                                             and args.temperature > 0):
        raise LassError(f"--temperature must be positive, not {args.temperature:g}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise LassError(f"--top-p must be in (0, 1], not {args.top_p:g}")
    if args.resample is not None and not 0 <= args.resample <= 1:
        raise LassError(f"--resample must be in [0, 1], not {args.resample:g}")
    if args.lam is not None and not (math.isfinite(args.lam) and args.lam >= 0):
        raise LassError(f"--lam must be >= 0, not {args.lam:g}")
    if args.sampler is not None or args.beams is not None:
        kind = args.sampler or "beam"
        for key, (flag, kinds, _) in _SAMPLER_OPTIONS.items():
            if getattr(args, key) is not None and not isinstance(make_sampler(kind), kinds):
                raise LassError(f"{flag} does not apply to --sampler {kind}")


def _settings(args: argparse.Namespace, base: SeparationSettings) -> SeparationSettings:
    """The bundle's settings with the command line's changes. A sampler option without
    ``--sampler`` changes the bundle's own sampler (an error where it has no such setting);
    ``--sampler`` with the bundle's own kind keeps the bundle's values of what is not given."""
    s = base
    given = {key: getattr(args, key) for key in _SAMPLER_OPTIONS
             if getattr(args, key) is not None}
    if args.sampler is not None or args.beams is not None:
        kind = args.sampler or "beam"
        own = s.sampler if make_sampler(kind).__class__ is s.sampler.__class__ else None
        values = {key: getattr(own, field) for key, (_, _, field) in _SAMPLER_OPTIONS.items()
                  if own is not None and hasattr(own, field)}
        values.update(given)
        beams = args.beams if args.beams is not None else getattr(s.sampler, "num_beams", 10)
        s = replace(s, sampler=make_sampler(kind, beams=beams, **values))
    elif given:
        for key, value in given.items():
            flag, kinds, field = _SAMPLER_OPTIONS[key]
            if not isinstance(s.sampler, kinds):
                raise LassError(f"{flag} does not apply to this bundle's sampler "
                                f"({type(s.sampler).__name__}); give --sampler too")
            s = replace(s, sampler=replace(s.sampler, **{field: value}))
    changes: dict[str, Any] = {"seed": args.seed}
    if args.candidates is not None:
        changes["candidates"] = args.candidates
    if args.combine is not None:
        changes["combine"] = args.combine
    if args.lam is not None:
        changes["lam"] = args.lam
    if args.refine is not None:
        changes["refine_steps"] = args.refine
    if args.output is not None:
        changes["output"] = args.output
    if args.mask_fft is not None:
        changes["mask_fft"] = args.mask_fft
    if args.mask_iterations is not None:
        changes["mask_iterations"] = args.mask_iterations
    if args.context_overlap is not None:
        changes["context_overlap"] = args.context_overlap
    if args.prior_top is not None:
        changes["prior_top"] = args.prior_top
    if args.shifts is not None:
        changes["shifts"] = args.shifts
    if args.evidence_weight is not None:
        changes["evidence_weight"] = args.evidence_weight
    return replace(s, **changes)


def _read(path: Path) -> tuple[np.ndarray, int]:
    """``(channels, time)`` and the rate of an audio file (libsndfile, else ffmpeg)."""
    wave, rate = read_any(path)
    if wave.shape[0] > MAX_CHANNELS:
        raise DataError(f"{path} has {wave.shape[0]} channels; at most {MAX_CHANNELS} are "
                        "separated")
    return wave, rate


def _check_out(out: Path) -> None:
    """Refuse an output folder that cannot be written, before any work (nothing is created
    here: the nearest folder that exists must let us write in it)."""
    if out.exists() and not out.is_dir():
        raise LassError(f"-o {out} is a file, not a folder")
    probe = out.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise LassError(f"cannot create the output folder {out}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LassError(f"the output folder {out} cannot be written ({probe} is not writable)")


def track_folders(files: Sequence[Path]) -> dict[Path, Path]:
    """Each input's folder under ``OUT/BUNDLE``: its name without the extension; inputs that
    share it get their path from their common folder instead (``in/a/x.wav`` and
    ``in/b/x.wav`` -> ``a/x`` and ``b/x``; with the extensions, ``a/x.wav`` ..., when two of
    them are in one folder), so that no input's stems overwrite another's."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f.stem, []).append(f)
    out: dict[Path, Path] = {}
    for stem, group in groups.items():
        if len(group) == 1:
            out[group[0]] = Path(stem)
            continue
        parents = [f.resolve().parent for f in group]
        common = Path(os.path.commonpath(parents))
        rel = [par.relative_to(common) / f.stem for f, par in zip(group, parents, strict=True)]
        if len(set(rel)) < len(rel):  # the same name in one folder: keep the extensions
            rel = [par.relative_to(common) / f.name for f, par in zip(group, parents,
                                                                      strict=True)]
        out.update(zip(group, rel, strict=True))
    return out


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    check_args(args)
    device = resolve_device(args.device)
    _check_out(args.out)
    files, missing = expand_inputs(args.inputs)
    failures = 0
    for item in missing:
        print(f"{PROG}: error: no audio file at {item}", file=sys.stderr)
        failures += 1
    if not files:
        raise DataError("nothing to separate")
    folders = track_folders(files)
    if args.batch < 1:
        raise DataError("--batch must be at least 1")
    t0 = time.perf_counter()
    separator: Separator | LangevinSeparator
    if args.method == "langevin":
        separator = LangevinSeparator.from_pretrained(args.model, device=device,
                                                      verify=not args.no_verify)
        settings: SeparationSettings | None = None
        settings_json: dict[str, Any] = {"method": "langevin",
                                         **dataclasses.asdict(separator.schedule),
                                         "seed": separator.seed}
    else:
        separator = Separator.from_pretrained(args.model, device=device,
                                              verify=not args.no_verify)
        settings = _settings(args, separator.settings)
        settings_json = settings.to_json()
        beams = getattr(settings.sampler, "num_beams", 0)
        if beams and settings.shifts > 1 and args.shifts is None and (
                args.sampler == "beam" or args.beams is not None):
            print(f"{PROG}: the bundle separates {settings.shifts} shifted copies of each "
                  f"input, with {beams} beams each ({settings.shifts * beams} in all); "
                  f"--shifts 1 --combine best runs {beams} beams in all", file=sys.stderr)
    load_seconds = time.perf_counter() - t0
    bundle = separator.bundle
    bundle_name = bundle.name if bundle is not None else "bundle"
    said_downmix = False
    bar = tqdm(total=len(files), desc="separating", unit="file", file=sys.stderr,
               dynamic_ncols=True)

    def load(path: Path) -> tuple[np.ndarray, int, np.ndarray]:
        nonlocal said_downmix
        wave, rate = _read(path)
        if wave.shape[0] > 1 and not said_downmix and not isinstance(separator, Separator):
            bar.write(f"{PROG}: multichannel input is downmixed to mono for Langevin "
                      "separation", file=sys.stderr)
            said_downmix = True
        mono = wave.mean(axis=0)
        if rms_db(mono) < SILENCE_DB:
            raise DataError(f"{path} is silent: nothing to separate")
        return wave, rate, mono

    def write(path: Path, wave: np.ndarray, rate: int, mono: np.ndarray,
              result: SeparationResult, seconds: float) -> None:
        """The track's folder whole or not at all: written aside, then renamed into place."""
        final = args.out / bundle_name / folders[path]
        out_dir = final.with_name(f".{final.name}.partial-{os.getpid()}")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_track(path, wave, rate, mono, result, seconds, out_dir)
            if final.exists():
                shutil.rmtree(final)
            os.replace(out_dir, final)
        except (OSError, sf.LibsndfileError) as err:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise LassError(f"cannot write the stems of {path} to {final}: "
                            f"{getattr(err, 'strerror', None) or err}") from None

    def write_track(path: Path, wave: np.ndarray, rate: int, mono: np.ndarray,
                    result: SeparationResult, seconds: float, out_dir: Path) -> None:
        subtype = "FLOAT" if args.float32 else "PCM_16"
        for stem, audio in result.stems.items():
            peak = float(np.max(np.abs(audio)))
            if peak > 1.0 and not args.float32:
                bar.write(f"{PROG}: warning: {path.name}: {stem} peaks at {peak:.2f} and is "
                          "clipped in 16-bit; use --float32 to keep it", file=sys.stderr)
                audio = np.clip(audio, -1.0, 1.0)
            write_wav(out_dir / f"{stem}.wav", audio.T, rate, subtype=subtype)
        info = {"input": str(path), "sample_rate": rate, "samples": int(mono.shape[0]),
                "channels": int(wave.shape[0]), "stems": list(result.stems),
                "bundle": {"name": bundle_name,
                           "path": str(bundle.root) if bundle else None,
                           "sha256": bundle.sha256 if bundle else None},
                "settings": settings_json, "device": device,
                "score": result.score, "fallback_steps": result.fallback_steps,
                "timings": {**{k: round(v, 4) for k, v in result.timings.items()},
                            "total": round(seconds, 4), "load_models": round(load_seconds, 4),
                            "real_time_factor": round(seconds / (mono.shape[0] / rate), 4)}}
        write_text_atomic(out_dir / "separation.json", json.dumps(info, indent=1) + "\n")

    def separate(waves: list[np.ndarray], rate: int) -> list[SeparationResult]:
        """Inputs ``(channels, time)`` -> their separations (stems ``(channels, time)``, or
        ``(time,)`` for one channel)."""
        if isinstance(separator, Separator):
            return separator.separate_many([w[0] if w.shape[0] == 1 else w for w in waves],
                                           rate, settings)
        return [separator.separate_detailed(w.mean(axis=0), rate, settings) for w in waves]

    def attempt(wave: np.ndarray, rate: int) -> SeparationResult | LassError:
        try:
            return separate([wave], rate)[0]
        except LassError as err:
            return err

    batch = args.batch if isinstance(separator, Separator) else 1
    for first in range(0, len(files), batch):
        loaded: dict[int, list[tuple[Path, np.ndarray, np.ndarray]]] = {}  # by sample rate
        for path in files[first: first + batch]:
            try:
                wave, rate, mono = load(path)
                loaded.setdefault(rate, []).append((path, wave, mono))
            except LassError as err:
                bar.write(f"{PROG}: error: {err}", file=sys.stderr)
                failures += 1
                bar.update(1)
        for rate, items in loaded.items():
            start = time.perf_counter()
            results: list[SeparationResult | LassError]
            try:
                results = list(separate([w for _, w, _ in items], rate))
            except LassError as err:  # one bad input spoils its batch: one by one then
                results = [err] if len(items) == 1 else [attempt(w, rate) for _, w, _ in items]
            seconds = (time.perf_counter() - start) / len(items)
            for (path, wave, mono), result in zip(items, results, strict=True):
                try:
                    if isinstance(result, LassError):
                        raise result
                    write(path, wave, rate, mono, result, seconds)
                except LassError as err:
                    bar.write(f"{PROG}: error: {err}", file=sys.stderr)
                    failures += 1
                bar.update(1)
    bar.close()
    done = len(files) - (failures - len(missing))
    print(f"separated {done} of {len(files)} files into {args.out / bundle_name}")
    return EXIT_ERROR if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-separate``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
