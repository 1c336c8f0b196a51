"""Writing stems as ``lass-separate`` does: file names, formats, bit depths, clipping.

    from lass import Separator, save_stems

    result = Separator.from_pretrained("default").separate_file("song.flac")
    save_stems(result.stems, result.sample_rate, "separated/default", "song",
               channels_first=False)    # song/drums.wav, song/bass.wav

A track's files are written into a staging folder next to their place and then renamed into
it: with a ``{track}/...`` template the track's folder is replaced as one unit, otherwise
file by file; either way no file is ever half-written, and a failed track leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from lass.data.audio import write_wav
from lass.errors import LassError
from vqvae.files import public_mode, write_text_atomic

#: Output containers: name -> (libsndfile format, file extension).
FORMATS: dict[str, tuple[str, str]] = {"wav": ("WAV", "wav"), "flac": ("FLAC", "flac"),
                                       "mp3": ("MP3", "mp3")}
#: What to do with stems that would clip in integer samples.
CLIP_MODES = ("rescale", "clamp", "none")
DEPTHS = ("int16", "int24", "float32")
DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"


def check_template(template: str) -> None:
    """Refuse a file-name template that could not name every stem of every track apart, or
    that leaves the output folder (one line, :class:`LassError`)."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template)
                  if name is not None}
    except ValueError as err:
        raise LassError(f"--filename {template!r}: {err}") from None
    unknown = fields - {"track", "stem", "ext"}
    if unknown:
        raise LassError(f"--filename {template!r}: unknown field {{{sorted(unknown)[0]}}}; "
                        "use {track}, {stem} and {ext}")
    if not {"track", "stem"} <= fields:
        raise LassError(f"--filename {template!r} must contain {{track}} and {{stem}}")
    sample = Path(template.format(track="t", stem="s", ext="wav"))
    if sample.is_absolute() or ".." in sample.parts:
        raise LassError(f"--filename {template!r} must stay inside the output folder")


def output_format(container: str = "wav", depth: str | None = None,
                  input_subtype: str | None = None) -> tuple[str, str, str]:
    """(libsndfile format, subtype, file extension) of the stems: ``container`` (``wav``,
    ``flac``, ``mp3``) at ``depth`` (``int16``, ``int24``, ``float32``), or else at the
    input's depth (``input_subtype``, libsndfile's name) where the container allows it."""
    if container not in FORMATS:
        raise LassError(f"unknown format {container!r}; expected one of {', '.join(FORMATS)}")
    fmt, ext = FORMATS[container]
    if container == "mp3":
        return fmt, "MPEG_LAYER_III", ext
    if depth is not None:
        if depth not in DEPTHS:
            raise LassError(f"unknown depth {depth!r}; expected one of {', '.join(DEPTHS)}")
        if depth == "float32" and container != "wav":
            raise LassError("--float32 needs WAV output (FLAC holds 16 or 24 bits; MP3 no "
                            "sample format)")
        return fmt, {"int16": "PCM_16", "int24": "PCM_24", "float32": "FLOAT"}[depth], ext
    source = input_subtype or "PCM_16"
    if source == "PCM_24":
        return fmt, "PCM_24", ext
    if source in ("PCM_32", "FLOAT", "DOUBLE"):
        return fmt, "FLOAT" if container == "wav" else "PCM_24", ext
    return fmt, "PCM_16", ext


def fit_range(stems: Mapping[str, np.ndarray], mode: str
              ) -> tuple[Mapping[str, np.ndarray], str]:
    """Stems for integer samples under ``mode`` (see :data:`CLIP_MODES`) and what was done
    (``''`` if nothing): ``rescale`` scales every stem of the track by one gain (their sum
    keeps its shape), ``clamp`` clips each, ``none`` leaves them."""
    if mode not in CLIP_MODES:
        raise LassError(f"unknown clip mode {mode!r}; expected one of {', '.join(CLIP_MODES)}")
    peak = max(float(np.max(np.abs(a))) for a in stems.values())
    if peak <= 1.0 or mode == "none":
        return stems, "" if peak <= 1.0 else f"peaks at {peak:.2f} and clips"
    if mode == "rescale":
        gain = 0.999 / peak
        return ({k: (a * gain).astype(np.float32) for k, a in stems.items()},
                f"peaks at {peak:.2f}: all stems scaled by {gain:.3f} (--clip-mode clamp or "
                "--float32 to keep the level)")
    return ({k: np.clip(a, -1.0, 1.0) for k, a in stems.items()},
            f"peaks at {peak:.2f}: clamped (--clip-mode rescale or --float32 to avoid it)")


def save_stems(stems: Mapping[str, np.ndarray], sample_rate: int, out: str | os.PathLike[str],
               track: str, *, template: str = DEFAULT_TEMPLATE, container: str = "wav",
               depth: str | None = None, input_subtype: str | None = None,
               clip_mode: str = "rescale", info: Mapping[str, Any] | None = None,
               channels_first: bool = True) -> tuple[dict[str, Path], str]:
    """Write a track's stems (and ``info`` as ``separation.json``) under ``out``.

    Args:
        stems: stem -> ``(time,)`` or ``(channels, time)`` (``channels_first``) or ``(time,
            channels)`` contribution, as :class:`~lass.separator.SeparationResult` holds.
        sample_rate: their rate.
        out: the folder the template's paths are relative to.
        track: the track's name (may hold ``/`` for a sub-folder).
        template: where each file goes, with ``{track}``, ``{stem}`` and ``{ext}``;
            ``separation.json`` takes the stem name ``separation``.
        container, depth, input_subtype: see :func:`output_format`.
        clip_mode: see :func:`fit_range` (integer samples only).
        info: written as ``separation.json`` with the files and the format added.

    Returns:
        The path of every file written (``separation`` included when ``info`` is given) and
        what clipping did (``''`` if nothing).
    """
    check_template(template)
    fmt, subtype, ext = output_format(container, depth, input_subtype)
    root = Path(out)
    if info is not None and "separation" in stems:
        raise LassError("a stem called 'separation' would take the name of separation.json")
    names = {stem: Path(template.format(track=track, stem=stem, ext=ext)) for stem in stems}
    json_name = Path(template.format(track=track, stem="separation", ext="json"))
    if len(set(names.values())) != len(names) or (info is not None
                                                  and json_name in names.values()):
        raise LassError(f"--filename {template!r} gives two files the same name")
    if info is not None:
        names["separation"] = json_name
    clip = ""
    if subtype != "FLOAT":
        stems, clip = fit_range(stems, clip_mode)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(os_tempdir(root))
    try:
        for stem, audio in stems.items():
            target = staging / names[stem]
            target.parent.mkdir(parents=True, exist_ok=True)
            write_wav(target, audio.T if channels_first else audio, sample_rate,
                      subtype=subtype, fmt=fmt)
        if info is not None:
            record = {**info, "files": {s: names[s].as_posix() for s in stems},
                      "format": {"container": fmt, "subtype": subtype, "clip": clip or None}}
            target = staging / names["separation"]
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, json.dumps(record, indent=1) + "\n")
        folder_unit = os.path.dirname(template) == "{track}" and \
            "{track}" not in os.path.basename(template)
        if folder_unit:
            final = root / track
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging / track, final)
        else:
            for rel in names.values():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, root / rel)
    except (OSError, sf.LibsndfileError) as err:
        raise LassError(f"cannot write the stems of {track} to {root}: "
                        f"{getattr(err, 'strerror', None) or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {k: root / v for k, v in names.items()}, clip


def os_tempdir(root: Path) -> str:
    """A new staging folder inside ``root`` (hidden; the mode any new folder gets)."""
    import tempfile

    path = tempfile.mkdtemp(prefix=".partial-", dir=root)
    os.chmod(path, public_mode(directory=True))
    return path
