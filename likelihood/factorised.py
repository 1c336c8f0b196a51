"""A factorised likelihood fitted to the counts: it scores pairs that counting never saw.

    q(m | i, j) = softmax_m(A[i, m] + B[j, m] + c[m])

Each source token votes for the mixture tokens it tends to appear under (a product of
experts, normalised per pair). Fitted by maximum likelihood on the counted triples, it
generalises across pairs: hours of counts see only part of the K^2 pairs, and most triples
are seen once, yet a drum token and a bass token each say much about the mixture token. On
held-out counts it needs 3.54 bits per mixture token where the best smoothing of the raw
counts needs 4.81 (``lass-fit-likelihood`` prints this figure for any counts).

:class:`CountLikelihood` uses it as the base measure of its ``factorised`` smoothing:
``p = (c(m, i, j) + alpha * q(m | i, j)) / (c(i, j) + alpha)``.

A file (``.npz``) holds ``A`` and ``B`` (float16), ``c`` and the per-pair log-normaliser
``log Z[i, j]`` (float16, computed from the stored, rounded weights), and a JSON record
with K and the codec identity of the counts it was fitted to.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from likelihood.errors import LikelihoodError
from likelihood.files import load_model_file, save_model_file
from likelihood.table import Counts

FORMAT_VERSION = 1
KIND = "factorised"


def log_normaliser(first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor,
                   chunk: int = 32) -> torch.Tensor:
    """``(K, K)`` ``log Z[i, j] = logsumexp_m(A[i, m] + B[j, m] + c[m])`` (float32).

    ``first, second: (K, K)``, ``bias: (K,)``; ``chunk`` rows of ``i`` at a time bound the
    memory to ``chunk * K * K`` floats.
    """
    a, b, c = first.float(), second.float(), bias.float()
    k = a.shape[0]
    out = torch.empty(k, k, dtype=torch.float32, device=a.device)
    for lo in range(0, k, chunk):
        out[lo: lo + chunk] = torch.logsumexp(a[lo: lo + chunk, None, :] + (b + c)[None], dim=-1)
    return out


@dataclass
class FactorisedLikelihood:
    """``q(m | i, j) = softmax_m(A[i] + B[j] + c)[m]`` (see the module docstring).

    Attributes:
        first: ``(K, K)`` ``A[i, m]``, the first source token's vote for each mixture token.
        second: ``(K, K)`` ``B[j, m]``.
        bias: ``(K,)`` ``c[m]``.
        log_norm: ``(K, K)`` ``log Z[i, j]``.
        meta: ``k``, ``codec_identity``, fit figures.
    """

    first: torch.Tensor
    second: torch.Tensor
    bias: torch.Tensor
    log_norm: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    row_norm: torch.Tensor = field(init=False, repr=False)
    col_norm: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        norm = self.log_norm.float()
        self.row_norm = norm.mean(1)
        self.col_norm = norm.mean(0) - norm.mean()

    @property
    def k(self) -> int:
        """Codebook size K."""
        return int(self.first.shape[0])

    def to(self, device: str | torch.device) -> FactorisedLikelihood:
        """The same model with float32 tensors on ``device``."""
        return FactorisedLikelihood(self.first.float().to(device), self.second.float().to(device),
                                    self.bias.float().to(device),
                                    self.log_norm.float().to(device), self.meta)

    def check_fits(self, counts: Counts) -> None:
        """Raise :class:`LikelihoodError` unless this model fits ``counts``: the same K and,
        where both record one, the same codec."""
        if self.k != counts.k:
            raise LikelihoodError(f"the factorised model has K = {self.k} but the counts "
                                  f"K = {counts.k}")
        fitted, counted = self.meta.get("codec_identity"), counts.meta.get("codec_identity")
        if fitted and counted and fitted != counted:
            raise LikelihoodError("the factorised model was fitted to counts of another codec")

    def log_prob(self, mix_tokens: torch.Tensor, first: torch.Tensor, second: torch.Tensor
                 ) -> torch.Tensor:
        """``log q(m | i, j)``: ``mix_tokens (batch,)``, ``first, second (batch, n)`` ->
        ``(batch, n)``."""
        m = mix_tokens.long()[:, None].expand_as(first)
        return (self.first[first, m] + self.second[second, m] + self.bias[m]
                - self.log_norm[first, second])

    def token_factors(self, mix_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, K)`` each: per-token parts ``a[i]``, ``b[j]`` of ``log q(m | i, j)``.

        ``log q = a[i] + b[j] + r[i, j]`` with the residual ``r`` of the normaliser after
        its row and column means; a search ranks each source's tokens by ``a`` (``b``) to
        find the pairs worth scoring exactly.
        """
        m = mix_tokens.long()
        a = self.first[:, m].T - self.row_norm[None]
        b = self.second[:, m].T + self.bias[m][:, None] - self.col_norm[None]
        return a, b

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to an ``.npz`` atomically (weights as float16)."""
        a = self.first.detach().cpu().half()
        b = self.second.detach().cpu().half()
        c = self.bias.detach().cpu().float()
        log_norm = log_normaliser(a, b, c).half()  # of the weights as stored
        meta = {**self.meta, "format_version": FORMAT_VERSION, "kind": KIND, "k": self.k}
        return save_model_file(path, {"first": a.numpy(), "second": b.numpy(),
                                      "bias": c.numpy(), "log_norm": log_norm.numpy()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
             ) -> FactorisedLikelihood:
        """Read a file written by :meth:`save` (float32 tensors on ``device``)."""
        p, arrays, meta = load_model_file(path, "factorised likelihood", KIND, FORMAT_VERSION,
                                          ("first", "second", "bias", "log_norm"))
        k = int(meta.get("k", -1))
        shapes = {n: tuple(t.shape) for n, t in arrays.items()}
        if shapes != {"first": (k, k), "second": (k, k), "bias": (k,), "log_norm": (k, k)}:
            raise LikelihoodError(f"{p}: array shapes {shapes} do not fit K = {k}")
        return cls(arrays["first"], arrays["second"], arrays["bias"], arrays["log_norm"],
                   meta).to(device)


def _triples(counts: Counts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(m, i, j, count)`` of every nonzero of a counts table."""
    coo = counts.matrix.tocoo()
    k = counts.k
    col = coo.col.astype(np.int64)
    return (torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(col // k),
            torch.from_numpy(col % k), torch.from_numpy(coo.data.astype(np.float32)))


def _log_q(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, m: torch.Tensor,
           i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``(n,)`` ``log q(m | i, j)`` of weights ``a, b: (K, K)``, ``c: (K,)`` for triples
    ``(n,)`` (exact softmax, differentiable)."""
    return torch.log_softmax(a[i] + b[j] + c, dim=1).gather(1, m[:, None])[:, 0]


def _bits(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
          triples: tuple[torch.Tensor, ...], batch: int = 32768) -> float:
    """Count-weighted cross-entropy of ``q`` on triples, bits per mixture token."""
    m, i, j, w = triples
    total = 0.0
    with torch.no_grad():
        for lo in range(0, m.numel(), batch):
            sl = slice(lo, lo + batch)
            total -= float((_log_q(a, b, c, m[sl], i[sl], j[sl]) * w[sl]).sum())
    return total / max(float(w.sum()), 1.0) / math.log(2)


@dataclass
class FitState:
    """Where a fit is: the weights, the optimiser, the epochs done and their figures."""

    epoch: int
    weights: dict[str, torch.Tensor]
    optimiser: dict[str, Any]
    history: list[dict[str, float]]


def fit_factorised(counts: Counts, *, epochs: int = 8, lr: float = 0.05, batch: int = 16384,
                   seed: int = 0, valid: Counts | None = None, state: FitState | None = None,
                   on_epoch: Callable[[FitState], None] | None = None,
                   progress: Callable[[int, int], None] | None = None
                   ) -> tuple[FactorisedLikelihood, FitState]:
    """Fit ``A, B, c`` to the counted triples (count-weighted cross-entropy, Adam).

    Args:
        counts: the training counts.
        epochs: passes over the nonzero triples (in shuffled batches of ``batch``).
        valid: held-out counts (another seed) whose cross-entropy is reported per epoch.
        state: a :class:`FitState` to resume from (``on_epoch`` hands them out).
        on_epoch: called after every epoch with the state (for checkpoints).
        progress: ``progress(batches_done, batches_per_epoch)``.
    """
    k = counts.k
    train = _triples(counts)
    if train[0].numel() == 0:
        raise LikelihoodError("the counts are empty: nothing to fit")
    held = _triples(valid) if valid is not None else None
    if valid is not None and valid.k != k:
        raise LikelihoodError(f"held-out counts have K = {valid.k}, training counts {k}")
    a = torch.zeros(k, k, requires_grad=True)
    b = torch.zeros(k, k, requires_grad=True)
    c = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([a, b, c], lr=lr)
    history: list[dict[str, float]] = []
    done = 0
    if state is not None:
        with torch.no_grad():
            a.copy_(state.weights["first"])
            b.copy_(state.weights["second"])
            c.copy_(state.weights["bias"])
        opt.load_state_dict(state.optimiser)
        done, history = state.epoch, list(state.history)
    n = train[0].numel()
    per_epoch = math.ceil(n / batch)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(done):  # the same shuffles on resume as in one run
        torch.randperm(n, generator=gen)
    for epoch in range(done, epochs):
        order = torch.randperm(n, generator=gen)
        for step, lo in enumerate(range(0, n, batch)):
            idx = order[lo: lo + batch]
            m, i, j, w = (t[idx] for t in train)
            loss = -(_log_q(a, b, c, m, i, j) * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1, per_epoch)
        record: dict[str, float] = {"epoch": epoch + 1}
        if held is not None:
            record["valid_bits"] = round(_bits(a, b, c, held), 4)
        history.append(record)
        state = FitState(epoch + 1, {"first": a.detach().clone(), "second": b.detach().clone(),
                                     "bias": c.detach().clone()},
                          copy.deepcopy(opt.state_dict()), list(history))
        if on_epoch is not None:
            on_epoch(state)
    weights = (a.detach(), b.detach(), c.detach())
    meta = {"codec_identity": counts.meta.get("codec_identity"), "epochs": epochs,
            "triples": int(counts.meta.get("triples", int(train[3].sum()))),
            "history": history}
    model = FactorisedLikelihood(*weights, log_normaliser(*weights), meta)
    final = FitState(epochs, {"first": weights[0], "second": weights[1], "bias": weights[2]},
                     opt.state_dict(), history)
    return model, final


def held_out_bits(model: FactorisedLikelihood, valid: Counts) -> float:
    """Cross-entropy of ``q`` on held-out counts, bits per mixture token."""
    return _bits(model.first.float(), model.second.float(), model.bias.float(), _triples(valid))
