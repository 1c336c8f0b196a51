"""Fixed-length chunks of aligned mono stems, with silence filtering and seeded shuffling.

A :class:`StemDataset` indexes every chunk of every track (``chunk`` samples, every ``hop``
samples) from the files' headers alone; audio is read chunk by chunk when iterated. Stems of
a track that differ in length are cut to the shortest.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lass.data.audio import AudioInfo, audio_info, read_audio, rms_db
from lass.data.mixing import mix
from lass.data.tracks import Track
from lass.errors import DataError


@dataclass(frozen=True)
class Chunk:
    """Aligned stems of one stretch of one track.

    Attributes:
        track: track name.
        start: first sample of the chunk in the track (at the data set's rate).
        names: stem names, in the order of ``audio``'s first axis.
        audio: ``(stems, time)`` float32 tensor.
    """

    track: str
    start: int
    names: tuple[str, ...]
    audio: torch.Tensor

    def stem(self, name: str) -> torch.Tensor:
        """``(time,)``: the named stem."""
        try:
            return self.audio[self.names.index(name)]
        except ValueError:
            raise DataError(f"no stem {name!r} in chunk (stems: {', '.join(self.names)})") from None

    def mixture(self, rule: str = "mean") -> torch.Tensor:
        """``(time,)``: the stems mixed by ``rule`` (see :func:`lass.data.mix`)."""
        return mix(self.audio, rule, dim=0)


@dataclass(frozen=True)
class ChunkBatch:
    """A batch of chunks: ``audio`` is ``(batch, stems, time)``."""

    tracks: tuple[str, ...]
    starts: torch.Tensor
    names: tuple[str, ...]
    audio: torch.Tensor

    def mixture(self, rule: str = "mean") -> torch.Tensor:
        """``(batch, time)``: every chunk's stems mixed by ``rule``."""
        return mix(self.audio, rule, dim=1)


def collate_chunks(chunks: Sequence[Chunk]) -> ChunkBatch:
    """Stack chunks of equal stems and length (use as a DataLoader's ``collate_fn``)."""
    if not chunks:
        raise DataError("cannot collate an empty list of chunks")
    names = chunks[0].names
    if any(c.names != names for c in chunks):
        raise DataError("cannot collate chunks with different stems")
    return ChunkBatch(tracks=tuple(c.track for c in chunks),
                      starts=torch.tensor([c.start for c in chunks], dtype=torch.int64),
                      names=names, audio=torch.stack([c.audio for c in chunks]))


def is_silent(audio: np.ndarray | torch.Tensor, threshold_db: float) -> bool:
    """True when the RMS level of ``audio`` (``(time,)``) is below ``threshold_db`` dBFS."""
    arr = audio.numpy() if isinstance(audio, torch.Tensor) else audio
    return rms_db(arr) < threshold_db


class StemDataset(IterableDataset[Chunk]):
    """Chunks of named, aligned mono stems from a list of tracks.

    Iterating yields :class:`Chunk` objects in a seeded order (a new permutation per epoch,
    see :meth:`set_epoch`), skipping chunks in which any stem named in ``require`` is
    near-silent. Under a DataLoader with several workers each worker takes every n-th chunk
    of the permutation. :meth:`chunk` gives random access without filtering.

    Args:
        tracks: tracks from :func:`lass.data.find_tracks` (or the layout functions).
        stems: stem names to load, in output order; default: those of the first track.
        sample_rate: output rate; files at other rates are resampled (soxr).
        chunk: chunk length in samples.
        hop: distance between chunk starts in samples (default ``chunk``: no overlap).
        shuffle: iterate in a seeded random order (else track by track, in time order).
        seed: seed of the shuffling.
        require: stems that must not be silent in a chunk (default all of ``stems``; an
            empty tuple keeps every chunk).
        silence_db: RMS level in dBFS below which a stem counts as silent.
    """

    def __init__(self, tracks: Sequence[Track], *, sample_rate: int, chunk: int,
                 stems: Sequence[str] | None = None, hop: int | None = None,
                 shuffle: bool = True, seed: int = 0, require: Sequence[str] | None = None,
                 silence_db: float = -50.0) -> None:
        if not tracks:
            raise DataError("a stem data set needs at least one track")
        if chunk <= 0 or (hop is not None and hop <= 0) or sample_rate <= 0:
            raise DataError("chunk, hop and sample_rate must be positive")
        self.stems = tuple(stems) if stems is not None else tracks[0].stem_names
        for track in tracks:
            missing = [s for s in self.stems if s not in track.stems]
            if missing:
                raise DataError(f"track {track.name!r} has no stem {missing[0]!r}")
        self.require = self.stems if require is None else tuple(require)
        unknown = [s for s in self.require if s not in self.stems]
        if unknown:
            raise DataError(f"required stem {unknown[0]!r} is not among the loaded stems")
        self.tracks = list(tracks)
        self.sample_rate = int(sample_rate)
        self.chunk = int(chunk)
        self.hop = int(hop) if hop is not None else self.chunk
        self.shuffle = shuffle
        self.seed = seed
        self.silence_db = silence_db
        self.epoch = 0
        self._infos: list[dict[str, tuple[AudioInfo, ...]]] = []
        track_ids: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        for t, track in enumerate(self.tracks):
            infos = {s: tuple(audio_info(f) for f in track.stems[s]) for s in self.stems}
            self._infos.append(infos)
            length = min(i.frames_at(self.sample_rate) for fs in infos.values() for i in fs)
            n = max((length - self.chunk) // self.hop + 1, 0)
            track_ids.append(np.full(n, t, dtype=np.int64))
            starts.append(np.arange(n, dtype=np.int64) * self.hop)
        self._track_of = np.concatenate(track_ids)
        self._start_of = np.concatenate(starts)
        if self._track_of.size == 0:
            raise DataError(f"every track is shorter than one chunk ({self.chunk} samples at "
                            f"{self.sample_rate} Hz)")

    def __len__(self) -> int:
        """Number of chunks before silence filtering."""
        return int(self._track_of.size)

    @property
    def seconds(self) -> float:
        """Chunk length in seconds."""
        return self.chunk / self.sample_rate

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` (same seed and epoch: same order)."""
        self.epoch = int(epoch)

    def chunk_at(self, index: int) -> Chunk:
        """The chunk at position ``index`` of the (unshuffled) index, silent or not."""
        if not 0 <= index < len(self):
            raise IndexError(f"chunk index {index} out of range (0..{len(self) - 1})")
        t, start = int(self._track_of[index]), int(self._start_of[index])
        audio = np.stack([
            np.sum([read_audio(info, self.sample_rate, start, self.chunk)
                    for info in self._infos[t][s]], axis=0, dtype=np.float32)
            for s in self.stems
        ])
        return Chunk(self.tracks[t].name, start, self.stems, torch.from_numpy(audio))

    def order(self) -> np.ndarray:
        """Chunk indices in iteration order for the current epoch."""
        if not self.shuffle:
            return np.arange(len(self))
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(len(self))

    def keep(self, chunk: Chunk) -> bool:
        """Whether ``chunk`` passes the silence filter."""
        return not any(is_silent(chunk.stem(s), self.silence_db) for s in self.require)

    def random_kept_chunk(self, rng: np.random.Generator, tries: int = 1000) -> Chunk:
        """A uniformly drawn chunk that passes the silence filter (``tries`` draws at most)."""
        for _ in range(tries):
            chunk = self.chunk_at(int(rng.integers(len(self))))
            if self.keep(chunk):
                return chunk
        raise DataError(f"could not find a non-silent chunk in {tries} tries")

    def __iter__(self) -> Iterator[Chunk]:
        order = self.order()
        worker = get_worker_info()
        if worker is not None:
            order = order[worker.id:: worker.num_workers]
        for index in order:
            chunk = self.chunk_at(int(index))
            if self.keep(chunk):
                yield chunk


def chunk_samples(seconds: float, sample_rate: int) -> int:
    """Number of samples in ``seconds`` at ``sample_rate`` (rounded to nearest)."""
    n = math.floor(seconds * sample_rate + 0.5)
    if n <= 0:
        raise DataError(f"chunk of {seconds} s is empty at {sample_rate} Hz")
    return n
