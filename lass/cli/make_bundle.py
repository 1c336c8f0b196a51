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
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lass.bundle import write_bundle
from lass.cli import run_cli
from lass.data.audio import public_mode
from lass.errors import LassError
from lass.separator import check_mask_settings, shift_offsets
from lass.settings import (
    SeparationSettings,
    add_setting_options,
    apply_options,
    given_options,
    settings_to_bundle,
)
from likelihood import load_counts
from likelihood.evidence import TokenEvidence
from likelihood.factorised import FactorisedLikelihood
from likelihood.latent import LatentLikelihood
from priors import load_prior
from vqvae import load_codec

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
    out: Path = args.out
    if out.exists():
        raise LassError(f"{out} already exists; choose a new folder")
    codec = load_codec(args.codec)
    identity = codec.identity()
    classes: dict[str, int] = {}
    if args.shared_prior is not None:
        if args.prior:
            raise LassError("give either --prior STEM=DIR per stem or --shared-prior, not both")
        prior = load_prior(args.shared_prior)
        prior.check_codebook(codec.codebook_size, identity)
        names = prior.config.class_names
        stems = tuple(args.stems or names)
        if len(stems) < 2 or len(set(stems)) != len(stems):
            raise LassError("--shared-prior needs --stems A B ... (two or more distinct "
                            "stems, or a prior with as many classes)")
        if names:
            missing = [s for s in stems if s not in names]
            if missing:
                raise LassError(f"the shared prior has classes {', '.join(names)}; no class "
                                f"for {', '.join(missing)}")
            classes = {s: names.index(s) for s in stems}
        sources = {"prior": args.shared_prior}
        paths = {st: "prior" for st in stems}
    else:
        pairs = [item.split("=", 1) for item in args.prior]
        if len(pairs) < 2 or any(len(p) != 2 for p in pairs):
            raise LassError("give --prior STEM=DIR once for each stem (two or more)")
        stems = tuple(p[0] for p in pairs)
        if len(set(stems)) != len(stems):
            raise LassError("the --prior stems must differ")
        for _, path in pairs:
            load_prior(path).check_codebook(codec.codebook_size, identity)
        sources = {f"prior-{stem}": Path(path) for stem, path in pairs}
        paths = {stem: f"prior-{stem}" for stem, _ in pairs}
    if args.latent:
        if args.smoothing != "none" or args.factorised is not None or args.min_count > 1:
            raise LassError("--smoothing, --factorised and --min-count apply to counts, not "
                            "to a --latent likelihood")
        LatentLikelihood.load(args.likelihood).check_codec(codec.codebook_size, identity)
    else:
        counts = load_counts(args.likelihood)
        if counts.n_sources != len(stems):
            raise LassError(f"the counts are of {counts.n_sources} sources but {len(stems)} "
                            "stems are named")
        if counts.k != codec.codebook_size:
            raise LassError(f"the counts have K = {counts.k} but the codec has "
                            f"{codec.codebook_size} codes")
        made_with = counts.meta.get("codec_identity")
        if made_with and made_with != identity:
            raise LassError("the counts were made with another codec (identity "
                            f"{str(made_with)[:12]}, codec {identity[:12]})")
        if (args.smoothing == "factorised") != (args.factorised is not None):
            raise LassError("--smoothing factorised and --factorised FILE go together")
        if args.factorised is not None:
            FactorisedLikelihood.load(args.factorised).check_fits(counts)
    given = given_options(args)
    if args.evidence is not None and "evidence_weight" not in given:
        given["evidence_weight"] = 1.0
    settings = apply_options(SeparationSettings(), given, "the default sampler")
    check_mask_settings(settings.mask_fft, settings.mask_iterations)
    shift_offsets(settings.shifts, codec.hop_length)
    if settings.evidence_weight > 0 and args.evidence is None:
        raise LassError("--evidence-weight needs --evidence FILE")
    if args.evidence is not None:
        if args.latent:
            raise LassError("--evidence adds to counts, not to a --latent likelihood")
        model = TokenEvidence.load(args.evidence)
        model.check_codec(codec.codebook_size, codec.embedding_dim, identity)
        if model.n_sources != len(stems):
            raise LassError(f"the token evidence model predicts {model.n_sources} sources but "
                            f"{len(stems)} stems are named")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(args.codec, tmp / "codec")
        for name, src in sources.items():
            shutil.copytree(src, tmp / name)
        shutil.copy2(args.likelihood, tmp / "likelihood.npz")
        if args.factorised is not None:
            shutil.copy2(args.factorised, tmp / "likelihood-factorised.npz")
        if args.evidence is not None:
            shutil.copy2(args.evidence, tmp / "evidence.npz")
        write_bundle(tmp, name=args.name or out.name, sample_rate=codec.sample_rate,
                     stems=stems, mix=args.mix, codec="codec", priors=paths,
                     likelihood="likelihood.npz", smoothing=args.smoothing,
                     likelihood_kind="latent" if args.latent else "counts",
                     alpha=args.alpha, min_count=args.min_count, prior_classes=classes or None,
                     likelihood_base=("likelihood-factorised.npz" if args.factorised else None),
                     evidence="evidence.npz" if args.evidence is not None else None,
                     description=args.description,
                     sampler=settings_to_bundle(settings))
        for f in [tmp, *tmp.rglob("*")]:  # readable as any new file is, not 0600 / 0700
            f.chmod(public_mode(directory=f.is_dir()))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}: stems {', '.join(stems)}; lass-separate -m {out} mix.wav")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-make-bundle``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
