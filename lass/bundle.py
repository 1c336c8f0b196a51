"""Separator bundles: a directory with ``bundle.json`` naming a codec, priors and a likelihood.

A bundle names N >= 2 stems, one prior entry each; its likelihood (and token evidence model)
must be for N sources. ``-m NAME`` finds a bundle folder, a name under ``$LASS_BUNDLES``, or a
bundle shipped inside the package (``default``, ``toy``).

``bundle.json``::

    {"format_version": 1, "name": "...", "sample_rate": 22050, "stems": ["drums", "bass"],
     "mix": "mean",
     "codec": {"path": "codec", "sha256": "..."},
     "priors": {"drums": {"path": "prior-drums", "sha256": "..."}, "bass": {...}},
     "likelihood": {"path": "likelihood.npz", "sha256": "...", "smoothing": "none"},
     "sampler": {"kind": "beam", "num_beams": 10, "lam": 3.0, "output": "mask"}}

The likelihood entry may add ``"alpha"`` (the smoothing strength, default 1) and
``"min_count"`` (triples counted fewer times are dropped, default 1); with
``"smoothing": "factorised"`` it names the fitted model, ``"base": {"path": ...,
"sha256": ...}`` (see :mod:`likelihood.factorised`). ``"kind": "latent"`` names a
:class:`likelihood.latent.LatentLikelihood` file instead of counts (no smoothing). The
sampler entry holds the separation settings, every key of :data:`lass.settings.SCHEMA`
(a key it lacks takes the toolkit's default).

:func:`make_bundle` assembles a bundle from its parts after checking that they fit
together; ``lass-make-bundle`` is its command line.

Paths are relative to the bundle; a shared prior is listed under each stem (with an optional
``"class"`` index for a class-conditioned one). The sha256 of a directory is taken over its
files' relative paths and contents in sorted order. Loading checks every hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lass.errors import LassError
from vqvae.files import write_dir_atomically, write_text_atomic

SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._ -]*")
FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
LIKELIHOOD_KINDS = ("counts", "latent")
#: Environment variable naming a folder of bundles (``<folder>/<name>/bundle.json``).
BUNDLES_ENV = "LASS_BUNDLES"


class BundleError(LassError):
    """A bundle is missing, incomplete, or a component's hash does not match."""


def sha256_path(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a directory's files (relative paths and bytes, sorted)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if not p.is_dir():
        raise BundleError(f"bundle component not found: {p}")
    for f in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(f.relative_to(p).as_posix()).encode() + b"\0")
        h.update(bytes.fromhex(sha256_path(f)))
    return h.hexdigest()


def default_bundle_path() -> Path:
    """Directory of the embedded default bundle (inside the installed package)."""
    return shipped_bundles() / "default"


def shipped_bundles() -> Path:
    """The folder of the bundles shipped inside the package (``default``, ``toy``, ...)."""
    return Path(__file__).resolve().parent / "bundles"


@dataclass(frozen=True)
class BundleSpec:
    """A parsed ``bundle.json`` with absolute component paths."""

    root: Path
    name: str
    sample_rate: int
    stems: tuple[str, ...]
    mix: str
    codec: Path
    priors: dict[str, Path]
    prior_classes: dict[str, int | None]
    likelihood: Path
    smoothing: str
    sampler: dict[str, Any]
    sha256: str
    smoothing_alpha: float = 1.0
    min_count: int = 1
    likelihood_base: Path | None = None
    likelihood_kind: str = "counts"
    evidence: Path | None = None
    description: str = ""


def resolve_bundle(name_or_path: str | os.PathLike[str] | None) -> Path:
    """A bundle directory: a path, a name under ``$LASS_BUNDLES``, or the default (None)."""
    if name_or_path is None or str(name_or_path) == "default":
        root = default_bundle_path()
        if not (root / BUNDLE_FILE).is_file():
            raise BundleError("no default bundle is installed in this version; pass -m with a "
                              "bundle directory (see checkpoints.md)")
        return root
    p = Path(name_or_path)
    if (p / BUNDLE_FILE).is_file():
        return p
    folder = os.environ.get(BUNDLES_ENV)
    if folder and (Path(folder) / str(name_or_path) / BUNDLE_FILE).is_file():
        return Path(folder) / str(name_or_path)
    name = str(name_or_path)
    if SAFE_NAME.fullmatch(name) and (shipped_bundles() / name / BUNDLE_FILE).is_file():
        return shipped_bundles() / name
    raise BundleError(f"bundle not found: {name_or_path} (no {BUNDLE_FILE} there"
                      f"{' or under $' + BUNDLES_ENV if folder else ''})")


def _check_names(path: Path, name: str, stems: Sequence[str]) -> None:
    """Refuse a bundle name or stem that is not a plain name: both become folder and file
    names of outputs."""
    for what, value in (("name", name), *(("stem", st) for st in stems)):
        if not SAFE_NAME.fullmatch(value):
            raise BundleError(f"{path}: the bundle's {what} {value!r} is not a plain name "
                              "(letters, digits, spaces, '.', '_', '-'; not starting with '.')")


def _check_rate(path: Path, rate: Any) -> int:
    """A bundle's ``sample_rate`` entry, which must be a positive integer."""
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise BundleError(f"{path}: sample_rate must be a positive integer, not {rate!r}")
    return rate


def read_bundle(name_or_path: str | os.PathLike[str] | None, verify: bool = True) -> BundleSpec:
    """Parse a bundle and (by default) check the sha256 of every component."""
    root = resolve_bundle(name_or_path)
    path = root / BUNDLE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read {path}: {err}") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: unsupported bundle format")
    try:
        stems = tuple(str(s) for s in raw["stems"])
        components = {"codec": raw["codec"], "likelihood": raw["likelihood"],
                      **{f"prior {s}": raw["priors"][s] for s in stems},
                      **({"factorised likelihood": raw["likelihood"]["base"]}
                         if "base" in raw["likelihood"] else {}),
                      **({"token evidence": raw["evidence"]} if "evidence" in raw else {})}
    except (KeyError, TypeError) as err:
        raise BundleError(f"{path}: missing entry {err}") from None
    name = str(raw.get("name", root.name))
    _check_names(path, name, stems)
    if len(stems) < 2 or len(set(stems)) != len(stems):
        raise BundleError(f"{path}: a LASS bundle separates two or more distinct stems, got "
                          f"{list(stems)}")
    if raw["likelihood"].get("kind", "counts") not in LIKELIHOOD_KINDS:
        raise BundleError(f"{path}: unknown likelihood kind {raw['likelihood'].get('kind')!r}; "
                          f"expected one of {', '.join(LIKELIHOOD_KINDS)}")
    if verify:
        for what, entry in components.items():
            got = sha256_path(root / entry["path"])
            if entry.get("sha256") and got != entry["sha256"]:
                raise BundleError(f"{path}: the {what} ({entry['path']}) does not match its "
                                  f"sha256 (file {got[:12]}, bundle {entry['sha256'][:12]}): "
                                  "corrupt or modified")
    rate, min_count = _check_rate(path, raw.get("sample_rate")), raw["likelihood"].get(
        "min_count", 1)
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise BundleError(f"{path}: the likelihood's min_count must be an integer >= 1, not "
                          f"{min_count!r}")
    if not isinstance(raw.get("sampler", {}), dict):
        raise BundleError(f"{path}: the sampler must be an object, not {raw['sampler']!r}")
    if not isinstance(raw.get("description", ""), str):
        raise BundleError(f"{path}: the description must be a string")
    return BundleSpec(
        root=root, name=name, sample_rate=rate,
        stems=stems, mix=str(raw.get("mix", "mean")), codec=root / raw["codec"]["path"],
        priors={s: root / raw["priors"][s]["path"] for s in stems},
        prior_classes={s: raw["priors"][s].get("class") for s in stems},
        likelihood=root / raw["likelihood"]["path"],
        smoothing=str(raw["likelihood"].get("smoothing", "none")),
        smoothing_alpha=float(raw["likelihood"].get("alpha", 1.0)),
        min_count=int(raw["likelihood"].get("min_count", 1)),
        likelihood_base=(root / raw["likelihood"]["base"]["path"]
                         if "base" in raw["likelihood"] else None),
        likelihood_kind=str(raw["likelihood"].get("kind", "counts")),
        evidence=root / raw["evidence"]["path"] if "evidence" in raw else None,
        sampler=dict(raw.get("sampler", {})), sha256=sha256_path(path),
        description=str(raw.get("description", "")))


@dataclass(frozen=True)
class LangevinBundleSpec:
    """A parsed Langevin bundle (``"method": "langevin"``): one WaveNet prior per stem and
    the annealing schedule's settings (see :class:`lass.langevin.LangevinSeparator`)."""

    root: Path
    name: str
    sample_rate: int
    stems: tuple[str, ...]
    mix: str
    priors: dict[str, Path]
    langevin: dict[str, Any]
    sha256: str
    description: str = ""


@dataclass(frozen=True)
class PosteriorBundleSpec:
    """A parsed posterior bundle (``"method": "posterior"``): an amortised posterior (see
    :class:`lass.posterior.PosteriorSeparator`)."""

    root: Path
    name: str
    sample_rate: int
    stems: tuple[str, ...]
    mix: str
    posterior: Path
    sha256: str
    description: str = ""


METHODS = ("lass", "langevin", "posterior", "image")


def bundle_method(name_or_path: str | os.PathLike[str] | None) -> str:
    """How a bundle separates: ``"lass"``, ``"langevin"``, ``"posterior"`` or ``"image"``
    (its ``method`` entry)."""
    path = resolve_bundle(name_or_path) / BUNDLE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read {path}: {err}") from None
    method = raw.get("method", "lass") if isinstance(raw, dict) else None
    if method not in METHODS:
        raise BundleError(f"{path}: unknown method {method!r}; expected {', '.join(METHODS)}")
    return str(method)


def read_posterior_bundle(name_or_path: str | os.PathLike[str] | None, verify: bool = True
                          ) -> PosteriorBundleSpec:
    """Parse a posterior bundle and (by default) check the posterior's sha256."""
    root = resolve_bundle(name_or_path)
    path = root / BUNDLE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        stems = tuple(str(s) for s in raw["stems"])
        entry = raw["posterior"]
        folder = root / entry["path"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"cannot read {path}: {err}") from None
    if raw.get("method") != "posterior":
        raise BundleError(f"{path} is not a posterior bundle (method "
                          f"{raw.get('method', 'lass')!r})")
    name = str(raw.get("name", root.name))
    _check_names(path, name, stems)
    if verify and entry.get("sha256") and sha256_path(folder) != entry["sha256"]:
        raise BundleError(f"{path}: the posterior does not match its sha256")
    return PosteriorBundleSpec(root=root, name=name,
                               sample_rate=_check_rate(path, raw.get("sample_rate", 22050)),
                               stems=stems, mix=str(raw.get("mix", "mean")), posterior=folder,
                               sha256=sha256_path(path),
                               description=str(raw.get("description", "")))


def store_half(folder: str | os.PathLike[str]) -> int:
    """Rewrite every ``*.safetensors`` file in ``folder`` with its float32 tensors stored as
    float16 (other dtypes unchanged); returns the number of tensors converted. Loading is
    unchanged: ``load_state_dict`` copies them into the float32 parameters, so a model is
    computed in float32 from weights rounded to float16 (half the bytes on disk)."""
    import torch
    from safetensors.torch import load_file, save_file

    converted = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors = load_file(str(path))
        out = {}
        for key, value in tensors.items():
            if value.dtype == torch.float32:
                value = value.to(torch.float16)
                converted += 1
            out[key] = value.contiguous()
        tmp = path.with_name(path.name + ".tmp")
        save_file(out, str(tmp))
        os.replace(tmp, path)
    return converted


def _write_folder_bundle(out: Path, parts: Mapping[str, Path],
                         meta: Callable[[Path], dict[str, Any]], half: bool = False) -> Path:
    """Copy ``parts`` (bundle folder name -> source folder) into the new bundle ``out``
    (weights stored as float16 when ``half``; see :func:`store_half`) with ``bundle.json`` =
    ``meta(staging folder)`` (written beside ``out`` and renamed into place)."""
    import shutil

    if out.exists():
        raise LassError(f"{out} already exists; choose a new folder")

    def fill(tmp: Path) -> None:
        for folder, src in parts.items():
            shutil.copytree(src, tmp / folder)
            if half:
                store_half(tmp / folder)
        write_text_atomic(tmp / BUNDLE_FILE, json.dumps(meta(tmp), indent=1) + "\n")

    return write_dir_atomically(out, fill, replace=False)


def make_langevin_bundle(out: str | os.PathLike[str], *,
                         priors: Mapping[str, str | os.PathLike[str]], mix: str,
                         langevin: dict[str, Any], name: str | None = None,
                         description: str = "", half: bool = False) -> Path:
    """A Langevin bundle in the new folder ``out``: one saved WaveNet or flow prior per stem
    (their sample rates must agree) and the schedule's entry (see
    :func:`lass.langevin.schedule_from_json`, which checks it); ``half`` stores the weights
    as float16 (:func:`store_half`)."""
    from lass.data.mixing import check_mix_rule
    from lass.langevin import load_langevin_prior, schedule_from_json

    out = Path(out)
    if len(priors) < 2:
        raise LassError("a Langevin bundle needs a prior for each of two or more stems")
    check_mix_rule(mix)
    nets = {stem: load_langevin_prior(path) for stem, path in priors.items()}
    rates = {int(n.config.sample_rate) for n in nets.values()}
    if len(rates) != 1:
        raise LassError(f"the priors work at different sample rates: {sorted(rates)}")
    schedule_from_json(langevin, max(int(getattr(n, "receptive_field", 0))
                                     for n in nets.values()))
    parts = {f"prior-{stem}": Path(path) for stem, path in priors.items()}
    rate = rates.pop()

    def meta(tmp: Path) -> dict[str, Any]:
        return {"format_version": 1, "method": "langevin", "name": name or out.name,
                "description": description, "sample_rate": rate, "stems": list(priors),
                "mix": mix, "priors": {stem: {"path": f"prior-{stem}",
                                              "sha256": sha256_path(tmp / f"prior-{stem}")}
                                       for stem in priors},
                "langevin": langevin}

    return _write_folder_bundle(out, parts, meta, half)


def make_posterior_bundle(out: str | os.PathLike[str], *, posterior: str | os.PathLike[str],
                          name: str | None = None, description: str = "",
                          half: bool = False) -> Path:
    """A posterior bundle in the new folder ``out`` from a saved amortised posterior (its
    stems, rate and mixing rule); ``half`` stores the weights as float16
    (:func:`store_half`)."""
    from lass.posterior import load_posterior

    out = Path(out)
    cfg = load_posterior(posterior).config

    def meta(tmp: Path) -> dict[str, Any]:
        return {"format_version": 1, "method": "posterior", "name": name or out.name,
                "description": description, "sample_rate": cfg.sample_rate,
                "stems": list(cfg.stems), "mix": cfg.mix,
                "posterior": {"path": "posterior", "sha256": sha256_path(tmp / "posterior")}}

    return _write_folder_bundle(out, {"posterior": Path(posterior)}, meta, half)


def read_langevin_bundle(name_or_path: str | os.PathLike[str] | None, verify: bool = True
                         ) -> LangevinBundleSpec:
    """Parse a Langevin bundle and (by default) check the sha256 of every prior."""
    root = resolve_bundle(name_or_path)
    path = root / BUNDLE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        stems = tuple(str(s) for s in raw["stems"])
        entries = {s: raw["priors"][s] for s in stems}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"cannot read {path}: {err}") from None
    if raw.get("method") != "langevin":
        raise BundleError(f"{path} is not a Langevin bundle (method "
                          f"{raw.get('method', 'lass')!r})")
    name = str(raw.get("name", root.name))
    _check_names(path, name, stems)
    if verify:
        for stem, entry in entries.items():
            if entry.get("sha256") and sha256_path(root / entry["path"]) != entry["sha256"]:
                raise BundleError(f"{path}: the {stem} prior does not match its sha256")
    rate = _check_rate(path, raw.get("sample_rate", 22050))
    return LangevinBundleSpec(root=root, name=name, sample_rate=rate, stems=stems,
                              mix=str(raw.get("mix", "mean")),
                              priors={s: root / e["path"] for s, e in entries.items()},
                              langevin=dict(raw.get("langevin", {})), sha256=sha256_path(path),
                              description=str(raw.get("description", "")))


def write_bundle(root: str | os.PathLike[str], *, name: str, sample_rate: int,
                 stems: Sequence[str], mix: str, codec: str, priors: dict[str, str],
                 likelihood: str, smoothing: str = "none", sampler: dict[str, Any] | None = None,
                 prior_classes: dict[str, int] | None = None, alpha: float = 1.0,
                 min_count: int = 1, likelihood_base: str | None = None,
                 likelihood_kind: str = "counts", evidence: str | None = None,
                 description: str = "") -> Path:
    """Write ``bundle.json`` for components already inside ``root`` (paths relative to it;
    ``evidence``: the token evidence model's file, if any; ``description``: what the bundle
    separates and what it was trained on, shown by ``lass-separate --list-models``)."""
    base = Path(root)
    if likelihood_kind not in LIKELIHOOD_KINDS:
        raise BundleError(f"unknown likelihood kind {likelihood_kind!r}")
    latent = likelihood_kind == "latent"
    entry = {"format_version": FORMAT_VERSION, "name": name,
             **({"description": description} if description else {}),
             "sample_rate": sample_rate, "stems": list(stems), "mix": mix,
             "codec": {"path": codec, "sha256": sha256_path(base / codec)},
             "priors": {s: {"path": priors[s], "sha256": sha256_path(base / priors[s]),
                            **({"class": prior_classes[s]} if prior_classes else {})}
                        for s in stems},
             "likelihood": {"path": likelihood, "sha256": sha256_path(base / likelihood),
                            **({"kind": "latent"} if latent else {"smoothing": smoothing}),
                            **({"alpha": alpha} if smoothing != "none" and not latent
                               else {}),
                            **({"min_count": min_count} if min_count > 1 else {}),
                            **({"base": {"path": likelihood_base,
                                         "sha256": sha256_path(base / likelihood_base)}}
                               if likelihood_base else {})},
             **({"evidence": {"path": evidence, "sha256": sha256_path(base / evidence)}}
                if evidence else {}),
             "sampler": sampler or {"kind": "beam", "num_beams": 10, "lam": 3.0,
                                    "output": "mask"}}
    out = base / BUNDLE_FILE
    write_text_atomic(out, json.dumps(entry, indent=1) + "\n")
    return out


def make_bundle(out: str | os.PathLike[str], *, codec: str | os.PathLike[str],
                likelihood: str | os.PathLike[str],
                priors: Mapping[str, str | os.PathLike[str]] | None = None,
                shared_prior: str | os.PathLike[str] | None = None,
                stems: Sequence[str] | None = None, latent: bool = False,
                smoothing: str = "none", factorised: str | os.PathLike[str] | None = None,
                alpha: float = 1.0, min_count: int = 1, mix: str = "mean",
                name: str | None = None, description: str = "",
                evidence: str | os.PathLike[str] | None = None,
                settings: Any = None) -> Path:
    """Put a codec, priors (one per stem, or one ``shared_prior`` for ``stems``), a
    likelihood (counts, or with ``latent`` a ``lass-fit-latent`` model) and an optional token
    evidence model together as a bundle in the new folder ``out`` (written beside it and
    renamed into place), after checking that they fit together (codebook sizes, the codec
    the priors, counts and evidence were made with, the prior's classes, the number of
    sources); ``settings`` (:class:`lass.settings.SeparationSettings`) are its defaults.
    A :class:`LassError` says what does not fit; nothing is left behind then."""
    import shutil

    from lass.separator import check_mask_settings, shift_offsets
    from lass.settings import SeparationSettings, settings_to_bundle
    from likelihood import load_counts
    from likelihood.evidence import TokenEvidence
    from likelihood.factorised import FactorisedLikelihood
    from likelihood.latent import LatentLikelihood
    from priors import load_prior
    from vqvae import load_codec

    out = Path(out)
    settings = settings or SeparationSettings()
    if out.exists():
        raise LassError(f"{out} already exists; choose a new folder")
    model = load_codec(codec)
    identity = model.identity()
    classes: dict[str, int] = {}
    sources: dict[str, Path]
    if shared_prior is not None:
        if priors:
            raise LassError("give either --prior STEM=DIR per stem or --shared-prior, not both")
        prior = load_prior(shared_prior)
        prior.check_codebook(model.codebook_size, identity)
        names = prior.config.class_names
        stems = tuple(stems or names)
        if len(stems) < 2 or len(set(stems)) != len(stems):
            raise LassError("--shared-prior needs --stems A B ... (two or more distinct "
                            "stems, or a prior with as many classes)")
        if names:
            missing = [s for s in stems if s not in names]
            if missing:
                raise LassError(f"the shared prior has classes {', '.join(names)}; no class "
                                f"for {', '.join(missing)}")
            classes = {s: names.index(s) for s in stems}
        sources = {"prior": Path(shared_prior)}
        paths = {st: "prior" for st in stems}
    else:
        priors = dict(priors or {})
        if len(priors) < 2:
            raise LassError("give --prior STEM=DIR once for each stem (two or more)")
        stems = tuple(priors)
        for path in priors.values():
            load_prior(path).check_codebook(model.codebook_size, identity)
        sources = {f"prior-{stem}": Path(path) for stem, path in priors.items()}
        paths = {stem: f"prior-{stem}" for stem in priors}
    if latent:
        if smoothing != "none" or factorised is not None or min_count > 1:
            raise LassError("--smoothing, --factorised and --min-count apply to counts, not "
                            "to a --latent likelihood")
        LatentLikelihood.load(likelihood).check_codec(model.codebook_size, identity)
    else:
        counts = load_counts(likelihood)
        if counts.n_sources != len(stems):
            raise LassError(f"the counts are of {counts.n_sources} sources but {len(stems)} "
                            "stems are named")
        if counts.k != model.codebook_size:
            raise LassError(f"the counts have K = {counts.k} but the codec has "
                            f"{model.codebook_size} codes")
        made_with = counts.meta.get("codec_identity")
        if made_with and made_with != identity:
            raise LassError("the counts were made with another codec (identity "
                            f"{str(made_with)[:12]}, codec {identity[:12]})")
        if (smoothing == "factorised") != (factorised is not None):
            raise LassError("--smoothing factorised and --factorised FILE go together")
        if factorised is not None:
            FactorisedLikelihood.load(factorised).check_fits(counts)
    check_mask_settings(settings.mask_fft, settings.mask_iterations)
    shift_offsets(settings.shifts, model.hop_length)
    if settings.evidence_weight > 0 and evidence is None:
        raise LassError("--evidence-weight needs --evidence FILE")
    if evidence is not None:
        if latent:
            raise LassError("--evidence adds to counts, not to a --latent likelihood")
        tev = TokenEvidence.load(evidence)
        tev.check_codec(model.codebook_size, model.embedding_dim, identity, model.hop_length)
        if tev.n_sources != len(stems):
            raise LassError(f"the token evidence model predicts {tev.n_sources} sources but "
                            f"{len(stems)} stems are named")

    def fill(tmp: Path) -> None:
        shutil.copytree(codec, tmp / "codec")
        for folder, src in sources.items():
            shutil.copytree(src, tmp / folder)
        shutil.copy2(likelihood, tmp / "likelihood.npz")
        if factorised is not None:
            shutil.copy2(factorised, tmp / "likelihood-factorised.npz")
        if evidence is not None:
            shutil.copy2(evidence, tmp / "evidence.npz")
        write_bundle(tmp, name=name or out.name, sample_rate=model.sample_rate,
                     stems=stems, mix=mix, codec="codec", priors=paths,
                     likelihood="likelihood.npz", smoothing=smoothing,
                     likelihood_kind="latent" if latent else "counts",
                     alpha=alpha, min_count=min_count, prior_classes=classes or None,
                     likelihood_base=("likelihood-factorised.npz" if factorised else None),
                     evidence="evidence.npz" if evidence is not None else None,
                     description=description,
                     sampler=settings_to_bundle(settings))

    return write_dir_atomically(out, fill, replace=False)
