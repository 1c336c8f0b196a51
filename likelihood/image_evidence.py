"""What a mixture image says about its sources' codes: the token evidence of image LASS.

The counted table scores the mixture's *code* at each grid position: eight bits of a
patch, which leave thousands of source-code pairs about as likely (on MNIST the true pair
ranks in the hundreds). This model reads the whole mixture image instead: a small
convolutional network gives, at each grid position ``t``, a distribution ``q(k | m)`` over
the K codes of "a source has code ``k`` here", trained on mixtures of two training images
(as the counts are) against the codec's codes of the two sources (half the target on each;
all of it when both have the same code). The search adds, for a candidate pair ``(i, j)``,
``mu * (e[t, i] + e[t, j])`` with the likelihood ratio ``e[t, k] = log q(k | m) - log
u(k)`` (``u``: the training codes' unigram frequencies); the two sources share it, as they
share the prior.

Files are ``.npz`` (:func:`likelihood.files.save_model_file`): the weights, the
log-unigrams and a JSON record (``k``, ``width``, ``blocks``, ``image_size``, ``grid``,
the codec's identity).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from likelihood.errors import LikelihoodError
from likelihood.files import load_model_file, save_model_file

FORMAT_VERSION = 1
KIND = "image-evidence"


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(F.gelu(self.norm(x)))


class ImageEvidence(nn.Module):
    """``q(k | m)`` at every grid position of a mixture image (module docstring).

    Args:
        k: codebook size K.
        image_size: height and width of the images.
        grid: height and width of the code grid (``image_size`` halved
            ``log2(image_size / grid)`` times).
        width: channels at the grid's resolution.
        blocks: residual 3x3 blocks at the grid's resolution.
        meta: ``codec_identity`` and what the model was trained on.
    """

    log_unigram: torch.Tensor

    def __init__(self, k: int, image_size: int = 28, grid: int = 7, width: int = 128,
                 blocks: int = 4, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        stages = round(math.log2(image_size / grid)) if grid > 0 else 0
        if k < 2 or grid < 1 or stages < 1 or grid * 2 ** stages != image_size or width < 8 \
                or width % 8 or blocks < 1:
            raise LikelihoodError(f"an image evidence model needs K >= 2, an image size that "
                                  f"halves to the grid, and a width divisible by 8 (got K {k}, "
                                  f"{image_size} -> {grid}, width {width})")
        self.k, self.image_size, self.grid = int(k), int(image_size), int(grid)
        self.width, self.blocks_count = int(width), int(blocks)
        self.meta = dict(meta or {})
        layers: list[nn.Module] = [nn.Conv2d(1, width // 2, 3, padding=1)]
        c = width // 2
        for _ in range(stages):
            layers += [nn.GELU(), nn.Conv2d(c, width, 4, stride=2, padding=1)]
            c = width
        self.stem = nn.Sequential(*layers)
        self.body = nn.Sequential(*[_Block(width) for _ in range(blocks)])
        self.out = nn.Conv2d(width, k, 1)
        self.register_buffer("log_unigram", torch.full((k,), -math.log(k)))

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self.out.weight.device

    def forward(self, mixtures: torch.Tensor) -> torch.Tensor:
        """``mixtures: (B, H, W)`` -> ``(B, grid * grid, K)`` ``log q(k | m)`` (raster order)."""
        if mixtures.dim() != 3 or tuple(mixtures.shape[1:]) != (self.image_size,) * 2:
            raise LikelihoodError(f"mixtures must be (batch, {self.image_size}, "
                                  f"{self.image_size}), got {tuple(mixtures.shape)}")
        h = self.body(self.stem(mixtures.to(self.device, torch.float32).unsqueeze(1)))
        logits = self.out(F.gelu(h)).flatten(2).transpose(1, 2)
        return logits.log_softmax(-1)

    def evidence(self, mixtures: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` -> ``(B, grid * grid, K)`` log-ratios ``log q(k | m) - log u(k)``."""
        return self(mixtures) - self.log_unigram

    def loss(self, mixtures: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the two sources' codes ``codes: (B, 2, grid * grid)``: half
        the target on each (nats per position)."""
        logq = self(mixtures)
        picked = logq.gather(2, codes.to(logq.device).transpose(1, 2))  # (B, T, 2)
        return -picked.mean()

    def check_codec(self, codebook_size: int, codec_identity: str | None) -> None:
        """Raise :class:`LikelihoodError` unless the model was trained for this codec."""
        if codebook_size != self.k:
            raise LikelihoodError(f"the image evidence model is for K = {self.k}; the codec "
                                  f"has {codebook_size} codes")
        stored = self.meta.get("codec_identity")
        if codec_identity and stored and stored != codec_identity:
            raise LikelihoodError("the image evidence model was trained with another codec "
                                  f"(identity {str(stored)[:12]}, this codec "
                                  f"{codec_identity[:12]})")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to an ``.npz`` atomically."""
        arrays = {name: value.detach().cpu().numpy()
                  for name, value in self.state_dict().items()}
        meta = {**self.meta, "format_version": FORMAT_VERSION, "kind": KIND, "k": self.k,
                "image_size": self.image_size, "grid": self.grid, "width": self.width,
                "blocks": self.blocks_count}
        return save_model_file(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
             ) -> ImageEvidence:
        """Read a file written by :meth:`save` (eval mode, on ``device``)."""
        _p, _arrays, meta = load_model_file(path, "image evidence model", KIND, FORMAT_VERSION,
                                            ())
        shape = ("k", "image_size", "grid", "width", "blocks")
        try:
            k, size, grid, width, blocks = (int(meta[key]) for key in shape)
            model = cls(k, size, grid, width, blocks,
                        meta={key: v for key, v in meta.items()
                              if key not in (*shape, "format_version", "kind")})
        except (KeyError, TypeError, ValueError) as err:
            raise LikelihoodError(f"{path}: bad image evidence metadata ({err})") from None
        p, arrays, _ = load_model_file(path, "image evidence model", KIND, FORMAT_VERSION,
                                       tuple(model.state_dict()))
        try:
            model.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()},
                                  strict=True)
        except RuntimeError as err:
            raise LikelihoodError(f"{p}: weights do not fit the model ({err})") from None
        return model.to(device).eval()
