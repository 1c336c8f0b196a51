"""ToyData (thesis proposal, 001): sine, sawtooth, square and triangle oscillators.

Each item draws, for every source, a frequency from the 88 keys of an equal-tempered piano
(A0 = 27.5 Hz to C8 = 4186 Hz; keys at or above Nyquist are left out), a random phase and a
random amplitude. Items are a pure function of ``(seed, index)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lass.data.dataset import Chunk
from lass.errors import DataError

TOY_SOURCES: tuple[str, ...] = ("sine", "sawtooth", "square", "triangle")
#: Frequencies of the 88 piano keys (key 49 is A4 = 440 Hz).
PIANO_KEYS_HZ: np.ndarray = 440.0 * 2.0 ** ((np.arange(1, 89) - 49) / 12.0)


def oscillator(kind: str, cycles: np.ndarray) -> np.ndarray:
    """Unit-amplitude waveform of ``kind`` at phase ``cycles`` (in periods), ``(time,)``."""
    frac = np.mod(cycles, 1.0)
    if kind == "sine":
        return np.sin(2.0 * np.pi * frac)
    if kind == "sawtooth":
        return 2.0 * frac - 1.0
    if kind == "square":
        return np.where(frac < 0.5, 1.0, -1.0)
    if kind == "triangle":
        return 1.0 - 4.0 * np.abs(frac - 0.5)
    raise DataError(f"unknown toy source {kind!r}; expected one of {', '.join(TOY_SOURCES)}")


class ToyData(Dataset[Chunk]):
    """Deterministic toy mixtures' sources.

    Args:
        sources: any subset of ``sine``, ``sawtooth``, ``square``, ``triangle``.
        length: samples per item.
        sample_rate: samples per second.
        size: number of items.
        seed: items are a function of ``(seed, index)``.
        amplitude: range of the uniform random amplitude.
    """

    def __init__(self, sources: Sequence[str] = TOY_SOURCES, *, length: int = 16384,
                 sample_rate: int = 22050, size: int = 10000, seed: int = 0,
                 amplitude: tuple[float, float] = (0.2, 1.0)) -> None:
        if not sources:
            raise DataError("ToyData needs at least one source")
        for s in sources:
            if s not in TOY_SOURCES:
                raise DataError(f"unknown toy source {s!r}; expected any of "
                                f"{', '.join(TOY_SOURCES)}")
        if len(set(sources)) != len(sources):
            raise DataError("ToyData sources must be distinct")
        if length <= 0 or size <= 0 or sample_rate <= 0:
            raise DataError("length, size and sample_rate must be positive")
        lo, hi = amplitude
        if not 0.0 < lo <= hi:
            raise DataError(f"amplitude range must satisfy 0 < low <= high, got {amplitude}")
        self.sources = tuple(sources)
        self.length, self.sample_rate, self.size, self.seed = length, sample_rate, size, seed
        self.amplitude = (float(lo), float(hi))
        keys = PIANO_KEYS_HZ
        self.keys_hz = keys[keys < sample_rate / 2]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Chunk:
        if not 0 <= index < self.size:
            raise IndexError(f"ToyData index {index} out of range (0..{self.size - 1})")
        rng = np.random.default_rng([self.seed, index])
        t = np.arange(self.length) / self.sample_rate
        waves = []
        for kind in self.sources:
            freq = rng.choice(self.keys_hz)
            phase = rng.uniform(0.0, 1.0)
            amp = rng.uniform(*self.amplitude)
            waves.append(amp * oscillator(kind, freq * t + phase))
        audio = torch.from_numpy(np.stack(waves).astype(np.float32))
        return Chunk(f"toy{index:07d}", 0, self.sources, audio)
