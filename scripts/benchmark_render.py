"""Render speed of the synthetic drums+bass set: seconds of stem audio per second of wall time.

    python scripts/benchmark_render.py --hours 1 --repeats 3

Each repeat renders a fresh set (seeds 0, 1, ...) into a temporary folder with all cores and
prints its speed; the last line gives the median over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from lass.data.synth.build import SynthConfig, make_synth_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=1.0, help="hours of songs per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0: one per core)")
    args = p.parse_args()
    speeds = []
    for seed in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="lass-bench-") as tmp:
            start = time.perf_counter()
            summary = make_synth_dataset(SynthConfig(hours=args.hours, seed=seed),
                                         Path(tmp) / "set", jobs=args.jobs)
            wall = time.perf_counter() - start
        run = summary["last_run"]
        assert isinstance(run, dict)
        stem_seconds = 2 * float(run["song_seconds"])
        speeds.append(stem_seconds / wall)
        print(f"seed {seed}: {stem_seconds / 3600:.2f} h of stems ({args.hours:g} h of songs) "
              f"in {wall:.1f} s with {run['jobs']} jobs: {speeds[-1]:.0f}x real time")
    med = statistics.median(speeds)
    print(f"median {med:.0f}x real time (stem audio); 10 h of songs (20 h of stems) would take "
          f"{72000 / med / 60:.1f} min at this speed")


if __name__ == "__main__":
    main()
