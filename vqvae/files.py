"""Atomic writes, the one implementation every package of the toolkit uses.

A file or folder is written beside its place under a temporary name and renamed into place
once complete, so a reader never sees half of it and a failure leaves nothing behind. New
files and folders get the mode any new one gets under the umask (``mkstemp`` and ``mkdtemp``
make private ones).

It lives in the codec package because that package is the toolkit's lowest layer: it imports
no other part of the toolkit, and the priors, the likelihoods and ``lass`` all build on the
codec's tokens, so each of them can import this module without an import cycle.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def public_mode(directory: bool = False) -> int:
    """The mode a new file (or folder) gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_file_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Let ``write`` write the file at a temporary path beside ``path``, then rename it into
    place (replacing an older file); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, public_mode())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return write_file_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a UTF-8 text file atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], record: Any) -> Path:
    """Write ``record`` as indented JSON (and a final newline) atomically."""
    return write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def save_torch_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes_atomic(path, buf.getvalue())


def read_trainer_state(folder: str | os.PathLike[str], error: type[Exception],
                       device: str | torch.device = "cpu") -> dict[str, Any]:
    """The ``trainer.pt`` a trainer's ``save`` left in ``folder`` (optimizer state, step,
    settings), for its ``resume``: none there, or a damaged one, raises ``error`` with one
    line."""
    path = Path(folder) / "trainer.pt"
    if not path.is_file():
        raise error(f"nothing to resume in {Path(folder)}: no trainer.pt")
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise error(f"cannot read {path}: corrupt or truncated ({type(err).__name__})"
                    ) from None
    if not isinstance(state, dict) or "optimizer" not in state or "step" not in state:
        raise error(f"{path} is not a trainer's state")
    return state


def write_dir_atomically(path: str | os.PathLike[str], fill: Callable[[Path], None],
                         replace: bool = True) -> Path:
    """Let ``fill`` write a new folder beside ``path``, then rename it into place (replacing
    an older one when ``replace``; otherwise an existing ``path`` raises
    :class:`FileExistsError` before anything is written)."""
    out = Path(path)
    if not replace and out.exists():
        raise FileExistsError(f"{out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        for f in [tmp, *tmp.rglob("*")]:
            if not f.is_symlink():
                f.chmod(public_mode(directory=f.is_dir()))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON record as a line to ``path`` (a run's log: appended, not replaced)."""
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
