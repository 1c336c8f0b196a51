"""``lass-merge-counts``: add counts shards into one table.

    lass-merge-counts shard-0.npz shard-1.npz ... --out counts.npz

The shards must come from the same codec, K, mixing rule, sources and symmetry.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lass.cli import run_cli
from likelihood import load_counts, merge_counts, save_counts

PROG = "lass-merge-counts"


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    merged = merge_counts([load_counts(path) for path in args.inputs])
    save_counts(args.out, merged)
    s = merged.stats()
    print(f"wrote {args.out}: {len(args.inputs)} shards, {s['triples']:,} triples, "
          f"{s['nonzeros']:,} nonzeros")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-merge-counts``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
