"""Codecs that turn waveforms into discrete tokens and back.

Planned contents (see DESIGN.md section 3): the ``Codec`` interface, a Jukebox-compatible
VQ-VAE that loads OpenAI's checkpoint format, and a small trainable convolutional VQ-VAE.
This package never imports ``lass``, ``priors`` or ``likelihood``.
"""
