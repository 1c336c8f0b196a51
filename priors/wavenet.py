"""A noise-conditioned WaveNet over raw samples: the data-domain prior of PnF-style Langevin
separation.

Samples in [-1, 1] are quantised linearly to 256 bins (8 bits, bin centres
``c_b = -1 + (2b + 1) / 256``); the network reads the (noisy) samples as scalars and gives a
256-way softmax over the clean bin of the next sample. It is conditioned on the noise level
``sigma`` (in signal units; one bin is 1/128) by a learned embedding of ``log sigma`` added to
every layer's gate, and trained on ``x + sigma z`` with clean targets, so one network serves
every level of the annealing schedule (PnF fine-tunes one copy per level instead).

Its smoothed log-likelihood at ``sigma`` is exact: the density of the next sample is the
softmax-weighted mixture of Gaussians ``N(c_b, sigma^2)`` over the bins, so

    log p_sigma(x) = sum_t logsumexp_b [ log pi_b(x_<t, sigma) + log N(x_t; c_b, sigma^2) ],

and its gradient with respect to the whole input takes one teacher-forced forward and one
backward (:meth:`WaveNetPrior.score`).

Architecture (PnF's): stacks of dilated causal convolutions (kernel 3, dilations 1..512 per
stack), gated tanh x sigmoid units, residual and skip 1x1 convolutions, two ReLU 1x1 output
layers. Receptive field ``(kernel - 1) * sum(dilations) + 1`` samples (6139 for 3 stacks).
Saved as ``config.json`` + ``model.safetensors``; :func:`load_wavenet` loads it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from priors.errors import PriorError
from vqvae.files import write_dir_atomically

BINS = 256
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def bin_centres(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                ) -> torch.Tensor:
    """``(256,)`` centres of the linear 8-bit bins over [-1, 1]."""
    return -1.0 + (2.0 * torch.arange(BINS, device=device, dtype=dtype) + 1.0) / BINS


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Bin index (int64) of samples in [-1, 1] (values outside are clipped)."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * (BINS / 2)).floor().clamp(0, BINS - 1).long()


@dataclass(frozen=True)
class WaveNetConfig:
    """Size of a :class:`WaveNetPrior`.

    Attributes:
        stacks: stacks of dilated layers; each has dilations ``1, 2, ..., 2**(layers-1)``.
        layers: dilated layers per stack (10: dilations up to 512).
        kernel: kernel size of the dilated convolutions.
        residual, gate, skip: channels (the gate convolution gives ``gate`` channels, half
            tanh, half sigmoid).
        sigma_embedding: size of the noise-level embedding.
        sample_rate: rate of the audio it models.
        class_name: the stem class it was trained on.
    """

    stacks: int = 3
    layers: int = 10
    kernel: int = 3
    residual: int = 128
    gate: int = 256
    skip: int = 128
    sigma_embedding: int = 32
    sample_rate: int = 22050
    class_name: str = ""

    @property
    def dilations(self) -> list[int]:
        return [2**i for _ in range(self.stacks) for i in range(self.layers)]

    @property
    def receptive_field(self) -> int:
        """Samples of the past a prediction sees (the sample itself excluded): PnF's 6139."""
        return (self.kernel - 1) * sum(self.dilations) + 1


class _Layer(nn.Module):
    def __init__(self, cfg: WaveNetConfig, dilation: int) -> None:
        super().__init__()
        self.pad = (cfg.kernel - 1) * dilation
        self.conv = nn.Conv1d(cfg.residual, cfg.gate, cfg.kernel, dilation=dilation)
        self.cond = nn.Linear(cfg.sigma_embedding, cfg.gate)
        self.res = nn.Conv1d(cfg.gate // 2, cfg.residual, 1)
        self.skip = nn.Conv1d(cfg.gate // 2, cfg.skip, 1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.conv(F.pad(h, (self.pad, 0))) + self.cond(emb)[:, :, None]
        a, b = z.chunk(2, dim=1)
        g = torch.tanh(a) * torch.sigmoid(b)
        return h + self.res(g), self.skip(g)


class WaveNetPrior(nn.Module):
    """A noise-conditioned WaveNet (see the module docstring)."""

    def __init__(self, config: WaveNetConfig) -> None:
        super().__init__()
        if config.gate % 2 or config.kernel < 2 or config.stacks < 1 or config.layers < 1:
            raise PriorError("WaveNet needs an even gate size, kernel >= 2 and >= 1 layer")
        self.config = config
        self.input = nn.Conv1d(1, config.residual, 1)
        self.sigma_in = nn.Linear(1, config.sigma_embedding)
        self.layers = nn.ModuleList(_Layer(config, d) for d in config.dilations)
        self.out1 = nn.Conv1d(config.skip, config.skip, 1)
        self.out2 = nn.Conv1d(config.skip, BINS, 1)

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _embed(self, sigma: torch.Tensor | float, batch: int, like: torch.Tensor
               ) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(batch)
        if s.numel() != batch or not bool((s > 0).all()):
            raise PriorError("sigma must be positive, one value or one per batch row")
        return torch.tanh(self.sigma_in(torch.log(s)[:, None]))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """:meth:`logits` (what a training wrapper such as DistributedDataParallel calls)."""
        return self.logits(x, sigma)

    def logits(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``x: (batch, time)`` (noisy) samples -> ``(batch, 256, time)`` logits of each
        sample's clean bin given the samples before it (teacher forcing)."""
        if x.dim() != 2:
            raise PriorError(f"expected (batch, time) samples, got {tuple(x.shape)}")
        emb = self._embed(sigma, x.shape[0], x)
        h = self.input(F.pad(x, (1, -1))[:, None])  # shift right: position t sees x_<t
        skips = torch.zeros((), dtype=x.dtype, device=x.device)
        for layer in self.layers:
            h, s = layer(h, emb)
            skips = skips + s
        return self.out2(F.relu(self.out1(F.relu(skips))))

    def smoothed_log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``(batch,)`` exact log-density of ``x: (batch, time)`` under the model smoothed by
        ``N(0, sigma^2)``: the softmax over bins against a Gaussian at each bin centre."""
        logp = F.log_softmax(self.logits(x, sigma), dim=1)  # (B, 256, T)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        c = bin_centres(x.device, x.dtype)[None, :, None]
        log_gauss = (-0.5 * ((x[:, None, :] - c) / s) ** 2 - torch.log(s)
                     - 0.5 * math.log(2 * math.pi))
        return torch.logsumexp(logp + log_gauss, dim=1).sum(-1)

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p_sigma(x) (batch,), d log p_sigma / dx (batch, time))``: one forward, one
        backward through the whole input."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = self.smoothed_log_prob(xg, sigma)
            (grad,) = torch.autograd.grad(logp.sum(), xg)
        return logp.detach(), grad

    def loss(self, clean: torch.Tensor, sigma: torch.Tensor, skip: int = 0,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss (nats per sample): cross-entropy of the clean bins given
        ``clean + sigma z`` with ``sigma: (batch,)``, over the samples after the first
        ``skip`` (those that see a full receptive field)."""
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype,
                            device=clean.device)
        logits = self.logits(clean + sigma[:, None] * noise, sigma)
        return F.cross_entropy(logits[..., skip:], quantise(clean)[:, skip:])

    # -- storage --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``path`` atomically."""
        def fill(tmp: Path) -> None:
            meta = {"format_version": FORMAT_VERSION, "class": type(self).__name__,
                    **asdict(self.config)}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                      str(tmp / WEIGHTS_FILE))

        return write_dir_atomically(path, fill)


def load_wavenet(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                 ) -> WaveNetPrior:
    """Load a :class:`WaveNetPrior` saved with :meth:`WaveNetPrior.save`, in eval mode."""
    root = Path(path)
    cfg_path = root / CONFIG_FILE
    try:
        meta: Any = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PriorError(f"{root} is not a saved WaveNet prior ({err})") from None
    if not isinstance(meta, dict) or meta.get("class") != WaveNetPrior.__name__ or \
            meta.get("format_version") != FORMAT_VERSION:
        raise PriorError(f"{cfg_path}: not a WaveNet prior of a supported format")
    fields = {k: v for k, v in meta.items() if k not in ("format_version", "class")}
    try:
        model = WaveNetPrior(WaveNetConfig(**fields))
        state = load_file(str(root / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (TypeError, OSError, RuntimeError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PriorError(f"cannot load the WaveNet in {root}: {first}") from None
    return model.to(device).eval()
