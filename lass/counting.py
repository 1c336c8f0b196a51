"""Counting the likelihood p(z_mix | z_1, ..., z_N) over a stem data set, resumably.

:func:`count_likelihood` is what ``lass-count-likelihood`` runs: mixture ``n`` takes a random
non-silent chunk of each source (any tracks: random re-pairing), each with a random gain,
mixes them with the data set's rule, encodes all of them and counts every position's
(mixture, source 1, ..., source N) token tuple. The mixtures are a pure function of
``(seed, n)`` (:class:`MixturePlan`); shard ``i/n`` takes the mixtures whose index is ``i``
modulo ``n``, so shards run anywhere and add up. Progress is checkpointed to
``OUT.partial.npz``; a run started again resumes to the identical result.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lass.data import StemDataset, chunk_samples, find_tracks, mix
from lass.errors import DataError
from likelihood import Counts, TupleCounter, load_counts, save_counts
from likelihood.counting import CounterState, matrix_to_keys
from vqvae import Codec


class MixturePlan:
    """Mixture ``n`` as a pure function of ``(seed, n)``."""

    def __init__(self, pools: list[StemDataset], symmetric: bool, gain_db: tuple[float, float],
                 rule: str, seed: int, n_sources: int = 2) -> None:
        self.pools, self.symmetric, self.gain_db = pools, symmetric, gain_db
        self.rule, self.seed = rule, seed
        self.n_sources = n_sources if symmetric else len(pools)

    def sources(self, n: int) -> torch.Tensor:
        """``(N, time)``: the N gained sources of mixture ``n``."""
        rng = np.random.default_rng([self.seed, n])
        count = self.n_sources
        if self.symmetric:
            picks = [self.pools[int(rng.integers(len(self.pools)))] for _ in range(count)]
        else:
            picks = self.pools
        waves = [pool.random_kept_chunk(rng).audio[0] for pool in picks]
        gains = 10 ** (rng.uniform(*self.gain_db, size=count) / 20)
        return torch.stack([w * float(g) for w, g in zip(waves, gains, strict=True)])


def count_likelihood(codec: Codec, data: Path, sources: Sequence[str], out: Path, *,
                     rule: str = "mean", split: str = "train", layout: str = "auto",
                     hours: float = 1.0, chunk_seconds: float = 3.0,
                     gain_db: tuple[float, float] = (-6.0, 0.0), seed: int = 0,
                     shard: tuple[int, int] = (0, 1), batch: int = 8, symmetric: bool = False,
                     n_sources: int = 2, checkpoint_seconds: float = 60.0,
                     log_prefix: str = "lass-count-likelihood") -> Counts:
    """Count ``hours`` of mixtures of ``sources`` (shard ``shard = (i, n)`` of them) with
    ``codec`` and write the counts to ``out`` (resuming from ``OUT.partial.npz`` when its
    settings match); returns the counts. ``symmetric`` draws every source from the union of
    the named stems and counts every order, ``n_sources`` per mixture (for a shared prior)."""
    shard_i, shard_n = shard
    if not symmetric and len(sources) < 2:
        raise DataError("--sources needs at least two stems (or --symmetric for one pool)")
    if len(set(sources)) != len(sources):
        raise DataError("--sources names a stem twice")
    n_sources = int(n_sources) if symmetric else len(sources)
    if n_sources < 2:
        raise DataError("--n-sources must be at least 2")
    chunk = chunk_samples(chunk_seconds, codec.sample_rate)
    tracks = find_tracks(data, split, list(sources), layout)
    pools = [StemDataset(tracks, sample_rate=codec.sample_rate, chunk=chunk, stems=[s],
                         shuffle=False) for s in sources]
    plan = MixturePlan(pools, symmetric, (gain_db[0], gain_db[1]), rule, seed, n_sources)
    total = max(1, math.ceil(hours * 3600 / chunk_seconds))
    mine = list(range(shard_i, total, shard_n))
    config: dict[str, Any] = {
        "k": codec.codebook_size, "codec_identity": codec.identity(), "mix": rule,
        "symmetric": bool(symmetric), "sources": list(sources),
        **({"n_sources": n_sources} if n_sources != 2 else {}),
        "data": {"root": str(Path(data).resolve()), "split": split, "layout": layout,
                 "tracks": len(tracks)},
        "chunk_seconds": chunk_seconds, "gain_db": list(gain_db), "seed": seed,
        "hours": hours, "shard": f"{shard_i}/{shard_n}"}
    partial = out.with_name(out.name + ".partial.npz")
    counter, done = TupleCounter(codec.codebook_size, symmetric=symmetric, n=n_sources), 0
    if partial.is_file():
        saved = load_counts(partial)
        if saved.meta.get("config") == config:
            keys, counts = matrix_to_keys(saved.matrix)
            counter = TupleCounter.from_state(CounterState(
                codec.codebook_size, bool(symmetric), keys, counts,
                int(saved.meta["triples"]), n_sources))
            done = int(saved.meta["done"])
            print(f"{log_prefix}: resuming at mixture {done} of {len(mine)}", file=sys.stderr)

    def checkpoint(path: Path, finished: bool) -> Counts:
        meta = {**config, "triples": counter.triples, "mixtures": done,
                "seconds": done * chunk_seconds}
        if not finished:
            meta = {"config": config, "done": done, **meta}
        result = Counts(counter.matrix(), meta)
        save_counts(path, result)
        return result

    bar = tqdm(total=len(mine), initial=done, desc="counting", unit="mix", file=sys.stderr,
               dynamic_ncols=True)
    count_seconds, start, last_save = 0.0, time.perf_counter(), time.perf_counter()
    triples_before = counter.triples
    try:
        while done < len(mine):
            part = mine[done: done + batch]
            waves = torch.stack([plan.sources(n) for n in part])  # (b, N, time)
            mixture = mix(waves, rule, dim=1)
            with torch.no_grad():
                codes = codec.encode(torch.cat([mixture, *waves.unbind(1)]).to(
                    codec.device)).cpu().numpy()
            b = len(part)
            t0 = time.perf_counter()
            counter.add(codes[:b], *(codes[(s + 1) * b: (s + 2) * b] for s in range(n_sources)))
            count_seconds += time.perf_counter() - t0
            done += b
            bar.update(b)
            new = counter.triples - triples_before
            wall = time.perf_counter() - start
            bar.set_postfix_str(f"{new / wall / 1e3:.0f}k tuples/s overall, counting "
                                f"{new / max(count_seconds, 1e-9) / 1e6:.0f}M/s")
            if time.perf_counter() - last_save > checkpoint_seconds and done < len(mine):
                checkpoint(partial, finished=False)
                last_save = time.perf_counter()
    finally:
        bar.close()
    t0 = time.perf_counter()
    counter.flush()
    count_seconds += time.perf_counter() - t0
    result = checkpoint(out, finished=True)
    partial.unlink(missing_ok=True)
    new = counter.triples - triples_before
    entries = "triples" if n_sources == 2 else f"{n_sources + 1}-tuples"
    print(f"wrote {out}: {counter.triples:,} {entries} from {done} mixtures; this run "
          f"counted {new:,} in {count_seconds:.2f} s of counting "
          f"({new / max(count_seconds, 1e-9) / 1e6:.1f}M/s) and "
          f"{time.perf_counter() - start:.1f} s in all")
    return result
