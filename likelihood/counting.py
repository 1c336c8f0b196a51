"""Counting (mixture token, source-1 token, source-2 token) triples, sparse and bounded.

Each triple is one int64 key ``(m * K + i) * K + j``. Keys are appended to a fixed buffer;
a full buffer is sorted, run-length counted and merged into the sorted table of distinct
keys seen so far. Memory is the buffer plus the distinct triples, however many tokens are
counted; nothing of size K^3 is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from likelihood.errors import LikelihoodError

DEFAULT_BUFFER = 1 << 22


def count_sorted(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of the sorted ``keys`` and how often each occurs."""
    if keys.size == 0:
        return keys.copy(), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(starts, keys.size)).astype(np.int64)
    return keys[starts], counts


def merge_sorted(keys_a: np.ndarray, counts_a: np.ndarray, keys_b: np.ndarray,
                 counts_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of two sorted count tables, adding the counts of shared keys."""
    if keys_a.size == 0:
        return keys_b.copy(), counts_b.copy()
    if keys_b.size == 0:
        return keys_a, counts_a
    keys = np.concatenate([keys_a, keys_b])
    counts = np.concatenate([counts_a, counts_b])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(counts, starts)


@dataclass(frozen=True)
class CounterState:
    """Everything a :class:`TripleCounter` holds (for checkpoints): sorted keys and counts."""

    k: int
    symmetric: bool
    keys: np.ndarray
    counts: np.ndarray
    triples: int


class TripleCounter:
    """Counts (m, i, j) token triples.

    Args:
        k: codebook size K (tokens are ``0..K-1``).
        symmetric: also count ``(m, j, i)`` for every ``(m, i, j)`` (both sources from one
            set, as for a shared prior), so the table is symmetric in the two sources.
        buffer: keys held before a merge (memory: 8 bytes each).
    """

    def __init__(self, k: int, symmetric: bool = False, buffer: int = DEFAULT_BUFFER) -> None:
        if k < 2 or k > 2**20:
            raise LikelihoodError(f"codebook size must be in [2, 2**20], got {k}")
        self.k, self.symmetric = k, symmetric
        self._buffer = np.empty(max(int(buffer), 2), dtype=np.int64)
        self._fill = 0
        self._keys = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self.triples = 0

    def add(self, mix: np.ndarray, first: np.ndarray, second: np.ndarray) -> None:
        """Count the aligned token arrays ``mix``, ``first``, ``second`` (same shape)."""
        m = np.asarray(mix, dtype=np.int64).ravel()
        i = np.asarray(first, dtype=np.int64).ravel()
        j = np.asarray(second, dtype=np.int64).ravel()
        if not m.size == i.size == j.size:
            raise LikelihoodError(f"token arrays differ in size: {m.size}, {i.size}, {j.size}")
        if m.size == 0:
            return
        lo = min(int(m.min()), int(i.min()), int(j.min()))
        hi = max(int(m.max()), int(i.max()), int(j.max()))
        if lo < 0 or hi >= self.k:
            raise LikelihoodError(f"tokens must lie in [0, {self.k}), got [{lo}, {hi}]")
        k = self.k
        self._push((m * k + i) * k + j)
        if self.symmetric:
            self._push((m * k + j) * k + i)
        self.triples += m.size * (2 if self.symmetric else 1)

    def _push(self, keys: np.ndarray) -> None:
        pos = 0
        while pos < keys.size:
            take = min(keys.size - pos, self._buffer.size - self._fill)
            self._buffer[self._fill: self._fill + take] = keys[pos: pos + take]
            self._fill += take
            pos += take
            if self._fill == self._buffer.size:
                self.flush()

    def flush(self) -> None:
        """Merge the buffered keys into the table of distinct triples."""
        if self._fill == 0:
            return
        keys, counts = count_sorted(np.sort(self._buffer[: self._fill]))
        self._keys, self._counts = merge_sorted(self._keys, self._counts, keys, counts)
        self._fill = 0

    def state(self) -> CounterState:
        """A snapshot of the counts (flushes the buffer)."""
        self.flush()
        return CounterState(self.k, self.symmetric, self._keys.copy(), self._counts.copy(),
                            self.triples)

    @classmethod
    def from_state(cls, state: CounterState, buffer: int = DEFAULT_BUFFER) -> TripleCounter:
        """A counter that continues from ``state``."""
        counter = cls(state.k, state.symmetric, buffer)
        counter._keys, counter._counts = state.keys.copy(), state.counts.copy()
        counter.triples = state.triples
        return counter

    def matrix(self) -> sp.csr_matrix:
        """``(K, K*K)`` int64 CSR counts: row m, column ``i * K + j``."""
        self.flush()
        return keys_to_matrix(self._keys, self._counts, self.k)


def keys_to_matrix(keys: np.ndarray, counts: np.ndarray, k: int) -> sp.csr_matrix:
    """Sorted triple keys and counts -> ``(K, K*K)`` CSR (rows m, columns i*K+j)."""
    rows, cols = np.divmod(keys, k * k)
    indptr = np.searchsorted(rows, np.arange(k + 1)).astype(np.int64)
    return sp.csr_matrix((counts.astype(np.int64), cols.astype(np.int64), indptr),
                         shape=(k, k * k))


def matrix_to_keys(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`keys_to_matrix`: sorted keys and their counts."""
    m = sp.csr_matrix(matrix)
    m.sort_indices()
    k = m.shape[0]
    rows = np.repeat(np.arange(k, dtype=np.int64), np.diff(m.indptr))
    return rows * k * k + m.indices.astype(np.int64), m.data.astype(np.int64)
