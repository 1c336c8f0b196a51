"""Codecs that turn waveforms into discrete tokens and back.

* :class:`Codec`: the interface (``encode``, ``decode``, ``embed``, ``decode_latents``).
* :class:`JukeboxVQVAE`: our implementation of OpenAI Jukebox's VQ-VAE; loads
  ``vqvae.pth.tar`` with :meth:`JukeboxVQVAE.from_checkpoint`.
* :class:`ConvVQVAE`: a small trainable convolutional VQ-VAE with an EMA codebook.
* :func:`load_codec`: loads any codec saved with :meth:`Codec.save`.

This package never imports ``lass``, ``priors`` or ``likelihood``.
"""

from vqvae.codec import Codec, load_codec
from vqvae.conv import ConvVQVAE, ConvVQVAEConfig
from vqvae.errors import CodecError
from vqvae.jukebox import JukeboxConfig, JukeboxVQVAE

__all__ = [
    "Codec",
    "CodecError",
    "ConvVQVAE",
    "ConvVQVAEConfig",
    "JukeboxConfig",
    "JukeboxVQVAE",
    "load_codec",
]
