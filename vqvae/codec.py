"""The codec interface (waveform <-> tokens) and the on-disk format shared by every codec.

A saved codec is a directory holding ``config.json`` (the config dataclass, with
``format_version`` and the class name) and ``model.safetensors`` (weights only: loading
never unpickles anything). :func:`load_codec` loads any of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vqvae.errors import CodecError
from vqvae.files import write_dir_atomically

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Rows decoded per call on the CPU: a batch of full-rate activations larger than the caches
#: decodes about twice as slowly per row (default codec, 20 rows of 3 s: 3.4 s at once,
#: 1.5 s two at a time).
CPU_DECODE_ROWS = 2
#: Rows encoded per call on the CPU by :meth:`Codec.latents_batched`, for the same reason
#: (default codec, 10 rows of 4 s: 0.94 s at once, 0.52-0.53 s one or two at a time).
CPU_ENCODE_ROWS = 2
#: Tokens decoded per call on the CPU by a codec that states its ``decode_context``: long
#: sequences decode about twice as slowly per token when whole (default codec, 2 rows:
#: 166-220 us per token for 1034 tokens, 341-415 us for 11025).
CPU_DECODE_CHUNK = 1024
#: Tokens encoded per call on the CPU by a codec that states its ``encode_context``.
CPU_ENCODE_CHUNK = 1024

_REGISTRY: dict[str, type[Codec]] = {}


class Codec(nn.Module, ABC):
    """Waveform <-> discrete tokens.

    Attributes:
        sample_rate: rate of the waveforms ``encode`` takes and ``decode`` returns.
        hop_length: waveform samples per token (at ``sample_rate``).
        codebook_size: number of distinct tokens (K).
        embedding_dim: channels of the dense latents (D).
    """

    config_class: ClassVar[type[Any]]
    config: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None):
            _REGISTRY[cls.__name__] = cls

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Rate of input and output waveforms."""

    @property
    @abstractmethod
    def hop_length(self) -> int:
        """Waveform samples per token at :attr:`sample_rate`."""

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of distinct tokens."""

    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        """Channels of the dense latents returned by :meth:`embed`."""

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    def num_tokens(self, samples: int) -> int:
        """Tokens :meth:`encode` returns for ``samples`` waveform samples (ceil)."""
        return -(-samples // self.hop_length)

    @abstractmethod
    def latents(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave: (batch, time)`` -> ``(batch, embedding_dim, tokens)`` encoder outputs before
        quantisation (what :meth:`encode` rounds to the nearest code)."""

    @abstractmethod
    def quantise(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents: (batch, embedding_dim, tokens)`` (from :meth:`latents`) -> ``(batch,
        tokens)`` int64 codes of the nearest codebook entries."""

    @property
    def encode_context(self) -> int | None:
        """Tokens of signal on each side that make the encoder outputs of a stretch of tokens
        equal (up to float rounding) to that stretch of the whole wave's; ``None``: not
        known, so waves are encoded whole."""
        return None

    def latents_batched(self, wave: torch.Tensor) -> torch.Tensor:
        """:meth:`latents` of ``wave: (batch, time)``, on the CPU ``CPU_ENCODE_ROWS`` rows
        per call and, for a codec that states its :attr:`encode_context`,
        ``CPU_ENCODE_CHUNK`` tokens at a time with that context (so memory does not grow
        with the length) -> ``(batch, embedding_dim, tokens)``."""
        if wave.device.type != "cpu":
            return self.latents(wave)
        return torch.cat([self._latents_chunked(part) for part in wave.split(CPU_ENCODE_ROWS)])

    def _latents_chunked(self, wave: torch.Tensor) -> torch.Tensor:
        context, hop = self.encode_context, self.hop_length
        n = self.num_tokens(wave.shape[-1])
        if context is None or n <= CPU_ENCODE_CHUNK + 2 * context:
            return self.latents(wave)
        wave = F.pad(wave, (0, n * hop - wave.shape[-1]))  # as latents() pads the end
        parts = []
        for start in range(0, n, CPU_ENCODE_CHUNK):
            end = min(n, start + CPU_ENCODE_CHUNK)
            lo, hi = max(0, start - context), min(n, end + context)
            z = self.latents(wave[:, lo * hop: hi * hop])
            parts.append(z[:, :, start - lo: end - lo])
        return torch.cat(parts, dim=2)

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave: (batch, time)`` float -> ``(batch, ceil(time / hop_length))`` int64 tokens.

        The waveform is zero-padded at the end to a whole number of tokens.
        """
        return self.quantise(self.latents_batched(wave))

    @abstractmethod
    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes: (batch, tokens)`` int64 -> ``(batch, embedding_dim, tokens)`` latents."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents: (batch, embedding_dim, tokens)`` -> ``(batch, tokens * hop_length)``."""

    @property
    def decode_context(self) -> int | None:
        """Tokens of context on each side that make the decoding of a stretch of tokens equal
        (up to float rounding) to that stretch of the whole sequence's decoding; ``None``:
        not known, so sequences are decoded whole."""
        return None

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes: (batch, tokens)`` int64 -> ``(batch, tokens * hop_length)`` waveform
        (on the CPU, ``CPU_DECODE_ROWS`` rows at a time, and, for a codec that states its
        :attr:`decode_context`, ``CPU_DECODE_CHUNK`` tokens at a time with that context)."""
        if codes.device.type != "cpu":
            return self.decode_latents(self.embed(codes))
        return torch.cat([self._decode_chunked(part) for part in codes.split(CPU_DECODE_ROWS)])

    def _decode_chunked(self, codes: torch.Tensor) -> torch.Tensor:
        context, n = self.decode_context, codes.shape[1]
        if context is None or n <= CPU_DECODE_CHUNK + 2 * context:
            return self.decode_latents(self.embed(codes))
        hop, parts = self.hop_length, []
        for start in range(0, n, CPU_DECODE_CHUNK):
            end = min(n, start + CPU_DECODE_CHUNK)
            lo, hi = max(0, start - context), min(n, end + context)
            wave = self.decode_latents(self.embed(codes[:, lo:hi]))
            parts.append(wave[:, (start - lo) * hop: (end - lo) * hop])
        return torch.cat(parts, dim=1)

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Raise :class:`CodecError` unless ``codes`` is ``(batch, tokens)`` of valid tokens."""
        if codes.dim() != 2:
            raise CodecError(f"codes must be (batch, tokens), got shape {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise CodecError(f"codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise CodecError(f"codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return codes.long()

    def check_wave(self, wave: torch.Tensor) -> torch.Tensor:
        """Raise :class:`CodecError` unless ``wave`` is a finite ``(batch, time)`` tensor."""
        if wave.dim() != 2:
            raise CodecError(f"waveform must be (batch, time), got shape {tuple(wave.shape)}")
        if wave.shape[-1] == 0:
            raise CodecError("waveform is empty")
        if not torch.isfinite(wave).all():
            raise CodecError("waveform holds NaN or infinite samples")
        return wave.float()

    # -- identity and storage -------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values, with ``format_version`` and ``class``."""
        body = {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self.config).items()}
        return {"format_version": FORMAT_VERSION, "class": type(self).__name__, **body}

    def identity(self) -> str:
        """sha256 of the config and the weights: names a codec in likelihood tables."""
        h = hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into the directory ``path`` atomically."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}

        def fill(tmp: Path) -> None:
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"class": type(self).__name__})
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=1) + "\n")

        return write_dir_atomically(path, fill)

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> Codec:
        """Build an untrained codec from a ``config.json`` mapping."""
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = set(config) - fields - {"format_version", "class"}
        if unknown:
            raise CodecError(f"unknown {cls.__name__} config keys: {', '.join(sorted(unknown))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
                  if k in fields}
        return cls(cls.config_class(**values))


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)``, with one clear error naming missing, extra or
    misshapen keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:2])})")
    if problems:
        raise CodecError(f"{source} does not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def read_saved_config(root: Path, what: str = "codec") -> dict[str, Any]:
    """The ``config.json`` mapping of a folder saved in the codec format (checked: both files
    there, a JSON object, this ``format_version``); one clear :class:`CodecError` else."""
    cfg_path, weights = root / CONFIG_FILE, root / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights.is_file():
        raise CodecError(f"{root} is not a saved {what} (needs {CONFIG_FILE} and "
                         f"{WEIGHTS_FILE})")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CodecError(f"cannot read {cfg_path}: {err}") from None
    if not isinstance(config, dict):
        raise CodecError(f"{cfg_path} does not hold a JSON object")
    if config.get("format_version") != FORMAT_VERSION:
        raise CodecError(f"{cfg_path}: unsupported format_version {config.get('format_version')!r}"
                         f" (this version reads {FORMAT_VERSION})")
    return config


def load_saved_weights(model: nn.Module, root: Path) -> None:
    """Load ``root/model.safetensors`` into ``model`` strictly (:func:`load_state_strict`;
    a corrupt or truncated file is one clear :class:`CodecError`)."""
    weights = root / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CodecError(f"cannot read {weights}: corrupt or truncated ({err})") from None
    load_state_strict(model, state, str(weights))


def load_codec(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Codec:
    """Load any codec saved with :meth:`Codec.save` (no pickle), in eval mode on ``device``."""
    root = Path(path)
    if not root.is_dir():
        raise CodecError(f"codec directory not found: {root}")
    config = read_saved_config(root)
    name = config.get("class")
    if name not in _REGISTRY:
        raise CodecError(f"{root / CONFIG_FILE}: unknown codec class {name!r} "
                         f"(known: {', '.join(sorted(_REGISTRY))})")
    model = _REGISTRY[name].from_config_dict(config)
    load_saved_weights(model, root)
    return model.to(device).eval()
