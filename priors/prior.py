"""The prior interface: autoregressive log-probabilities over codec tokens, one step at a time.

Token ids ``0..K-1`` are codec tokens. A sequence starts with a start token (one per class
for a class-conditioned prior), which the model sees but never predicts. A
:class:`PriorState` holds the key/value cache of a batch of sequences; ``step`` appends
tokens and returns the log-probabilities of the next one; ``reorder`` makes row ``i`` of the
state a copy of row ``index[i]`` (beam search).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class PriorState:
    """The incremental state of a batch of sequences.

    Attributes:
        cache: the model's key/value cache (a ``transformers`` cache object).
        length: tokens the cache holds (start token included).
        pending: ``(batch, n)`` tokens to feed before the next prediction (the start token
            right after :meth:`Prior.start`), or ``None``.
        batch: number of sequences.
    """

    cache: Any
    length: int
    pending: torch.Tensor | None
    batch: int


class Prior(nn.Module, ABC):
    """An autoregressive prior over ``vocab_size`` codec tokens."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of codec tokens K (start and class tokens excluded)."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Most codec tokens one sequence can hold after its start token."""

    @abstractmethod
    def start(self, batch: int, classes: torch.Tensor | None = None, share: int = 0
              ) -> PriorState:
        """A fresh state for ``batch`` sequences (``classes: (batch,)`` for a conditioned prior).

        ``share`` > 1 says the rows come in families of ``share`` consecutive rows (the beams
        of one mixture) that :meth:`reorder` only moves within their family; a prior may then
        store a family's common past once (the result is the same, only faster). A reorder
        across families stays correct but ends the sharing.
        """

    @abstractmethod
    def step(self, tokens: torch.Tensor | None, state: PriorState
             ) -> tuple[torch.Tensor, PriorState]:
        """Append ``tokens: (batch,)`` (``None`` for the first step) and predict.

        Returns:
            ``(batch, vocab_size)`` log-probabilities of the next token, and the state.
        """

    @abstractmethod
    def prime(self, codes: torch.Tensor, state: PriorState) -> tuple[torch.Tensor, PriorState]:
        """Append ``codes: (batch, n)`` at once (a context to continue from) and predict."""

    @abstractmethod
    def reorder(self, state: PriorState, index: torch.Tensor) -> PriorState:
        """Row ``i`` of the result is row ``index[i]`` of ``state`` (``index: (batch',)``)."""

    @abstractmethod
    def token_log_probs(self, codes: torch.Tensor, classes: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """Teacher-forced ``(batch, tokens)`` log-probability of each token of ``codes``."""

    def log_prob(self, codes: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced ``(batch,)`` log-probability of ``codes: (batch, tokens)``."""
        return self.token_log_probs(codes, classes).sum(-1)
