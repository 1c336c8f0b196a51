"""Autoregressive priors over codec tokens.

* :class:`Prior`: the interface (``start``, ``step`` with a KV cache, ``reorder`` for beams,
  ``prime``, teacher-forced ``log_prob``).
* :class:`TransformerPrior`: a causal Transformer on Hugging Face ``transformers``.
* :class:`MarkovPrior`: an exact first-order Markov prior (baselines, tests).
* :func:`load_prior`: loads a saved prior offline.

This package never imports ``lass``, ``vqvae`` or ``likelihood``.
"""

from priors.errors import PriorError
from priors.markov import MarkovPrior
from priors.prior import Prior, PriorState
from priors.transformer import TransformerPrior, TransformerPriorConfig, load_prior

__all__ = [
    "MarkovPrior",
    "Prior",
    "PriorError",
    "PriorState",
    "TransformerPrior",
    "TransformerPriorConfig",
    "load_prior",
]
