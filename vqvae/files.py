"""Atomic writes of the codec package's files: written beside their place, then renamed, so a
reader never sees half a file and a failure leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _public_mode(directory: bool = False) -> int:
    """The mode a new file (or folder) gets under the current umask (``mkstemp`` and
    ``mkdtemp`` make private ones)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_dir_atomically(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Let ``fill`` write a new folder beside ``path``, then rename it into place (replacing
    an older one)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        tmp.chmod(_public_mode(directory=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_bytes_atomic_torch(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, _public_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
