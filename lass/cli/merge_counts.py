"""``lass-merge-counts``: add counts shards into one table.

    lass-merge-counts shard-0.npz shard-1.npz ... --out counts.npz

The shards must come from the same codec, K, mixing rule, sources and symmetry; the same
shard twice is refused, and so is a run split with ``--shard i/n`` that misses some of its
shards (they are named; ``--partial`` merges a part knowingly). With
``--min-count M`` the merged table drops the tuples counted fewer than M times and keeps each
source's pair counts of the whole table (what the ``votes`` smoothing reads): a smaller file
to ship, which no longer merges (one input prunes it alone).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lass.cli import run_cli
from likelihood import LikelihoodError, load_counts, merge_counts, save_counts
from likelihood.table import prune_counts

PROG = "lass-merge-counts"


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--min-count", type=int, default=1, metavar="M",
                   help="drop tuples counted fewer than M times (keeping each source's pair "
                        "counts)")
    p.add_argument("--partial", action="store_true",
                   help="merge although some shards of a counting run are missing")
    args = p.parse_args(argv)
    paths = [path.resolve() for path in args.inputs]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise LikelihoodError(f"{args.inputs[i]} is given twice: merging it twice would "
                                  "double its counts")
    merged = merge_counts([load_counts(path) for path in args.inputs], partial=args.partial)
    if args.min_count > 1:
        merged = prune_counts(merged, args.min_count)
    save_counts(args.out, merged)
    s = merged.stats()
    pruned = f" (tuples counted fewer than {args.min_count} times dropped)" \
        if args.min_count > 1 else ""
    print(f"wrote {args.out}: {len(args.inputs)} shards, {s['triples']:,} triples, "
          f"{s['nonzeros']:,} nonzeros{pruned}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-merge-counts``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
