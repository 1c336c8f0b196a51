"""LASS: latent autoregressive source separation.

The separation side of the toolkit. It builds on three independent packages:
``vqvae`` (codecs: waveform <-> tokens), ``priors`` (autoregressive token priors)
and ``likelihood`` (the counted likelihood table). Data sets and mixing live in
:mod:`lass.data`.
"""

from lass.errors import DataError, LassError

__all__ = ["DataError", "LassError"]
__version__ = "0.1.0"
