"""``lass-make-bundle``: put a codec, priors and counts together as a separator bundle.

    lass-make-bundle --codec runs/codec/model --prior drums=runs/prior-drums/model \\
        --prior bass=runs/prior-bass/model --likelihood counts.npz --out bundles/mine
    lass-make-bundle --codec runs/codec/model --shared-prior runs/prior/model \\
        --stems drums bass --likelihood counts.npz --out bundles/mine

Any number N >= 2 of stems: one ``--prior STEM=DIR`` each, or a shared prior with ``--stems
A B C ...``; the counts (and the token evidence model) must be for N sources.

Copies the components into ``--out`` (a new folder, written next to it and renamed into
place), checks that they fit together (codebook sizes, the codec the priors and counts were
made with, the prior's classes), and writes ``bundle.json`` with every sha256.
``lass-separate -m OUT`` then uses it. Every separation setting of ``lass-separate`` can be
given here as the bundle's default (``--sampler``, ``--beams``, ``--candidates``,
``--temperature``, ``--lam``, ``--combine``, ``--output``, ``--mask-fft``, ``--shifts``, ...);
``bundle.json`` records them all.
With ``--latent``, ``--likelihood`` is a ``lass-fit-latent`` model of the mixture's encoder
output instead of counts (``--prior-top``: the tokens per source whose pairs are scored,
default 16). ``--evidence FILE`` adds a ``lass-fit-evidence`` token evidence model, used
with the counts at ``--evidence-weight``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lass.bundle import make_bundle, read_bundle
from lass.cli import run_cli
from lass.errors import LassError
from lass.settings import (
    SeparationSettings,
    add_setting_options,
    apply_options,
    given_options,
)

PROG = "lass-make-bundle"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--codec", type=Path, required=True, help="saved codec directory")
    p.add_argument("--prior", action="append", default=[], metavar="STEM=DIR",
                   help="one prior per stem (give it once per stem)")
    p.add_argument("--shared-prior", type=Path, default=None,
                   help="one prior for every stem (class-conditioned when it has classes)")
    p.add_argument("--stems", nargs="+", default=None, help="stem names with --shared-prior")
    p.add_argument("--likelihood", type=Path, required=True,
                   help="counts file (.npz), or with --latent a lass-fit-latent model")
    p.add_argument("--latent", action="store_true",
                   help="--likelihood is a latent likelihood (lass-fit-latent)")
    p.add_argument("--smoothing", default="none",
                   choices=["none", "additive", "backoff", "factorised", "votes"])
    p.add_argument("--factorised", type=Path, default=None, metavar="FILE",
                   help="the lass-fit-likelihood model of --smoothing factorised")
    p.add_argument("--alpha", type=float, default=1.0, help="smoothing strength")
    p.add_argument("--min-count", type=int, default=1,
                   help="drop tuples counted fewer times (default 1: keep all)")
    p.add_argument("--mix", default="mean", choices=["mean", "sum"])
    p.add_argument("--name", default=None, help="bundle name (default: the folder name)")
    p.add_argument("--description", default="",
                   help="what the bundle separates and what it was trained on (shown by "
                        "lass-separate --list-models)")
    p.add_argument("--evidence", type=Path, default=None, metavar="FILE",
                   help="a lass-fit-evidence model of the same codec (the learned likelihood "
                        "added to the counts)")
    p.add_argument("--out", type=Path, required=True)
    add_setting_options(p.add_argument_group(
        "separation settings", "the bundle's defaults, each settable in lass-separate too "
        "(not given: the toolkit's default; the evidence weight is 1 with --evidence)"))
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    given = given_options(args)
    if args.evidence is not None and "evidence_weight" not in given:
        given["evidence_weight"] = 1.0
    settings = apply_options(SeparationSettings(), given, "the default sampler")
    priors: dict[str, str] = {}
    for item in args.prior:
        stem, sep, path = item.partition("=")
        if not sep or not stem or not path:
            raise LassError("give --prior STEM=DIR once for each stem (two or more)")
        if stem in priors:
            raise LassError("the --prior stems must differ")
        priors[stem] = path
    out = make_bundle(args.out, codec=args.codec, likelihood=args.likelihood, priors=priors,
                      shared_prior=args.shared_prior, stems=args.stems, latent=args.latent,
                      smoothing=args.smoothing, factorised=args.factorised, alpha=args.alpha,
                      min_count=args.min_count, mix=args.mix, name=args.name,
                      description=args.description, evidence=args.evidence, settings=settings)
    stems = read_bundle(out, verify=False).stems
    print(f"wrote {out}: stems {', '.join(stems)}; lass-separate -m {out} mix.wav")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-make-bundle``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
