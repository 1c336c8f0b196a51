"""``lass-make-dataset``: generate the synthetic data sets in the stem-folder layout.

    lass-make-dataset synth-drums-bass --hours 10 --seed 0 --out data/synth
    lass-make-dataset synth-band --hours 10 --seed 0 --out data/band
    lass-make-dataset toy --sources sine square --items 2000 --seed 0 --out data/toy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lass.cli import run_cli
from lass.data.audio import write_wav
from lass.data.synth.band_build import BandConfig, make_band_dataset
from lass.data.synth.build import SynthConfig, make_synth_dataset
from lass.data.synth.soundfonts import SOUNDFONTS
from lass.data.toy import TOY_SOURCES, ToyData
from lass.errors import DataError
from vqvae.files import write_text_atomic

PROG = "lass-make-dataset"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Generate a synthetic stem data set "
                                "(stem-folder layout: OUT/{train,valid,test}/<track>/<stem>.wav).")
    sub = p.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("synth-drums-bass", help="Slakh-style drums+bass rendered with FluidSynth",
                       description="Procedural drum grooves and bass lines rendered separately "
                       "with FluidSynth and the General MIDI soundfont. Resumes an interrupted "
                       "run in the same --out.")
    s.add_argument("--hours", type=float, required=True, help="total length of the songs")
    s.add_argument("--seed", type=int, default=0, help="the data set is a function of the seed")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--sample-rate", type=int, default=22050)
    s.add_argument("--jobs", type=int, default=0, help="worker processes (0: one per core)")
    s.add_argument("--soundfont", type=Path, default=None,
                   help="General MIDI .sf2 (default: Debian's FluidR3_GM or $LASS_SOUNDFONT)")
    defaults = BandConfig(hours=1.0)
    b = sub.add_parser("synth-band", help="drums, bass and other from many soundfonts, with "
                       "effects and a held-out-timbre split",
                       description="Songs with drums, bass and an other stem (chords, pads, "
                       "arpeggios, leads, counter-melodies), each stem rendered with a "
                       "soundfont drawn per song, then EQ, saturation, compression, reverb, "
                       "detune and a level. The --hold-out soundfonts never appear in train, "
                       "valid or test; the heldout split renders the test songs with them. "
                       "Resumes an interrupted run in the same --out.")
    b.add_argument("--hours", type=float, required=True,
                   help="total length of the train, valid and test songs")
    b.add_argument("--seed", type=int, default=0, help="the data set is a function of the seed")
    b.add_argument("--out", type=Path, required=True, help="output folder")
    b.add_argument("--sample-rate", type=int, default=22050)
    b.add_argument("--jobs", type=int, default=0, help="worker processes (0: one per core)")
    b.add_argument("--soundfonts", nargs="+", default=list(defaults.soundfonts),
                   choices=list(SOUNDFONTS), metavar="NAME",
                   help=f"soundfonts to draw from (default: all: {', '.join(SOUNDFONTS)})")
    b.add_argument("--hold-out", nargs="*", default=list(defaults.held_out), metavar="NAME",
                   help="soundfonts kept for the heldout split only (default: "
                   f"{' '.join(defaults.held_out)}; none: no heldout split)")
    t = sub.add_parser("toy", help="ToyData oscillators (sine, sawtooth, square, triangle)")
    t.add_argument("--sources", nargs="+", default=list(TOY_SOURCES), choices=TOY_SOURCES)
    t.add_argument("--items", type=int, default=1000, help="number of tracks in all splits")
    t.add_argument("--seconds", type=float, default=1.0, help="length of each track")
    t.add_argument("--sample-rate", type=int, default=22050)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, required=True)
    return p


def _synth(args: argparse.Namespace) -> int:
    config = SynthConfig(hours=args.hours, seed=args.seed, sample_rate=args.sample_rate)
    bars: list[tqdm[Any]] = []  # made at the first report, once every check has passed
    start = time.perf_counter()

    def progress(done: int, total: int, seconds: float) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="song", desc="rendering", file=sys.stderr,
                             dynamic_ncols=True))
        bar = bars[0]
        bar.n = done
        wall = time.perf_counter() - start
        if seconds > 0 and wall > 0:
            bar.set_postfix_str(f"{2 * seconds / wall:.0f}x real time (stems)")
        bar.refresh()

    try:
        summary = make_synth_dataset(config, args.out, jobs=args.jobs, progress=progress,
                                     soundfont=args.soundfont)
    finally:
        for bar in bars:
            bar.close()
    run = summary["last_run"]
    assert isinstance(run, dict)
    print(f"wrote {args.out}: songs {summary['songs']}, hours {summary['hours']}")
    if run["songs_rendered"]:
        print(f"rendered {run['songs_rendered']} songs ({run['song_seconds']:.0f} s per stem, "
              f"2 stems) in {run['wall_seconds']:.1f} s with {run['jobs']} jobs: "
              f"{run['stem_seconds_per_wall_second']}x real time (stem audio)")
    return 0


def _band(args: argparse.Namespace) -> int:
    config = BandConfig(hours=args.hours, seed=args.seed, sample_rate=args.sample_rate,
                        soundfonts=tuple(args.soundfonts), held_out=tuple(args.hold_out))
    bars: list[tqdm[Any]] = []

    def progress(done: int, total: int, seconds: float) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="song", desc="rendering", file=sys.stderr,
                             dynamic_ncols=True))
        bars[0].n = done
        bars[0].refresh()

    try:
        summary = make_band_dataset(config, args.out, jobs=args.jobs, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    run = summary["last_run"]
    assert isinstance(run, dict)
    print(f"wrote {args.out}: songs {summary['songs']}, hours {summary['hours']}, "
          f"other stem silent in {summary['other_silent']} songs")
    if run["songs_rendered"]:
        print(f"rendered {run['songs_rendered']} songs ({run['song_seconds']:.0f} s per stem, "
              f"3 stems) in {run['wall_seconds']:.1f} s with {run['jobs']} jobs: "
              f"{run['stem_seconds_per_wall_second']}x real time (stem audio)")
    return 0


def _toy(args: argparse.Namespace) -> int:
    if args.items < 3:
        raise DataError("--items must be at least 3 (one track per split)")
    length = round(args.seconds * args.sample_rate)
    data = ToyData(args.sources, length=length, sample_rate=args.sample_rate, size=args.items,
                   seed=args.seed)
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not (out / "dataset.json").is_file():
        raise DataError(f"output folder is not empty and holds no dataset.json: {out}")
    n_test = n_valid = max(1, args.items // 10)
    splits = np.array(["test"] * n_test + ["valid"] * n_valid
                      + ["train"] * (args.items - n_test - n_valid))
    for i in tqdm(range(args.items), desc="writing", unit="track", file=sys.stderr):
        chunk = data[i]
        for name, wave in zip(chunk.names, chunk.audio.numpy(), strict=True):
            write_wav(out / str(splits[i]) / chunk.track / f"{name}.wav", wave, args.sample_rate,
                      subtype="FLOAT")
    summary = {"kind": "toy", "sources": list(args.sources), "items": args.items,
               "seconds": args.seconds, "sample_rate": args.sample_rate, "seed": args.seed,
               "stems": list(args.sources), "layout": "folder", "mix": "mean", "complete": True}
    write_text_atomic(out / "dataset.json", json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.items} toy tracks to {out}")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.kind == "synth-drums-bass":
        return _synth(args)
    if args.kind == "synth-band":
        return _band(args)
    return _toy(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-make-dataset``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
