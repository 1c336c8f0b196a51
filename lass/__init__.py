"""LASS: latent autoregressive source separation.

The separation side of the toolkit. It builds on three independent packages:
``vqvae`` (codecs: waveform <-> tokens), ``priors`` (autoregressive token priors) and
``likelihood`` (the counted likelihood table). Data sets and mixing live in
:mod:`lass.data`; the separator in :mod:`lass.separator` (``lass.Separator``), the samplers
in :mod:`lass.sampling`. The heavy parts load on first use, so ``import lass`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from lass.errors import DataError, LassError

__version__ = "0.1.0"

_LAZY = {
    "Separator": "lass.separator",
    "load_separator": "lass.separator",
    "SeparationSettings": "lass.separator",
    "SeparationResult": "lass.separator",
    "ImageSeparator": "lass.images",
    "ImageSettings": "lass.images",
    "Greedy": "lass.sampling",
    "Ancestral": "lass.sampling",
    "TopK": "lass.sampling",
    "TopP": "lass.sampling",
    "BeamSearch": "lass.sampling",
    "separate_tokens": "lass.sampling",
    "default_bundle_path": "lass.bundle",
    "save_stems": "lass.output",
}

__all__ = ["DataError", "LassError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lass' has no attribute {name!r}")
