"""Count-based baselines for a prior's bits per token: unigram and bigram models.

Both are estimated on training token streams and scored on held-out streams, so their
numbers compare directly with a Transformer's validation bits per token. The smoothing
strength of each is picked on the held-out streams from a small grid, which favours the
baselines (a conservative comparison).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SMOOTHING_GRID = (0.01, 0.1, 0.5, 1.0, 4.0, 16.0, 64.0, 256.0)


@dataclass(frozen=True)
class BaselineBits:
    """Bits per token of the count baselines on held-out tokens.

    Attributes:
        unigram_entropy: entropy of the held-out tokens' own histogram (an optimistic floor
            for any context-free model).
        unigram: cross-entropy of the smoothed training unigram.
        bigram: cross-entropy of the training bigram, smoothed towards the unigram.
        tokens: held-out tokens scored.
    """

    unigram_entropy: float
    unigram: float
    bigram: float
    tokens: int


def _unigram(streams: Sequence[np.ndarray], k: int) -> np.ndarray:
    counts = np.zeros(k, dtype=np.float64)
    for s in streams:
        counts += np.bincount(s.astype(np.int64), minlength=k)
    return counts


def _pair_keys(streams: Sequence[np.ndarray], k: int) -> np.ndarray:
    """``prev * k + next`` for every pair of neighbours within each stream."""
    parts = [s[:-1].astype(np.int64) * k + s[1:].astype(np.int64) for s in streams if s.size > 1]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def baseline_bits(train: Sequence[np.ndarray], valid: Sequence[np.ndarray], k: int
                  ) -> BaselineBits:
    """Unigram and bigram bits per token of ``valid`` streams, estimated on ``train`` streams.

    Args:
        train, valid: 1-D integer token streams (one per track; bigrams stay within a track).
        k: vocabulary size.
    """
    valid_all = np.concatenate([v.astype(np.int64) for v in valid])
    n = valid_all.size
    hist = np.bincount(valid_all, minlength=k).astype(np.float64)
    p = hist[hist > 0] / n
    entropy = float(-(p * np.log2(p)).sum())
    uni_counts = _unigram(train, k)
    best_uni, best_uni_alpha = math.inf, 1.0
    for alpha in SMOOTHING_GRID:
        probs = (uni_counts + alpha) / (uni_counts.sum() + alpha * k)
        bits = float(-np.log2(probs[valid_all]).mean())
        if bits < best_uni:
            best_uni, best_uni_alpha = bits, alpha
    uni = (uni_counts + best_uni_alpha) / (uni_counts.sum() + best_uni_alpha * k)
    keys, counts = np.unique(_pair_keys(train, k), return_counts=True)
    row_total = np.bincount(keys // k, weights=counts, minlength=k)
    v_keys = _pair_keys(valid, k)
    v_prev, v_next = v_keys // k, v_keys % k
    pair_counts = np.zeros(v_keys.size)
    if keys.size:
        where = np.minimum(np.searchsorted(keys, v_keys), keys.size - 1)
        hit = keys[where] == v_keys
        pair_counts[hit] = counts[where[hit]]
    first = np.concatenate([v[:1].astype(np.int64) for v in valid if v.size])
    best_bi = math.inf
    for beta in (*SMOOTHING_GRID, 1024.0, 4096.0):
        probs = (pair_counts + beta * uni[v_next]) / (row_total[v_prev] + beta)
        total = -np.log2(probs).sum() - np.log2(uni[first]).sum()
        best_bi = min(best_bi, float(total / (v_next.size + first.size)))
    return BaselineBits(unigram_entropy=entropy, unigram=best_uni, bigram=best_bi, tokens=n)
