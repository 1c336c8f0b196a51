"""A supervised reference: a small Conv-TasNet trained on the same stems as the priors.

The LASS paper compares generative separation with supervised networks trained on the
mixtures and their stems. This is that reference for the toolkit's data sets: Conv-TasNet
(Luo and Mesgarani, 2019) as the paper describes it, a learned encoder (a 1-D convolution
of ``filters`` filters of ``kernel`` samples, stride ``kernel // 2``), a temporal
convolutional network that estimates one mask per stem (layer norm, a bottleneck,
``stacks`` stacks of ``layers`` dilated depthwise-separable blocks with PReLU, residual and
skip paths, sigmoid masks), and a transposed-convolution decoder. torchaudio holds a
definition of it, but its wheels are compiled against one torch release each and none loads
with the torch this project pins, so the network is written here, in the paper's terms.

The stems it outputs are contributions that add up to the input: whatever the decoder
leaves unexplained is shared equally among them. Training (``lass-train-supervised``)
minimises the negative SI-SDR of each stem against the source's contribution to the
mixture (the source times the mixing rule's gain).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lass.errors import LassError
from vqvae.files import write_dir_atomically

CONFIG_FILE = "supervised.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ConvTasNetConfig:
    """Sizes of a :class:`ConvTasNet` (the paper's N, L, B, H, Sc, P, X, R)."""

    stems: tuple[str, ...] = ("drums", "bass")
    sample_rate: int = 22050
    filters: int = 128
    kernel: int = 32
    bottleneck: int = 64
    hidden: int = 128
    skip: int = 64
    conv_kernel: int = 3
    layers: int = 6
    stacks: int = 2

    def check(self) -> None:
        """Raise :class:`LassError` for sizes that do not make a network."""
        if len(self.stems) < 2 or len(set(self.stems)) != len(self.stems):
            raise LassError(f"a separator needs two or more distinct stems, got "
                            f"{list(self.stems)}")
        if self.kernel < 2 or self.kernel % 2:
            raise LassError(f"the encoder kernel must be even and >= 2, got {self.kernel}")
        if min(self.filters, self.bottleneck, self.hidden, self.skip, self.layers,
               self.stacks) < 1 or self.conv_kernel < 1:
            raise LassError("every size of the network must be at least 1")

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample depends on (encoder, TCN and decoder)."""
        frames = 1 + (self.conv_kernel - 1) * self.stacks * sum(2 ** i for i in
                                                                range(self.layers))
        return (frames + 1) * (self.kernel // 2)


class FrameLayerNorm(nn.Module):
    """Layer normalisation over the channels of each frame of ``(batch, channels, frames)``.

    The paper's non-causal network normalises over channels and time (gLN); normalising each
    frame alone keeps every output sample a function of a finite stretch of input
    (:attr:`ConvTasNetConfig.receptive_field`), so a long input separated in segments gives
    what one pass would."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class TCNBlock(nn.Module):
    """1x1 conv, PReLU, norm, dilated depthwise conv, PReLU, norm; residual and skip 1x1."""

    def __init__(self, cfg: ConvTasNetConfig, dilation: int) -> None:
        super().__init__()
        pad = (cfg.conv_kernel - 1) * dilation // 2
        self.net = nn.Sequential(
            nn.Conv1d(cfg.bottleneck, cfg.hidden, 1), nn.PReLU(), FrameLayerNorm(cfg.hidden),
            nn.Conv1d(cfg.hidden, cfg.hidden, cfg.conv_kernel, dilation=dilation, padding=pad,
                      groups=cfg.hidden),
            nn.PReLU(), FrameLayerNorm(cfg.hidden))
        self.residual = nn.Conv1d(cfg.hidden, cfg.bottleneck, 1)
        self.skip = nn.Conv1d(cfg.hidden, cfg.skip, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return x + self.residual(h), self.skip(h)


class ConvTasNet(nn.Module):
    """``(batch, time)`` mixtures -> ``(batch, stems, time)`` contributions."""

    def __init__(self, config: ConvTasNetConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        c = config
        self.encoder = nn.Conv1d(1, c.filters, c.kernel, stride=c.kernel // 2, bias=False)
        self.norm = FrameLayerNorm(c.filters)
        self.bottleneck = nn.Conv1d(c.filters, c.bottleneck, 1)
        self.blocks = nn.ModuleList(TCNBlock(c, 2 ** i) for _ in range(c.stacks)
                                    for i in range(c.layers))
        self.masks = nn.Sequential(nn.PReLU(), nn.Conv1d(c.skip, len(c.stems) * c.filters, 1))
        self.decoder = nn.ConvTranspose1d(c.filters, 1, c.kernel, stride=c.kernel // 2,
                                          bias=False)

    @property
    def stems(self) -> tuple[str, ...]:
        """The stems, in output order."""
        return self.config.stems

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        if mixture.dim() != 2:
            raise LassError(f"mixtures must be (batch, time), got {tuple(mixture.shape)}")
        n, stride = mixture.shape[1], self.config.kernel // 2
        pad = (-n) % stride + stride  # whole frames, and the decoder's overlap at the end
        x = F.pad(mixture, (0, pad)).unsqueeze(1)
        w = F.relu(self.encoder(x))  # (batch, filters, frames)
        h = self.bottleneck(self.norm(w))
        skips = torch.zeros(h.shape[0], self.config.skip, h.shape[2], device=h.device,
                            dtype=h.dtype)
        for block in self.blocks:
            h, s = block(h)
            skips = skips + s
        k = len(self.config.stems)
        m = torch.sigmoid(self.masks(skips)).view(h.shape[0], k, self.config.filters, -1)
        est = self.decoder((m * w.unsqueeze(1)).flatten(0, 1)).view(h.shape[0], k, -1)
        est = est[..., :n]
        # Contributions that add up to the input: share what is left equally.
        return est + (mixture - est.sum(1)).unsqueeze(1) / k

    @torch.no_grad()
    def separate(self, mixture: np.ndarray, segment_seconds: float = 10.0) -> np.ndarray:
        """``(time,)`` -> ``(stems, time)`` float32, in segments with margins of the network's
        receptive field (so memory does not grow with the input)."""
        x = torch.from_numpy(np.asarray(mixture, dtype=np.float32)).to(self.device)
        n = x.shape[0]
        seg = max(1, int(segment_seconds * self.config.sample_rate))
        margin = self.config.receptive_field
        out = np.zeros((len(self.stems), n), dtype=np.float32)
        for a in range(0, n, seg):
            b = min(n, a + seg)
            lo, hi = max(0, a - margin), min(n, b + margin)
            part = self(x[None, lo:hi])[0].cpu().numpy()
            out[:, a:b] = part[:, a - lo: b - lo]
        return out

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the weights and ``supervised.json`` into the folder ``path`` atomically."""
        def fill(tmp: Path) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                      str(tmp / WEIGHTS_FILE))
            meta = {"format_version": FORMAT_VERSION, "class": type(self).__name__,
                    **{k: list(v) if isinstance(v, tuple) else v
                       for k, v in asdict(self.config).items()}}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")

        return write_dir_atomically(path, fill)


def load_supervised(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                    ) -> ConvTasNet:
    """Load a network saved with :meth:`ConvTasNet.save`, in eval mode (one clear error line
    for a missing, corrupt or truncated folder)."""
    root = Path(path)
    meta_path, weights = root / CONFIG_FILE, root / WEIGHTS_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise LassError(f"{root} is not a saved supervised separator (needs {CONFIG_FILE} and "
                        f"{WEIGHTS_FILE})")
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.pop("format_version", None) != FORMAT_VERSION or \
                meta.pop("class", None) != ConvTasNet.__name__:
            raise ValueError("unsupported format")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in meta.items()}
        config = ConvTasNetConfig(**fields)
        net = ConvTasNet(config)
        net.load_state_dict(load_file(str(weights)), strict=True)
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as err:
        raise LassError(f"cannot load the supervised separator in {root}: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                        ) from None
    return net.to(device).eval()


def si_sdr_loss(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8,
                across_ranks: bool = False) -> torch.Tensor:
    """Mean negative SI-SDR (dB) of ``(batch, stems, time)`` estimates; silent targets are
    left out (their SI-SDR is undefined). ``across_ranks`` (training under torchrun, each
    rank passing its share of the batch; every rank must call): the silence threshold and
    the count of kept items are those of the whole batch, and the loss is scaled so that
    averaging the ranks' gradients gives the whole batch's."""
    target = target - target.mean(-1, keepdim=True)
    estimate = estimate - estimate.mean(-1, keepdim=True)
    power = (target ** 2).sum(-1)
    scale = (estimate * target).sum(-1, keepdim=True) / (power.unsqueeze(-1) + eps)
    projection = scale * target
    noise = estimate - projection
    ratio = (projection ** 2).sum(-1) / ((noise ** 2).sum(-1) + eps)
    sdr = 10 * torch.log10(ratio + eps)
    peak = power.max().detach()
    world = (dist.get_world_size() if across_ranks and dist.is_available()
             and dist.is_initialized() else 1)
    if world > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    keep = power > 1e-6 * peak.clamp_min(eps)
    count = keep.sum().to(sdr.dtype)
    if world > 1:
        dist.all_reduce(count)
    if not bool(count > 0):
        return -(sdr.mean() * 0)
    return -(sdr[keep].sum() * world / count)
