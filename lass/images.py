"""LASS for images: separate a mixture of two images (their mean) with an image codec, one
shared Transformer prior over raster-ordered code grids, and the counted likelihood.

For a batch of mixtures ``m: (B, H, W)`` in [0, 1]::

    tokens      z_mix = codec.encode(m)                                    (B, h * w)
    search      lass.sampling.separate_tokens with the prior for both sources (and the
                image evidence of the mixture, if the bundle has one): the
                sampler's ``candidates`` separations per mixture          2 x (B, S, h * w)
    decode      every candidate pair                                       (B, S, 2, H, W)
    re-rank     keep the pair whose mean is closest to m (squared error)  (B, 2, H, W)
                (without re-ranking: the pair the search scored best)
    refine      optimise dense latents of both sources so that the mean of their decodings
                matches m, starting from the kept pair's code vectors, with a penalty on
                moving away from them (the LASS paper's post-inference refinement; Adam)
    output      ``project``: the nearest pair that averages exactly to m with pixels in
                [0, 1]; ``decode``: the decodings as they are

There is no mask output for images: refinement plays that part. An image bundle is a folder
with ``bundle.json`` (``"method": "image"``), the codec, the prior, the counts, optionally
the image evidence (:mod:`likelihood.image_evidence`, weighted by ``evidence_weight``) and
the settings (:class:`ImageSettings`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from lass.errors import DataError, LassError
from lass.sampling import (
    Ancestral,
    BeamSearch,
    Greedy,
    Sampler,
    TopK,
    TopP,
    separate_tokens,
)
from likelihood import CountLikelihood
from likelihood.image_evidence import ImageEvidence
from priors import TransformerPrior, load_prior
from vqvae.files import write_bytes_atomic
from vqvae.image import ImageVQVAE, codec_identity, load_image_codec, psnr

SAMPLERS = ("greedy", "beam", "ancestral", "topk", "topp")
OUTPUTS = ("project", "decode")


@dataclass(frozen=True)
class ImageSettings:
    """How an image bundle separates.

    Attributes:
        sampler: ``greedy``, ``beam``, ``ancestral``, ``topk`` or ``topp``.
        candidates: separations drawn per mixture (samples, or beams for ``beam``).
        top_k: ``k`` of ``topk``; top_p: ``p`` of ``topp``; temperature: of the samplers.
        lam: weight of the log-likelihood.
        evidence_weight: weight ``mu`` of the image evidence (a bundle without one ignores
            it; 0: off).
        rerank: keep the candidate whose decodings average closest to the mixture (else the
            one the search scored best).
        refine_steps: Adam steps of the post-inference refinement (0: none).
        refine_lr: its learning rate (halved at each third of the steps).
        refine_penalty: weight of the squared distance of the latents from where they
            started.
        output: ``project`` or ``decode`` (module docstring).
        seed: seed of the samplers (each mixture draws from its own generator).
    """

    sampler: str = "topk"
    candidates: int = 64
    top_k: int = 16
    top_p: float = 0.9
    temperature: float = 1.0
    lam: float = 1.0
    evidence_weight: float = 1.0
    rerank: bool = True
    refine_steps: int = 50
    refine_lr: float = 0.05
    refine_penalty: float = 1e-2
    output: str = "project"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise LassError(f"unknown image sampler {self.sampler!r}; expected one of "
                            f"{', '.join(SAMPLERS)}")
        if self.output not in OUTPUTS:
            raise LassError(f"unknown image output {self.output!r}; expected "
                            f"{' or '.join(OUTPUTS)}")
        if self.candidates < 1 or self.top_k < 1 or not 0 < self.top_p <= 1 \
                or self.temperature <= 0 or self.refine_steps < 0 or self.refine_lr <= 0 \
                or self.refine_penalty < 0 or not math.isfinite(self.lam) \
                or not self.evidence_weight >= 0:
            raise LassError(f"image settings out of range: {self.to_json()}")

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> ImageSettings:
        """Settings from a JSON object (a key it lacks takes the default)."""
        if not isinstance(raw, dict):
            raise LassError("image settings must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise LassError(f"unknown image settings: {', '.join(sorted(unknown))}")
        return cls(**raw)

    def search_sampler(self) -> Sampler:
        """The :mod:`lass.sampling` sampler of these settings."""
        if self.sampler == "greedy":
            return Greedy()
        if self.sampler == "beam":
            return BeamSearch(self.candidates)
        if self.sampler == "ancestral":
            return Ancestral(self.temperature)
        if self.sampler == "topk":
            return TopK(self.top_k, self.temperature)
        return TopP(self.top_p, self.temperature)


# -- images on disk ----------------------------------------------------------------------------

def read_png(path: str | os.PathLike[str]) -> np.ndarray:
    """A PNG (or any image Pillow reads) as ``(H, W)`` float32 grey in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"no image at {p}")
    try:
        with Image.open(p) as img:
            img.load()
            grey = img.convert("F") if img.mode in ("I", "I;16", "F") else img.convert("L")
            scale = 65535.0 if img.mode.startswith("I") else 255.0 if grey.mode == "L" else 1.0
            arr = np.asarray(grey, dtype=np.float32) / scale
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read {p} as an image: {err}") from None
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"{p}: not a single-channel image after conversion")
    if not np.isfinite(arr).all():
        raise DataError(f"{p} holds NaN or infinite pixels")
    return np.clip(arr, 0.0, 1.0)


def png_bytes(image: np.ndarray) -> bytes:
    """``(H, W)`` values in [0, 1] as an 8-bit grey PNG file's bytes."""
    import io

    from PIL import Image

    arr = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write ``(H, W)`` values in [0, 1] as an 8-bit grey PNG, atomically."""
    return write_bytes_atomic(path, png_bytes(image))


# -- scores, baselines and the mixture projection ------------------------------------------------

def best_assignment_psnr(estimates: torch.Tensor, references: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean PSNR over the two sources with the better of the two assignments per mixture.

    Args:
        estimates, references: ``(B, 2, H, W)``.

    Returns:
        ``(B,)`` dB and ``(B, 2)`` the PSNR of each reference under the chosen assignment.
    """
    same = psnr(estimates, references)
    swapped = psnr(estimates.flip(1), references)
    better = swapped.mean(1) > same.mean(1)
    per = torch.where(better[:, None], swapped, same)
    return per.mean(1), per


def project_to_mixture(estimates: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """The pair nearest to ``estimates: (B, 2, H, W)`` (per pixel, squared distance) whose
    mean is ``mixture: (B, H, W)`` and whose pixels lie in [0, 1] -> ``(B, 2, H, W)``."""
    a, b = estimates[:, 0], estimates[:, 1]
    total = 2 * mixture.clamp(0, 1)
    first = a + (total - a - b) / 2
    first = torch.minimum(torch.maximum(first, (total - 1).clamp_min(0)), total.clamp_max(1))
    return torch.stack([first, total - first], dim=1)


def nmf_separate(mixtures: torch.Tensor, iterations: int = 200, seed: int = 0
                 ) -> torch.Tensor:
    """The NMF baseline: each mixture ``(H, W)`` factorised as ``W (H, 2) @ Hm (2, W)``
    (rank 2, multiplicative updates of the squared error), each rank-one part times 2 a
    source; ``mixtures: (B, H, W)`` -> ``(B, 2, H, W)``."""
    gen = torch.Generator().manual_seed(seed)
    m = mixtures.double().clamp_min(0)
    b, h, w = m.shape
    left = torch.rand(b, h, 2, generator=gen, dtype=torch.float64) + 0.1
    right = torch.rand(b, 2, w, generator=gen, dtype=torch.float64) + 0.1
    eps = 1e-12
    for _ in range(iterations):
        right = right * (left.transpose(1, 2) @ m) / (left.transpose(1, 2) @ left @ right + eps)
        left = left * (m @ right.transpose(1, 2)) / (left @ right @ right.transpose(1, 2) + eps)
    parts = left.transpose(1, 2)[:, :, :, None] * right[:, :, None, :]  # (B, 2, H, W)
    return (2 * parts).clamp(0, 1).float()


# -- the separator -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSeparation:
    """Separations of a batch of mixtures.

    Attributes:
        sources: ``(B, 2, H, W)`` float32 in [0, 1], each a source at source scale.
        codes: ``(B, 2, h, w)`` the kept candidates' code grids.
        mixture_psnr: ``(B,)`` PSNR of the mean of the sources against the mixture.
        timings: seconds of each stage for the whole batch.
    """

    sources: torch.Tensor
    codes: torch.Tensor
    mixture_psnr: torch.Tensor
    timings: dict[str, float]


def refine(codec: ImageVQVAE, codes: torch.Tensor, mixtures: torch.Tensor, steps: int,
           lr: float, penalty: float) -> torch.Tensor:
    """Post-inference refinement: dense latents of both sources (from the code vectors of
    ``codes: (B, 2, h, w)``) moved by Adam to lower ``sum (mean of the two decodings - m)^2
    + penalty * |latents - start|^2`` per mixture (``mixtures: (B, H, W)``); the learning rate
    halves at each third of the ``steps``. Returns the decodings ``(B, 2, H, W)``."""
    b = codes.shape[0]
    with torch.no_grad():
        start = codec.embed(codes.flatten(0, 1))  # (2B, D, h, w)
    target = mixtures.to(start.device).float()
    if steps == 0:
        with torch.no_grad():
            return codec.decode_latents(start).view(b, 2, *target.shape[1:])
    z = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, steps // 3), gamma=0.5)
    frozen = [p.requires_grad for p in codec.parameters()]
    for p in codec.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():  # (also under a caller's no_grad)
            for _ in range(steps):
                pair = codec.decode_latents(z).view(b, 2, *target.shape[1:])
                fit = (pair.mean(1) - target).pow(2).flatten(1).sum(1)
                drift = (z - start).pow(2).flatten(1).sum(1).view(b, 2).sum(1)
                loss = (fit + penalty * drift).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        for p, f in zip(codec.parameters(), frozen, strict=True):
            p.requires_grad_(f)
    with torch.no_grad():
        return codec.decode_latents(z).view(b, 2, *target.shape[1:])


class ImageSeparator:
    """Image codec + shared prior + counted likelihood + :class:`ImageSettings`.

    ``separate(image)`` takes one ``(H, W)`` mixture in [0, 1] (any size: it is resized to the
    codec's and the sources back to the input's) and returns ``(2, H, W)``; ``separate_batch``
    takes ``(B, H, W)`` at the codec's size.
    """

    stems = ("source_1", "source_2")

    def __init__(self, codec: ImageVQVAE, prior: TransformerPrior,
                 likelihood: CountLikelihood, settings: ImageSettings | None = None,
                 bundle: ImageBundleSpec | None = None,
                 evidence: ImageEvidence | None = None) -> None:
        if prior.vocab_size != codec.codebook_size or likelihood.k != codec.codebook_size:
            raise LassError(f"codebook sizes do not match: codec {codec.codebook_size}, prior "
                            f"{prior.vocab_size}, likelihood {likelihood.k}")
        if likelihood.n != 2:
            raise LassError(f"an image separator needs counts of two sources, not "
                            f"{likelihood.n}")
        h, w = codec.grid
        if prior.context_length < h * w:
            raise LassError(f"the prior's context ({prior.context_length}) is shorter than a "
                            f"code grid ({h * w})")
        if evidence is not None:
            evidence.check_codec(codec.codebook_size, None)
        self.codec, self.prior, self.likelihood = codec, prior, likelihood
        self.settings = settings or ImageSettings()
        self.bundle = bundle
        self.evidence = evidence

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] | None,
                        device: str | torch.device = "cpu", verify: bool = True
                        ) -> ImageSeparator:
        """Load an image bundle (a folder, a name under ``$LASS_BUNDLES``, or ``mnist``)."""
        spec = read_image_bundle(name_or_path, verify=verify)
        codec = load_image_codec(spec.codec, device)
        identity = codec_identity(codec)
        prior = load_prior(spec.prior, device=device)
        prior.check_codebook(codec.codebook_size, identity)
        likelihood = CountLikelihood.load(spec.likelihood, spec.smoothing, spec.alpha,
                                          codebook_size=codec.codebook_size,
                                          codec_identity=identity, device=device,
                                          min_count=spec.min_count, n_sources=2)
        evidence = None
        if spec.evidence is not None:
            evidence = ImageEvidence.load(spec.evidence, device=device)
            evidence.check_codec(codec.codebook_size, identity)
        return cls(codec, prior, likelihood, spec.settings, spec, evidence)

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` the codec works at."""
        return self.codec.image_shape

    def with_settings(self, **changes: Any) -> ImageSeparator:
        """The same models with some settings changed."""
        return ImageSeparator(self.codec, self.prior, self.likelihood,
                              dataclasses.replace(self.settings, **changes), self.bundle,
                              self.evidence)

    @torch.no_grad()
    def candidates(self, mixtures: torch.Tensor, settings: ImageSettings | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The search's candidate code grids ``(B, S, 2, h, w)`` for ``mixtures: (B, H, W)``,
        best search score first, and their scores ``(B, S)``."""
        s = settings or self.settings
        b = mixtures.shape[0]
        h, w = self.codec.grid
        mix_codes = self.codec.encode(mixtures).flatten(1)
        num = 1 if s.sampler == "greedy" else s.candidates
        gens = [torch.Generator(device=self.likelihood.device).manual_seed(s.seed)
                for _ in range(b)]
        evidence = None
        if self.evidence is not None and s.evidence_weight > 0:
            e = s.evidence_weight * self.evidence.evidence(mixtures)  # (B, h * w, K)
            evidence = e[:, :, None, :].expand(-1, -1, 2, -1).to(self.likelihood.device)
        sep = separate_tokens(mix_codes, [self.prior, self.prior], self.likelihood,
                              s.search_sampler(), lam=s.lam, num_samples=num,
                              token_evidence=evidence,
                              generator=gens if s.sampler not in ("greedy", "beam") else None)
        codes = torch.stack(sep.sources, dim=2)  # (B, S, 2, h * w)
        return codes.view(b, codes.shape[1], 2, h, w), sep.score

    @torch.no_grad()
    def rerank(self, mixtures: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Of ``codes: (B, S, 2, h, w)`` keep per mixture the pair whose decodings average
        closest to ``mixtures: (B, H, W)`` -> ``(B, 2, h, w)``."""
        b, n = codes.shape[:2]
        errors = []
        for i in range(b):
            pair = self.codec.decode(codes[i].flatten(0, 1)).view(n, 2, *self.image_shape)
            errors.append((pair.mean(1) - mixtures[i].to(pair.device)).pow(2).flatten(1)
                          .sum(1))
        best = torch.stack(errors).argmin(1)
        return codes[torch.arange(b), best.to(codes.device)]

    def separate_batch(self, mixtures: torch.Tensor | np.ndarray,
                       settings: ImageSettings | None = None) -> ImageSeparation:
        """Separate ``mixtures: (B, H, W)`` in [0, 1] at the codec's size."""
        s = settings or self.settings
        m = torch.as_tensor(mixtures, dtype=torch.float32)
        if m.dim() != 3 or tuple(m.shape[1:]) != self.image_shape:
            raise DataError(f"mixtures must be (batch, {self.image_shape[0]}, "
                            f"{self.image_shape[1]}), got {tuple(m.shape)}")
        if not torch.isfinite(m).all():
            raise DataError("a mixture holds NaN or infinite pixels")
        m = m.clamp(0, 1).to(self.codec.device)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cands, _ = self.candidates(m, s)
        timings["search"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        kept = self.rerank(m, cands) if s.rerank and cands.shape[1] > 1 else cands[:, 0]
        timings["rerank"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pair = refine(self.codec, kept, m, s.refine_steps, s.refine_lr, s.refine_penalty)
        timings["refine"] = time.perf_counter() - t0
        if s.output == "project":
            pair = project_to_mixture(pair, m)
        return ImageSeparation(sources=pair.cpu(), codes=kept.cpu(),
                               mixture_psnr=psnr(pair.mean(1), m).cpu(), timings=timings)

    def separate(self, image: np.ndarray | torch.Tensor, settings: ImageSettings | None = None
                 ) -> np.ndarray:
        """One mixture ``(H, W)`` in [0, 1] -> ``(2, H, W)`` float32 sources at source scale
        (their mean is the mixture with the ``project`` output)."""
        return self.separate_many([np.asarray(image, dtype=np.float32)], settings)[0]

    def separate_many(self, images: Sequence[np.ndarray], settings: ImageSettings | None = None,
                      batch: int = 256, progress: Callable[[int, int], None] | None = None
                      ) -> list[np.ndarray]:
        """Mixtures of any sizes ``(H_i, W_i)`` -> ``(2, H_i, W_i)`` each, searched
        ``batch`` at a time at the codec's size (each mixture gets what it would get alone)."""
        s = settings or self.settings
        for x in images:
            if x.ndim != 2 or x.size == 0:
                raise DataError(f"an image mixture must be (height, width), got {x.shape}")
            if not np.isfinite(x).all():
                raise DataError("a mixture holds NaN or infinite pixels")
        small = torch.stack([self._resize(torch.from_numpy(np.ascontiguousarray(x)),
                                          self.image_shape) for x in images])
        out: list[np.ndarray] = []
        for lo in range(0, len(images), batch):
            pair = self.separate_batch(small[lo: lo + batch], s).sources
            for i, x in enumerate(images[lo: lo + batch]):
                full = self._resize(pair[i], x.shape) if x.shape != self.image_shape else pair[i]
                if s.output == "project":
                    full = project_to_mixture(full[None], torch.from_numpy(
                        np.clip(x, 0, 1).astype(np.float32))[None])[0]
                out.append(full.numpy())
            if progress is not None:
                progress(len(out), len(images))
        return out

    @staticmethod
    def _resize(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``(H, W)`` or ``(C, H, W)`` resized (bilinear, antialiased) to ``shape``."""
        if tuple(x.shape[-2:]) == tuple(shape):
            return x.float()
        lead = x.dim() == 2
        y = F.interpolate((x[None, None] if lead else x[None]).float(), size=tuple(shape),
                          mode="bilinear", align_corners=False, antialias=True)
        return (y[0, 0] if lead else y[0]).clamp(0, 1)


# -- bundles -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageBundleSpec:
    """A parsed image ``bundle.json`` with absolute component paths."""

    root: Path
    name: str
    stems: tuple[str, ...]
    codec: Path
    prior: Path
    likelihood: Path
    smoothing: str
    alpha: float
    min_count: int
    settings: ImageSettings
    sha256: str
    description: str = ""
    evidence: Path | None = None


def read_image_bundle(name_or_path: str | os.PathLike[str] | None, verify: bool = True
                      ) -> ImageBundleSpec:
    """Parse an image bundle and (by default) check its components' sha256."""
    from lass.bundle import BUNDLE_FILE, BundleError, resolve_bundle, sha256_path

    root = resolve_bundle(name_or_path)
    path = root / BUNDLE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("method") != "image":
            raise BundleError(f"{path} is not an image bundle (method "
                              f"{raw.get('method', 'lass')!r})")
        parts = {key: raw[key] for key in ("codec", "prior", "likelihood", "evidence")
                 if key in raw or key != "evidence"}
        paths = {key: root / str(entry["path"]) for key, entry in parts.items()}
        settings = ImageSettings.from_json(raw.get("settings", {}))
        lik = parts["likelihood"]
        spec = ImageBundleSpec(
            root=root, name=str(raw.get("name", root.name)),
            stems=tuple(str(s) for s in raw.get("stems", ImageSeparator.stems)),
            codec=paths["codec"], prior=paths["prior"], likelihood=paths["likelihood"],
            smoothing=str(lik.get("smoothing", "none")), alpha=float(lik.get("alpha", 1.0)),
            min_count=int(lik.get("min_count", 1)), settings=settings,
            sha256=sha256_path(path), description=str(raw.get("description", "")),
            evidence=paths.get("evidence"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BundleError(f"cannot read {path}: {err}") from None
    if len(spec.stems) != 2:
        raise BundleError(f"{path}: an image bundle separates two sources")
    if verify:
        for key, entry in parts.items():
            if entry.get("sha256") and sha256_path(paths[key]) != entry["sha256"]:
                raise BundleError(f"{path}: the {key} does not match its sha256")
    return spec


def make_image_bundle(out: str | os.PathLike[str], *, codec: str | os.PathLike[str],
                      prior: str | os.PathLike[str], likelihood: str | os.PathLike[str],
                      settings: ImageSettings, name: str, smoothing: str = "none",
                      alpha: float = 1.0, min_count: int = 1, description: str = "",
                      evidence: str | os.PathLike[str] | None = None) -> Path:
    """Copy an image codec, prior and counts into a new bundle folder ``out`` (written aside,
    then renamed into place) after checking that they fit together."""
    import shutil

    from lass.bundle import BUNDLE_FILE, sha256_path
    from vqvae.files import write_dir_atomically

    c = load_image_codec(codec)
    p = load_prior(prior)
    p.check_codebook(c.codebook_size, codec_identity(c))
    CountLikelihood.load(likelihood, smoothing, alpha, codebook_size=c.codebook_size,
                         codec_identity=codec_identity(c), min_count=min_count, n_sources=2)
    if evidence is not None:
        ImageEvidence.load(evidence).check_codec(c.codebook_size, codec_identity(c))

    def fill(tmp: Path) -> None:
        shutil.copytree(codec, tmp / "codec")
        shutil.copytree(prior, tmp / "prior")
        shutil.copyfile(likelihood, tmp / "likelihood.npz")
        if evidence is not None:
            shutil.copyfile(evidence, tmp / "evidence.npz")
        entry = {"format_version": 1, "name": name, "method": "image",
                 **({"description": description} if description else {}),
                 "stems": list(ImageSeparator.stems), "mix": "mean",
                 "codec": {"path": "codec", "sha256": sha256_path(tmp / "codec")},
                 "prior": {"path": "prior", "sha256": sha256_path(tmp / "prior")},
                 "likelihood": {"path": "likelihood.npz",
                                "sha256": sha256_path(tmp / "likelihood.npz"),
                                "smoothing": smoothing, "alpha": alpha,
                                "min_count": min_count},
                 **({"evidence": {"path": "evidence.npz",
                                  "sha256": sha256_path(tmp / "evidence.npz")}}
                    if evidence is not None else {}),
                 "settings": settings.to_json()}
        (tmp / BUNDLE_FILE).write_text(json.dumps(entry, indent=1) + "\n")

    return write_dir_atomically(out, fill)
