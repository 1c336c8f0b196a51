"""Per-stem audio augmentation for the band data set: EQ, saturation, compression, reverb.

:func:`draw_chain` draws a chain of effects from a generator; :func:`apply_chain` runs it on
a mono stem, keeping its length (reverb tails past the song's end are cut, as a mix would
be). Every effect is a plain function of its settings, so a stem is a pure function of the
song's seed. Filters are the RBJ audio-EQ-cookbook biquads; reverb convolves with a
synthetic room response (early reflections and an exponentially decaying, darkening noise
tail) whose decay time is drawn from a small, medium or large room.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import signal

#: Decay-time (RT60, seconds) ranges of the three room sizes.
ROOM_RT60: dict[str, tuple[float, float]] = {"small": (0.15, 0.5), "medium": (0.5, 1.3),
                                             "large": (1.3, 3.0)}


@dataclass(frozen=True)
class Peak:
    """A peaking EQ band: centre ``hz``, ``gain_db``, quality ``q``."""

    hz: float
    gain_db: float
    q: float


@dataclass(frozen=True)
class Chain:
    """The effects applied to one stem, in this order (``None``: the effect is off).

    Attributes:
        tilt_db: gain of a high shelf at 1.5 kHz with the opposite gain as a low shelf at
            250 Hz (positive: brighter).
        peaks: peaking EQ bands.
        drive: saturation drive (tanh), with ``drive_mix`` of the saturated signal.
        compress: (threshold below the stem's RMS in dB, ratio, time constant in ms).
        reverb: (room size name, RT60 in seconds, wet share, pre-delay in ms).
        seed: seeds the room response's noise.
    """

    tilt_db: float = 0.0
    peaks: tuple[Peak, ...] = ()
    drive: float | None = None
    drive_mix: float = 1.0
    compress: tuple[float, float, float] | None = None
    reverb: tuple[str, float, float, float] | None = None
    seed: int = 0

    def describe(self) -> dict[str, object]:
        """The chain as JSON-ready values (for track metadata)."""
        d = asdict(self)
        d["peaks"] = [asdict(p) for p in self.peaks]
        return d


def draw_chain(rng: np.random.Generator, *, drums: bool) -> Chain:
    """A random effect chain: mild on most stems, strong on some."""
    tilt = float(rng.uniform(-5.0, 5.0)) if rng.random() < 0.7 else 0.0
    peaks = tuple(Peak(float(np.exp(rng.uniform(np.log(80.0), np.log(7000.0)))),
                       float(rng.uniform(-7.0, 7.0)), float(rng.uniform(0.6, 3.0)))
                  for _ in range(int(rng.integers(0, 3))))
    drive = float(rng.uniform(1.5, 6.0)) if rng.random() < 0.3 else None
    drive_mix = float(rng.uniform(0.3, 1.0))
    compress = ((float(rng.uniform(0.0, 10.0)), float(rng.uniform(2.0, 6.0)),
                 float(rng.uniform(5.0, 20.0) if drums else rng.uniform(20.0, 80.0)))
                if rng.random() < 0.4 else None)
    reverb = None
    if rng.random() < 0.5:
        size = str(rng.choice(list(ROOM_RT60), p=(0.45, 0.4, 0.15)))
        reverb = (size, float(rng.uniform(*ROOM_RT60[size])), float(rng.uniform(0.08, 0.4)),
                  float(rng.uniform(0.0, 30.0)))
    return Chain(tilt_db=tilt, peaks=peaks, drive=drive, drive_mix=drive_mix, compress=compress,
                 reverb=reverb, seed=int(rng.integers(2**31)))


def _shelf(x: np.ndarray, sr: int, hz: float, gain_db: float, high: bool) -> np.ndarray:
    a = 10 ** (gain_db / 40.0)
    w = 2 * math.pi * hz / sr
    cos, alpha = math.cos(w), math.sin(w) / 2 * math.sqrt(2.0)
    sq = 2 * math.sqrt(a) * alpha
    if high:
        b = [a * ((a + 1) + (a - 1) * cos + sq), -2 * a * ((a - 1) + (a + 1) * cos),
             a * ((a + 1) + (a - 1) * cos - sq)]
        den = [(a + 1) - (a - 1) * cos + sq, 2 * ((a - 1) - (a + 1) * cos),
               (a + 1) - (a - 1) * cos - sq]
    else:
        b = [a * ((a + 1) - (a - 1) * cos + sq), 2 * a * ((a - 1) - (a + 1) * cos),
             a * ((a + 1) - (a - 1) * cos - sq)]
        den = [(a + 1) + (a - 1) * cos + sq, -2 * ((a - 1) + (a + 1) * cos),
               (a + 1) + (a - 1) * cos - sq]
    return np.asarray(signal.lfilter(b, den, x))


def _peak(x: np.ndarray, sr: int, p: Peak) -> np.ndarray:
    hz = min(p.hz, 0.45 * sr)
    a = 10 ** (p.gain_db / 40.0)
    w = 2 * math.pi * hz / sr
    alpha = math.sin(w) / (2 * p.q)
    b = [1 + alpha * a, -2 * math.cos(w), 1 - alpha * a]
    den = [1 + alpha / a, -2 * math.cos(w), 1 - alpha / a]
    return np.asarray(signal.lfilter(b, den, x))


def _compress(x: np.ndarray, sr: int, below_db: float, ratio: float, ms: float) -> np.ndarray:
    """Feed-forward compression on a smoothed power envelope (one time constant)."""
    k = math.exp(-1.0 / (ms * 1e-3 * sr))
    env = signal.lfilter([1 - k], [1, -k], x.astype(np.float64) ** 2)
    level = 10 * np.log10(np.maximum(env, 1e-12))
    rms = 10 * math.log10(max(float(np.mean(x.astype(np.float64) ** 2)), 1e-12))
    threshold = rms - below_db
    over = np.maximum(level - threshold, 0.0)
    gain_db = -over * (1 - 1 / ratio)
    return np.asarray(x * 10 ** (gain_db / 20.0))


def room_response(sr: int, rt60: float, predelay_ms: float,
                  rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response ``(n,)``: early reflections and a decaying tail."""
    n = int(sr * min(rt60 * 1.2, 4.0)) + 1
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)
    # Darken the tail as it decays: a one-pole low-pass blended in over time.
    k = math.exp(-2 * math.pi * 3000.0 / sr)
    dark = signal.lfilter([1 - k], [1, -k], tail)
    mix = np.clip(t / max(rt60, 1e-3), 0.0, 1.0)
    tail = (1 - mix) * tail + mix * dark
    ir = np.zeros(n + int(sr * predelay_ms / 1000.0))
    start = ir.shape[0] - n
    ir[start:] = tail * 0.3
    for _ in range(6):
        d = start + int(rng.uniform(0.002, 0.03) * sr)
        if d < ir.shape[0]:
            ir[d] += float(rng.uniform(0.2, 0.6)) * (1 if rng.random() < 0.5 else -1)
    return np.asarray(ir / (np.sqrt(np.sum(ir**2)) + 1e-12))


def apply_chain(x: np.ndarray, sr: int, chain: Chain) -> np.ndarray:
    """Run ``chain`` on the mono stem ``x`` ``(samples,)``; the result has the same length."""
    y = x.astype(np.float64)
    rms = math.sqrt(float(np.mean(y**2)))
    if rms < 1e-9:
        return x.astype(np.float32)
    if chain.tilt_db:
        y = _shelf(y, sr, 1500.0, chain.tilt_db / 2, high=True)
        y = _shelf(y, sr, 250.0, -chain.tilt_db / 2, high=False)
    for p in chain.peaks:
        y = _peak(y, sr, p)
    if chain.drive is not None:
        peak = float(np.max(np.abs(y))) or 1.0
        u = y / peak
        sat = np.tanh(chain.drive * u) / math.tanh(chain.drive)
        y = peak * ((1 - chain.drive_mix) * u + chain.drive_mix * sat)
    if chain.compress is not None:
        y = _compress(y, sr, *chain.compress)
    if chain.reverb is not None:
        _, rt60, wet, predelay = chain.reverb
        ir = room_response(sr, rt60, predelay, np.random.default_rng(chain.seed))
        rev = signal.oaconvolve(y, ir)[: y.shape[0]]
        dry_rms = math.sqrt(float(np.mean(y**2)))
        rev_rms = math.sqrt(float(np.mean(rev**2))) or 1.0
        y = (1 - wet) * y + wet * rev * dry_rms / rev_rms
    return y.astype(np.float32)
