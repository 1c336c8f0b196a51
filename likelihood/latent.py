"""A likelihood of the mixture's continuous latent: p(h_mix[t] | source tokens up to t).

The counted table scores the mixture's *token*: ten bits out of the encoder's continuous
output, and a noisy function of the source pair (see README, "Where the loss is"). This
model scores the encoder output itself. With ``L`` tokens of context, the mixture latent
at step ``t`` is modelled as a Gaussian with diagonal variance around an additive function
of the two sources' tokens at ``t, t-1, ..., t-L+1``::

    h_mix[t] ~ N(bias + sum_l A[l, i[t-l]] + B[l, j[t-l]], diag(var))

``A, B: (L, K, D)``. The past tokens of a search row are fixed, so at step ``t`` the
residual ``r = h_mix[t] - bias - sum_{l>=1} (A[l, i[t-l]] + B[l, j[t-l]])`` is known and::

    log p = -sum_d w_d (r_d - A[0, i, d] - B[0, j, d])^2 + const,  w = 1 / (2 var)
          = vote1[i] + vote2[j] - 2 sum_d w_d A[0, i, d] B[0, j, d] - sum_d w_d r_d^2 + const

with per-token votes ``vote1[i] = 2 (w r) . A[0, i] - w . A[0, i]^2`` (``vote2`` alike): a
search ranks each source's tokens by prior plus lambda times its vote and scores the pairs
of the best ones exactly (:mod:`lass.sampling`).

:func:`fit_latent` fits the tables by alternating least squares (each table the mean
residual of its tokens, shrunk by one pseudo-observation; closed form, a few passes) to
``(first tokens, second tokens, mixture latents)`` of whole sequences. Files are ``.npz``
with the tables in float16 and a JSON metadata record (``k``, ``dim``, ``context``, the
codec's identity, what was encoded).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from likelihood.errors import LikelihoodError
from likelihood.files import load_model_file, save_model_file

FORMAT_VERSION = 1
KIND = "latent-gaussian"


@dataclass
class LatentLikelihood:
    """Additive Gaussian model of the mixture latent (see the module docstring).

    Attributes:
        first, second: ``(context, K, D)`` contributions of each source's token at lag
            ``0 .. context - 1``.
        bias: ``(D,)``.
        var: ``(D,)`` residual variance per latent dimension.
        meta: ``k``, ``dim``, ``context``, ``codec_identity``, fit statistics.
    """

    first: torch.Tensor
    second: torch.Tensor
    bias: torch.Tensor
    var: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.first.dim() != 3 or self.first.shape != self.second.shape:
            raise LikelihoodError("the two token tables must both be (context, K, D)")
        d = self.first.shape[2]
        if self.bias.shape != (d,) or self.var.shape != (d,):
            raise LikelihoodError(f"bias and var must be ({d},)")
        if not bool((self.var > 0).all()):
            raise LikelihoodError("the residual variances must be positive")
        self.weight = 0.5 / self.var  # w = 1 / (2 var)
        self.const = -0.5 * float(torch.log(2 * math.pi * self.var.double()).sum())
        self._sq1 = (self.first[0] ** 2 * self.weight).sum(-1)  # (K,)
        self._sq2 = (self.second[0] ** 2 * self.weight).sum(-1)

    @property
    def k(self) -> int:
        """Codebook size K."""
        return int(self.first.shape[1])

    @property
    def dim(self) -> int:
        """Latent dimension D."""
        return int(self.first.shape[2])

    @property
    def context(self) -> int:
        """Tokens per source the latent of one step depends on (the current one and the past)."""
        return int(self.first.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the tables live."""
        return self.first.device

    def to(self, device: str | torch.device) -> LatentLikelihood:
        """A copy on ``device``."""
        return LatentLikelihood(self.first.to(device), self.second.to(device),
                                self.bias.to(device), self.var.to(device), dict(self.meta))

    def check_codec(self, codebook_size: int, codec_identity: str | None) -> None:
        """Raise :class:`LikelihoodError` unless the model was fitted for this codec."""
        if codebook_size != self.k:
            raise LikelihoodError(f"the latent likelihood has K = {self.k} but the codec has "
                                  f"{codebook_size} codes")
        fitted = self.meta.get("codec_identity")
        if codec_identity and fitted and fitted != codec_identity:
            raise LikelihoodError("the latent likelihood was fitted for another codec")

    def residual(self, latent: torch.Tensor, past_first: torch.Tensor,
                 past_second: torch.Tensor) -> torch.Tensor:
        """``latent: (R, D)`` less the bias and the past tokens' parts -> ``(R, D)``.

        ``past_first, past_second: (R, n)`` the last ``n <= context - 1`` tokens of each row,
        most recent last (fewer at the start of a sequence).
        """
        r = latent - self.bias
        n = min(past_first.shape[1], self.context - 1)
        for lag in range(1, n + 1):
            r = r - self.first[lag][past_first[:, -lag]] - self.second[lag][past_second[:, -lag]]
        return r

    def votes(self, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, D)`` residuals -> per-token votes ``(R, K)`` of each source (module docstring)."""
        rw = residual * self.weight
        return 2 * rw @ self.first[0].T - self._sq1, 2 * rw @ self.second[0].T - self._sq2

    def pair_log_lik(self, residual: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                     votes: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``log p(h | pair)``: residual ``(R, D)``, pairs ``first, second (R, C)`` ->
        ``(R, C)``."""
        v1, v2 = votes if votes is not None else self.votes(residual)
        cross = (self.first[0][first] * self.weight * self.second[0][second]).sum(-1)
        base = (residual * residual * self.weight).sum(-1, keepdim=True)
        return v1.gather(1, first) + v2.gather(1, second) - 2 * cross - base + self.const

    def grid_log_lik(self, residual: torch.Tensor, top1: torch.Tensor, top2: torch.Tensor,
                     votes: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """:meth:`pair_log_lik` of every pair of ``top1: (R, f)`` x ``top2: (R, g)`` ->
        ``(R, f, g)``, without gathering ``f * g`` latent vectors."""
        cross = torch.einsum("rad,rbd->rab", self.first[0][top1] * self.weight,
                             self.second[0][top2])
        base = (residual * residual * self.weight).sum(-1)[:, None, None]
        return (votes[0].gather(1, top1)[:, :, None] + votes[1].gather(1, top2)[:, None, :]
                - 2 * cross - base + self.const)

    def log_prob(self, latents: torch.Tensor, first: torch.Tensor, second: torch.Tensor
                 ) -> torch.Tensor:
        """Teacher-forced ``log p(h[t] | tokens <= t)``: ``latents (T, D)``, tokens ``(T,)`` ->
        ``(T,)``."""
        mean = self.bias.expand(latents.shape[0], -1).clone()
        for lag in range(self.context):
            mean[lag:] += self.first[lag][first[: first.shape[0] - lag]]
            mean[lag:] += self.second[lag][second[: second.shape[0] - lag]]
        return -((latents - mean) ** 2 * self.weight).sum(-1) + self.const

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to an ``.npz`` atomically (tables as float16)."""
        meta = {**self.meta, "format_version": FORMAT_VERSION, "kind": KIND, "k": self.k,
                "dim": self.dim, "context": self.context}
        return save_model_file(path, {"first": self.first.detach().cpu().half().numpy(),
                                      "second": self.second.detach().cpu().half().numpy(),
                                      "bias": self.bias.detach().cpu().float().numpy(),
                                      "var": self.var.detach().cpu().float().numpy()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
             ) -> LatentLikelihood:
        """Read a file written by :meth:`save` (float32 tensors on ``device``)."""
        p, arrays, meta = load_model_file(path, "latent likelihood", KIND, FORMAT_VERSION,
                                          ("first", "second", "bias", "var"))
        k, d, n = (int(meta.get(x, -1)) for x in ("k", "dim", "context"))
        shapes = {name: tuple(t.shape) for name, t in arrays.items()}
        if shapes != {"first": (n, k, d), "second": (n, k, d), "bias": (d,), "var": (d,)}:
            raise LikelihoodError(f"{p}: array shapes {shapes} do not fit K = {k}, D = {d}, "
                                  f"context {n}")
        if not bool(torch.isfinite(torch.cat([a.flatten() for a in arrays.values()])).all()):
            raise LikelihoodError(f"{p}: the tables hold NaN or infinite values")
        try:
            return cls(arrays["first"], arrays["second"], arrays["bias"], arrays["var"],
                       meta).to(device)
        except LikelihoodError as err:
            raise LikelihoodError(f"{p}: {err}") from None


def lagged(tokens: torch.Tensor, lag: int) -> torch.Tensor:
    """``(N, T)`` tokens shifted right by ``lag`` (the first ``lag`` steps get -1: none)."""
    out = torch.full_like(tokens, -1)
    out[:, lag:] = tokens[:, : tokens.shape[1] - lag]
    return out


def fit_latent(first: torch.Tensor, second: torch.Tensor, latents: torch.Tensor, k: int,
               context: int = 2, passes: int = 12, meta: dict[str, Any] | None = None,
               progress: Callable[[int, int], None] | None = None) -> LatentLikelihood:
    """Fit the additive Gaussian model by alternating least squares.

    Args:
        first, second: ``(N, T)`` int64 token sequences of the two sources.
        latents: ``(N, T, D)`` encoder outputs of their mixtures.
        k: codebook size.
        context: tokens per source (lag 0 .. context - 1). The tables are centred, so a lag
            before a sequence's start (no token) contributes its mean: zero.
        passes: sweeps over the ``2 * context`` tables; each table becomes the mean residual
            of its tokens (with one pseudo-observation at zero, so rare tokens shrink),
            centred, and the bias the mean residual.
        progress: called as ``progress(pass, passes)``.
    """
    if first.shape != second.shape or latents.shape[:2] != first.shape or first.dim() != 2:
        raise LikelihoodError("tokens must be (N, T) and latents (N, T, D) of the same N, T")
    if context < 1:
        raise LikelihoodError("context must be >= 1")
    if first.numel() and (int(first.min()) < 0 or int(second.min()) < 0
                          or int(first.max()) >= k or int(second.max()) >= k):
        raise LikelihoodError(f"tokens outside 0 .. {k - 1}")
    d = latents.shape[2]
    h = latents.reshape(-1, d).float()
    if h.shape[0] == 0:
        raise LikelihoodError("nothing to fit: no latents")
    keys = []
    for lag in range(context):
        for tokens in (first, second):
            key = lagged(tokens, lag).reshape(-1)
            keys.append((key >= 0, key.clamp(min=0)))
    tables = [h.new_zeros(k, d) for _ in keys]
    counts = [torch.bincount(key[ok], minlength=k).to(h.dtype)[:, None] for ok, key in keys]
    bias = h.mean(0)
    pred = bias.expand_as(h).clone()
    for step in range(passes):
        for a, (ok, key) in enumerate(keys):
            part = tables[a][key] * ok[:, None]
            resid = (h - pred + part)[ok]
            new = h.new_zeros(k, d).index_add_(0, key[ok], resid) / (counts[a] + 1)
            # Centred (mean zero over its observations), the level goes to the bias: the
            # tables' common offsets are otherwise pinned only by the first steps of each
            # sequence, and the passes would crawl along them.
            level = (counts[a] * new).sum(0) / counts[a].sum().clamp(min=1)
            new -= level
            pred += new[key] * ok[:, None] - part
            tables[a] = new
            shift = (h - pred).mean(0)
            bias, pred = bias + shift, pred + shift
        if progress is not None:
            progress(step + 1, passes)
    # Variance and fit statistics over the steps with their whole context (all but the
    # first context - 1 of each sequence, where a missing past token counts as its mean).
    full = (lagged(first, context - 1) >= 0).reshape(-1)
    if not bool(full.any()):
        raise LikelihoodError(f"sequences of {first.shape[1]} steps are shorter than the "
                              f"context of {context}")
    h, resid = h[full], (h - pred)[full]
    var = resid.pow(2).mean(0).clamp(min=1e-8)
    total = (h - h.mean(0)).pow(2).sum()
    stats = {"steps": int(first.numel()), "sequences": int(first.shape[0]),
             "explained_variance": float(1 - resid.pow(2).sum() / total) if total > 0 else 1.0}
    return LatentLikelihood(torch.stack(tables[0::2]), torch.stack(tables[1::2]), bias, var,
                            {**(meta or {}), **stats})
