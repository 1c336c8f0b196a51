"""A first-order Markov prior: exact, tiny and fast.

Useful as a baseline prior (a bigram model estimated from token counts) and as the random
prior of brute-force tests of the samplers: its log-probability of a sequence is exact and
cheap. Its state is the last token of every row; ``reorder`` gathers it.
"""

from __future__ import annotations

import torch
from torch import nn

from priors.errors import PriorError
from priors.prior import Prior, PriorState


class MarkovPrior(Prior):
    """``log p(z_0) = log_init[z_0]``, ``log p(z_t | z_{t-1}) = log_trans[z_{t-1}, z_t]``.

    Args:
        log_init: ``(K,)`` log-probabilities of the first token.
        log_trans: ``(K, K)`` log-probabilities of the next token given the last.
        context_length: longest sequence accepted (a Markov chain has no real limit).
    """

    def __init__(self, log_init: torch.Tensor, log_trans: torch.Tensor,
                 context_length: int = 1 << 30) -> None:
        super().__init__()
        k = log_init.shape[0]
        if log_init.dim() != 1 or log_trans.shape != (k, k):
            raise PriorError("log_init must be (K,) and log_trans (K, K)")
        self.log_init = nn.Parameter(torch.log_softmax(log_init.float(), -1), requires_grad=False)
        self.log_trans = nn.Parameter(torch.log_softmax(log_trans.float(), -1),
                                      requires_grad=False)
        self._context = context_length

    @classmethod
    def random(cls, k: int, generator: torch.Generator | None = None, sharpness: float = 2.0,
               context_length: int = 1 << 30) -> MarkovPrior:
        """A random chain (logits ~ N(0, sharpness^2))."""
        return cls(torch.randn(k, generator=generator) * sharpness,
                   torch.randn(k, k, generator=generator) * sharpness, context_length)

    @property
    def vocab_size(self) -> int:
        return int(self.log_init.shape[0])

    @property
    def context_length(self) -> int:
        return self._context

    def start(self, batch: int, classes: torch.Tensor | None = None, share: int = 0
              ) -> PriorState:
        return PriorState(cache=None, length=0, pending=None, batch=batch)

    def step(self, tokens: torch.Tensor | None, state: PriorState
             ) -> tuple[torch.Tensor, PriorState]:
        if tokens is None:
            if state.length:
                raise PriorError("step(None) is only allowed right after start()")
            out = self.log_init.expand(state.batch, -1)
            return out, PriorState(None, 1, None, state.batch)
        tokens = tokens.to(self.log_init.device).long().reshape(-1)
        if tokens.numel() != state.batch:
            raise PriorError(f"{tokens.numel()} tokens for a state of batch {state.batch}")
        if state.length >= self._context + 1:
            raise PriorError("context full")
        if state.length == 0:  # the first step fed a token without step(None)
            state = PriorState(None, 1, None, state.batch)
        return self.log_trans[tokens], PriorState(tokens, state.length + 1, None, state.batch)

    def prime(self, codes: torch.Tensor, state: PriorState) -> tuple[torch.Tensor, PriorState]:
        if codes.shape[1] == 0:
            return self.step(None, state)
        if state.length == 0:
            _, state = self.step(None, state)
        logp = torch.empty(0)
        for t in range(codes.shape[1]):
            logp, state = self.step(codes[:, t], state)
        return logp, state

    def reorder(self, state: PriorState, index: torch.Tensor) -> PriorState:
        index = torch.as_tensor(index).long().reshape(-1)
        last = None if state.cache is None else state.cache.index_select(
            0, index.to(state.cache.device))
        return PriorState(last, state.length, None, int(index.numel()))

    def token_log_probs(self, codes: torch.Tensor, classes: torch.Tensor | None = None
                        ) -> torch.Tensor:
        codes = codes.to(self.log_init.device).long()
        first = self.log_init[codes[:, :1]]
        rest = self.log_trans[codes[:, :-1], codes[:, 1:]]
        return torch.cat([first, rest], dim=1)
