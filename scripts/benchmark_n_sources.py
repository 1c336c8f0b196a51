"""Search speed against the number of sources: seconds per mixture for N = 2, 3, 4.

    python scripts/benchmark_n_sources.py --seconds 1 --repeats 3

One shared class-conditioned prior of the `toy` bundle's size (Llama-style, 3 layers, width
192, 4 heads, 1 key/value head; untrained: speed does not depend on the weights), a random
sparse counts table per N (``--tuples`` counted tuples per mixture token, drawn at random)
with the ``votes`` smoothing, and random mixture tokens at the toy codec's rate (344.5
tokens per second). Each search runs beam search (``--beams``) and ancestral sampling
(``--samples``) with a ``prior_top`` grid of 16 (4 tokens per source for N = 4); the N are
interleaved over ``--repeats`` and the table gives the median seconds per mixture of
``--mixtures`` mixtures searched as one batch, on this machine's CPU threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lass.sampling import Ancestral, BeamSearch, separate_tokens
from likelihood import CountLikelihood, Counts, TupleCounter
from priors import TransformerPrior, TransformerPriorConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=512)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--mixtures", type=int, default=4)
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--tuples", type=int, default=300, help="counted tuples per mixture token")
    p.add_argument("--sources", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    k = args.k
    tokens = round(args.seconds * 22050 / 64)
    names = tuple(f"s{i}" for i in range(max(args.sources)))
    torch.manual_seed(0)
    prior = TransformerPrior(TransformerPriorConfig(vocab_size=k, context_length=256,
                                                    class_names=names, width=192, layers=3,
                                                    heads=4, kv_heads=1)).eval()
    prior.prepare()
    rng = np.random.default_rng(0)
    likelihoods = {}
    for n in args.sources:
        counter = TupleCounter(k, n=n)
        size = k * args.tuples
        counter.add(np.repeat(np.arange(k), args.tuples),
                    *(rng.integers(0, k, size) for _ in range(n)))
        likelihoods[n] = CountLikelihood(Counts(counter.matrix(), {"n_sources": n}), "votes")
    mix = torch.from_numpy(rng.integers(0, k, (args.mixtures, tokens)))
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.repeats):
        for n in args.sources:
            classes = [torch.full((args.mixtures,), s) for s in range(n)]
            for name, sampler, samples in (("beam", BeamSearch(args.beams), 1),
                                           ("ancestral", Ancestral(), args.samples)):
                start = time.perf_counter()
                separate_tokens(mix, [prior] * n, likelihoods[n], sampler, lam=1.0,
                                classes=classes, num_samples=samples, prior_top=16,
                                generator=torch.Generator().manual_seed(0))
                times.setdefault((n, name), []).append(
                    (time.perf_counter() - start) / args.mixtures)
    print(f"| sources | beam search ({args.beams} beams), s/mixture | ancestral "
          f"({args.samples} samples), s/mixture |\n|---|---|---|")
    for n in args.sources:
        print(f"| {n} | {statistics.median(times[n, 'beam']):.2f} | "
              f"{statistics.median(times[n, 'ancestral']):.2f} |")
    print(f"({args.mixtures} mixtures of {args.seconds:g} s, {tokens} tokens, one batch; "
          f"median of {args.repeats}; {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
