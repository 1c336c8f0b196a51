"""A re-implementation of OpenAI Jukebox's ``vqvae`` preset that loads ``vqvae.pth.tar``.

Module nesting mirrors the original so the checkpoint's 669 keys load with ``strict=True``:

* ``encoders[L]`` (for level ``L``) stacks level blocks ``0..L``; block ``l`` is ``downs_t[l]``
  stages of ``[Conv1d k4 s2 p1, Resnet1D]`` then ``Conv1d k3`` to ``emb_width`` channels.
* ``decoders[L]`` stacks level blocks ``0..L`` (run from ``L`` down to ``0``); block ``l`` is
  ``Conv1d k3`` from ``emb_width`` then ``downs_t[l]`` stages of
  ``[Resnet1D (reversed dilations), ConvTranspose1d k4 s2 p1]``; then ``out``: Conv1d k3 to 1.
* Level ``L`` uses width and depth multiplied by ``multipliers[L]``; a residual block is
  ``x + conv1x1(relu(conv3_dilated(relu(x))))`` with dilation ``3**depth``.
* ``bottleneck.level_blocks[L].k``: the ``(2048, 64)`` codebook; a latent's code is the
  argmin of ``|x|^2 - 2 x.k + |k|^2`` in float32, as in the original.

Only the chosen level's encoder, codebook and decoder are used (hops 8, 32, 128 at 44.1 kHz).
Waveforms at another rate are resampled to 44.1 kHz for encoding and back after decoding
(windowed-sinc resampling from ``julius``, differentiable and on the model's device).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import julius
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vqvae.codec import Codec, load_state_strict
from vqvae.errors import CodecError

JUKEBOX_SAMPLE_RATE = 44100


@dataclass(frozen=True)
class JukeboxConfig:
    """Hyper-parameters of the Jukebox VQ-VAE (defaults: the ``vqvae`` preset)."""

    level: int = 2
    sample_rate: int = JUKEBOX_SAMPLE_RATE  # rate of the codec's input and output
    levels: int = 3
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    emb_width: int = 64
    l_bins: int = 2048
    width: int = 32
    depth: int = 4
    m_conv: float = 1.0
    dilation_growth_rate: int = 3
    multipliers: tuple[int, ...] = (2, 1, 1)
    reverse_decoder_dilation: bool = True


class ResConv1DBlock(nn.Module):
    """``x + conv1x1(relu(conv3_dilated(relu(x))))`` on ``(batch, width, time)``."""

    def __init__(self, width: int, state: int, dilation: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.ReLU(), nn.Conv1d(width, state, 3, 1, dilation, dilation),
                                   nn.ReLU(), nn.Conv1d(state, width, 1, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.model(x)


class Resnet1D(nn.Module):
    """``depth`` residual blocks with dilations ``growth**d`` (optionally reversed)."""

    def __init__(self, width: int, depth: int, m_conv: float, growth: int,
                 reverse: bool = False) -> None:
        super().__init__()
        blocks = [ResConv1DBlock(width, int(m_conv * width), growth ** d) for d in range(depth)]
        self.model = nn.Sequential(*(blocks[::-1] if reverse else blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class EncoderConvBlock(nn.Module):
    """``down_t`` stride-2 stages, then a k3 conv to ``emb`` channels: ``(B, c_in, T)`` ->
    ``(B, emb, T / 2**down_t)``."""

    def __init__(self, c_in: int, emb: int, down_t: int, width: int, depth: int, m_conv: float,
                 growth: int) -> None:
        super().__init__()
        stages: list[nn.Module] = [
            nn.Sequential(nn.Conv1d(c_in if i == 0 else width, width, 4, 2, 1),
                          Resnet1D(width, depth, m_conv, growth))
            for i in range(down_t)]
        self.model = nn.Sequential(*stages, nn.Conv1d(width, emb, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DecoderConvBlock(nn.Module):
    """k3 conv from ``emb`` channels, then ``down_t`` upsampling stages:
    ``(B, emb, T)`` -> ``(B, emb, T * 2**down_t)``."""

    def __init__(self, emb: int, down_t: int, width: int, depth: int, m_conv: float,
                 growth: int, reverse: bool) -> None:
        super().__init__()
        stages: list[nn.Module] = [
            nn.Sequential(Resnet1D(width, depth, m_conv, growth, reverse),
                          nn.ConvTranspose1d(width, emb if i == down_t - 1 else width, 4, 2, 1))
            for i in range(down_t)]
        self.model = nn.Sequential(nn.Conv1d(emb, width, 3, 1, 1), *stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Encoder(nn.Module):
    """Encoder of one level: level blocks ``0..L`` in sequence."""

    def __init__(self, cfg: JukeboxConfig, level: int) -> None:
        super().__init__()
        mult = cfg.multipliers[level]
        self.level_blocks = nn.ModuleList(
            EncoderConvBlock(1 if lv == 0 else cfg.emb_width, cfg.emb_width, cfg.downs_t[lv],
                             cfg.width * mult, cfg.depth * mult, cfg.m_conv,
                             cfg.dilation_growth_rate)
            for lv in range(level + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.level_blocks:
            x = block(x)
        return x


class Decoder(nn.Module):
    """Decoder of one level: level blocks ``L..0`` then the output conv."""

    def __init__(self, cfg: JukeboxConfig, level: int) -> None:
        super().__init__()
        mult = cfg.multipliers[level]
        self.level_blocks = nn.ModuleList(
            DecoderConvBlock(cfg.emb_width, cfg.downs_t[lv], cfg.width * mult,
                             cfg.depth * mult, cfg.m_conv, cfg.dilation_growth_rate,
                             cfg.reverse_decoder_dilation)
            for lv in range(level + 1))
        self.out = nn.Conv1d(cfg.emb_width, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.level_blocks):
            x = block(x)
        return self.out(x)


#: Latent vectors compared with the codebook per product (16384 x 2048 bins: 128 MB).
QUANTISE_ROWS = 16384


class CodebookBlock(nn.Module):
    """One level's codebook ``k: (bins, emb)`` (a buffer, as in the original)."""

    k: torch.Tensor

    def __init__(self, bins: int, emb: int) -> None:
        super().__init__()
        self.register_buffer("k", torch.zeros(bins, emb))

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (batch, emb, tokens)`` -> ``(batch, tokens)`` nearest codes (original formula)."""
        b, w, t = x.shape
        flat = x.permute(0, 2, 1).reshape(-1, w).float()
        k_w = self.k.t().float()
        k_norm = k_w.pow(2).sum(0, keepdim=True)
        codes = [(part.pow(2).sum(-1, keepdim=True) - 2 * part @ k_w + k_norm).argmin(dim=-1)
                 for part in flat.split(QUANTISE_ROWS)]  # a long input's distances in parts
        return (torch.cat(codes) if codes else flat.new_zeros(0, dtype=torch.long)).view(b, t)

    def dequantise(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes: (batch, tokens)`` -> ``(batch, emb, tokens)``."""
        return F.embedding(codes, self.k).permute(0, 2, 1).contiguous()


class Bottleneck(nn.Module):
    """The codebooks of every level."""

    def __init__(self, cfg: JukeboxConfig) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(CodebookBlock(cfg.l_bins, cfg.emb_width)
                                          for _ in range(cfg.levels))


class JukeboxVQVAE(Codec):
    """Jukebox's VQ-VAE used at one level as a :class:`~vqvae.codec.Codec`.

    Holds all three levels (so OpenAI's checkpoint loads strictly) but runs only
    ``config.level``. ``sample_rate`` is the rate of the waveforms the codec exchanges;
    the model itself runs at 44.1 kHz.
    """

    config_class = JukeboxConfig

    def __init__(self, config: JukeboxConfig | None = None) -> None:
        super().__init__()
        cfg = config or JukeboxConfig()
        if not 0 <= cfg.level < cfg.levels:
            raise CodecError(f"level must be in 0..{cfg.levels - 1}, got {cfg.level}")
        hop44 = 1
        for d, s in zip(cfg.downs_t[: cfg.level + 1], cfg.strides_t, strict=False):
            if s != 2:
                raise CodecError("only stride 2 (the released models) is supported")
            hop44 *= s ** d
        if (hop44 * cfg.sample_rate) % JUKEBOX_SAMPLE_RATE:
            raise CodecError(f"sample rate {cfg.sample_rate} Hz does not give a whole number of "
                             f"samples per token (hop {hop44} at 44100 Hz)")
        self.config = cfg
        self._hop44 = hop44
        self.encoders = nn.ModuleList(Encoder(cfg, lv) for lv in range(cfg.levels))
        self.decoders = nn.ModuleList(Decoder(cfg, lv) for lv in range(cfg.levels))
        self.bottleneck = Bottleneck(cfg)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self._hop44 * self.config.sample_rate // JUKEBOX_SAMPLE_RATE

    @property
    def codebook_size(self) -> int:
        return self.config.l_bins

    @property
    def embedding_dim(self) -> int:
        return self.config.emb_width

    @property
    def level(self) -> int:
        """The level in use (0: hop 8, 1: hop 32, 2: hop 128 at 44.1 kHz)."""
        return self.config.level

    def latents(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave: (batch, time)`` -> encoder output ``(batch, emb, tokens)``, unquantised."""
        wave = self.check_wave(wave).to(self.device)
        tokens = self.num_tokens(wave.shape[-1])
        wave = F.pad(wave, (0, tokens * self.hop_length - wave.shape[-1]))
        if self.sample_rate != JUKEBOX_SAMPLE_RATE:
            wave = julius.resample_frac(wave, self.sample_rate, JUKEBOX_SAMPLE_RATE,
                                        output_length=tokens * self._hop44)
        return self.encoders[self.level](wave.unsqueeze(1))

    @torch.no_grad()
    def quantise(self, latents: torch.Tensor) -> torch.Tensor:
        block: CodebookBlock = self.bottleneck.level_blocks[self.level]  # type: ignore[assignment]
        return block.quantise(latents)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        block: CodebookBlock = self.bottleneck.level_blocks[self.level]  # type: ignore[assignment]
        return block.dequantise(self.check_codes(codes).to(self.device))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 3 or latents.shape[1] != self.embedding_dim:
            raise CodecError(f"latents must be (batch, {self.embedding_dim}, tokens), got "
                             f"{tuple(latents.shape)}")
        wave = self.decoders[self.level](latents).squeeze(1)
        if self.sample_rate != JUKEBOX_SAMPLE_RATE:
            wave = julius.resample_frac(wave, JUKEBOX_SAMPLE_RATE, self.sample_rate,
                                        output_length=latents.shape[-1] * self.hop_length)
        return wave

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], level: int = 2,
                        device: str | torch.device = "cpu",
                        sample_rate: int = JUKEBOX_SAMPLE_RATE) -> JukeboxVQVAE:
        """Load OpenAI's ``vqvae.pth.tar`` (state dict under ``"model"``) strictly.

        Args:
            path: the checkpoint file.
            level: 0, 1 or 2 (hop 8, 32 or 128 at 44.1 kHz; LASS uses 2).
            device: where to put the model.
            sample_rate: rate of the waveforms exchanged with the codec (e.g. 22050 as LASS).
        """
        p = Path(path)
        if not p.is_file():
            raise CodecError(f"Jukebox checkpoint not found: {p}")
        try:
            ckpt = torch.load(str(p), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
                ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CodecError(f"cannot read Jukebox checkpoint {p}: corrupt, truncated or not a "
                             f"PyTorch file ({first})") from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            raise CodecError(f"{p} is not a Jukebox VQ-VAE checkpoint: expected a dict with the "
                             "state dict under 'model'")
        state = {(k[len("module."):] if k.startswith("module.") else k): v
                 for k, v in ckpt["model"].items()}
        if any(not isinstance(v, torch.Tensor) for v in state.values()):
            raise CodecError(f"{p}: the 'model' entry holds values that are not tensors")
        model = cls(JukeboxConfig(level=level, sample_rate=sample_rate))
        load_state_strict(model, state, str(p))
        return model.to(device).eval()
