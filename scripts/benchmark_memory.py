"""Peak memory of `lass-separate` on long inputs, and the quality of segmented output.

    python scripts/benchmark_memory.py --data data/band --seconds 180 600
    python scripts/benchmark_memory.py --data data/band --quality 4 --seconds

Memory: for each length, an input is made by joining drums+bass mixtures (the mean of the
two stems, mono, 22050 Hz) of the data set's test songs, and `lass-separate` runs on it with
the default bundle at its default settings, in a child process whose peak resident set size
(``ru_maxrss`` of ``wait4``, what ``/usr/bin/time -v`` reports as "Maximum resident set
size") is printed with the wall time and the ratio to the target (1.5 GB up to 180 s, 2 GB
beyond).

Quality: ``--quality N`` separates N whole test songs twice with the same search, once with
the output stage in one piece and once in segments of ``--segment`` seconds (the path
inputs longer than two segments take), and prints the plain SDR of each (drums and bass
against the songs' stems scaled by the mixing rule, mixture = mean of the two) and their
difference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

TARGET_GB = {180.0: 1.5}


def _songs(data: Path) -> list[Path]:
    return sorted(d for d in (data / "test").iterdir() if (d / "drums.wav").is_file())


def _mixture(track: Path) -> tuple[np.ndarray, np.ndarray, int]:
    drums, rate = sf.read(str(track / "drums.wav"), dtype="float32")
    bass, _ = sf.read(str(track / "bass.wav"), dtype="float32")
    sources = np.stack([drums, bass])
    return sources.mean(0), sources, int(rate)


def _long_input(data: Path, seconds: float, out: Path) -> None:
    parts, total, rate = [], 0, 22050
    for track in _songs(data):
        mixed, _, rate = _mixture(track)
        parts.append(mixed)
        total += mixed.shape[0]
        if total >= seconds * rate:
            break
    wave = np.concatenate(parts)[: int(seconds * rate)]
    if wave.shape[0] < int(seconds * rate):
        raise SystemExit(f"the test split holds less than {seconds} s")
    sf.write(str(out), wave, rate, subtype="PCM_16")


def _peak(cmd: list[str]) -> tuple[float, float, int]:
    """(peak RSS in GB, wall seconds, exit status) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return usage.ru_maxrss * 1024 / 1e9, wall, os.waitstatus_to_exitcode(status)


def memory(data: Path, lengths: list[float]) -> None:
    with tempfile.TemporaryDirectory(prefix="lass-mem-") as tmp:
        for seconds in lengths:
            wav = Path(tmp) / f"long{seconds:g}.wav"
            _long_input(data, seconds, wav)
            gb, wall, code = _peak(["lass-separate", str(wav), "-o", str(Path(tmp) / "out"),
                                    "-q"])
            target = TARGET_GB.get(seconds, 1.5 if seconds <= 180 else 2.0)
            print(f"{seconds:g} s input: peak {gb:.2f} GB (target {target} GB: "
                  f"{gb / target:.2f} of it), {wall:.0f} s wall, exit {code}", flush=True)


def quality(data: Path, songs: int, segment: float) -> None:
    from lass.evaluate import plain_sdr
    from lass.separator import Separator

    sep = Separator.from_pretrained("default")
    rows = []
    for track in _songs(data)[:songs]:
        mixed, sources, rate = _mixture(track)
        sep.segment_seconds = float("inf")
        whole = sep.separate(mixed, rate)
        sep.segment_seconds = segment
        assert sep.segmented(mixed.shape[0], rate, sep.settings)
        parts = sep.separate(mixed, rate)
        gain = 0.5  # stems are contributions to the mean of two sources
        sdr = [np.mean([plain_sdr(np.asarray(out[s]), gain * ref)
                        for s, ref in zip(sep.stems, sources, strict=True)])
               for out in (whole, parts)]
        rows.append(sdr)
        print(f"{track.name} ({mixed.shape[0] / rate:.0f} s): SDR whole {sdr[0]:.3f} dB, "
              f"segmented {sdr[1]:.3f} dB, difference {sdr[1] - sdr[0]:+.4f} dB", flush=True)
    mean = np.mean(rows, axis=0)
    print(f"mean over {len(rows)} songs: whole {mean[0]:.3f} dB, segmented {mean[1]:.3f} dB, "
          f"difference {mean[1] - mean[0]:+.4f} dB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="a data set with drums and bass")
    p.add_argument("--seconds", type=float, nargs="*", default=[180.0, 600.0])
    p.add_argument("--quality", type=int, default=0, metavar="N", help="test songs to compare")
    p.add_argument("--segment", type=float, default=5.0, help="segment seconds (--quality)")
    args = p.parse_args()
    if args.seconds:
        memory(args.data, args.seconds)
    if args.quality:
        quality(args.data, args.quality, args.segment)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
