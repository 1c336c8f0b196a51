"""Token-level LASS inference: batched samplers and beam search over the likelihood's candidates.

One token step, for R = mixtures x beams (or samples) rows and N sources at once::

    priors      log p_s(i | z_s,<t)          N x (R, K): one KV-cached step per prior (a
                                             shared class-conditioned prior: one call)
    candidates  tuples (i_1, ..., i_N)       (B, C): the counted tuples of z_mix[t]
    score       sum_s log p_s(i_s) + lambda * log p(z_mix[t] | i_1..i_N) (+ evidence)   (R, C)
    choice      the sampler's: greedy, ancestral, top-k, top-p, or the best beams

Beam search keeps the best ``num_beams`` continuations per mixture among all beams x
candidates, with each beam's cumulative score carried and every prior's cache reordered to
follow the surviving beams. Scores are evaluated only on the sparse candidates; the dense
K^N joint is never built. A mixture token with no counted tuple (never seen while counting)
falls back to the grid of each source's most likely tokens (``fallback_top`` for two
sources; fewer per source for more, :func:`grid_width`), ranked by prior plus evidence and
scored with the likelihood's smoothed value (or 0 without smoothing); such steps are
counted in :attr:`TokenSeparation.fallbacks`. With ``prior_top``, every step also scores
the grid of the priors' favourite tokens that counting never saw with the mixture token (at
the smoothed likelihood): counts of a few hours miss many true tuples, and with four
sources almost every tuple is unseen. With the ``factorised`` (two sources) or ``votes``
(any N) smoothing the tokens are ranked by prior plus lambda times the likelihood's
per-token votes for the mixture token (:meth:`CountLikelihood.token_factors`).
:attr:`TokenSeparation.unseen` counts the chosen tuples counting never saw: with
``fallbacks``, how often each path fired.

With a :class:`~likelihood.latent.LatentLikelihood` the step scores the mixture's encoder
output instead of its token: each row's residual (the latent less the parts of its own past
tokens) gives every token a vote, each source's ``prior_top`` (default 16) best tokens by
prior plus lambda times vote are paired, and the pairs are scored exactly.

With ``Ancestral(resample=F)`` the samples are the particles of a sequential Monte Carlo
search of the whole-sequence posterior: each carries the log of its steps' normalisers and
they are resampled (caches reordered as for beam search) when their effective number falls
below ``F`` times their number.

Sequences longer than a prior's context are continued in windows: when a prior's context is
full, its state restarts from the last ``context_overlap`` tokens of each row (``prime``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from likelihood import CountLikelihood
from likelihood.latent import LatentLikelihood
from priors import Prior, PriorState
from priors.llama import host_index


@dataclass(frozen=True)
class Greedy:
    """The highest-scoring candidate at every step."""


@dataclass(frozen=True)
class Ancestral:
    """Sample each step from the exact per-step posterior over the candidates.

    With ``resample`` > 0 the samples are the particles of a sequential Monte Carlo search
    of the whole-sequence posterior ``prod_t exp(score_t / temperature)``: each carries the
    log of its steps' normalisers (the sum over candidates of ``exp(score / temperature)``,
    the incremental importance weight of drawing from the per-step posterior), and when the
    effective sample size of a mixture's particles falls below ``resample`` times their
    number they are resampled (systematic resampling) and their weights reset. 0: the
    samples are independent.
    """

    temperature: float = 1.0
    resample: float = 0.0


@dataclass(frozen=True)
class TopK:
    """Sample among the ``k`` highest-scoring candidates of each step."""

    k: int = 16
    temperature: float = 1.0


@dataclass(frozen=True)
class TopP:
    """Sample from the smallest set of candidates holding probability ``p`` (nucleus)."""

    p: float = 0.9
    temperature: float = 1.0


@dataclass(frozen=True)
class BeamSearch:
    """Keep the ``num_beams`` best partial separations of each mixture."""

    num_beams: int = 10


Sampler = Greedy | Ancestral | TopK | TopP | BeamSearch


@dataclass(frozen=True)
class TokenSeparation:
    """Separated token sequences.

    Attributes:
        sources: N tensors ``(batch, n, tokens)`` int64, one per source: ``n`` candidate
            separations per mixture (final beams or samples), best score first.
        score: ``(batch, n)``: ``sum_t sum_s log p_s + lambda * log p(m | tuple)`` of each.
        fallback_steps: (mixture, step) pairs whose mixture token had no counted tuple.
        fallbacks: ``(batch,)`` int64: those steps per mixture (``fallback_steps`` is their
            sum).
        resamplings: ``(batch,)`` int64: how often each mixture's particles were resampled
            (:class:`Ancestral` with ``resample``; zeros otherwise).
        log_weight: ``(batch, n)``: the particles' log importance weights since their last
            resampling (same order as ``first``; zeros without ``resample``): with them the
            particles estimate the whole-sequence posterior.
        unseen: ``(batch,)`` int64: choices (over the mixture's rows and steps) of a tuple
            that counting never saw with its mixture token (the fallback's or the
            ``prior_top`` grid's): with ``fallbacks``, how often each path fired.
    """

    sources: tuple[torch.Tensor, ...]
    score: torch.Tensor
    fallback_steps: int
    fallbacks: torch.Tensor
    resamplings: torch.Tensor
    log_weight: torch.Tensor
    unseen: torch.Tensor

    @property
    def first(self) -> torch.Tensor:
        """``(batch, n, tokens)`` the first source's candidates."""
        return self.sources[0]

    @property
    def second(self) -> torch.Tensor:
        """``(batch, n, tokens)`` the second source's candidates."""
        return self.sources[1]


def _rows_of(sampler: Sampler, num_samples: int) -> int:
    if isinstance(sampler, BeamSearch):
        if sampler.num_beams < 1:
            raise ValueError("num_beams must be >= 1")
        return sampler.num_beams
    if isinstance(sampler, Greedy):
        return 1
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    return num_samples


def _filtered_logits(score: torch.Tensor, sampler: Ancestral | TopK | TopP) -> torch.Tensor:
    """Scores turned into sampling logits: temperature, then top-k or nucleus filtering."""
    if not sampler.temperature > 0:
        raise ValueError("temperature must be positive")
    logits = score / sampler.temperature
    if isinstance(sampler, TopK):
        k = min(max(sampler.k, 1), logits.shape[1])
        kth = logits.topk(k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif isinstance(sampler, TopP):
        if not 0 < sampler.p <= 1:
            raise ValueError("top-p must be in (0, 1]")
        sorted_logits, order = logits.sort(dim=1, descending=True)
        probs = sorted_logits.softmax(dim=1)
        before = probs.cumsum(dim=1) - probs  # mass strictly before each candidate
        drop_sorted = before >= sampler.p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _uniforms(count: int, width: int, single: torch.Generator | None,
              generators: list[torch.Generator] | None, device: torch.device,
              which: list[int] | None = None) -> torch.Tensor:
    """``(count * width,)`` uniforms in [0, 1): ``width`` per mixture, each mixture's from its
    own generator when ``generators`` is given (only those of the mixtures in ``which``,
    default all; the others get zeros), else all from ``single``."""
    if generators is None:
        return torch.rand(count * width, generator=single, device=device)
    chosen = set(range(count) if which is None else which)
    return torch.cat([torch.rand(width, generator=g, device=device) if b in chosen
                      else torch.zeros(width, device=device)
                      for b, g in enumerate(generators)])


def _systematic(log_weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Systematic resampling: ``(batch, width)`` parents drawn from the normalised weights
    ``softmax(log_weight)`` of each row, with one uniform per row (``u: (batch,)``)."""
    width = log_weight.shape[1]
    cdf = log_weight.softmax(dim=1).cumsum(dim=1)
    points = (u[:, None] + torch.arange(width, device=u.device)) / width
    parent = torch.searchsorted(cdf, points * cdf[:, -1:], right=True)
    return parent.clamp(max=width - 1)


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs: (rows, C)`` by inverting its CDF at ``u: (rows,)`` in
    [0, 1). One uniform per row, whatever ``C``: candidates of probability 0 (the padding of
    a batch) never change which candidate a row draws, so a mixture draws the same samples
    alone or in any batch."""
    cdf = probs.cumsum(dim=1)
    target = (u * cdf[:, -1]).unsqueeze(1)
    pick = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return pick.clamp(max=probs.shape[1] - 1)


def _pad(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """Pad ``(rows, n)`` on the right to ``(rows, width)`` with ``value``."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


class _PriorStream:
    """One prior's incremental state over the rows, restarted in windows when full."""

    def __init__(self, prior: Prior, rows: int, classes: torch.Tensor | None,
                 overlap: int, share: int = 0) -> None:
        self.prior, self.classes, self.share = prior, classes, share
        self.overlap = max(1, min(overlap, prior.context_length - 1))
        self.state: PriorState = prior.start(rows, classes, share)

    def next(self, history: Sequence[torch.Tensor], t: int) -> torch.Tensor:
        """Log-probs ``(rows, K)`` of token ``t`` given ``history[:, :t]``.

        ``history``: the ``(rows', length)`` token histories whose rows, stacked, are this
        stream's rows (one tensor, or both sources' for a shared prior).
        """
        if t == 0:
            logp, self.state = self.prior.step(None, self.state)
            return logp
        if self.state.length + 1 > self.prior.context_length + 1:  # context full: new window
            keep = torch.cat([h[:, t - self.overlap: t] for h in history])
            self.state = self.prior.start(keep.shape[0], self.classes, self.share)
            logp, self.state = self.prior.prime(keep, self.state)
            return logp
        last = torch.cat([h[:, t - 1] for h in history])
        logp, self.state = self.prior.step(last, self.state)
        return logp

    def reorder(self, index: torch.Tensor) -> None:
        self.state = self.prior.reorder(self.state, index)


# Whether beam search over candidates that a mixture's beams share takes one C++ step
# (lass_search::beam_select, where lass.native builds) for the scores, the choice of beams
# and their slots; False: the tensor code.
NATIVE_BEAM_SELECT = True


def _native_beam_select() -> Callable[..., list[torch.Tensor]] | None:
    """``torch.ops.lass_search.beam_select`` where it applies (:data:`NATIVE_BEAM_SELECT`,
    the C++ library builds and loads: :func:`lass.native.beam_select`), else None."""
    if not NATIVE_BEAM_SELECT:
        return None
    from lass import native

    return native.beam_select()


def _keep_slots(parent: np.ndarray) -> np.ndarray:
    """Which new beam goes to which row, so that as few key/value rows as possible move.

    Args:
        parent: ``(batch, width)`` parent beam (row within its mixture) of each new beam.

    Returns:
        ``(batch, width)``: ``slot[b, s]`` is the new beam placed in row ``s``. The first
        child of every surviving beam stays in its parent's row; the other children fill the
        rows of beams without children, in order. Beam order carries no meaning (scores are
        kept per row and sorted at the end), so this only saves cache copies: a row whose
        beam continues is not copied at all.

    A few integers per mixture, on the host in plain Python (about two microseconds for one
    mixture of 10 beams, where the same in NumPy array operations took twenty).
    """
    width = parent.shape[1]
    out = np.empty_like(parent)
    for b, row in enumerate(parent.tolist()):
        slot = [-1] * width
        later = []  # new beams that are not their parent's first child, in order
        for beam, p in enumerate(row):
            if slot[p] < 0:
                slot[p] = beam
            else:
                later.append(beam)
        free = iter([s for s in range(width) if slot[s] < 0])
        for beam in later:
            slot[next(free)] = beam
        out[b] = slot
    return out


def _move_rows(local: np.ndarray, streams: Sequence[_PriorStream],
               history: list[torch.Tensor], shared: bool) -> list[torch.Tensor]:
    """Make row ``s`` of every mixture continue row ``local[b, s]`` of the same mixture
    (``local: (batch, width)`` on the host): every prior's state follows (a shared prior's
    stream holds the N sources' rows one source after the other), and the N token histories
    are returned reordered."""
    batch, width = local.shape
    parent = (np.arange(batch)[:, None] * width + local).reshape(-1)
    device = history[0].device
    for s in streams:
        index = (np.concatenate([parent + k * batch * width for k in range(len(history))])
                 if shared else parent)
        s.reorder(torch.from_numpy(index).to(device))
    rows = torch.from_numpy(parent).to(device)
    return [h.index_select(0, rows) for h in history]


def _stack_classes(row_classes: list[torch.Tensor | None], rows: int, device: torch.device
                   ) -> torch.Tensor | None:
    """Class labels of a shared prior's stacked rows (source 1's rows, then source 2's, ...)."""
    if all(c is None for c in row_classes):
        return None
    if any(c is None for c in row_classes):
        raise ValueError("a shared prior needs class labels for every source or for none")
    return torch.cat([c for c in row_classes if c is not None]).to(device)


def _grid(*tops: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All tuples of the rows' tokens ``tops[s]: (rows, f_s)`` -> N tensors ``(rows, prod f)``,
    the first source's token varying slowest."""
    rows = tops[0].shape[0]
    sizes = [t.shape[1] for t in tops]
    out = []
    for s, top in enumerate(tops):
        shape = [rows] + [1] * len(tops)
        shape[s + 1] = sizes[s]
        out.append(top.view(shape).expand(rows, *sizes).reshape(rows, -1))
    return tuple(out)


def grid_width(tokens: int, sources: int) -> int:
    """Tokens per source whose tuples make a grid of about ``tokens ** 2`` tuples: ``tokens``
    for two sources, fewer for more (16 -> 6 for three, 4 for four)."""
    return max(1, int((tokens ** 2) ** (1.0 / sources) + 1e-9))


def _chosen(cand: torch.Tensor, source: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """``(batch * width,)``: for each row, entry ``pick`` of the candidates of row ``source``
    (within the same mixture) of ``cand: (batch, width, C)``. One gather (advanced indexing
    with three index tensors takes about as long as a product of the prior's)."""
    batch, width, c = cand.shape
    if cand.stride(1) == 0:  # the rows of a mixture share their candidates (a view)
        return cand[:, 0].gather(1, pick.view(batch, width)).view(-1)
    return cand.reshape(batch, width * c).gather(1, (source * c + pick).view(batch, width)
                                                 ).view(-1)


def _weighted(log_lik: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * log_lik`` with impossible tuples (``-inf``) kept impossible, also at lam 0."""
    if lam > 0:  # -inf stays -inf: one product
        return log_lik * lam
    return torch.where(log_lik > float("-inf"), log_lik * lam, log_lik)


def _add_evidence(ll: torch.Tensor, ev: torch.Tensor | None, tokens: Sequence[torch.Tensor],
                  dim: int) -> torch.Tensor:
    """``ll + sum_s ev[s].gather(dim, tokens[s])``: each source's token evidence added to the
    candidates' scores (source by source, in order); ``ev``: ``(N, ..., K)`` or None."""
    if ev is None:
        return ll
    for s, tok in enumerate(tokens):
        ll = ll + ev[s].gather(dim, tok)
    return ll


class _CountSteps:
    """The counted candidates of every step of a batch of mixtures. The mixture tokens are
    known before the search starts, so the table is sliced ``chunk`` steps at a time (one
    gather for all of them) and which steps need the fallback is known up front.

    Attributes:
        fallbacks: ``(batch,)`` steps of each mixture whose token has no candidate.
        any_empty: per step, whether some mixture of the batch needs the fallback.
    """

    def __init__(self, likelihood: CountLikelihood, mix_codes: torch.Tensor, lam: float,
                 chunk: int = 64,
                 evidence: Callable[[int, int], torch.Tensor] | None = None) -> None:
        self.likelihood, self.mix, self.lam, self.chunk = likelihood, mix_codes, lam, chunk
        self.evidence = evidence
        counts = likelihood.candidate_counts(mix_codes)  # (batch, length)
        empty = counts == 0
        self.fallbacks = empty.sum(1)
        self.any_empty: list[bool] = empty.any(0).tolist()
        self._width: list[int] = counts.max(0).values.tolist() if counts.numel() else []
        self._start = -1
        self._chunk: tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor] | None = None
        self._evidence: torch.Tensor | None = None  # (N, n, batch, K) of the chunk

    def evidence_at(self, t: int) -> torch.Tensor | None:
        """``(N, batch, K)`` the token evidence of step ``t`` (after :meth:`at`), or None."""
        if self._evidence is None:
            return None
        return self._evidence[:, t - self._start]

    def at(self, t: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """Step ``t``: N token tensors ``(batch, C)``, ``lam * log p(m | tuple)`` plus the
        evidence ``(batch, C)`` (``-inf`` on padding) and ``(batch,)`` whether the token has
        none."""
        start = t - t % self.chunk
        if start != self._start or self._chunk is None:
            part = self.mix[:, start: start + self.chunk]
            n, batch = part.shape[1], part.shape[0]
            cand = self.likelihood.slice(part.t().reshape(-1))  # rows: step-major
            w = cand.log_lik.shape[1]
            tokens = tuple(x.view(n, batch, w) for x in cand.tokens)
            ll = _weighted(cand.log_lik, self.lam).view(n, batch, w)
            if self.evidence is not None:  # (batch, n, N, K) per-token log-scores
                ev = self.evidence(start, start + n).to(ll.device, torch.float32)
                ev = ev.permute(2, 1, 0, 3)  # (N, n, batch, K)
                ll = _add_evidence(ll, ev, tokens, 2)
                self._evidence = ev
            self._chunk = (tokens, ll, (cand.count == 0).view(n, batch))
            self._start = start
        tokens, ll, empty = self._chunk
        i, w = t - start, self._width[t]
        return tuple(x[i, :, :w] for x in tokens), ll[i, :, :w], empty[i]


@dataclass(frozen=True)
class _Candidates:
    """One step's candidate tuples for every row.

    Attributes:
        tokens: N tensors ``(batch, width, C)``: source ``s``'s token of each candidate
            (expanded views where a mixture's rows share their candidates).
        log_lik: ``(batch, width, C)`` ``lam * log p(m | tuple)`` plus the evidence;
            ``-inf`` on padding.
        counted: the first ``counted`` candidates of a row whose token has counted tuples
            are counted tuples; the others (and all of a row on the fallback) are not.
        empty: ``(rows,)`` whether a row's mixture token has no counted tuple, or None when
            none has.
    """

    tokens: tuple[torch.Tensor, ...]
    log_lik: torch.Tensor
    counted: int
    empty: torch.Tensor | None


def _count_candidates(steps: _CountSteps, t: int, mix_of_row: torch.Tensor, width: int,
                      lps: Sequence[torch.Tensor], fallback_top: int, prior_top: int
                      ) -> _Candidates:
    """The candidates of step ``t`` for every row: the counted tuples of its mixture token;
    where there are none, the grid of each source's ``fallback_top`` best tokens (fewer per
    source for N > 2, :func:`grid_width`); with ``prior_top``, also the grid of each source's
    best tokens that counting never saw with the token. Tokens are ranked by prior plus
    evidence plus lambda times the likelihood's per-token votes (where it has them) and the
    grid's tuples scored at the smoothed likelihood (none: the fallback's at 0, the extra
    grid not at all).

    Args:
        mix_of_row: ``(rows,)`` the mixture of each row; ``width``: rows per mixture.
        lps: N ``(rows, K)`` the priors' log-probs.
    """
    likelihood, lam = steps.likelihood, steps.lam
    tokens, log_lik, empty = steps.at(t)
    batch, c = log_lik.shape
    if not steps.any_empty[t] and prior_top <= 0:
        shape = (batch, width, c)
        return _Candidates(tuple(x[:, None].expand(shape) for x in tokens),
                           log_lik[:, None].expand(shape), c, None)
    n = len(lps)
    mix_t = steps.mix[:, t]
    tokens = tuple(x[mix_of_row] for x in tokens)
    log_lik = log_lik[mix_of_row]
    step_ev = steps.evidence_at(t)  # (N, batch, K): the rows' own evidence
    ev = None if step_ev is None else step_ev[:, mix_of_row]
    rank = list(lps) if ev is None else [lp + ev[s] for s, lp in enumerate(lps)]
    factors = likelihood.token_factors(mix_t)
    if factors is not None:  # the likelihood's per-token votes for z_mix[t] too
        rank = [r + lam * factors[s][mix_of_row] for s, r in enumerate(rank)]
    row_empty = empty[mix_of_row]
    if steps.any_empty[t]:
        f = min(grid_width(fallback_top, n), likelihood.k)
        fb = _grid(*(r.topk(f, dim=1).indices for r in rank))
        fb_ll = likelihood.log_likelihood(mix_t[mix_of_row], *fb)
        fb_ll = torch.where(torch.isfinite(fb_ll), fb_ll * lam, torch.zeros_like(fb_ll))
        fb_ll = _add_evidence(fb_ll, ev, fb, 1)
        use = row_empty[:, None]
        c = max(log_lik.shape[1], fb[0].shape[1])
        tokens = tuple(torch.where(use, _pad(a, c, 0), _pad(b, c, 0))
                       for a, b in zip(fb, tokens, strict=True))
        log_lik = torch.where(use, _pad(fb_ll, c, float("-inf")),
                              _pad(log_lik, c, float("-inf")))
    counted = log_lik.shape[1]
    if prior_top > 0:  # tuples the priors favour that counting never saw with z_mix[t]
        f = min(grid_width(prior_top, n), likelihood.k)
        add = _grid(*(r.topk(f, dim=1).indices for r in rank))
        seen, add_ll = likelihood.lookup(mix_t[mix_of_row], *add)
        # Seen tuples are candidates already; a row on the fallback has these tuples too.
        drop = seen | row_empty[:, None]
        tokens = tuple(torch.cat([a, b], dim=1) for a, b in zip(tokens, add, strict=True))
        add_ll = _add_evidence(_weighted(add_ll, lam), ev, add, 1)
        log_lik = torch.cat([log_lik, add_ll.masked_fill(drop, float("-inf"))], dim=1)
    return _Candidates(tuple(x.view(batch, width, -1) for x in tokens),
                       log_lik.view(batch, width, -1), counted,
                       row_empty if steps.any_empty[t] else None)


def _latent_candidates(likelihood: LatentLikelihood, mix_latents: torch.Tensor,
                       history: Sequence[torch.Tensor], t: int, mix_of_row: torch.Tensor,
                       width: int, lps: Sequence[torch.Tensor], lam: float, prior_top: int
                       ) -> _Candidates:
    """Step ``t``'s candidates under a latent likelihood (two sources): the pairs of each
    source's ``prior_top`` (0: 16) best tokens by prior plus lambda times vote, scored
    exactly."""
    batch = mix_latents.shape[0]
    f = min(prior_top or 16, likelihood.k)
    past = max(0, t - likelihood.context + 1)
    resid = likelihood.residual(mix_latents[mix_of_row, t], history[0][:, past:t],
                                history[1][:, past:t])
    votes = likelihood.votes(resid)
    top1 = (lps[0] + lam * votes[0]).topk(f, dim=1).indices
    top2 = (lps[1] + lam * votes[1]).topk(f, dim=1).indices
    pairs = tuple(x.view(batch, width, f * f) for x in _grid(top1, top2))
    log_lik = _weighted(likelihood.grid_log_lik(resid, top1, top2, votes), lam)
    return _Candidates(pairs, log_lik.reshape(batch, width, f * f), f * f, None)


def _unseen_choices(steps: _CountSteps, t: int, history: Sequence[torch.Tensor],
                    mix_of_row: torch.Tensor, batch: int) -> torch.Tensor:
    """``(batch,)``: how many rows of each mixture chose at step ``t`` a tuple that the
    likelihood holds no count of with the mixture token (only asked on steps with a
    fallback or a ``prior_top`` grid)."""
    seen, _ = steps.likelihood.lookup(steps.mix[mix_of_row, t],
                                      *(h[:, t, None] for h in history))
    off = (~seen[:, 0]).long()
    return torch.zeros(batch, dtype=torch.long, device=off.device).index_add_(0, mix_of_row,
                                                                              off)


def _score(lps: Sequence[torch.Tensor], cand: _Candidates) -> torch.Tensor:
    """``(batch, width, C)``: ``sum_s log p_s(i_s) + lam log p(m | tuple) (+ evidence)`` of
    each row's candidates (``lps[s]: (rows, K)``)."""
    batch, width, _ = cand.log_lik.shape
    k = lps[0].shape[1]
    score = lps[0].view(batch, width, k).gather(2, cand.tokens[0])
    for lp, tok in zip(lps[1:], cand.tokens[1:], strict=True):
        score = score + lp.view(batch, width, k).gather(2, tok)
    return score + cand.log_lik


def _beam_choice(total: torch.Tensor, score: torch.Tensor, width: int
                 ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """Beam search's choice: the best ``width`` continuations of each mixture among its
    beams x candidates. ``total: (batch, width)`` cumulative scores, ``score: (batch, width,
    C)`` -> the new totals ``(batch, width)``, the beam (within its mixture) each new beam
    extends ``(batch, width)`` on the host (most beams keep their row), and the pick among
    that beam's candidates ``(batch * width,)``."""
    batch, _, n_cand = score.shape
    flat = (total[:, :, None] + score).view(batch, -1)
    best = flat.topk(min(width, flat.shape[1]), dim=1)
    values, index = best.values, best.indices
    if values.shape[1] < width:  # fewer candidates than beams: pad with dead beams
        values = torch.nn.functional.pad(values, (0, width - values.shape[1]),
                                         value=float("-inf"))
        index = torch.nn.functional.pad(index, (0, width - index.shape[1]), value=0)
    # The choice's bookkeeping is a few integers per mixture: on the host.
    found = host_index(index)
    local_h = found // n_cand
    slot = _keep_slots(local_h)  # new beam of each slot: most beams keep their row
    rows = np.arange(batch)[:, None]
    local_h, found = local_h[rows, slot], found[rows, slot]
    total = values.gather(1, torch.from_numpy(slot).to(score.device))
    pick = torch.from_numpy((found % n_cand).reshape(-1)).to(score.device)
    return total, local_h, pick


def _sample_choice(score: torch.Tensor, sampler: Greedy | Ancestral | TopK | TopP, batch: int,
                   width: int, single: torch.Generator | None,
                   generators: list[torch.Generator] | None, weights: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pick per row of ``score: (rows, C)``: the best (greedy) or a draw from the
    (filtered, tempered) softmax; with ``weights``, also the log of each row's normaliser
    ``(rows,)`` (the particles' incremental weight)."""
    if isinstance(sampler, Greedy):
        return score.argmax(dim=1), None
    u = _uniforms(batch, width, single, generators, score.device)
    logits = _filtered_logits(score, sampler)
    return _draw(logits.softmax(dim=1), u), logits.logsumexp(dim=1) if weights else None


def _resample(log_weight: torch.Tensor, below: float, single: torch.Generator | None,
              generators: list[torch.Generator] | None
              ) -> tuple[np.ndarray, torch.Tensor] | None:
    """Systematic resampling of the particles of the mixtures whose effective number is
    below ``below``: ``(batch, width)`` the particle each slot continues (most keep their
    row) and ``(batch,)`` which mixtures resampled; None when none does."""
    batch, width = log_weight.shape
    w = log_weight.softmax(dim=1)
    low = (1.0 / (w * w).sum(dim=1)) < below  # effective sample size
    if not bool(low.any()):
        return None
    which = low.nonzero().squeeze(1).tolist()
    u = _uniforms(batch, 1, single, generators, log_weight.device, which)
    local = host_index(torch.where(low[:, None], _systematic(log_weight, u),
                                   torch.arange(width, device=log_weight.device)[None]))
    return np.take_along_axis(local, _keep_slots(local), axis=1), low


Choice = tuple[torch.Tensor, "np.ndarray | None", list[torch.Tensor], "torch.Tensor | None"]
"""A step's choice: ``(batch, width)`` totals, the ``(batch, width)`` row of its mixture each
row continues (None: itself), the N sources' ``(rows,)`` tokens, and for sequential Monte
Carlo the ``(rows,)`` log normalisers (else None)."""


class _BeamChoice:
    """Beam search's step: each mixture keeps the ``width`` best of its beams' candidates by
    total score (:func:`_score`, :func:`_beam_choice`). For two sources on a CPU in float32,
    where the beams share the candidates, the same choice is one C++ call
    (``lass_search::beam_select``: the score, the best beams, their slots and tokens, with no
    ``(batch, width, C)`` tensor; :data:`NATIVE_BEAM_SELECT`)."""

    def __init__(self, width: int, n_src: int, device: torch.device) -> None:
        self.width = width
        self.native = (_native_beam_select() if device.type == "cpu" and n_src == 2
                       else None)

    def __call__(self, lps: Sequence[torch.Tensor], cand: _Candidates, total: torch.Tensor
                 ) -> Choice:
        if self.native is not None and (cand.tokens[0].stride(1) == 0 or self.width == 1) \
                and lps[0].dtype == torch.float32 and lps[0].device.type == "cpu":
            total, parent, tok1, tok2 = self.native(
                lps[0], lps[1], cand.tokens[0][:, 0], cand.tokens[1][:, 0],
                cand.log_lik[:, 0], total)
            return total, parent.numpy(), [tok1, tok2], None
        score = _score(lps, cand)  # (batch, width, C)
        total, local, pick = _beam_choice(total, score, self.width)
        source = torch.from_numpy(local.reshape(-1)).to(score.device)
        return total, local, [_chosen(tok, source, pick) for tok in cand.tokens], None


class _SampleChoice:
    """The sampling samplers' step (greedy, ancestral, top-k, top-p): each row draws one of
    its candidates from its score (:func:`_sample_choice`) and keeps its own row."""

    def __init__(self, sampler: Greedy | Ancestral | TopK | TopP, batch: int, width: int,
                 single: torch.Generator | None, generators: list[torch.Generator] | None,
                 particles: bool, within: torch.Tensor) -> None:
        self.sampler, self.batch, self.width = sampler, batch, width
        self.single, self.generators, self.particles = single, generators, particles
        self.within = within  # (rows,) each row's index within its mixture

    def __call__(self, lps: Sequence[torch.Tensor], cand: _Candidates, total: torch.Tensor
                 ) -> Choice:
        score = _score(lps, cand)  # (batch, width, C)
        rows, n_cand = self.batch * self.width, score.shape[2]
        pick, log_z = _sample_choice(score.view(rows, n_cand), self.sampler, self.batch,
                                     self.width, self.single, self.generators, self.particles)
        total = total + score.view(rows, n_cand).gather(1, pick[:, None]).view(
            self.batch, self.width)
        return total, None, [_chosen(tok, self.within, pick) for tok in cand.tokens], log_z


@torch.no_grad()
def separate_tokens(mix_codes: torch.Tensor, priors: Sequence[Prior],
                    likelihood: CountLikelihood | LatentLikelihood, sampler: Sampler, *,
                    lam: float = 3.0, mix_latents: torch.Tensor | None = None,
                    token_evidence: torch.Tensor | Callable[[int, int], torch.Tensor] | None
                    = None,
                    num_samples: int = 1, classes: Sequence[torch.Tensor | None] | None = None,
                    generator: torch.Generator | Sequence[torch.Generator] | None = None,
                    fallback_top: int = 16,
                    context_overlap: int | None = None, prior_top: int = 0,
                    progress: Callable[[int, int], None] | None = None) -> TokenSeparation:
    """Separate the token sequences of a batch of mixtures into N sources.

    One step, for every row (mixture x beam or sample)::

        priors:     lps[s] = log p_s(. | z_s<t)                     N x (rows, K)
        candidates: the tuples counted with z_mix[t] (+ grids)     N x (batch, width, C)
        score:      sum_s lps[s][i_s] + lam log p(z_mix[t] | tuple) + evidence
        choice:     the sampler's (beams: the best width of a mixture's width x C)

    Args:
        mix_codes: ``(batch, tokens)`` mixture tokens.
        priors: the N sources' priors (one object for several sources: a shared prior, which
            scores all of their rows in one call per step).
        likelihood: ``p(m | i_1, ..., i_N)`` (counted, N sources) or ``p(h_mix[t] | tokens <=
            t)`` (latent, two sources); its device is where the search runs.
        sampler: :class:`Greedy`, :class:`Ancestral`, :class:`TopK`, :class:`TopP` or
            :class:`BeamSearch`.
        lam: weight of the log-likelihood (the paper used 3.0 on audio).
        mix_latents: ``(batch, tokens, D)`` the mixtures' encoder outputs; needed by (and
            only used with) a latent likelihood.
        token_evidence: ``(batch, tokens, N, K)`` log-scores of each source's token at each
            step (weighted already), added to the candidates' scores: ``score += sum_s
            e[b, t, s, i_s]``; or a function ``(a, b) -> (batch, b - a, N, K)`` giving steps
            ``a .. b - 1`` of them, called once per chunk of steps (a long input never holds
            them all; :meth:`likelihood.evidence.TokenEvidence.window`). Only with a counted
            likelihood. None: none.
        num_samples: independent samples per mixture for the sampling samplers.
        classes: class labels ``(batch,)`` for class-conditioned priors, per prior (None:
            none).
        generator: random generator of the sampling samplers (on the likelihood's device),
            or one per mixture: then each mixture's samples are drawn from its own generator
            only, so a mixture gets the same samples whichever batch it is separated in.
        fallback_top: tokens per prior whose tuples stand in for a mixture token without
            counted tuples (two sources; fewer per source for more, :func:`grid_width`).
        context_overlap: tokens carried into a new window when a prior's context is full
            (default: half the context).
        prior_top: also score, at every step, the tuples of each row's ``prior_top`` (fewer
            per source for N > 2, :func:`grid_width`) best tokens by prior plus evidence that
            counting never saw with the mixture token, at the likelihood's smoothed value
            (useful only with smoothing: without, their likelihood is 0; with the
            ``factorised`` smoothing also ranked by lambda times the likelihood's per-token
            votes). 0: the counted candidates only. With a latent likelihood: the tokens per
            source whose pairs are scored (0: 16).
        progress: called as ``progress(step, tokens)``.
    """
    n_src = len(priors)
    if n_src < 2:
        raise ValueError("LASS separates at least two sources: give one prior per source")
    device = likelihood.device
    mix_codes = mix_codes.to(device).long()
    batch, length = mix_codes.shape
    width = _rows_of(sampler, num_samples)
    rows = batch * width
    k = likelihood.k
    if isinstance(likelihood, LatentLikelihood):
        if n_src != 2:
            raise ValueError("the latent likelihood separates two sources")
    elif likelihood.n != n_src:
        raise ValueError(f"the likelihood counts {likelihood.n} sources; {n_src} priors given")
    for p in priors:
        if p.vocab_size != k:
            raise ValueError(f"a prior models {p.vocab_size} tokens, the likelihood {k}")
    mix_of_row = torch.arange(batch, device=device).repeat_interleave(width)
    classes = [None] * n_src if classes is None else list(classes)
    if len(classes) != n_src:
        raise ValueError("give one class entry per prior")
    row_classes = [None if cls is None else torch.as_tensor(cls, device=device)[mix_of_row]
                   for cls in classes]
    # One prior object for every source (a shared prior): one stream over N x rows, so each
    # step is one network call for all sources.
    shared = all(p is priors[0] for p in priors)
    if not shared and len({id(p) for p in priors}) != n_src:
        raise ValueError("give one prior per source, or one shared prior for all of them")
    beam = isinstance(sampler, BeamSearch)
    particles = isinstance(sampler, Ancestral) and sampler.resample > 0 and width > 1
    # The beams (or particles) of a mixture move only among themselves: families for the
    # priors, which may then store their common past once.
    share = width if beam or particles else 0
    streams: list[_PriorStream] = []
    for p, cls in ([(priors[0], _stack_classes(row_classes, rows, device))] if shared
                   else list(zip(priors, row_classes, strict=True))):
        overlap = context_overlap if context_overlap is not None else p.context_length // 2
        streams.append(_PriorStream(p, rows * (n_src if shared else 1), cls, overlap, share))
    history = [torch.zeros(rows, length, dtype=torch.long, device=device)
               for _ in range(n_src)]
    total = torch.zeros(batch, width, device=device)
    if beam:
        total[:, 1:] = float("-inf")  # all beams start as one: no duplicate hypotheses
    single: torch.Generator | None = None
    generators: list[torch.Generator] | None = None
    if isinstance(generator, torch.Generator):
        single = generator
    elif generator is not None:
        generators = list(generator)
    if generators is not None and len(generators) != batch:
        raise ValueError(f"give one generator per mixture: {len(generators)} for {batch}")
    if isinstance(likelihood, LatentLikelihood):
        if mix_latents is None or mix_latents.shape[:2] != (batch, length) \
                or mix_latents.shape[2] != likelihood.dim:
            raise ValueError(f"a latent likelihood needs mix_latents ({batch}, {length}, "
                             f"{likelihood.dim})")
        mix_latents = mix_latents.to(device, torch.float32)
    evidence: Callable[[int, int], torch.Tensor] | None = None
    if isinstance(token_evidence, torch.Tensor):
        if token_evidence.shape != (batch, length, n_src, k):
            raise ValueError(f"token_evidence must be ({batch}, {length}, {n_src}, {k})")
        table = token_evidence

        def evidence(a: int, b: int) -> torch.Tensor:
            return table[:, a:b]
    elif token_evidence is not None:
        evidence = token_evidence
    if evidence is not None and isinstance(likelihood, LatentLikelihood):
        raise ValueError("token_evidence adds to a counted likelihood, not a latent one")
    steps = None if isinstance(likelihood, LatentLikelihood) else _CountSteps(
        likelihood, mix_codes, lam, evidence=evidence)
    fallbacks = (steps.fallbacks if steps is not None  # the latent likelihood has no fallback
                 else torch.zeros(batch, dtype=torch.long, device=device))
    unseen = torch.zeros(batch, dtype=torch.long, device=device)
    within = torch.arange(width, device=device).repeat(batch)  # row index within its mixture
    if isinstance(sampler, Ancestral) and not 0 <= sampler.resample <= 1:
        raise ValueError(f"resample must be in [0, 1], not {sampler.resample}")
    resample_below = (sampler.resample * width) if isinstance(sampler, Ancestral) else 0.0
    log_weight = torch.zeros(batch, width, device=device)
    resamplings = torch.zeros(batch, dtype=torch.long, device=device)
    choose: _BeamChoice | _SampleChoice
    if isinstance(sampler, BeamSearch):
        choose = _BeamChoice(width, n_src, device)
    else:
        choose = _SampleChoice(sampler, batch, width, single, generators, particles, within)
    for t in range(length):
        # priors: N x (rows, K)
        if shared:
            lps = list(streams[0].next(history, t).chunk(n_src))
        else:
            lps = [s.next([h], t) for s, h in zip(streams, history, strict=True)]
        # candidates: N x (batch, width, C)
        if isinstance(likelihood, LatentLikelihood):
            assert mix_latents is not None
            cand = _latent_candidates(likelihood, mix_latents, history, t, mix_of_row, width,
                                      lps, lam, prior_top)
        else:
            assert steps is not None
            cand = _count_candidates(steps, t, mix_of_row, width, lps, fallback_top,
                                     prior_top)
        # score and the sampler's choice: the totals, the row each row continues and the
        # N sources' tokens
        total, parent, tokens, log_z = choose(lps, cand, total)
        if parent is not None:
            history = _move_rows(parent, streams, history, shared)
        for h, tok in zip(history, tokens, strict=True):
            h[:, t] = tok
        if log_z is not None:
            log_weight = log_weight + log_z.view(batch, width)
        if steps is not None and (cand.counted < cand.log_lik.shape[2]
                                  or cand.empty is not None):
            unseen += _unseen_choices(steps, t, history, mix_of_row, batch)
        if particles and t + 1 < length:
            resampled = _resample(log_weight, resample_below, single, generators)
            if resampled is not None:
                local, low = resampled
                history = _move_rows(local, streams, history, shared)
                total = total.gather(1, torch.from_numpy(local).to(device))
                log_weight = log_weight.masked_fill(low[:, None], 0.0)
                resamplings += low.long()
        if progress is not None:
            progress(t + 1, length)
    order = total.argsort(dim=1, descending=True)
    rows_sorted = (torch.arange(batch, device=device)[:, None] * width + order).reshape(-1)
    return TokenSeparation(sources=tuple(h[rows_sorted].view(batch, width, length)
                                         for h in history),
                           score=total.gather(1, order), fallback_steps=int(fallbacks.sum()),
                           fallbacks=fallbacks, resamplings=resamplings,
                           log_weight=log_weight.gather(1, order), unseen=unseen)
