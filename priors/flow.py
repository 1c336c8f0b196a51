"""A normalizing-flow prior over raw audio windows (FloWaveNet-style), noise-conditioned.

The flow maps a mono window ``x: (batch, time)`` to ``z`` of the same size, invertibly, with
a tractable log-determinant, so the exact log-likelihood is

    log p(x) = log N(z; 0, I) + log |det dz/dx|,

its gradient with respect to ``x`` takes one backward pass (:meth:`FlowPrior.score`), and a
sample is the inverse of Gaussian noise (:meth:`FlowPrior.sample`).

Architecture (the thesis' figure 3, after FloWaveNet): ``blocks`` blocks; each block first
*squeezes* time into channels, ``(B, C, T) -> (B, 2C, T/2)``, the first ``C`` channels the
even samples and the last ``C`` the odd ones; then ``flows`` flows, each an activation
normalisation (per-channel scale and shift, initialised from the first training batch) and
an affine coupling: a non-causal WaveNet over the first half of the channels (at the first
flow, the even samples) gives the log-scale and shift of the second half (the odd samples);
after each flow the halves swap, so the mask is inverted. The coupling's last layer starts
at zero, so an untrained flow is the identity up to the normalisations. The log-scale is
bounded (``2 tanh(./2)``) for stable training.

Noise conditioning: the couplings also see an embedding of ``log sigma``, and training draws
``sigma`` log-uniformly and models ``x + sigma n`` (``n ~ N(0, I)``), so one network is the
prior smoothed at every level of an annealing schedule, and at the smallest level the prior
of clean audio (what plain SGLD uses). A window's length must be a multiple of
``2**blocks``; :meth:`FlowPrior.score` pads other lengths with zeros and drops the pad.

Saved as ``config.json`` + ``model.safetensors``; :func:`load_flow` loads it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from priors.errors import PriorError
from vqvae.files import write_dir_atomically

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class FlowConfig:
    """Size of a :class:`FlowPrior`.

    Attributes:
        blocks: squeeze-then-flows blocks (a window's length must divide by ``2**blocks``).
        flows: flows per block.
        layers: dilated layers of each coupling's WaveNet (dilations 1, 2, 4, ...).
        hidden: channels of the coupling WaveNets.
        kernel: their kernel size (odd).
        sigma_embedding: size of the noise-level embedding.
        sample_rate: of the audio it models.
        class_name: the source it models.
        sigma_range: ``(lo, hi)`` noise levels it was trained on (signal units).
    """

    blocks: int = 3
    flows: int = 4
    layers: int = 4
    hidden: int = 32
    kernel: int = 3
    sigma_embedding: int = 16
    sample_rate: int = 22050
    class_name: str = ""
    sigma_range: tuple[float, float] = (1e-3, 0.5)

    @property
    def multiple(self) -> int:
        """A window's length must be a multiple of this."""
        return 2 ** self.blocks


class ActNorm(nn.Module):
    """Per-channel affine ``y = (x + loc) * exp(log_scale)``, initialised on the first
    training batch so that its output has zero mean and unit variance per channel."""

    initialised: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1))
        self.register_buffer("initialised", torch.tensor(False))

    @torch.no_grad()
    def _initialise(self, x: torch.Tensor) -> None:
        # Per-channel count, sum and sum of squares; under torchrun summed over the ranks,
        # so every rank starts from the statistics of the whole batch.
        stats = torch.stack([torch.full_like(x[0, :, 0], x.shape[0] * x.shape[2]),
                             x.sum(dim=(0, 2)), x.pow(2).sum(dim=(0, 2))])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        n, total, squares = stats
        mean = (total / n)[None, :, None]
        var = ((squares - n * (total / n) ** 2) / (n - 1).clamp_min(1))[None, :, None]
        std = var.clamp_min(0).sqrt()
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialised.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log-determinant (batch,))``."""
        if self.training and not bool(self.initialised):
            self._initialise(x)
        y = (x + self.loc) * torch.exp(self.log_scale)
        logdet = self.log_scale.sum() * x.shape[-1]
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.loc


class CouplingNet(nn.Module):
    """Non-causal WaveNet ``(B, C_in, T) -> (B, C_out, T)`` with gated units, residual and
    skip connections and a noise-level bias in every gate; its output layer starts at 0."""

    def __init__(self, c_in: int, c_out: int, cfg: FlowConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.start = nn.Conv1d(c_in, h, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(h, 2 * h, cfg.kernel, dilation=2 ** i, padding=(cfg.kernel // 2) * 2 ** i)
            for i in range(cfg.layers))
        self.cond = nn.ModuleList(nn.Linear(cfg.sigma_embedding, 2 * h) for _ in range(cfg.layers))
        self.res = nn.ModuleList(nn.Conv1d(h, h, 1) for _ in range(cfg.layers))
        self.skip = nn.ModuleList(nn.Conv1d(h, h, 1) for _ in range(cfg.layers))
        self.end = nn.Conv1d(h, c_out, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)  # type: ignore[arg-type]  # (a bias exists)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.start(x)
        total = torch.zeros_like(h)
        for conv, cond, res, skip in zip(self.dilated, self.cond, self.res, self.skip,
                                         strict=True):
            a, b = (conv(h) + cond(emb)[:, :, None]).chunk(2, dim=1)
            g = torch.tanh(a) * torch.sigmoid(b)
            h = h + res(g)
            total = total + skip(g)
        return self.end(F.relu(total))


class Coupling(nn.Module):
    """Affine coupling: the second half of the channels scaled and shifted by a
    :class:`CouplingNet` of the first half."""

    def __init__(self, channels: int, cfg: FlowConfig) -> None:
        super().__init__()
        self.split = channels // 2
        self.net = CouplingNet(self.split, 2 * (channels - self.split), cfg)

    def _scale_shift(self, xa: torch.Tensor, emb: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(xa, emb).chunk(2, dim=1)
        return 2 * torch.tanh(raw_s / 2), t

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, : self.split], x[:, self.split:]
        log_s, t = self._scale_shift(xa, emb)
        yb = xb * torch.exp(log_s) + t
        # Swap the halves: the next flow transforms what this one conditioned on.
        return torch.cat([yb, xa], dim=1), log_s.sum(dim=(1, 2))

    def inverse(self, y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        yb, xa = y[:, : y.shape[1] - self.split], y[:, y.shape[1] - self.split:]
        log_s, t = self._scale_shift(xa, emb)
        return torch.cat([xa, (yb - t) * torch.exp(-log_s)], dim=1)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T) -> (B, 2C, T/2)``: the first C channels the even samples, then the odd."""
    b, c, t = x.shape
    return x.view(b, c, t // 2, 2).permute(0, 3, 1, 2).reshape(b, 2 * c, t // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`."""
    b, c2, t = x.shape
    return x.view(b, 2, c2 // 2, t).permute(0, 2, 3, 1).reshape(b, c2 // 2, 2 * t)


class FlowPrior(nn.Module):
    """The flow prior (see the module docstring)."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        if config.blocks < 1 or config.flows < 1 or config.layers < 1 or config.kernel % 2 == 0:
            raise PriorError("a flow needs >= 1 block, flow and layer and an odd kernel")
        self.config = config
        self.sigma_in = nn.Linear(1, config.sigma_embedding)
        self.norms = nn.ModuleList()
        self.couplings = nn.ModuleList()
        for b in range(config.blocks):
            channels = 2 ** (b + 1)
            for _ in range(config.flows):
                self.norms.append(ActNorm(channels))
                self.couplings.append(Coupling(channels, config))

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

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[-1] % self.config.multiple or x.shape[-1] == 0:
            raise PriorError(f"windows must be (batch, time) with time a multiple of "
                             f"{self.config.multiple}, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: (batch, time)`` -> ``z: (batch, C, T')`` (all ``time`` values) and the
        log-determinant ``(batch,)`` at noise level ``sigma``."""
        self._check(x)
        emb = self._embed(sigma, x.shape[0], x)
        h = x[:, None]
        logdet = x.new_zeros(x.shape[0])
        for i, (norm, coupling) in enumerate(self._flows()):
            if i % self.config.flows == 0:  # a block starts
                h = squeeze(h)
            h, ld_norm = norm(h)
            h, ld_coupling = coupling(h, emb)
            logdet = logdet + ld_norm + ld_coupling
        return h, logdet

    def _flows(self) -> list[tuple[ActNorm, Coupling]]:
        """The (normalisation, coupling) pairs in order."""
        return [(cast(ActNorm, n), cast(Coupling, c))
                for n, c in zip(self.norms, self.couplings, strict=True)]

    def inverse(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``z: (batch, C, T')`` -> ``x: (batch, time)``."""
        emb = self._embed(sigma, z.shape[0], z)
        h = z
        for i, (norm, coupling) in reversed(list(enumerate(self._flows()))):
            h = norm.inverse(coupling.inverse(h, emb))
            if i % self.config.flows == 0:  # back through a block's squeeze
                h = unsqueeze(h)
        return h[:, 0]

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``(batch,)`` log-density (nats) of ``x: (batch, time)`` under the prior smoothed
        at ``sigma``."""
        z, logdet = self(x, sigma)
        return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=(1, 2)) + logdet

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p_sigma(x) (batch,), d log p_sigma / dx (batch, time))`` for any length
        (zero-padded to a multiple of ``2**blocks``; the pad's gradient is dropped)."""
        n = x.shape[-1]
        pad = (-n) % self.config.multiple
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = self.log_prob(F.pad(xg, (0, pad)), sigma)
            (grad,) = torch.autograd.grad(logp.sum(), xg)
        return logp.detach(), grad

    def loss(self, clean: torch.Tensor, sigma: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss: negative log-likelihood of ``clean + sigma n`` (nats per sample),
        ``sigma: (batch,)``."""
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype,
                            device=clean.device)
        return -self.log_prob(clean + sigma[:, None] * noise, sigma).mean() / clean.shape[-1]

    @torch.no_grad()
    def sample(self, batch: int, time: int, sigma: float | None = None,
               temperature: float = 1.0, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """``(batch, time)`` samples at noise level ``sigma`` (default: the smallest trained)."""
        if time % self.config.multiple:
            raise PriorError(f"time must be a multiple of {self.config.multiple}")
        k = self.config.blocks
        z = torch.randn(batch, 2 ** k, time // 2 ** k, generator=generator,
                        device=self.device) * temperature
        return self.inverse(z, self.config.sigma_range[0] if sigma is None else sigma)

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


def load_flow(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> FlowPrior:
    """Load a :class:`FlowPrior` saved with :meth:`FlowPrior.save`, in eval mode."""
    root = Path(path)
    cfg_path = root / CONFIG_FILE
    try:
        meta: Any = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PriorError(f"{root} is not a saved flow prior ({err})") from None
    if not isinstance(meta, dict) or meta.get("class") != FlowPrior.__name__ or \
            meta.get("format_version") != FORMAT_VERSION:
        raise PriorError(f"{cfg_path}: not a flow prior of a supported format")
    fields = {k: v for k, v in meta.items() if k not in ("format_version", "class")}
    if "sigma_range" in fields:
        fields["sigma_range"] = tuple(fields["sigma_range"])
    try:
        model = FlowPrior(FlowConfig(**fields))
        state = load_file(str(root / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (TypeError, OSError, RuntimeError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PriorError(f"cannot load the flow in {root}: {first}") from None
    return model.to(device).eval()
