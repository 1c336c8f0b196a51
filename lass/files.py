"""Atomic writes for the toolkit's own files: a temporary file in the same folder, renamed
into place, so a reader never sees half a file and a failure leaves none behind. New files get
the mode any new file gets (umask), not ``mkstemp``'s private 0600."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def public_mode(directory: bool = False) -> int:
    """The mode a new file (or folder) gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, public_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a UTF-8 text file atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON record as a line to ``path`` (a run's log: appended, not replaced)."""
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
