"""Beam-search speed: our batched sampler against a faithful re-implementation of the official loop.

    python scripts/benchmark_separation.py --bundle default --data data/synth --mixtures 2
    python scripts/benchmark_separation.py --mixtures 4 --beams 10 --seconds 3
    python scripts/benchmark_separation.py --bundle default --data data/synth --mixtures 8 \
        --batch-sizes 1 2 4 8
    python scripts/benchmark_separation.py --bundle default --data data/synth --mixtures 32 \
        --official-mixtures 4 --batch-sizes 1 8 32

The official LASS inference (REFERENCE.md) separates one mixture at a time: at every token
it calls the two priors one after the other with the beams as batch through the stock
``transformers`` forward (key/value caches grown by concatenation and reordered by copying),
takes the likelihood row of the mixture token from the sparse table, scores the nonzero
pairs, sorts all beam x candidate scores fully and keeps the best. Its score bug (all beams
sharing one score after step 0) is fixed here so that both searches must return the same
separations, which is checked in float32 and, since float32 sums taken in another order can
flip near-ties, in float64. Ours runs all mixtures x beams in one batch per step, a shared
prior's two sources in one call, with the lean Llama stepper
(:func:`lass.sampling.separate_tokens`).

All run on the same priors, likelihood and mixture tokens, interleaved (A, B, C, D, A, ...)
over ``--repeats``; the table gives the median seconds per mixture and the ratio. The official
loop takes the same time for every mixture (one at a time), so ``--official-mixtures`` may
time it on the first few only, while ours batches all of them. The
official loop has no windows, so the comparison is cut to the prior's context; the
real-time factor (seconds of compute per second of audio) is measured on one whole
``--seconds`` mixture alone, windows included. Without ``--bundle`` the priors are untrained
ones of the default prior size (context stretched to the mixture) and the likelihood a random
sparse table with three mixture tokens per pair: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from lass.sampling import BeamSearch, separate_tokens
from likelihood import CountLikelihood, Counts, load_counts
from priors import Prior, TransformerPrior, TransformerPriorConfig


@torch.no_grad()
def official_beam_search(mix: torch.Tensor, p1: Prior, p2: Prior, table: sp.csr_matrix,
                         log_p: np.ndarray, lam: float, beams: int,
                         classes: tuple[int | None, int | None] = (None, None)
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One mixture ``(tokens,)``; returns first ``(beams, tokens)``, second, scores."""
    k = p1.vocab_size
    c1, c2 = (None if c is None else torch.full((beams,), c) for c in classes)
    s1, s2 = p1.start(beams, c1), p2.start(beams, c2)
    hist1 = torch.zeros(beams, 0, dtype=torch.long)
    hist2 = torch.zeros(beams, 0, dtype=torch.long)
    total = torch.full((beams,), float("-inf"))
    total[0] = 0.0
    for t in range(mix.shape[0]):
        if t == 0:
            lp1, s1 = p1.step(None, s1)
            lp2, s2 = p2.step(None, s2)
        else:
            lp1, s1 = p1.step(hist1[:, -1], s1)
            lp2, s2 = p2.step(hist2[:, -1], s2)
        m = int(mix[t])
        lo, hi = table.indptr[m], table.indptr[m + 1]
        pairs = torch.from_numpy(table.indices[lo:hi].astype(np.int64))
        ll = torch.from_numpy(log_p[lo:hi])
        i, j = pairs // k, pairs % k
        scores = total[:, None] + lp1[:, i] + lp2[:, j] + lam * ll[None]  # (beams, C)
        flat = scores.reshape(-1)
        order = torch.sort(flat, descending=True).indices[:beams]  # full sort
        values = flat[order]
        if values.numel() < beams:
            order = torch.cat([order, order.new_zeros(beams - values.numel())])
            values = torch.cat([values, values.new_full((beams - values.numel(),),
                                                        float("-inf"))])
        parent, cand = order // i.numel(), order % i.numel()
        s1, s2 = p1.reorder(s1, parent), p2.reorder(s2, parent)
        hist1 = torch.cat([hist1[parent], i[cand][:, None]], dim=1)  # copied every step
        hist2 = torch.cat([hist2[parent], j[cand][:, None]], dim=1)
        total = values
    return hist1, hist2, total


def _encoded_mixtures(sep: Any, data: str, count: int, seconds: float, seed: int
                      ) -> torch.Tensor:
    """``(count, tokens)`` codec tokens of test mixtures (as ``lass-evaluate`` draws them)."""
    from lass.data import StemDataset, chunk_samples, find_tracks
    from lass.evaluate import evaluation_mixtures, mixture_of

    rate = sep.codec.sample_rate
    ds = StemDataset(find_tracks(data, "test", list(sep.stems), "auto"), sample_rate=rate,
                     chunk=chunk_samples(seconds, rate), stems=list(sep.stems))
    waves = np.stack([mixture_of(x.stems, sep.mix_rule)
                      for x in evaluation_mixtures(ds, count, seed)])
    return sep.codec.encode(torch.from_numpy(waves)).cpu()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="llama")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=1)
    p.add_argument("--mixtures", type=int, default=4)
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--token-rate", type=float, default=22050 / 64,
                   help="tokens per second without --bundle")
    p.add_argument("--codes", type=int, default=1024, help="codebook size without --bundle")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--lam", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--official-mixtures", type=int, default=0,
                   help="time the official loop (one mixture at a time) on only the first N "
                        "mixtures (0: all); the outputs of those N are compared")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                   help="also time ours with this many mixtures per batch (up to --mixtures), "
                        "per mixture, in the same interleaved rounds")
    p.add_argument("--bundle", default=None,
                   help="time a bundle's priors and likelihood (a shared prior is one call)")
    p.add_argument("--data", default=None,
                   help="with --bundle: encode test mixtures of this data set (else random "
                        "mixture tokens)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    classes: tuple[int | None, int | None] = (None, None)
    mixes: torch.Tensor | None = None
    if args.bundle:
        from lass.separator import Separator

        sep = Separator.from_pretrained(args.bundle)
        assert sep.bundle is not None
        b1, b2 = (sep.priors[s] for s in sep.stems)
        assert isinstance(b1, TransformerPrior)
        assert isinstance(b2, TransformerPrior)
        # The library's network for both (the official loop runs its forward and cache).
        p1 = b1.with_transformers()
        p2 = p1 if b2 is b1 else b2.with_transformers()
        classes = (sep.prior_classes.get(sep.stems[0]), sep.prior_classes.get(sep.stems[1]))
        # The bundle's counts, all of them and unsmoothed for both loops: the official loop
        # has no fallback for a mixture token whose candidates a min_count would remove.
        table_counts = load_counts(sep.bundle.likelihood).matrix
        lik = CountLikelihood(Counts(table_counts, {}))
        k, rate = sep.codec.codebook_size, sep.codec.sample_rate / sep.codec.hop_length
        if args.data:
            mixes = _encoded_mixtures(sep, args.data, args.mixtures, args.seconds, args.seed)
        print(f"bundle {args.bundle}: {'one shared prior' if p1 is p2 else 'two priors'}, "
              f"{sum(x.numel() for x in p1.parameters()) / 1e6:.2f}M parameters each call")
    else:
        k, rate = args.codes, args.token_rate
        cfg = TransformerPriorConfig(vocab_size=k, arch=args.arch, width=args.width,
                                     layers=args.layers, heads=args.heads,
                                     kv_heads=args.kv_heads,
                                     context_length=max(512, round(args.seconds * rate)))
        p1, p2 = TransformerPrior(cfg).eval(), TransformerPrior(cfg).eval()
        # A random sparse table: each pair (i, j) is seen with a few mixture tokens.
        per_pair = 3
        rows = rng.integers(0, k, k * k * per_pair)
        cols = np.repeat(np.arange(k * k), per_pair)
        table_counts = sp.csr_matrix((rng.integers(1, 20, rows.size), (rows, cols)),
                                     shape=(k, k * k))
        lik = CountLikelihood(Counts(table_counts, {}))
    cls = [None if c is None else torch.full((args.mixtures,), c) for c in classes]
    # The official loop reads the same normalised log-likelihood values in CSR order.
    m = sp.csr_matrix(table_counts, dtype=np.float64)
    m.sort_indices()
    totals = np.asarray(m.sum(axis=0)).ravel()
    log_p = np.log(m.data / totals[m.indices]).astype(np.float32)
    tokens = round(args.seconds * rate)
    if mixes is None:
        # random mixture tokens among those the table has seen
        seen = np.flatnonzero(np.diff(m.indptr))
        mixes = torch.from_numpy(seen[rng.integers(0, seen.size, (args.mixtures, tokens))])
    if mixes.shape[1] > p1.context_length:  # the official loop has no windows
        print(f"comparison cut to the prior's context: {p1.context_length} of "
              f"{mixes.shape[1]} tokens")
    solo_mix = mixes[:1]
    mixes = mixes[:, : p1.context_length]
    tokens = mixes.shape[1]
    seconds = tokens / rate
    search = BeamSearch(args.beams)

    def ours(x: torch.Tensor, a: Prior, b: Prior) -> Any:
        for q in (a, b):
            q.fast_decoding = True  # type: ignore[assignment]
        return separate_tokens(x, [a, b], lik, search, lam=args.lam,
                               classes=[None if c is None else c[: x.shape[0]] for c in cls])

    n_official = min(args.official_mixtures or args.mixtures, args.mixtures)

    def official(a: Prior, b: Prior) -> list[Any]:
        for q in (a, b):
            q.fast_decoding = False  # type: ignore[assignment]  # cache grown by concatenation
        return [official_beam_search(mixes[i], a, b, m, log_p, args.lam, args.beams, classes)
                for i in range(n_official)]

    def identical(x: Any, ys: list[Any]) -> int:
        """How many mixtures' best separations are the same in both."""
        return sum(bool(torch.equal(x.first[i, 0], y[0][int(y[2].argmax())])
                        and torch.equal(x.second[i, 0], y[1][int(y[2].argmax())]))
                   for i, y in enumerate(ys))

    ours(mixes[:, :8], p1, p2)  # warm-up
    official_beam_search(mixes[0, :8], p1, p2, m, log_p, args.lam, args.beams, classes)
    ours_t, official_t, alone_t, solo_t = [], [], [], []
    sizes = [n for n in args.batch_sizes if 1 <= n <= args.mixtures]
    batch_t: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(args.repeats):
        for size in sizes:
            start = time.perf_counter()
            ours(mixes[:size], p1, p2)
            batch_t[size].append((time.perf_counter() - start) / size)
        start = time.perf_counter()
        out = ours(mixes, p1, p2)
        ours_t.append((time.perf_counter() - start) / args.mixtures)
        start = time.perf_counter()
        results = official(p1, p2)
        official_t.append((time.perf_counter() - start) / n_official)
        start = time.perf_counter()
        ours(mixes[:1], p1, p2)
        alone_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours(solo_mix, p1, p2)
        solo_t.append(time.perf_counter() - start)
    same32 = identical(out, results)
    # Float32 sums in another order can flip near-ties of the beam scores; the same searches in
    # float64 show whether the two algorithms agree.
    q1 = copy.deepcopy(p1).double()
    q2 = q1 if p2 is p1 else copy.deepcopy(p2).double()
    same64 = identical(ours(mixes[:n_official], q1, q2), official(q1, q2))
    a, b = statistics.median(ours_t), statistics.median(official_t)
    solo = statistics.median(solo_t)
    solo_seconds = solo_mix.shape[1] / rate
    print(f"{args.mixtures} mixtures of {seconds:.2f} s ({tokens} tokens), {args.beams} beams, "
          f"K {k}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"best separations identical to the official loop's: float32 {same32} of "
          f"{n_official} mixtures, float64 {same64} of {n_official}")
    print("| sampler | s per mixture | ratio |")
    print("|---|---|---|")
    print(f"| official loop (score bug fixed) | {b:.2f} | 1.0x |")
    print(f"| ours, {args.mixtures} mixtures batched | {a:.2f} | {b / a:.1f}x |")
    alone = statistics.median(alone_t)
    print(f"| ours, one mixture alone | {alone:.2f} | {b / alone:.1f}x |")
    for size, times in batch_t.items():
        t = statistics.median(times)
        print(f"| ours, {size} mixtures per batch | {t:.2f} | {b / t:.1f}x |")
    print(f"one mixture of {solo_seconds:.2f} s alone ({solo_mix.shape[1]} tokens): {solo:.2f} s, "
          f"real-time factor {solo / solo_seconds:.2f}")


if __name__ == "__main__":
    main()
