"""Helpers for tests: tiny audio files written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float, sr: int, freq: float, amp: float = 0.5, channels: int = 1,
         seed: int = 0) -> np.ndarray:
    """A sine plus a little noise: ``(time,)`` or ``(time, channels)`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    if channels == 1:
        return x.astype(np.float32)
    return np.stack([x * (1 + 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_audio(path: Path, audio: np.ndarray, sr: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_24" if path.suffix == ".flac" else "FLOAT"
    sf.write(str(path), audio, sr, subtype=subtype)
    return path
