"""Audio file I/O for the data layer: info, mono reads of segments with resampling, atomic writes.

Resampling uses ``soxr`` (the SoX resampler, high quality). A segment read at a rate other
than the file's is resampled from a block that starts on a sample shared by both rates,
with margins on both sides, so a segment equals the same stretch of the whole file
resampled, apart from the resampler's edge effects at the very start and end of the file.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from lass.errors import DataError
from vqvae.files import write_file_atomic

#: Extra input samples read on each side of a segment that is resampled.
RESAMPLE_MARGIN = 256


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds: ``frames`` per channel at ``sample_rate``, ``channels`` channels."""

    path: Path
    frames: int
    sample_rate: int
    channels: int

    def frames_at(self, sample_rate: int) -> int:
        """Length in samples once resampled to ``sample_rate`` (floor)."""
        return (self.frames * sample_rate) // self.sample_rate


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Read the header of an audio file; a missing or unreadable file raises :class:`DataError`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"audio file not found: {p}")
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(f"cannot read audio file {p}: {err}") from None
    if info.frames <= 0:
        raise DataError(f"audio file is empty: {p}")
    return AudioInfo(path=p, frames=int(info.frames), sample_rate=int(info.samplerate),
                     channels=int(info.channels))


def _read_frames(info: AudioInfo, start: int, stop: int) -> np.ndarray:
    """Read source frames ``[start, stop)`` as mono float32, zero-padded outside the file."""
    lo, hi = max(start, 0), min(stop, info.frames)
    out = np.zeros(stop - start, dtype=np.float32)
    if hi > lo:
        try:
            data = sf.read(str(info.path), start=lo, stop=hi, dtype="float32", always_2d=True)[0]
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise DataError(f"cannot read audio file {info.path}: {err}") from None
        if data.shape[0] != hi - lo:
            raise DataError(f"audio file is truncated: {info.path} (read {data.shape[0]} of "
                            f"{hi - lo} frames at offset {lo})")
        out[lo - start: hi - start] = data.mean(axis=1)
    return out


def read_audio(path: str | os.PathLike[str] | AudioInfo, sample_rate: int | None = None,
               start: int = 0, frames: int | None = None) -> np.ndarray:
    """Read a mono segment of an audio file, resampled to ``sample_rate``.

    Multi-channel files are averaged to mono.

    Args:
        path: file path (or its :class:`AudioInfo`).
        sample_rate: output rate; ``None`` keeps the file's rate.
        start: first output sample (at ``sample_rate``).
        frames: number of output samples; ``None`` reads to the end. A segment running past
            the end of the file is zero-padded.

    Returns:
        ``(time,)`` float32 array.
    """
    info = path if isinstance(path, AudioInfo) else audio_info(path)
    sr_out = info.sample_rate if sample_rate is None else int(sample_rate)
    if sr_out <= 0:
        raise DataError(f"sample rate must be positive, got {sr_out}")
    if start < 0:
        raise DataError(f"start must be >= 0, got {start}")
    total = info.frames_at(sr_out)
    if frames is None:
        frames = max(total - start, 0)
    if sr_out == info.sample_rate:
        return _read_frames(info, start, start + frames)
    g = math.gcd(info.sample_rate, sr_out)
    step_in, step_out = info.sample_rate // g, sr_out // g
    # Block boundaries on samples common to both rates, with a margin for the filter.
    first_block = max((start * info.sample_rate // sr_out - RESAMPLE_MARGIN) // step_in, 0)
    last_block = math.ceil(((start + frames) * info.sample_rate / sr_out + RESAMPLE_MARGIN)
                           / step_in)
    src = _read_frames(info, first_block * step_in, last_block * step_in)
    out = soxr.resample(src, info.sample_rate, sr_out, quality="HQ")
    offset = start - first_block * step_out
    seg = np.zeros(frames, dtype=np.float32)
    avail = out[offset: offset + frames]
    seg[: avail.shape[0]] = avail
    # Samples past the end of the file stay zero, as at the file's own rate.
    if start + frames > total:
        seg[max(total - start, 0):] = 0.0
    return seg


def read_any(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a whole audio file: ``(channels, time)`` float32 and its sample rate.

    What libsndfile cannot read (m4a, aac, opus in some builds, the audio of a video) is
    decoded by ``ffmpeg`` into a temporary 32-bit float WAV. A missing, unreadable, empty or
    non-finite file raises :class:`DataError` in one line.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"audio file not found: {p}")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError):
        data, rate = _read_with_ffmpeg(p)
    if data.shape[0] == 0:
        raise DataError(f"audio file is empty: {p}")
    if not np.all(np.isfinite(data)):
        raise DataError(f"audio file holds NaN or infinite samples: {p}")
    return np.ascontiguousarray(data.T), int(rate)


def _read_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise DataError(f"cannot read audio file {path}: libsndfile does not read it and "
                        "ffmpeg is not on PATH")
    with tempfile.TemporaryDirectory(prefix="lass-decode-") as tmp:
        wav = Path(tmp) / "decoded.wav"
        proc = subprocess.run([exe, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-map",
                               "0:a:0", "-c:a", "pcm_f32le", str(wav)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not wav.is_file():
            lines = (proc.stderr or "").strip().splitlines()
            why = lines[-1] if lines else f"ffmpeg exited with {proc.returncode}"
            raise DataError(f"cannot read audio file {path}: {why}")
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    return data, int(rate)


def write_wav(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int,
              subtype: str = "PCM_16", fmt: str = "WAV") -> None:
    """Write ``audio`` (``(time,)`` or ``(time, channels)``) atomically to an audio file
    (``fmt``: a libsndfile format, ``WAV`` by default; ``FLAC``, ``MP3`` with subtype
    ``MPEG_LAYER_III``, written at a constant bit rate, the highest the rate allows).

    The file appears under its name only once it is complete (write to a temporary file in
    the same folder, then rename), so an interrupted run never leaves a half-written file.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(audio)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"refusing to write non-finite audio to {p}")
    extra = {"compression_level": 0.0, "bitrate_mode": "CONSTANT"} if fmt == "MP3" else {}
    write_file_atomic(p, lambda tmp: sf.write(tmp, arr, sample_rate, subtype=subtype,
                                              format=fmt, **extra))


def rms_db(audio: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (``-inf`` for digital silence)."""
    power = float(np.mean(np.square(audio, dtype=np.float64))) if audio.size else 0.0
    return 10.0 * math.log10(power) if power > 0 else -math.inf


def resample(wave: np.ndarray, src: int, dst: int, length: int | None = None) -> np.ndarray:
    """``(time,)`` float32 at ``src`` Hz -> ``dst`` Hz (soxr, high quality), cut or padded
    with zeros to ``length`` samples when given."""
    import soxr

    out = wave if src == dst else soxr.resample(wave, src, dst, quality="HQ")
    out = np.asarray(out, dtype=np.float32)
    if length is not None:
        fixed = np.zeros(length, dtype=np.float32)
        fixed[: min(length, out.shape[0])] = out[:length]
        out = fixed
    return out

