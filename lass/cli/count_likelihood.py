"""``lass-count-likelihood``: count p(z_mix | z_1, ..., z_N) over a stem data set; print stats.

    lass-count-likelihood --codec runs/codec/model --data data/synth --sources drums bass \\
        --hours 20 --out counts.npz [--shard 0/4]
    lass-count-likelihood --codec runs/toy/codec/model --data data/toy \\
        --sources sine sawtooth square triangle --hours 2 --out counts4.npz
    lass-count-likelihood --stats counts.npz

Mixture ``n`` takes a random non-silent chunk of each of the N ``--sources`` (any tracks:
random re-pairing), each with a random gain in ``--gain-db``, mixes them with the data set's
rule, encodes all of them and counts every position's (mixture, source 1, ..., source N)
token tuple. The mixtures are a pure function of ``(--seed, n)``; shard ``i/n`` takes the
mixtures whose index is ``i`` modulo ``n``, so shards run anywhere and ``lass-merge-counts``
adds them. ``--symmetric`` draws every source from the union of the named stems and counts
every order (for a shared prior; ``--n-sources`` sets N). Progress is checkpointed to
``OUT.partial.npz``; a killed run started again resumes to the identical result.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lass.cli import run_cli
from lass.cli.common import dataset_mix_rule, resolve_device
from lass.data import StemDataset, chunk_samples, find_tracks, mix
from lass.errors import DataError
from likelihood import Counts, TupleCounter, load_counts, save_counts
from likelihood.counting import CounterState, matrix_to_keys
from vqvae import Codec, load_codec

PROG = "lass-count-likelihood"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--stats", type=Path, default=None, help="print the stats of a counts file")
    p.add_argument("--codec", type=Path, help="saved codec directory")
    p.add_argument("--data", type=Path, help="stem data set root")
    p.add_argument("--sources", nargs="+", default=["drums", "bass"])
    p.add_argument("--out", type=Path, help="counts file (.npz)")
    p.add_argument("--symmetric", action="store_true",
                   help="all sources from one pool, every order counted (shared prior)")
    p.add_argument("--n-sources", type=int, default=2,
                   help="sources per mixture with --symmetric (otherwise: one per --sources)")
    p.add_argument("--split", default="train")
    p.add_argument("--layout", default="auto")
    p.add_argument("--mix", default=None, help="mixing rule (default: the data set's, or mean)")
    p.add_argument("--hours", type=float, default=1.0, help="hours of mixtures (all shards)")
    p.add_argument("--chunk-seconds", type=float, default=3.0)
    p.add_argument("--gain-db", type=float, nargs=2, default=[-6.0, 0.0], metavar=("LO", "HI"))
    p.add_argument("--shard", default="0/1", help="i/n: count mixtures i, i+n, i+2n, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="mixtures encoded together")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    return p


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DataError(f"--shard must look like i/n, got {text!r}") from None
    if not 0 <= i < n:
        raise DataError(f"--shard {text}: need 0 <= i < n")
    return i, n


def print_stats(path: Path) -> None:
    """Print K, nonzeros, density, sizes and counted tokens of a counts file."""
    counts = load_counts(path)
    s = counts.stats()
    meta = counts.meta
    what = "pairs" if s["n_sources"] == 2 else f"{s['n_sources']}-tuples of sources"
    print(f"{path}: K {s['k']}, {s['n_sources']} sources, nonzeros {s['nonzeros']:,} (density "
          f"{s['density']:.3g}), {what} seen {s['pairs_seen']:,} of {s['tuples_possible']:,}")
    print(f"bytes: on disk {path.stat().st_size:,}; in memory (CSR) {s['bytes_in_memory']:,}; "
          f"dense int64 {s['bytes_dense_int64']:,} "
          f"({s['bytes_dense_int64'] / max(s['bytes_in_memory'], 1):,.0f}x larger)")
    entries = "triples" if s["n_sources"] == 2 else f"{s['n_sources'] + 1}-tuples"
    print(f"counted: {s['triples']:,} {entries} from {meta.get('mixtures', '?')} mixtures "
          f"({meta.get('seconds', 0) / 3600:.2f} h); sources {meta.get('sources')}, "
          f"symmetric {meta.get('symmetric')}, mix {meta.get('mix')}, shards "
          f"{meta.get('shards', [meta.get('shard')])}")


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


def _count(args: argparse.Namespace) -> int:
    for name in ("codec", "data", "out"):
        if getattr(args, name) is None:
            raise DataError(f"--{name} is required (or use --stats FILE)")
    shard_i, shard_n = _shard(args.shard)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if not args.symmetric and len(args.sources) < 2:
        raise DataError("--sources needs at least two stems (or --symmetric for one pool)")
    if len(set(args.sources)) != len(args.sources):
        raise DataError("--sources names a stem twice")
    n_sources = int(args.n_sources) if args.symmetric else len(args.sources)
    if n_sources < 2:
        raise DataError("--n-sources must be at least 2")
    codec: Codec = load_codec(args.codec, device=device)
    rule = dataset_mix_rule(args.data, args.mix)
    chunk = chunk_samples(args.chunk_seconds, codec.sample_rate)
    tracks = find_tracks(args.data, args.split, args.sources, args.layout)
    pools = [StemDataset(tracks, sample_rate=codec.sample_rate, chunk=chunk, stems=[s],
                         shuffle=False) for s in args.sources]
    plan = MixturePlan(pools, args.symmetric, tuple(args.gain_db), rule, args.seed, n_sources)
    total = max(1, math.ceil(args.hours * 3600 / args.chunk_seconds))
    mine = list(range(shard_i, total, shard_n))
    config: dict[str, Any] = {
        "k": codec.codebook_size, "codec_identity": codec.identity(), "mix": rule,
        "symmetric": bool(args.symmetric), "sources": list(args.sources),
        **({"n_sources": n_sources} if n_sources != 2 else {}),
        "data": {"root": str(args.data.resolve()), "split": args.split, "layout": args.layout,
                 "tracks": len(tracks)},
        "chunk_seconds": args.chunk_seconds, "gain_db": list(args.gain_db), "seed": args.seed,
        "hours": args.hours, "shard": args.shard}
    partial = args.out.with_name(args.out.name + ".partial.npz")
    counter, done = TupleCounter(codec.codebook_size, symmetric=args.symmetric, n=n_sources), 0
    if partial.is_file():
        saved = load_counts(partial)
        if saved.meta.get("config") == config:
            keys, counts = matrix_to_keys(saved.matrix)
            counter = TupleCounter.from_state(CounterState(
                codec.codebook_size, bool(args.symmetric), keys, counts,
                int(saved.meta["triples"]), n_sources))
            done = int(saved.meta["done"])
            print(f"{PROG}: resuming at mixture {done} of {len(mine)}", file=sys.stderr)

    def checkpoint(path: Path, finished: bool) -> None:
        meta = {**config, "triples": counter.triples, "mixtures": done,
                "seconds": done * args.chunk_seconds}
        if not finished:
            meta = {"config": config, "done": done, **meta}
        save_counts(path, Counts(counter.matrix(), meta))

    bar = tqdm(total=len(mine), initial=done, desc="counting", unit="mix", file=sys.stderr,
               dynamic_ncols=True)
    count_seconds, start, last_save = 0.0, time.perf_counter(), time.perf_counter()
    triples_before = counter.triples
    try:
        while done < len(mine):
            batch = mine[done: done + args.batch]
            sources = torch.stack([plan.sources(n) for n in batch])  # (b, N, time)
            mixture = mix(sources, rule, dim=1)
            with torch.no_grad():
                codes = codec.encode(torch.cat([mixture, *sources.unbind(1)]).to(
                    codec.device)).cpu().numpy()
            b = len(batch)
            t0 = time.perf_counter()
            counter.add(codes[:b], *(codes[(s + 1) * b: (s + 2) * b] for s in range(n_sources)))
            count_seconds += time.perf_counter() - t0
            done += b
            bar.update(b)
            new = counter.triples - triples_before
            wall = time.perf_counter() - start
            bar.set_postfix_str(f"{new / wall / 1e3:.0f}k tuples/s overall, counting "
                                f"{new / max(count_seconds, 1e-9) / 1e6:.0f}M/s")
            if time.perf_counter() - last_save > args.checkpoint_seconds and done < len(mine):
                checkpoint(partial, finished=False)
                last_save = time.perf_counter()
    finally:
        bar.close()
    t0 = time.perf_counter()
    counter.flush()
    count_seconds += time.perf_counter() - t0
    checkpoint(args.out, finished=True)
    partial.unlink(missing_ok=True)
    new = counter.triples - triples_before
    entries = "triples" if n_sources == 2 else f"{n_sources + 1}-tuples"
    print(f"wrote {args.out}: {counter.triples:,} {entries} from {done} mixtures; this run "
          f"counted {new:,} in {count_seconds:.2f} s of counting "
          f"({new / max(count_seconds, 1e-9) / 1e6:.1f}M/s) and "
          f"{time.perf_counter() - start:.1f} s in all")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.stats is not None:
        print_stats(args.stats)
        return 0
    return _count(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-count-likelihood``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
