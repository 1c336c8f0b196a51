"""Counting (mixture token, source-1 token, ..., source-N token) tuples, sparse and bounded.

Each tuple is one int64 key ``((m * K + i_1) * K + i_2) ... * K + i_N`` (for two sources
``(m * K + i) * K + j``). Keys are appended to a fixed buffer; a full buffer is sorted,
run-length counted and merged into the sorted table of distinct keys seen so far. Memory is
the buffer plus the distinct tuples, however many tokens are counted; nothing of size
K^(N+1) is ever built.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from likelihood.errors import LikelihoodError

DEFAULT_BUFFER = 1 << 22
MAX_KEY = 2**63 - 1


def check_key_space(k: int, n: int) -> None:
    """Raise :class:`LikelihoodError` unless (K, N) fit: K in [2, 2**20], N >= 2 sources and
    K^(N+1) keys within int64."""
    if k < 2 or k > 2**20:
        raise LikelihoodError(f"codebook size must be in [2, 2**20], got {k}")
    if n < 2:
        raise LikelihoodError(f"counting needs at least two sources, got {n}")
    if k ** (n + 1) > MAX_KEY:
        raise LikelihoodError(f"K = {k} with {n} sources needs K^{n + 1} keys, more than int64 "
                              "holds")


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
    """Everything a :class:`TupleCounter` holds (for checkpoints): sorted keys and counts
    (``triples``: how many tuples were counted; ``n``: sources per tuple)."""

    k: int
    symmetric: bool
    keys: np.ndarray
    counts: np.ndarray
    triples: int
    n: int = 2


class TupleCounter:
    """Counts (m, i_1, ..., i_N) token tuples.

    Args:
        k: codebook size K (tokens are ``0..K-1``).
        symmetric: also count every reordering of the sources' tokens (all sources from one
            set, as for a shared prior), so the table is symmetric in the sources. For two
            sources ``(m, i, j)`` then ``(m, j, i)``.
        buffer: keys held before a merge (memory: 8 bytes each).
        n: sources per tuple, N >= 2.
    """

    def __init__(self, k: int, symmetric: bool = False, buffer: int = DEFAULT_BUFFER,
                 n: int = 2) -> None:
        check_key_space(k, n)
        self.k, self.symmetric, self.n = k, symmetric, int(n)
        self._buffer = np.empty(max(int(buffer), 2), dtype=np.int64)
        self._fill = 0
        self._keys = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self.triples = 0

    def add(self, mix: np.ndarray, *sources: np.ndarray) -> None:
        """Count the aligned token arrays ``mix`` and one per source (all the same shape)."""
        if len(sources) != self.n:
            raise LikelihoodError(f"this counter counts {self.n} sources, got {len(sources)}")
        m = np.asarray(mix, dtype=np.int64).ravel()
        src = [np.asarray(x, dtype=np.int64).ravel() for x in sources]
        if any(x.size != m.size for x in src):
            raise LikelihoodError("token arrays differ in size: "
                                  + ", ".join(str(x.size) for x in [m, *src]))
        if m.size == 0:
            return
        lo = min(int(x.min()) for x in [m, *src])
        hi = max(int(x.max()) for x in [m, *src])
        if lo < 0 or hi >= self.k:
            raise LikelihoodError(f"tokens must lie in [0, {self.k}), got [{lo}, {hi}]")
        orders = (list(itertools.permutations(range(self.n))) if self.symmetric
                  else [tuple(range(self.n))])
        for order in orders:
            key = m
            for s in order:
                key = key * self.k + src[s]
            self._push(key)
        self.triples += m.size * len(orders)

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
                            self.triples, self.n)

    @classmethod
    def from_state(cls, state: CounterState, buffer: int = DEFAULT_BUFFER) -> TupleCounter:
        """A counter that continues from ``state``."""
        counter = cls(state.k, state.symmetric, buffer, state.n)
        counter._keys, counter._counts = state.keys.copy(), state.counts.copy()
        counter.triples = state.triples
        return counter

    def matrix(self) -> sp.csr_matrix:
        """``(K, K^N)`` int64 CSR counts: row m, column the tuple's index ``(i_1 * K + i_2)
        ... * K + i_N`` (two sources: ``i * K + j``)."""
        self.flush()
        return keys_to_matrix(self._keys, self._counts, self.k, self.n)


#: The two-source counter under its first name.
TripleCounter = TupleCounter


def keys_to_matrix(keys: np.ndarray, counts: np.ndarray, k: int, n: int = 2
                   ) -> sp.csr_matrix:
    """Sorted tuple keys and counts -> ``(K, K^n)`` CSR (rows m, columns the tuple index)."""
    width = k ** n
    rows, cols = np.divmod(keys, width)
    indptr = np.searchsorted(rows, np.arange(k + 1)).astype(np.int64)
    return sp.csr_matrix((counts.astype(np.int64), cols.astype(np.int64), indptr),
                         shape=(k, width))


def matrix_to_keys(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`keys_to_matrix`: sorted keys and their counts."""
    m = sp.csr_matrix(matrix)
    m.sort_indices()
    k, width = m.shape
    rows = np.repeat(np.arange(k, dtype=np.int64), np.diff(m.indptr))
    return rows * width + m.indices.astype(np.int64), m.data.astype(np.int64)
