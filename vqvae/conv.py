"""A small trainable 1-D convolutional VQ-VAE with an EMA codebook.

Encoder: one k7 conv at full rate (1 -> ``channels``), then one stage per stride (a strided
conv that doubles the channels, then two dilated residual units at the lower rate), then a
k3 conv to ``dim`` channels. The decoder mirrors it with transposed convs. The only full-rate
layers are the first and last convs (one input or output channel: cheap), and the channel
count doubles as the rate drops, so every stage costs about the same.

Quantiser: encoder outputs and codes are unit-normalised (nearest code = largest cosine);
codes follow exponential moving averages of the outputs assigned to them; a code unused for
a while is restarted on a random encoder output of the current batch; a commitment loss
pulls outputs towards their codes; gradients pass straight through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vqvae.codec import Codec
from vqvae.errors import CodecError


@dataclass(frozen=True)
class ConvVQVAEConfig:
    """Hyper-parameters of :class:`ConvVQVAE`.

    Attributes:
        sample_rate: waveform rate.
        hop_length: samples per token (product of ``strides``; default 64: 344.5 tokens/s
            at 22050 Hz, the token rate of Jukebox's top level).
        codebook_size: number of codes.
        dim: code and latent channels.
        channels: channels at full rate (doubled after every stride, capped at
            ``max_channels``).
        strides: downsampling factors (empty: derived from ``hop_length``).
        ema_decay: decay of the codebook's moving averages.
        dead_threshold: a code whose moving-average usage (assignments per step) falls below
            this is restarted (as Jukebox; with 16 x 1 s batches a code gets 5.4 on average).
        commitment: weight of the commitment loss.
    """

    sample_rate: int = 22050
    hop_length: int = 64
    codebook_size: int = 1024
    dim: int = 64
    channels: int = 32
    max_channels: int = 256
    strides: tuple[int, ...] = ()
    ema_decay: float = 0.99
    dead_threshold: float = 1.0
    commitment: float = 0.25

    def resolved_strides(self) -> tuple[int, ...]:
        """The strides: as given, or 4s then a 2 that multiply to ``hop_length``."""
        if self.strides:
            if math.prod(self.strides) != self.hop_length:
                raise CodecError(f"strides {self.strides} multiply to {math.prod(self.strides)}, "
                                 f"not hop_length {self.hop_length}")
            if any(s < 2 or s % 2 for s in self.strides):
                raise CodecError(f"strides must be even, got {self.strides}")
            return self.strides
        hop, out = self.hop_length, []
        while hop > 1 and hop % 4 == 0:
            out.append(4)
            hop //= 4
        if hop == 2:
            out.append(2)
            hop = 1
        if hop != 1 or not out:
            raise CodecError(f"hop_length must be a power of two >= 2, got {self.hop_length}")
        return tuple(out)


#: Latent vectors matched to the codebook per product (16384 x 1024 codes: 64 MB).
NEAREST_ROWS = 16384


class ResUnit(nn.Module):
    """``x + conv1x1(elu(conv3_dilated(elu(x))))`` on ``(batch, channels, time)``."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


def _gathered(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank of a data-parallel run concatenated in rank order along dim 0
    (the shares must have one shape); ``x`` itself in one process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class EMACodebook(nn.Module):
    """Unit-norm codebook ``(codes, dim)`` with EMA updates and dead-code restarts."""

    embedding: torch.Tensor
    usage: torch.Tensor
    embed_sum: torch.Tensor

    def __init__(self, codes: int, dim: int, decay: float, dead_threshold: float) -> None:
        super().__init__()
        self.decay, self.dead_threshold = decay, dead_threshold
        init = F.normalize(torch.randn(codes, dim), dim=-1)
        self.register_buffer("embedding", init)
        # Usage starts at zero: every code is restarted on real encoder outputs at step one.
        self.register_buffer("usage", torch.zeros(codes))
        self.register_buffer("embed_sum", init.clone())

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """``z: (n, dim)`` unit vectors -> ``(n,)`` codes of largest cosine (``NEAREST_ROWS``
        rows at a time: the similarities of a long input would otherwise take ``n * codes``
        floats at once)."""
        return torch.cat([(part @ self.embedding.t()).argmax(dim=-1)
                          for part in z.split(NEAREST_ROWS)]) if z.shape[0] else \
            torch.zeros(0, dtype=torch.long, device=z.device)

    @torch.no_grad()
    def update(self, z: torch.Tensor, codes: torch.Tensor, generator: torch.Generator | None
               ) -> int:
        """EMA step on ``z: (n, dim)`` assigned to ``codes: (n,)``; return restarted codes.

        Under torchrun the ranks' ``z`` and ``codes`` are gathered first (in rank order: the
        global batch), so every rank takes the same step, that of the whole batch."""
        z, codes = _gathered(z), _gathered(codes)
        onehot = F.one_hot(codes, self.embedding.shape[0]).to(z.dtype)
        self.usage.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
        self.embedding.copy_(F.normalize(self.embed_sum, dim=-1))
        dead = (self.usage < self.dead_threshold).nonzero().squeeze(1)
        if dead.numel():
            # A dead code moves onto a random output of this batch. Its usage is set to the
            # threshold, so it stays only if it keeps getting used: an unused code is moved
            # again on the next step instead of idling while the encoder drifts away.
            pick = torch.randint(0, z.shape[0], (dead.numel(),), generator=generator,
                                 device="cpu").to(z.device)
            self.usage[dead] = self.dead_threshold
            self.embedding[dead] = z[pick]
            self.embed_sum[dead] = z[pick] * self.dead_threshold
        return int(dead.numel())

    def straight_through(self, flat: torch.Tensor, commitment: float,
                         generator: torch.Generator | None) -> Quantised:
        """The quantiser's training step on encoder outputs ``flat: (n, dim)``: nearest codes
        (float32, also under autocast), the EMA update in training mode, the weighted
        commitment loss, the straight-through code vectors and the batch's code usage."""
        with torch.autocast(flat.device.type, enabled=False):
            codes = self.nearest(flat.detach())
            restarted = 0
            if self.training:
                restarted = self.update(flat.detach(), codes, generator)
        q = F.embedding(codes, self.embedding)
        commit = commitment * F.mse_loss(flat, q.detach())
        hist = torch.bincount(codes, minlength=self.embedding.shape[0]).float()
        p = hist / hist.sum()
        perplexity = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
        return Quantised(flat + (q - flat).detach(), codes, commit, perplexity,
                         int((hist > 0).sum()), restarted)


@dataclass(frozen=True)
class Quantised:
    """What :meth:`EMACodebook.straight_through` gives.

    Attributes:
        vectors: ``(n, dim)`` code vectors with the encoder outputs' gradient (straight
            through).
        codes: ``(n,)`` codes.
        commit_loss: scalar commitment loss (already weighted).
        perplexity: exp of the entropy of the batch's code histogram.
        used: distinct codes in the batch.
        restarted: codes restarted by the update (0 in eval mode).
    """

    vectors: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    perplexity: float
    used: int
    restarted: int


@dataclass(frozen=True)
class VQOutput:
    """What a training forward pass gives.

    Attributes:
        recon: ``(batch, time)`` reconstruction.
        codes: ``(batch, tokens)`` codes.
        commit_loss: scalar commitment loss (already weighted).
        perplexity: exp of the entropy of the batch's code histogram.
        used: distinct codes in the batch.
        restarted: codes restarted by this step's update (0 in eval mode).
    """

    recon: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    perplexity: float
    used: int
    restarted: int


class ConvVQVAE(Codec):
    """A small convolutional VQ-VAE (see the module docstring)."""

    config_class = ConvVQVAEConfig

    def __init__(self, config: ConvVQVAEConfig | None = None) -> None:
        super().__init__()
        cfg = config or ConvVQVAEConfig()
        strides = cfg.resolved_strides()
        if cfg.codebook_size < 2 or cfg.dim < 1:
            raise CodecError("codebook_size must be >= 2 and dim >= 1")
        self.config = cfg
        chans = [min(cfg.channels * 2 ** i, cfg.max_channels) for i in range(len(strides) + 1)]
        enc: list[nn.Module] = [nn.Conv1d(1, chans[0], 7, padding=3)]
        for i, s in enumerate(strides):
            enc += [nn.ELU(), nn.Conv1d(chans[i], chans[i + 1], 2 * s, stride=s, padding=s // 2),
                    ResUnit(chans[i + 1], 1), ResUnit(chans[i + 1], 3)]
        enc += [nn.ELU(), nn.Conv1d(chans[-1], cfg.dim, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(cfg.dim, chans[-1], 3, padding=1)]
        for i, s in reversed(list(enumerate(strides))):
            dec += [ResUnit(chans[i + 1], 1), ResUnit(chans[i + 1], 3), nn.ELU(),
                    nn.ConvTranspose1d(chans[i + 1], chans[i], 2 * s, stride=s, padding=s // 2)]
        dec += [nn.ELU(), nn.Conv1d(chans[0], 1, 7, padding=3)]
        self.decoder = nn.Sequential(*dec)
        self.codebook = EMACodebook(cfg.codebook_size, cfg.dim, cfg.ema_decay,
                                    cfg.dead_threshold)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def embedding_dim(self) -> int:
        return self.config.dim

    @property
    def decode_context(self) -> int:
        """The decoder's reach in tokens, rounded up, plus one: the first k3 conv (1 token),
        then per stage two residual units (dilations 1 and 3) and a transposed conv (one
        input position each side) at that stage's rate, and the last k7 conv (3 samples)."""
        reach, rate = 1.0, 1
        for s in reversed(self.config.resolved_strides()):
            reach += (1 + 3 + 1) / rate
            rate *= s
        return math.ceil(reach + 3 / rate) + 1

    @property
    def encode_context(self) -> int:
        """The encoder's reach in tokens, rounded up, plus one: the first k7 conv (3
        samples), then per stage a strided conv (one output position) and two residual
        units (dilations 1 and 3) at that stage's rate, and the last k3 conv (1 token): the
        decoder's reach mirrored."""
        return self.decode_context

    def latents(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave: (batch, time)`` -> unit-norm encoder outputs ``(batch, dim, tokens)``."""
        wave = self.check_wave(wave).to(self.device)
        pad = self.num_tokens(wave.shape[-1]) * self.hop_length - wave.shape[-1]
        z = self.encoder(F.pad(wave, (0, pad)).unsqueeze(1))
        return F.normalize(z, dim=1)

    @torch.no_grad()
    def quantise(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents
        b, d, t = z.shape
        return self.codebook.nearest(z.permute(0, 2, 1).reshape(-1, d)).view(b, t)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        codes = self.check_codes(codes).to(self.device)
        return F.embedding(codes, self.codebook.embedding).permute(0, 2, 1)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 3 or latents.shape[1] != self.embedding_dim:
            raise CodecError(f"latents must be (batch, {self.embedding_dim}, tokens), got "
                             f"{tuple(latents.shape)}")
        return self.decoder(latents).squeeze(1)

    def forward(self, wave: torch.Tensor, generator: torch.Generator | None = None
                ) -> VQOutput:
        """Training pass: ``wave: (batch, time)`` with ``time`` a multiple of the hop.

        In training mode the codebook takes an EMA step (and restarts dead codes).
        """
        if wave.shape[-1] % self.hop_length:
            raise CodecError(f"training chunks must be a multiple of hop {self.hop_length}")
        z = self.latents(wave).float()  # (the codebook works in float32, also under autocast)
        b, d, t = z.shape
        qz = self.codebook.straight_through(z.permute(0, 2, 1).reshape(-1, d),
                                            self.config.commitment, generator)
        recon = self.decode_latents(qz.vectors.view(b, t, d).permute(0, 2, 1))
        return VQOutput(recon, qz.codes.view(b, t), qz.commit_loss, qz.perplexity, qz.used,
                        qz.restarted)
