"""Training of :class:`~priors.transformer.TransformerPrior` (kept off the inference path).

Windows of ``context_length`` tokens are drawn from token streams (one per track) as a pure
function of ``(seed, step)``; the loss is the mean next-token cross-entropy. AdamW with
linear warm-up and cosine decay, gradient clipping, bf16 autocast on CUDA. A checkpoint is
``model/`` (the prior, ``save_pretrained`` format) plus ``trainer.pt`` (optimizer and step,
read with ``weights_only``), so a resumed run continues exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from priors.errors import PriorError
from priors.transformer import TransformerPrior, load_prior
from vqvae.files import read_trainer_state, save_torch_atomic


@dataclass(frozen=True)
class PriorTrainConfig:
    """Optimisation settings."""

    steps: int = 20000
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 200
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    bf16: bool | None = None  # bf16 autocast of the network (None: on CUDA only)


class TokenWindows:
    """Fixed-length windows of token streams, optionally labelled with a class.

    Args:
        streams: 1-D integer token arrays (one per track and stem).
        length: window length in tokens.
        classes: class index of each stream (``None``: unconditional).
    """

    def __init__(self, streams: Sequence[np.ndarray], length: int,
                 classes: Sequence[int] | None = None) -> None:
        self.streams = [np.asarray(s) for s in streams if len(s) >= length]
        keep = [i for i, s in enumerate(streams) if len(s) >= length]
        self.classes = None if classes is None else [int(classes[i]) for i in keep]
        if not self.streams:
            raise PriorError(f"no token stream holds a window of {length} tokens")
        self.length = length
        self.starts = np.array([len(s) - length + 1 for s in self.streams], dtype=np.int64)
        self.cumulative = np.cumsum(self.starts)

    def window(self, index: int) -> tuple[torch.Tensor, int | None]:
        """Window ``index`` of all ``sum(len - length + 1)`` windows, and its class."""
        stream = int(np.searchsorted(self.cumulative, index, side="right"))
        offset = index - (int(self.cumulative[stream - 1]) if stream else 0)
        tokens = torch.from_numpy(self.streams[stream][offset: offset + self.length].astype(
            np.int64))
        return tokens, None if self.classes is None else self.classes[stream]

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor,
                                                                  torch.Tensor | None]:
        """``(size, length)`` random windows and ``(size,)`` classes (or ``None``)."""
        picks = rng.integers(0, int(self.cumulative[-1]), size)
        items = [self.window(int(i)) for i in picks]
        codes = torch.stack([t for t, _ in items])
        if self.classes is None:
            return codes, None
        return codes, torch.tensor([c for _, c in items], dtype=torch.long)

    def _even_picks(self, count: int) -> np.ndarray:
        total = int(self.cumulative[-1])
        return np.linspace(0, total - 1, num=min(count, total)).astype(np.int64)

    def evenly_streams(self, count: int) -> np.ndarray:
        """Index (among the kept streams) of the stream of each of ``evenly(count)``."""
        return np.searchsorted(self.cumulative, self._even_picks(count), side="right")

    def evenly(self, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``count`` windows spread evenly over all windows (a fixed validation set)."""
        items = [self.window(int(i)) for i in self._even_picks(count)]
        codes = torch.stack([t for t, _ in items])
        if self.classes is None:
            return codes, None
        return codes, torch.tensor([c for _, c in items], dtype=torch.long)


class PriorTrainer:
    """Optimises a :class:`TransformerPrior`."""

    def __init__(self, prior: TransformerPrior, config: PriorTrainConfig) -> None:
        self.prior = prior.with_transformers()  # the library's network (dropout) for training
        # What the training steps call: the prior, or a DistributedDataParallel wrapping it
        # (set by the caller under torchrun; its forward is the prior's logits).
        self.network: torch.nn.Module = self.prior
        self.config = config
        self.step = 0
        self.optimizer = torch.optim.AdamW(self.prior.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to the final fraction."""
        c = self.config
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        progress = min((step - c.warmup) / max(c.steps - c.warmup, 1), 1.0)
        low = c.lr * c.final_lr_fraction
        return low + (c.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))

    def _loss(self, codes: torch.Tensor, classes: torch.Tensor | None,
              network: torch.nn.Module | None = None) -> torch.Tensor:
        device = self.prior.device
        bf16 = self.config.bf16 if self.config.bf16 is not None else device.type == "cuda"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = (network or self.prior)(codes.to(device), classes)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               codes.to(device).reshape(-1))

    def train_step(self, codes: torch.Tensor, classes: torch.Tensor | None = None) -> float:
        """One step on ``codes: (batch, tokens)`` (under torchrun: this rank's share of the
        global batch); returns the loss in bits per token (of this share)."""
        self.prior.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        loss = self._loss(codes, classes, self.network)
        if not torch.isfinite(loss):
            raise PriorError(f"training diverged at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.prior.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach()) / math.log(2)

    @torch.no_grad()
    def evaluate(self, codes: torch.Tensor, classes: torch.Tensor | None = None,
                 batch: int = 8) -> float:
        """Mean bits per token on ``codes: (n, tokens)`` (eval mode)."""
        self.prior.eval()
        total, count = 0.0, 0
        for i in range(0, codes.shape[0], batch):
            c = codes[i: i + batch]
            k = None if classes is None else classes[i: i + batch]
            total += float(self._loss(c, k)) * c.numel()
            count += c.numel()
        return total / count / math.log(2)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state, step and settings (weights are saved with the prior)."""
        return {"optimizer": self.optimizer.state_dict(), "step": self.step,
                "config": asdict(self.config)}

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``folder/model`` and ``folder/trainer.pt`` atomically."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        self.prior.save(root / "model")
        save_torch_atomic(root / "trainer.pt", self.state_dict())

    @classmethod
    def resume(cls, folder: str | os.PathLike[str], config: PriorTrainConfig,
               device: str | torch.device = "cpu") -> PriorTrainer:
        """Continue the run saved in ``folder``."""
        root = Path(folder)
        state = read_trainer_state(root, PriorError, device)
        prior = load_prior(root / "model", device=device, backend="transformers")
        trainer = cls(prior, config)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = int(state["step"])
        return trainer
