"""Training of :class:`~vqvae.conv.ConvVQVAE` (kept off the inference import path).

The trainer sees batches of waveforms only; which data they come from (stems, mixtures) is
the caller's business (``lass-train-vqvae`` builds them from a stem data set). Loss:
``wave_weight * normalised MSE`` (``10**(-SDR/10)``: phase-exact, dominant) +
``spec_weight * multi-resolution STFT loss`` + the commitment loss. AdamW with linear warm-up
and cosine decay, gradient clipping. A checkpoint is the codec directory (``model/``, the
inference format) plus ``trainer.pt`` (optimizer, step; loaded with ``weights_only``), so a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vqvae.codec import load_codec
from vqvae.conv import ConvVQVAE
from vqvae.errors import CodecError
from vqvae.files import read_trainer_state, save_torch_atomic
from vqvae.losses import multi_resolution_stft_loss, normalised_mse, sdr_db


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    steps: int = 20000
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 200
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    wave_weight: float = 1.0
    spec_weight: float = 0.02
    seed: int = 0
    bf16: bool | None = None  # bf16 autocast of the networks (None: on CUDA only)


@dataclass(frozen=True)
class StepStats:
    """Numbers of one training step."""

    step: int
    loss: float
    wave_loss: float
    spec_loss: float
    commit_loss: float
    sdr: float
    perplexity: float
    used: int
    restarted: int
    lr: float


class CodecTrainer:
    """Optimises a :class:`ConvVQVAE` one batch at a time.

    Args:
        model: the codec (its weights are the trainer's).
        config: optimisation settings.
    """

    def __init__(self, model: ConvVQVAE, config: TrainConfig) -> None:
        self.model = model
        # What the training steps call: the model, or a DistributedDataParallel wrapping it
        # (set by the caller under torchrun).
        self.network: torch.nn.Module = model
        self.config = config
        self.step = 0
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``: linear warm-up, then cosine down to the final fraction."""
        c = self.config
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        progress = min((step - c.warmup) / max(c.steps - c.warmup, 1), 1.0)
        low = c.lr * c.final_lr_fraction
        return low + (c.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))

    def train_step(self, wave: torch.Tensor) -> StepStats:
        """One optimisation step on ``wave: (batch, time)`` (time a multiple of the hop; under
        torchrun, this rank's share of the global batch: the codebook and the spectral
        convergence gather the other shares, so the step is that of the whole batch)."""
        c = self.config
        self.model.train()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(c.seed * 1_000_003 + self.step)
        wave = wave.to(self.model.device)
        device = wave.device.type
        bf16 = c.bf16 if c.bf16 is not None else device == "cuda"
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = self.network(wave, generator=gen)
        recon = out.recon.float()  # the losses in float32
        wave_loss = normalised_mse(recon, wave)
        spec_loss = (multi_resolution_stft_loss(recon, wave) if c.spec_weight > 0
                     else wave.new_zeros(()))
        loss = c.wave_weight * wave_loss + c.spec_weight * spec_loss + out.commit_loss
        if not torch.isfinite(loss):
            raise CodecError(f"training diverged at step {self.step} (loss {float(loss)})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.step += 1
        with torch.no_grad():
            sdr = float(sdr_db(recon, wave).mean())
        return StepStats(self.step, float(loss.detach()), float(wave_loss.detach()),
                         float(spec_loss.detach()), float(out.commit_loss.detach()), sdr,
                         out.perplexity, out.used, out.restarted, lr)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state, step and settings (the weights are saved with the model)."""
        return {"optimizer": self.optimizer.state_dict(), "step": self.step,
                "config": asdict(self.config)}

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``folder/model`` (codec format) and ``folder/trainer.pt`` atomically."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        self.model.save(root / "model")
        save_torch_atomic(root / "trainer.pt", self.state_dict())

    @classmethod
    def resume(cls, folder: str | os.PathLike[str], config: TrainConfig,
               device: str | torch.device = "cpu") -> CodecTrainer:
        """Load ``folder/model`` and ``folder/trainer.pt``; continue with ``config``."""
        root = Path(folder)
        state = read_trainer_state(root, CodecError, device)
        model = load_codec(root / "model", device=device)
        if not isinstance(model, ConvVQVAE):
            raise CodecError(f"{root / 'model'} holds a {type(model).__name__}, not a ConvVQVAE")
        trainer = cls(model, config)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = int(state["step"])
        return trainer


@torch.no_grad()
def reconstruction_sdr(model: ConvVQVAE, wave: torch.Tensor, batch: int = 16
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode and decode ``wave: (n, time)`` in eval mode.

    Returns:
        ``(n,)`` plain SDR in dB of each reconstruction and ``(n, tokens)`` its codes.
    """
    model.eval()
    sdrs, codes = [], []
    for i in range(0, wave.shape[0], batch):
        x = wave[i: i + batch].to(model.device)
        c = model.encode(x)
        y = model.decode(c)[:, : x.shape[-1]]
        sdrs.append(sdr_db(y, x).cpu())
        codes.append(c.cpu())
    return torch.cat(sdrs), torch.cat(codes)


def perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the histogram of ``codes`` (any shape)."""
    hist = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = hist / hist.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
