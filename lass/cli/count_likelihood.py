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
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lass.cli import run_cli
from lass.cli.common import dataset_mix_rule, resolve_device
from lass.counting import count_likelihood
from lass.errors import DataError
from likelihood import load_counts
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


def _count(args: argparse.Namespace) -> int:
    for name in ("codec", "data", "out"):
        if getattr(args, name) is None:
            raise DataError(f"--{name} is required (or use --stats FILE)")
    shard = _shard(args.shard)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    codec: Codec = load_codec(args.codec, device=device)
    count_likelihood(codec, args.data, args.sources, args.out,
                     rule=dataset_mix_rule(args.data, args.mix), split=args.split,
                     layout=args.layout, hours=args.hours, chunk_seconds=args.chunk_seconds,
                     gain_db=tuple(args.gain_db), seed=args.seed, shard=shard,
                     batch=args.batch, symmetric=args.symmetric, n_sources=args.n_sources,
                     checkpoint_seconds=args.checkpoint_seconds, log_prefix=PROG)
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
