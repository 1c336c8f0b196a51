"""Finding the tracks of a stem data set on disk.

Three layouts are understood:

* ``slakh``: Slakh2100 (``<root>/<split>/TrackNNNNN/metadata.yaml`` + ``stems/SNN.flac``).
  A stem of the data set is a set of Slakh instrument classes (``inst_class``); all the
  track's rendered stems of those classes are summed. A track with no stem of a wanted class
  is skipped (normal in Slakh: not every song has bass); a stem the metadata lists as
  rendered whose file is missing is an error.
* ``musdb``: MUSDB18-HQ (``<root>/{train,test}/<track>/{drums,bass,other,vocals}.wav``).
  ``valid`` is the 14 tracks of MUSDB's official validation list, taken out of ``train``.
* ``folder``: a plain stem folder (``<root>/<split>/<track>/<stem>.{wav,flac}``), the layout
  ``lass-make-dataset`` writes.

Every function raises :class:`~lass.errors.DataError` with the offending path for a missing
root, an empty folder or a track that lacks a stem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from lass.errors import DataError

Layout = Literal["slakh", "musdb", "folder"]
SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Splits a plain stem folder may have: ``heldout`` holds test songs rendered with timbres
#: (soundfonts) kept out of the other splits (``lass-make-dataset synth-band``).
FOLDER_SPLITS: tuple[str, ...] = (*SPLITS, "heldout")
AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac")

#: The validation tracks of MUSDB18 (the list published with the ``musdb`` package).
MUSDB_VALID_TRACKS: frozenset[str] = frozenset({
    "Actions - One Minute Smile",
    "Alexander Ross - Goodbye Bolero",
    "ANiMAL - Rockshow",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Fergessen - Nos Palpitants",
    "James May - On The Line",
    "Johnny Lokke - Promises & Lies",
    "Leaf - Summerghost",
    "Meaxic - Take A Step",
    "Patrick Talbot - A Reason To Leave",
    "Skelpolu - Human Mistakes",
    "Traffic Experiment - Sirens",
    "Triviul - Angelsaint",
    "Young Griffo - Pennies",
})
MUSDB_STEMS: tuple[str, ...] = ("drums", "bass", "other", "vocals")
#: Default Slakh stems: data-set stem name -> Slakh ``inst_class`` values summed into it.
SLAKH_DEFAULT_CLASSES: Mapping[str, tuple[str, ...]] = {"drums": ("Drums",), "bass": ("Bass",)}
_SLAKH_SPLIT_DIRS: Mapping[str, tuple[str, ...]] = {
    "train": ("train",), "valid": ("validation", "valid"), "test": ("test",),
}


@dataclass(frozen=True)
class Track:
    """One song: for each stem name, the audio files summed to make that stem."""

    name: str
    split: str
    stems: Mapping[str, tuple[Path, ...]]

    @property
    def stem_names(self) -> tuple[str, ...]:
        """The names of the stems, in data-set order."""
        return tuple(self.stems)


def _check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    if split not in allowed:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(allowed)}")
    return split


def _check_root(root: str | os.PathLike[str]) -> Path:
    p = Path(root)
    if not p.exists():
        raise DataError(f"data set root not found: {p}")
    if not p.is_dir():
        raise DataError(f"data set root is not a folder: {p}")
    return p


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _stem_file(track_dir: Path, stem: str) -> Path:
    for suffix in AUDIO_SUFFIXES:
        candidate = track_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(f"track is missing stem {stem!r}: no {stem}.wav or {stem}.flac in {track_dir}")


def _check_disjoint(tracks: Sequence[Track], others: Mapping[str, set[str]]) -> None:
    for track in tracks:
        for split, names in others.items():
            if split != track.split and track.name in names:
                raise DataError(f"track {track.name!r} appears in both the {track.split!r} and "
                                f"the {split!r} split")


def folder_tracks(root: str | os.PathLike[str], split: str, stems: Sequence[str]) -> list[Track]:
    """Tracks of a plain stem folder: ``<root>/<split>/<track>/<stem>.{wav,flac}``."""
    base = _check_root(root)
    _check_split(split, FOLDER_SPLITS)
    if not stems:
        raise DataError("at least one stem name is needed")
    split_dir = base / split
    if not split_dir.is_dir():
        raise DataError(f"split folder not found: {split_dir}")
    tracks = [Track(d.name, split, {s: (_stem_file(d, s),) for s in stems})
              for d in _subdirs(split_dir)]
    if not tracks:
        raise DataError(f"no tracks found in {split_dir}")
    others = {s: {d.name for d in _subdirs(base / s)} for s in FOLDER_SPLITS
              if (base / s).is_dir()}
    _check_disjoint(tracks, others)
    return tracks


def musdb_tracks(root: str | os.PathLike[str], split: str,
                 stems: Sequence[str] = MUSDB_STEMS) -> list[Track]:
    """Tracks of MUSDB18-HQ; ``valid`` is the official validation list taken out of ``train``."""
    base = _check_root(root)
    _check_split(split)
    unknown = [s for s in stems if s not in MUSDB_STEMS]
    if unknown:
        raise DataError(f"MUSDB18 has no stem {unknown[0]!r}; its stems are "
                        f"{', '.join(MUSDB_STEMS)}")
    folder = base / ("test" if split == "test" else "train")
    if not folder.is_dir():
        raise DataError(f"MUSDB18 split folder not found: {folder}")
    dirs = _subdirs(folder)
    if split == "valid":
        dirs = [d for d in dirs if d.name in MUSDB_VALID_TRACKS]
    elif split == "train":
        dirs = [d for d in dirs if d.name not in MUSDB_VALID_TRACKS]
    tracks = [Track(d.name, split, {s: (_stem_file(d, s),) for s in stems}) for d in dirs]
    if not tracks:
        raise DataError(f"no {split} tracks found in {folder}")
    return tracks


def _slakh_split_dir(base: Path, split: str) -> Path:
    for name in _SLAKH_SPLIT_DIRS[split]:
        if (base / name).is_dir():
            return base / name
    raise DataError(f"Slakh split folder not found: {base / _SLAKH_SPLIT_DIRS[split][0]}")


def slakh_tracks(root: str | os.PathLike[str], split: str,
                 classes: Mapping[str, Sequence[str]] = SLAKH_DEFAULT_CLASSES) -> list[Track]:
    """Tracks of Slakh2100 that have every wanted stem.

    Args:
        root: the folder holding ``train``, ``validation`` (or ``valid``) and ``test``.
        split: ``train``, ``valid`` or ``test``.
        classes: data-set stem name -> Slakh ``inst_class`` values (case-insensitive) whose
            stems are summed into it, e.g. ``{"drums": ["Drums"], "bass": ["Bass"]}``.
    """
    base = _check_root(root)
    _check_split(split)
    if not classes:
        raise DataError("at least one stem (instrument class) is needed")
    wanted = {name: {c.lower() for c in cls} for name, cls in classes.items()}
    split_dir = _slakh_split_dir(base, split)
    track_dirs = _subdirs(split_dir)
    if not track_dirs:
        raise DataError(f"no tracks found in {split_dir}")
    tracks: list[Track] = []
    for d in track_dirs:
        meta_path = d / "metadata.yaml"
        if not meta_path.is_file():
            raise DataError(f"Slakh track has no metadata.yaml: {d}")
        try:
            meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read {meta_path}: {err}") from None
        stems_meta = meta.get("stems") if isinstance(meta, dict) else None
        if not isinstance(stems_meta, dict):
            raise DataError(f"{meta_path} has no 'stems' mapping")
        files: dict[str, list[Path]] = {name: [] for name in wanted}
        for stem_id, info in sorted(stems_meta.items()):
            if not isinstance(info, dict) or not info.get("audio_rendered", True):
                continue
            inst_class = str(info.get("inst_class", "")).lower()
            for name, cls in wanted.items():
                if inst_class in cls:
                    f = d / "stems" / f"{stem_id}.flac"
                    if not f.is_file():
                        wav = f.with_suffix(".wav")
                        if not wav.is_file():
                            raise DataError(f"Slakh stem listed in {meta_path} is missing: {f}")
                        f = wav
                    files[name].append(f)
        if all(files.values()):
            tracks.append(Track(d.name, split, {n: tuple(fs) for n, fs in files.items()}))
    if not tracks:
        raise DataError(f"no track in {split_dir} has stems of every class "
                        f"{', '.join(sorted({c for cs in classes.values() for c in cs}))}")
    return tracks


def detect_layout(root: str | os.PathLike[str]) -> Layout:
    """Guess the layout of a data set root from what it holds."""
    base = _check_root(root)
    for split_dir in (base / n for n in ("train", "validation", "valid", "test")):
        if split_dir.is_dir():
            for d in _subdirs(split_dir):
                if (d / "metadata.yaml").is_file():
                    return "slakh"
                if (d / "mixture.wav").is_file():
                    return "musdb"
                break
    if any((base / s).is_dir() for s in FOLDER_SPLITS):
        return "folder"
    raise DataError(f"cannot tell the layout of {base}: expected split folders "
                    f"({', '.join(SPLITS)}) holding one folder per track")


def find_tracks(root: str | os.PathLike[str], split: str, stems: Sequence[str],
                layout: str = "auto") -> list[Track]:
    """Tracks of ``split`` under ``root`` with the named stems, in any supported layout.

    For Slakh, each stem name is matched to the instrument class of the same name
    (``drums`` -> ``Drums``); use :func:`slakh_tracks` for other groupings.
    """
    kind = detect_layout(root) if layout == "auto" else layout
    if kind == "folder":
        return folder_tracks(root, split, stems)
    if kind == "musdb":
        return musdb_tracks(root, split, stems)
    if kind == "slakh":
        return slakh_tracks(root, split, {s: (s,) for s in stems})
    raise DataError(f"unknown layout {layout!r}; expected auto, slakh, musdb or folder")
