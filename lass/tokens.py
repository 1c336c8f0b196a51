"""Token streams of a stem data set, encoded once by a codec and cached on disk.

``encode_tracks`` encodes each track's stem as one token stream. Long tracks are encoded in
overlapping segments whose middles are kept, so the stream equals an encoding of the whole
track (for a codec whose receptive field is within the margin). The cache file
``<cache>/<codec identity[:16]>/<split>-<stem>.npz`` holds the streams (concatenated), their
offsets, the track names and the codec identity; it is reused when the tracks are the same
and rewritten (atomically) otherwise.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lass.data.audio import read_audio
from lass.data.tracks import Track
from lass.errors import DataError
from vqvae.codec import Codec
from vqvae.files import write_bytes_atomic

SEGMENT_TOKENS = 4096
MARGIN_TOKENS = 64


@torch.no_grad()
def encode_wave(codec: Codec, wave: np.ndarray) -> np.ndarray:
    """Encode ``wave: (time,)`` in overlapping segments; ``(ceil(time / hop),)`` int64.

    Each segment is encoded with up to ``MARGIN_TOKENS`` of real signal on either side
    (none past the ends of the wave, exactly as a whole encoding sees them) and only its
    middle is kept.
    """
    hop = codec.hop_length
    n_tokens = codec.num_tokens(wave.shape[0])
    padded = np.zeros(n_tokens * hop, dtype=np.float32)
    padded[: wave.shape[0]] = wave
    out = np.zeros(n_tokens, dtype=np.int64)
    for s in range(0, n_tokens, SEGMENT_TOKENS):
        e = min(s + SEGMENT_TOKENS, n_tokens)
        lo, hi = max(s - MARGIN_TOKENS, 0), min(e + MARGIN_TOKENS, n_tokens)
        codes = codec.encode(torch.from_numpy(padded[lo * hop: hi * hop])[None])[0]
        out[s:e] = codes[s - lo: e - lo].cpu().numpy()
    return out


def _read_stem(track: Track, stem: str, sample_rate: int) -> np.ndarray:
    parts = [read_audio(f, sample_rate) for f in track.stems[stem]]
    length = min(p.shape[0] for p in parts)
    return np.stack([p[:length] for p in parts]).sum(axis=0, dtype=np.float32)


def encode_tracks(codec: Codec, tracks: Sequence[Track], stem: str, cache: str | os.PathLike[str],
                  split: str, progress: Callable[[int, int], None] | None = None
                  ) -> list[np.ndarray]:
    """One token stream per track for ``stem``, from the cache or encoded now (and cached)."""
    identity = codec.identity()
    path = Path(cache) / identity[:16] / f"{split}-{stem}.npz"
    names = np.array([t.name for t in tracks])
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["codec_identity"]) == identity and \
                        np.array_equal(data["tracks"], names):
                    tokens, offsets = data["tokens"].astype(np.int64), data["offsets"]
                    return [tokens[offsets[i]: offsets[i + 1]] for i in range(len(tracks))]
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale: encode again
    streams = []
    for i, track in enumerate(tracks):
        if stem not in track.stems:
            raise DataError(f"track {track.name!r} has no stem {stem!r}")
        streams.append(encode_wave(codec, _read_stem(track, stem, codec.sample_rate)))
        if progress is not None:
            progress(i + 1, len(tracks))
    offsets = np.concatenate([[0], np.cumsum([s.size for s in streams])]).astype(np.int64)
    dtype = np.int16 if codec.codebook_size <= 32767 else np.int32
    buf = io.BytesIO()
    np.savez(buf, tokens=np.concatenate(streams).astype(dtype), offsets=offsets, tracks=names,
             codec_identity=np.array(identity))
    write_bytes_atomic(path, buf.getvalue())
    return streams
