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
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from lass import __version__
from lass.bundle import (
    BundleSpec,
    LangevinBundleSpec,
    PosteriorBundleSpec,
    bundle_method,
    read_bundle,
    read_langevin_bundle,
    read_posterior_bundle,
)
from lass.cli import EXIT_ERROR, run_cli
from lass.cli.common import resolve_device
from lass.data.audio import read_any, rms_db
from lass.errors import DataError, LassError
from lass.langevin import LangevinSeparator
from lass.output import CLIP_MODES, check_template, output_format, save_stems
from lass.posterior import PosteriorSeparator
from lass.separator import (
    MAX_CHANNELS,
    SeparationResult,
    SeparationSettings,
    Separator,
    separate_each,
)
from lass.settings import add_setting_options, apply_options, given_options

PROG = "lass-separate"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".m4a", ".aac", ".opus",
                  ".wma", ".mp4", ".mkv", ".webm", ".mov")
SILENCE_DB = -90.0


EPILOG = """examples:
  lass-separate song.wav                         stems in separated/default/song/
  lass-separate songs/ -o stems --flac           every audio file under songs/, as FLAC
  lass-separate "live/*.m4a" --filename "{track}_{stem}.{ext}"
  lass-separate mix.wav -m toy                   another bundle (see --list-models)
  lass-separate digits/ -m mnist                 image mixtures (PNG): source_1.png, source_2.png
  lass-separate --list-models

the default model:
  The embedded default bundle separates drums and bass. It was trained on synthetic songs
  (procedural grooves and bass lines rendered with one General MIDI soundfont, FluidR3 GM)
  at 22.05 kHz mono: on such material its stems are clean; on real recordings expect the
  drums and bass to carry some of the other instruments. Inputs at any rate and with any
  number of channels (up to 8) are accepted; the stems have the input's rate, length and
  channels and add up to it.

environment:
  LASS_BUNDLES     a folder of bundles, found by name with -m
  LASS_NATIVE_DIR  where the C++ prior step is compiled (default ~/.cache/lass/native)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Separate audio files into stems with a LASS bundle. For each input, "
        "OUT/<bundle>/<track>/<stem>.wav and separation.json are written (the input's length, "
        "rate and channels; the stems add up to the input).")
    p.add_argument("inputs", nargs="*", help="audio files, folders or glob patterns")
    p.add_argument("-m", "--model", default=None,
                   help="bundle name or folder (default: the embedded default bundle; see "
                        "--list-models)")
    p.add_argument("-o", "--out", type=Path, default=Path("separated"),
                   help="output folder; stems go to OUT/<bundle>/... (default: separated)")
    p.add_argument("--filename", default="{track}/{stem}.{ext}", metavar="TEMPLATE",
                   help="where each stem goes under OUT/<bundle>, with {track}, {stem} and "
                        "{ext}; separation.json takes the stem name 'separation' (default: "
                        "{track}/{stem}.{ext})")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--flac", action="store_true", help="write FLAC (16 or 24 bit)")
    fmt.add_argument("--mp3", action="store_true",
                     help="write MP3 (LAME, constant bit rate, the highest the rate allows: "
                          "320 kbit/s at 44.1 and 48 kHz)")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--int16", action="store_true", help="write 16-bit samples")
    depth.add_argument("--int24", action="store_true", help="write 24-bit samples")
    depth.add_argument("--float32", action="store_true",
                       help="write 32-bit float samples (WAV only)")
    p.add_argument("--clip-mode", choices=CLIP_MODES, default="rescale",
                   help="stems that would clip in integer samples: scale all of a track's "
                        "stems down together, clamp each, or write them as they are "
                        "(default: rescale)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda "
                   "(default: auto)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads (default: 0, torch's choice)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="inputs of equal length and rate, up to N at a time, are searched as "
                        "one batch: faster per input on a CPU, the same stems (default: 8; "
                        "images: 256)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (they are off anyway when stderr is not a terminal)")
    p.add_argument("--list-models", action="store_true",
                   help="list the embedded bundles and those under $LASS_BUNDLES, and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    r = p.add_argument_group("research options", "the search and output of LASS; each "
                             "defaults to the bundle's setting")
    add_setting_options(r)
    r.add_argument("--no-verify", action="store_true", help="skip the bundle's sha256 checks")
    r.add_argument("--method", choices=["lass", "langevin", "posterior", "image"], default=None,
                   help="lass, langevin (Langevin with a bundle of WaveNet or flow priors) or "
                        "posterior (an amortised posterior); default: the bundle's")
    return p


def expand_inputs(items: Sequence[str], suffixes: Sequence[str] = AUDIO_SUFFIXES
                  ) -> tuple[list[Path], list[str]]:
    """Files named by ``items`` (files, folders: their files with one of ``suffixes``, globs)
    and the items that named none."""
    files: list[Path] = []
    missing: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes)
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


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Refuse settings out of range with one line, before any model is loaded or input read;
    the settings given (schema key -> value)."""
    if args.threads < 0:
        raise LassError(f"--threads must be 0 (torch's choice) or more, not {args.threads}")
    given = given_options(args)
    if "kind" in given or "num_beams" in given:  # a sampler value the sampler lacks
        apply_options(SeparationSettings(), given)
    return given


def _read(path: Path) -> tuple[np.ndarray, int]:
    """``(channels, time)`` and the rate of an audio file (libsndfile, else ffmpeg)."""
    wave, rate = read_any(path)
    if wave.shape[0] > MAX_CHANNELS:
        raise DataError(f"{path} has {wave.shape[0]} channels; at most {MAX_CHANNELS} are "
                        "separated")
    return wave, rate


def input_subtype(path: Path) -> str | None:
    """libsndfile's sample format of an input (``PCM_16``, ``FLOAT``, ...), None for what
    only ffmpeg reads."""
    try:
        return str(sf.info(str(path)).subtype)
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None


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


def list_models() -> list[dict[str, Any]]:
    """The embedded bundles and those under ``$LASS_BUNDLES``: name, where, stems, sample
    rate, size in MB and description (one entry per readable bundle)."""
    from lass.bundle import BUNDLE_FILE, BUNDLES_ENV, shipped_bundles

    folders = [("embedded", shipped_bundles())]
    if os.environ.get(BUNDLES_ENV):
        folders.append((f"${BUNDLES_ENV}", Path(os.environ[BUNDLES_ENV])))
    out: list[dict[str, Any]] = []
    for where, folder in folders:
        if not folder.is_dir():
            continue
        for d in sorted(folder.iterdir()):
            if not (d / BUNDLE_FILE).is_file():
                continue
            size = round(sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 1e6, 1)
            try:
                method = bundle_method(d)
                if method == "image":
                    from lass.images import read_image_bundle

                    image = read_image_bundle(d, verify=False)
                    out.append({"name": image.name, "where": where, "stems": list(image.stems),
                                "sample_rate": None, "mb": size,
                                "description": image.description})
                    continue
                spec: BundleSpec | LangevinBundleSpec | PosteriorBundleSpec = (
                    read_langevin_bundle(d, verify=False) if method == "langevin"
                    else read_posterior_bundle(d, verify=False) if method == "posterior"
                    else read_bundle(d, verify=False))
            except LassError as err:
                out.append({"name": d.name, "where": where, "error": str(err)})
                continue
            out.append({"name": spec.name, "where": where, "stems": list(spec.stems),
                        "sample_rate": spec.sample_rate, "mb": size,
                        "description": spec.description,
                        **({"method": method} if method != "lass" else {})})
    return out


def _print_models() -> None:
    models = list_models()
    if not models:
        print("no bundles found")
    for m in models:
        if "error" in m:
            print(f"{m['name']} ({m['where']}): unreadable: {m['error']}")
            continue
        rate = f"{m['sample_rate']} Hz" if m["sample_rate"] else "images"
        method = f"; {m['method']}" if m.get("method") else ""
        print(f"{m['name']} ({m['where']}): {', '.join(m['stems'])}; {rate}{method}; "
              f"{m['mb']} MB")
        if m["description"]:
            print(f"    {m['description']}")


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.list_models:
        _print_models()
        return 0
    if not args.inputs:
        raise LassError("no input given (audio or image files, folders or glob patterns)")
    if args.batch is not None and args.batch < 1:
        raise LassError(f"--batch must be at least 1, not {args.batch}")
    given = check_args(args)
    check_template(args.filename)
    output_format("flac" if args.flac else "mp3" if args.mp3 else "wav",
                  "float32" if args.float32 else None)  # refuses --float32 with --flac
    device = resolve_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    _check_out(args.out)
    method = bundle_method(args.model)
    if args.method is not None and args.method != method:
        raise LassError(f"--method {args.method}: the bundle separates with {method}")
    if method == "image":
        from lass.cli.separate_images import separate_images

        return separate_images(args, PROG, device)
    if args.batch is None:
        args.batch = 8
    files, missing = expand_inputs(args.inputs)
    failures = 0
    for item in missing:
        print(f"{PROG}: error: no audio file at {item}", file=sys.stderr)
        failures += 1
    if not files:
        raise DataError("nothing to separate")
    folders = track_folders(files)
    t0 = time.perf_counter()
    separator: Separator | LangevinSeparator | PosteriorSeparator
    settings: SeparationSettings | None = None
    settings_json: dict[str, Any]
    if method == "langevin":
        separator = LangevinSeparator.from_pretrained(args.model, device=device,
                                                      verify=not args.no_verify)
        settings_json = {"method": "langevin", **dataclasses.asdict(separator.schedule),
                         "seed": separator.seed}
    elif method == "posterior":
        separator = PosteriorSeparator.from_pretrained(args.model, device=device,
                                                       verify=not args.no_verify)
        settings_json = {"method": "posterior", "window": separator.window}
    else:
        separator = Separator.from_pretrained(args.model, device=device,
                                              verify=not args.no_verify)
        settings = apply_options(separator.settings, given)
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
    quiet = args.quiet or not sys.stderr.isatty()
    bar = tqdm(total=len(files), desc="separating", unit="file", file=sys.stderr,
               dynamic_ncols=True, disable=quiet)

    def load(path: Path) -> tuple[np.ndarray, int, np.ndarray]:
        nonlocal said_downmix
        wave, rate = _read(path)
        if wave.shape[0] > 1 and not said_downmix and not isinstance(separator, Separator):
            bar.write(f"{PROG}: multichannel input is downmixed to mono for {method} "
                      "separation", file=sys.stderr)
            said_downmix = True
        mono = wave.mean(axis=0)
        if rms_db(mono) < SILENCE_DB:
            raise DataError(f"{path} is silent: nothing to separate")
        return wave, rate, mono

    root = args.out / bundle_name
    container = "flac" if args.flac else "mp3" if args.mp3 else "wav"
    depth = "int16" if args.int16 else "int24" if args.int24 else \
        "float32" if args.float32 else None

    def write(path: Path, wave: np.ndarray, rate: int, mono: np.ndarray,
              result: SeparationResult, seconds: float, subtype_in: str | None) -> None:
        """A track's files, written aside and then renamed into place (see
        :func:`lass.output.save_stems`)."""
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
        _, clip = save_stems(result.stems, rate, root, folders[path].as_posix(),
                             template=args.filename, container=container, depth=depth,
                             input_subtype=subtype_in, clip_mode=args.clip_mode, info=info)
        if clip:
            bar.write(f"{PROG}: warning: {path.name}: {clip}", file=sys.stderr)

    def separate(waves: list[np.ndarray], rate: int) -> list[SeparationResult | LassError]:
        """Inputs ``(channels, time)`` -> their separations (stems ``(channels, time)``, or
        ``(time,)`` for one channel) or each one's error, with a bar in seconds of audio."""
        if not isinstance(separator, Separator):
            return separate_each(lambda some: separator.separate_many(
                [w.mean(axis=0) for w in some], rate, settings), waves)
        seconds = sum(w.shape[1] for w in waves) / rate
        audio = tqdm(total=round(seconds, 1), desc="  search", unit="s audio", file=sys.stderr,
                     dynamic_ncols=True, leave=False, disable=quiet,
                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s "
                     "of audio [{elapsed}<{remaining}]")

        def progress(done: float, total: float) -> None:
            audio.n = round(min(done, total), 1)
            audio.refresh()

        try:
            return separator.separate_each([w[0] if w.shape[0] == 1 else w for w in waves],
                                           rate, settings, progress)
        finally:
            audio.close()

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
            results = separate([w for _, w, _ in items], rate)
            seconds = (time.perf_counter() - start) / len(items)
            for (path, wave, mono), result in zip(items, results, strict=True):
                try:
                    if isinstance(result, LassError):
                        raise result
                    write(path, wave, rate, mono, result, seconds, input_subtype(path))
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
