"""Autoregressive priors over codec tokens (and, later, data-domain priors).

Planned contents (see DESIGN.md section 3): the ``Prior`` interface with a batched,
KV-cached ``step`` and a Transformer prior built on Hugging Face ``transformers``.
This package never imports ``lass``, ``vqvae`` or ``likelihood``.
"""
