"""Prior-training speed: one process of T threads against T processes of one thread
(``torchrun``, gloo), the same global batch, interleaved rounds.

    python scripts/benchmark_distributed.py --codec runs/band/codec/model --data data/band \\
        --stem drums bass other --steps 30 --rounds 3

Each run is a fresh ``lass-train-prior`` (the default architecture, ``--batch``, context
512) on the data set's token cache (encoded once, before the first timed run); its speed is
the steps of the run over the wall time of its training loop (``summary.json``,
``last_run``: it includes the last step's validation on ``--valid-windows`` windows and the
checkpoint, the same for both). Prints the median steps per second of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(args: argparse.Namespace, processes: int, out: Path) -> float:
    """Steps per second of one training run with ``processes`` processes."""
    threads = args.threads if processes == 1 else 1
    cmd = ([sys.executable, "-m", "lass.cli.train_prior"] if processes == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(processes), "-m", "lass.cli.train_prior"])
    cmd += ["--codec", str(args.codec), "--data", str(args.data), "--stem", *args.stem,
            "--conditional", "--out", str(out), "--steps", str(args.steps), "--batch",
            str(args.batch), "--valid-windows", "2", "--threads", str(threads),
            "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    last = json.loads((out / "summary.json").read_text())["last_run"]
    return float(last["steps"]) / float(last["wall_seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codec", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--stem", nargs="+", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="T: threads of the one process and "
                                                          "processes of the other")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    speeds: dict[str, list[float]] = {"one": [], "many": []}
    with tempfile.TemporaryDirectory() as tmp:
        run(argparse.Namespace(**{**vars(args), "steps": 1}), 1, Path(tmp) / "warm")
        for r in range(args.rounds):
            for name, processes in (("one", 1), ("many", args.threads)):
                speed = run(args, processes, Path(tmp) / f"{name}{r}")
                speeds[name].append(speed)
                print(f"round {r}: {name:4s} ({processes} process(es)) {speed:.3f} steps/s",
                      flush=True)
    one, many = statistics.median(speeds["one"]), statistics.median(speeds["many"])
    print(f"1 process x {args.threads} threads: {one:.3f} steps/s; {args.threads} processes "
          f"x 1 thread: {many:.3f} steps/s; ratio (processes / threads) {many / one:.2f} "
          f"(medians of {args.rounds} rounds, batch {args.batch})")


if __name__ == "__main__":
    main()
