"""Counting speed of the likelihood table (the counting step alone, codec excluded).

    python scripts/benchmark_counting.py --k 1024 --triples 50000000 --repeats 3

Token triples are drawn so that, as with a real codec, the mixture token mostly follows the
pair (a few thousand distinct mixtures per pair at most); they are fed to
``TripleCounter.add`` in batches the size the counting command uses (8 mixtures of 3 s,
1034 tokens each). Prints triples per second per run and the median, and the memory held by
the counter against a dense K^3 int64 table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from likelihood import TripleCounter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--triples", type=int, default=50_000_000)
    p.add_argument("--batch", type=int, default=8 * 1034)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--symmetric", action="store_true")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    pool = 4_000_000  # pre-drawn triples, cycled, so drawing is not timed
    i = (rng.zipf(1.3, pool) % args.k).astype(np.int64)
    j = (rng.zipf(1.3, pool) % args.k).astype(np.int64)
    m = ((i * 31 + j * 17) % args.k + rng.integers(0, 4, pool)) % args.k
    speeds = []
    for run in range(args.repeats):
        counter = TripleCounter(args.k, symmetric=args.symmetric)
        fed, start = 0, time.perf_counter()
        while fed < args.triples:
            s = fed % (pool - args.batch)
            counter.add(m[s: s + args.batch], i[s: s + args.batch], j[s: s + args.batch])
            fed += args.batch
        counter.flush()
        wall = time.perf_counter() - start
        speeds.append(counter.triples / wall)
        state = counter.state()
        held = state.keys.nbytes + state.counts.nbytes + 8 * (1 << 22)
        print(f"run {run}: {counter.triples / 1e6:.1f}M triples in {wall:.2f} s: "
              f"{speeds[-1] / 1e6:.1f}M triples/s; {state.keys.size:,} distinct; counter holds "
              f"{held / 2**20:.0f} MiB (dense K^3 int64: {8 * args.k**3 / 2**30:.0f} GiB)")
    print(f"median {statistics.median(speeds) / 1e6:.1f}M triples/s (one core)")


if __name__ == "__main__":
    main()
