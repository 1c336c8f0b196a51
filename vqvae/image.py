"""An image codec: a 2-D convolutional VQ-VAE mapping ``(B, H, W)`` images in [0, 1] to
``(B, h, w)`` code grids and back, with its trainer.

The image variant of :class:`vqvae.codec.Codec`: the same roles (``encode``, ``embed``,
``decode_latents``, ``decode``) on grids instead of sequences, and the same on-disk format
(a folder with ``config.json`` and ``model.safetensors``; :func:`load_image_codec`).

Encoder: ``len(strides)`` strided k4 convs (each halving the size), two residual blocks, a
1x1 conv to ``dim`` channels, unit-normalised. Quantiser: the EMA codebook of
:class:`vqvae.conv.ConvVQVAE` (largest cosine, dead-code restarts). Decoder: the mirror,
ending in a sigmoid, so decodings are pixels in [0, 1]. 28 x 28 MNIST digits with two
strides give 7 x 7 grids, as in the LASS paper.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import save_file
from torch import nn

from vqvae.codec import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    load_saved_weights,
    read_saved_config,
)
from vqvae.conv import EMACodebook
from vqvae.errors import CodecError


@dataclass(frozen=True)
class ImageVQVAEConfig:
    """Hyper-parameters of :class:`ImageVQVAE`.

    Attributes:
        image_size: height and width of the images (a multiple of ``2 ** downsamples``).
        downsamples: stride-2 stages (2: 28 x 28 -> 7 x 7).
        codebook_size: number of codes K.
        dim: code channels.
        channels: channels after the first stage (doubled at each further stage).
        ema_decay, dead_threshold, commitment: as in :class:`vqvae.conv.ConvVQVAEConfig`.
    """

    image_size: int = 28
    downsamples: int = 2
    codebook_size: int = 256
    dim: int = 64
    channels: int = 64
    ema_decay: float = 0.99
    dead_threshold: float = 1.0
    commitment: float = 0.25

    @property
    def grid(self) -> int:
        """Height and width of the code grid."""
        return self.image_size // 2 ** self.downsamples


class _ResBlock(nn.Module):
    """``x + conv1x1(relu(conv3(relu(x))))`` on ``(B, C, h, w)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


@dataclass(frozen=True)
class ImageVQOutput:
    """A training pass: ``logits (B, H, W)`` of the reconstruction, ``codes (B, h, w)``, the
    weighted commitment loss, the batch's code perplexity and distinct codes, and codes
    restarted."""

    logits: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    perplexity: float
    used: int
    restarted: int


class ImageVQVAE(nn.Module):
    """Images ``(B, H, W)`` in [0, 1] <-> code grids ``(B, h, w)`` (module docstring)."""

    def __init__(self, config: ImageVQVAEConfig | None = None) -> None:
        super().__init__()
        cfg = config or ImageVQVAEConfig()
        if cfg.downsamples < 1 or cfg.image_size % 2 ** cfg.downsamples:
            raise CodecError(f"image_size {cfg.image_size} is not a multiple of "
                             f"2**{cfg.downsamples}")
        if cfg.codebook_size < 2 or cfg.dim < 1:
            raise CodecError("codebook_size must be >= 2 and dim >= 1")
        self.config = cfg
        chans = [cfg.channels * 2 ** i for i in range(cfg.downsamples)]
        enc: list[nn.Module] = []
        c_in = 1
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c
        enc += [_ResBlock(c_in), _ResBlock(c_in), nn.ReLU(), nn.Conv2d(c_in, cfg.dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.dim, chans[-1], 3, padding=1),
                                _ResBlock(chans[-1]), _ResBlock(chans[-1])]
        for i in reversed(range(cfg.downsamples)):
            c_out = chans[i - 1] if i else 1
            dec += [nn.ReLU(), nn.ConvTranspose2d(chans[i], c_out, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.codebook = EMACodebook(cfg.codebook_size, cfg.dim, cfg.ema_decay,
                                    cfg.dead_threshold)

    @property
    def codebook_size(self) -> int:
        """Number of distinct codes K."""
        return self.config.codebook_size

    @property
    def embedding_dim(self) -> int:
        """Channels of the dense latents."""
        return self.config.dim

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` of a code grid."""
        return self.config.grid, self.config.grid

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return self.config.image_size, self.config.image_size

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raise :class:`CodecError` unless ``images`` is a finite ``(B, H, W)`` batch."""
        if images.dim() != 3 or tuple(images.shape[1:]) != self.image_shape:
            raise CodecError(f"images must be (batch, {self.image_shape[0]}, "
                             f"{self.image_shape[1]}), got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise CodecError("images hold NaN or infinite pixels")
        return images.float().to(self.device)

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """``images: (B, H, W)`` -> unit-norm encoder outputs ``(B, dim, h, w)``."""
        return F.normalize(self.encoder(self.check_images(images).unsqueeze(1)), dim=1)

    @torch.no_grad()
    def quantise(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents: (B, dim, h, w)`` -> ``(B, h, w)`` int64 codes of the nearest entries."""
        b, d, h, w = latents.shape
        return self.codebook.nearest(latents.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images: (B, H, W)`` in [0, 1] -> ``(B, h, w)`` int64 codes."""
        return self.quantise(self.latents(images))

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes: (B, h, w)`` -> ``(B, dim, h, w)`` codebook vectors."""
        if codes.dim() != 3 or tuple(codes.shape[1:]) != self.grid:
            raise CodecError(f"codes must be (batch, {self.grid[0]}, {self.grid[1]}), got "
                             f"{tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise CodecError(f"codes must lie in [0, {self.codebook_size})")
        return F.embedding(codes.long().to(self.device),
                           self.codebook.embedding).permute(0, 3, 1, 2)

    def decode_logits(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents: (B, dim, h, w)`` -> ``(B, H, W)`` pixel logits (the decoder before its
        sigmoid)."""
        return self.decoder(latents).squeeze(1)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents: (B, dim, h, w)`` (codebook vectors or any dense ones) -> ``(B, H, W)``
        pixels in [0, 1]."""
        return torch.sigmoid(self.decode_logits(latents))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes: (B, h, w)`` -> ``(B, H, W)`` pixels in [0, 1]."""
        return self.decode_latents(self.embed(codes))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None
                ) -> ImageVQOutput:
        """Training pass on ``images: (B, H, W)``; in training mode the codebook takes an EMA
        step (restarting dead codes)."""
        z = self.latents(images)
        b, d, h, w = z.shape
        qz = self.codebook.straight_through(z.permute(0, 2, 3, 1).reshape(-1, d),
                                            self.config.commitment, generator)
        logits = self.decode_logits(qz.vectors.view(b, h, w, d).permute(0, 3, 1, 2))
        return ImageVQOutput(logits, qz.codes.view(b, h, w), qz.commit_loss, qz.perplexity,
                             qz.used, qz.restarted)

    # -- storage ---------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """The config as JSON values, with ``format_version`` and ``class``."""
        return {"format_version": FORMAT_VERSION, "class": type(self).__name__,
                **dataclasses.asdict(self.config)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``
        atomically."""
        from vqvae.files import write_dir_atomically

        def fill(tmp: Path) -> None:
            state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"class": type(self).__name__})
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=1) + "\n")

        return write_dir_atomically(path, fill)


def load_image_codec(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                     ) -> ImageVQVAE:
    """Load an :class:`ImageVQVAE` saved with :meth:`ImageVQVAE.save`, in eval mode."""
    root = Path(path)
    raw = read_saved_config(root, "image codec")
    if raw.get("class") != ImageVQVAE.__name__:
        raise CodecError(f"{root / CONFIG_FILE} does not describe an ImageVQVAE")
    fields = {f.name for f in dataclasses.fields(ImageVQVAEConfig)}
    unknown = set(raw) - fields - {"format_version", "class"}
    if unknown:
        raise CodecError(f"{root / CONFIG_FILE}: unknown keys {', '.join(sorted(unknown))}")
    model = ImageVQVAE(ImageVQVAEConfig(**{k: v for k, v in raw.items() if k in fields}))
    load_saved_weights(model, root)
    return model.to(device).eval()


def codec_identity(model: ImageVQVAE) -> str:
    """sha256 of the config and weights (names the codec in counts and priors)."""
    import hashlib

    h = hashlib.sha256(json.dumps(model.config_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def psnr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (peak 1) over the last two dims: ``(..., H, W)`` images ->
    ``(...)`` dB (capped at 100 dB for an exact match)."""
    mse = (estimate - reference).pow(2).flatten(-2).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@dataclass(frozen=True)
class ImageTrainConfig:
    """Optimisation settings of :class:`ImageCodecTrainer` (Adam, linear warm-up then
    cosine decay; loss: binary cross-entropy of the pixels (soft targets in [0, 1]; unlike
    the MSE of sigmoid outputs, its gradient does not vanish on the black background) + the
    commitment loss)."""

    steps: int = 6000
    batch: int = 128
    lr: float = 2e-3
    warmup: int = 200
    final_lr_fraction: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0


class ImageCodecTrainer:
    """Optimises an :class:`ImageVQVAE` one batch at a time; ``save``/``resume`` continue a
    run exactly (``folder/model`` and ``folder/trainer.pt``)."""

    def __init__(self, model: ImageVQVAE, config: ImageTrainConfig) -> None:
        self.model, self.config, self.step = model, config, 0
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``."""
        c = self.config
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        progress = min((step - c.warmup) / max(c.steps - c.warmup, 1), 1.0)
        low = c.lr * c.final_lr_fraction
        return low + (c.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))

    def train_step(self, images: torch.Tensor) -> dict[str, float]:
        """One step on ``images: (B, H, W)``; returns loss, PSNR, perplexity, used codes."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        images = images.to(self.model.device)
        out = self.model(images, generator=gen)
        bce = F.binary_cross_entropy_with_logits(out.logits, images)
        loss = bce + out.commit_loss
        if not torch.isfinite(loss):
            raise CodecError(f"training diverged at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {"step": self.step, "loss": float(loss.detach()),
                "psnr": float(psnr(torch.sigmoid(out.logits.detach()), images).mean()),
                "perplexity": out.perplexity, "used": out.used, "restarted": out.restarted}

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``folder/model`` and ``folder/trainer.pt`` (each atomically)."""
        from vqvae.files import save_torch_atomic

        root = Path(folder)
        self.model.save(root / "model")
        save_torch_atomic(root / "trainer.pt",
                                 {"optimizer": self.optimizer.state_dict(), "step": self.step,
                                  "config": dataclasses.asdict(self.config)})

    @classmethod
    def resume(cls, folder: str | os.PathLike[str], config: ImageTrainConfig,
               device: str | torch.device = "cpu") -> ImageCodecTrainer:
        """Continue the run saved in ``folder`` with ``config``."""
        from vqvae.files import read_trainer_state

        state = read_trainer_state(folder, CodecError, device)
        model = load_image_codec(Path(folder) / "model", device)
        trainer = cls(model, config)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = int(state["step"])
        return trainer


@torch.no_grad()
def reconstruction_psnr(model: ImageVQVAE, images: torch.Tensor, batch: int = 500
                        ) -> torch.Tensor:
    """``(n,)`` PSNR of each of ``images: (n, H, W)`` encoded and decoded (eval mode)."""
    model.eval()
    out = [psnr(model.decode(model.encode(part)).cpu(), part.float())
           for part in images.split(batch)]
    return torch.cat(out)
