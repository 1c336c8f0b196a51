"""``lass-separate`` as a user runs it: real-time factors over rounds, optionally against
another checkout of the toolkit, interleaved (A, B, A, B, ...).

    python scripts/benchmark_cli.py --rounds 12 -- --sampler beam --beams 10 --shifts 1 \
        --combine best
    python scripts/benchmark_cli.py --rounds 6 --baseline /tmp/base

Each round runs ``python -m lass.cli.separate INPUT -o OUT ARGS...`` in a fresh process
from each checkout's root (so that each imports its own code: ``-m`` puts the working
directory first on the module path) and reads the timings its ``separation.json`` records:
search, total (encode, search, decode and output) and the real-time factor (total over the
input's duration; imports and model loading are not in it, the wall time of the command
is). INPUT is the first ``--seconds`` of ``--audio`` (the README's example mixture by
default). The table gives medians and ranges; with ``--baseline`` also the median of the
per-round ratios (this checkout over the baseline) and whether both wrote the same stems
(sha256 of the stem files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("search", "total", "real_time_factor", "wall")


def run_once(root: Path, audio: Path, out: Path, args: list[str]) -> dict[str, float | str]:
    """One ``lass-separate`` run from checkout ``root``: its timings, wall time and stems'
    hash."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lass.cli.separate", str(audio), "-o",
                           str(out), *args], cwd=root, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lass-separate failed in {root}: {done.stderr.strip()[-400:]}")
    report = next(out.rglob("separation.json"))
    timings = json.loads(report.read_text())["timings"]
    digest = hashlib.sha256()
    for stem in sorted(report.parent.glob("*.wav")):
        digest.update(stem.read_bytes())
    return {"search": float(timings["search"]), "total": float(timings["total"]),
            "real_time_factor": float(timings["real_time_factor"]), "wall": wall,
            "stems": digest.hexdigest()[:12]}


def summary(runs: list[dict[str, float | str]]) -> str:
    """``median (min-max)`` of each timing."""
    cells = []
    for f in FIELDS:
        values = [float(r[f]) for r in runs]
        cells.append(f"{statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f})")
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio", type=Path, default=ROOT / "examples" / "mix.wav")
    p.add_argument("--seconds", type=float, default=3.0, help="the input: the first seconds")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout of the toolkit (e.g. a git worktree)")
    p.add_argument("args", nargs="*", help="lass-separate's options, after --")
    a = p.parse_args(argv)
    roots = {"this": ROOT} | ({"baseline": a.baseline.resolve()} if a.baseline else {})
    runs: dict[str, list[dict[str, float | str]]] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory() as tmp:
        wave, rate = sf.read(str(a.audio), dtype="float32")
        cut = Path(tmp) / "input.wav"
        sf.write(str(cut), wave[: int(a.seconds * rate)], rate)
        for r in range(a.rounds):
            for name, root in roots.items():
                got = run_once(root, cut, Path(tmp) / f"out-{name}-{r}", a.args)
                runs[name].append(got)
                print(f"round {r + 1} {name}: real-time factor {got['real_time_factor']:.3f}",
                      file=sys.stderr, flush=True)
    print(f"lass-separate {a.seconds:g} s of {a.audio.name} {' '.join(a.args)}, {a.rounds} "
          "rounds, medians (ranges)")
    print("| checkout | search s | total s | real-time factor | wall s |")
    print("|---|---|---|---|---|")
    for name, done in runs.items():
        print(f"| {name} | {summary(done)} |")
    rtf = [float(r["real_time_factor"]) for r in runs["this"]]
    print(f"this checkout: real-time factor below 1 in {sum(v < 1 for v in rtf)} of {len(rtf)}")
    if "baseline" in runs:
        ratios = {f: statistics.median(float(x[f]) / float(y[f]) for x, y in
                                       zip(runs["this"], runs["baseline"], strict=True))
                  for f in FIELDS}
        faster = sum(float(x["total"]) < float(y["total"])
                     for x, y in zip(runs["this"], runs["baseline"], strict=True))
        same = {str(r["stems"]) for done in runs.values() for r in done}
        print("per-round ratio this / baseline, median: " + ", ".join(
            f"{f} {v:.3f}" for f, v in ratios.items()) + f"; this faster in {faster} of "
            f"{a.rounds}; stems {'identical' if len(same) == 1 else 'differ: ' + str(same)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
