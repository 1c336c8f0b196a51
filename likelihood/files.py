"""The ``.npz`` model files of the fitted likelihoods (factorised, latent, the token
evidence models), written atomically (:mod:`vqvae.files`)."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from likelihood.errors import LikelihoodError
from vqvae.files import write_bytes_atomic


def save_model_file(path: str | os.PathLike[str], arrays: dict[str, np.ndarray],
                    meta: dict[str, Any]) -> Path:
    """Write named arrays and a JSON ``meta`` record to an ``.npz`` atomically (the format
    of the fitted likelihood models: factorised, latent)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    payload: dict[str, Any] = {**arrays, "meta": np.array(json.dumps(meta, sort_keys=True))}
    np.savez_compressed(buf, **payload)
    return write_bytes_atomic(out, buf.getvalue())


def load_model_file(path: str | os.PathLike[str], what: str, kind: str, version: int,
                    names: tuple[str, ...]) -> tuple[Path, dict[str, torch.Tensor],
                                                     dict[str, Any]]:
    """Read a :func:`save_model_file` file whose meta says ``kind`` and ``version``.

    Returns the path, the arrays ``names`` as float32 tensors and the meta record; a
    missing, foreign, corrupt or truncated file raises :class:`LikelihoodError` naming
    ``what`` it should have been.
    """
    p = Path(path)
    if not p.is_file():
        raise LikelihoodError(f"{what} not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"])) if "meta" in f.files else None
            if not isinstance(meta, dict) or meta.get("format_version") != version \
                    or meta.get("kind") != kind:
                raise LikelihoodError(f"{p}: not a {what} file")
            arrays = {n: torch.from_numpy(f[n].astype(np.float32)) for n in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise LikelihoodError(f"cannot read {what} {p}: corrupt or truncated ({err})"
                              ) from None
    return p, arrays, meta
