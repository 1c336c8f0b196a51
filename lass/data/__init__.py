"""Stem data sets, mixing, and the synthetic data generators.

* :func:`mix`: the single mixing rule (mean by default, sum available).
* :func:`find_tracks` / :func:`slakh_tracks` / :func:`musdb_tracks` / :func:`folder_tracks`:
  tracks of a data set on disk.
* :class:`StemDataset`: fixed-length chunks of aligned mono stems.
* :class:`ToyData`: the thesis' oscillator sources.
* :mod:`lass.data.synth`: the Slakh-style synthetic renderers (drums+bass; drums, bass and
  other from many soundfonts).
"""

from lass.data.audio import AudioInfo, audio_info, read_audio, write_wav
from lass.data.dataset import Chunk, ChunkBatch, StemDataset, chunk_samples, collate_chunks
from lass.data.mixing import MIX_RULES, mix, mix_gain
from lass.data.toy import TOY_SOURCES, ToyData
from lass.data.tracks import (
    SPLITS,
    Track,
    detect_layout,
    find_tracks,
    folder_tracks,
    musdb_tracks,
    slakh_tracks,
)

__all__ = [
    "MIX_RULES",
    "SPLITS",
    "TOY_SOURCES",
    "AudioInfo",
    "Chunk",
    "ChunkBatch",
    "StemDataset",
    "ToyData",
    "Track",
    "audio_info",
    "chunk_samples",
    "collate_chunks",
    "detect_layout",
    "find_tracks",
    "folder_tracks",
    "mix",
    "mix_gain",
    "musdb_tracks",
    "read_audio",
    "slakh_tracks",
    "write_wav",
]
