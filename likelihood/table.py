"""Counts files and the likelihood p(z_mix | z_1, ..., z_N) made from them.

A counts file (``.npz``) holds the int64 counts as a CSR matrix of shape ``(K, K^N)`` (row:
mixture token m; column: the sources' tuple index ``(i_1 * K + i_2) ... * K + i_N``, for two
sources ``i * K + j``) and a JSON metadata record: ``k``, ``n_sources`` (absent in two-source
files, which keep loading), the codec's identity, the data description, the mixing rule,
whether the table is symmetric, and how many tuples and mixtures were counted. Counts, not
probabilities, are stored, so shards merge by addition; normalisation and smoothing happen
at load (``c(t)`` below is the total count of source tuple ``t``):

* ``none``: ``p(m | t) = c(m, t) / c(t)`` (as the paper and the official code);
  unseen combinations are not candidates.
* ``additive``: ``(c + alpha) / (c(t) + alpha * K)``: every mixture token keeps some
  probability for every tuple.
* ``backoff``: ``(c + beta * q(m)) / (c(t) + beta)`` with ``q`` the smoothed marginal of
  mixture tokens: unseen combinations keep a probability proportional to how common m is.

* ``factorised`` (two sources): ``(c + alpha * q(m | i, j)) / (c(i, j) + alpha)`` with ``q`` a
  :class:`~likelihood.factorised.FactorisedLikelihood` fitted to the counts: unseen
  combinations keep the probability a model of each source token's votes gives them.
* ``votes`` (any N): ``(c + alpha * q(m | t)) / (c(t) + alpha)`` with the naive-Bayes
  ``q(m | i_1, ..., i_N) = q(m) prod_s q(m | i_s) / q(m)``, ``q(m | i_s)`` counted from the
  same table (each source's pairs with the mixture token, backed off to ``q(m)``; at most 1):
  the sources taken as independent given the mixture token. With four sources almost every
  tuple of a mixture is unseen, while each source's K x K pairs are counted thousands of
  times over; the search ranks tokens by these per-source votes (:meth:`token_factors`).

``min_count`` drops the tuples counted fewer times before normalising: a tuple seen once
in hours of mixtures is mostly chance, yet without smoothing it gets ``p = 1`` when its
sources' tuple was seen once, and every such entry is one more candidate for the search.
Nothing of size K^N is built for N > 2: the tuples' totals are kept for the tuples seen.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from likelihood.errors import LikelihoodError
from vqvae.files import write_bytes_atomic

if TYPE_CHECKING:
    from likelihood.factorised import FactorisedLikelihood

FORMAT_VERSION = 1
SMOOTHINGS = ("none", "additive", "backoff", "factorised", "votes")
DENSE_LIMIT = 256


@dataclass(frozen=True)
class Counts:
    """A counts table and its metadata (``meta['k']``, ``meta['codec_identity']``, ...).

    Attributes:
        matrix: ``(K, K^N)`` CSR int64 counts.
        meta: the metadata record.
        pairs: ``(N, K, K)`` int64 counts of each source's token with the mixture token
            (``[s, m, i]``), kept by :func:`prune_counts` from the table before pruning; None:
            they are those of ``matrix`` (:meth:`source_pairs`).
    """

    matrix: sp.csr_matrix
    meta: dict[str, Any] = field(default_factory=dict)
    pairs: np.ndarray | None = None

    def source_pairs(self) -> np.ndarray:
        """``(N, K, K)`` int64: how often source ``s``'s token ``i`` met mixture token ``m``
        (``[s, m, i]``), summed over the other sources."""
        if self.pairs is not None:
            return self.pairs
        k, n = self.k, self.n_sources
        coo = self.matrix.tocoo()
        cols = coo.col.astype(np.int64)
        rows = coo.row.astype(np.int64) * k
        out = np.zeros((n, k * k), dtype=np.int64)
        for s in range(n):
            out[s] = np.bincount(rows + (cols // k ** (n - 1 - s)) % k,
                                 weights=coo.data.astype(np.float64), minlength=k * k
                                 ).round().astype(np.int64)
        return out.reshape(n, k, k)

    @property
    def k(self) -> int:
        """Codebook size K."""
        return int(self.matrix.shape[0])

    @property
    def n_sources(self) -> int:
        """Sources per counted tuple, N (2 for files that do not say)."""
        return int(self.meta.get("n_sources", 2))

    def stats(self) -> dict[str, Any]:
        """Size and density figures of the table (``pairs_seen``: source tuples seen)."""
        k, n = self.k, self.n_sources
        nnz = int(self.matrix.nnz)
        sparse_bytes = int(self.matrix.data.nbytes + self.matrix.indices.nbytes
                           + self.matrix.indptr.nbytes)
        seen = int(np.unique(self.matrix.indices[self.matrix.data > 0]).size)
        return {"k": k, "n_sources": n, "nonzeros": nnz, "density": nnz / float(k) ** (n + 1),
                "bytes_in_memory": sparse_bytes, "bytes_dense_int64": 8 * k ** (n + 1),
                "pairs_seen": seen, "tuples_possible": k ** n,
                "triples": int(self.meta.get("triples", int(self.matrix.sum()))),
                "mixtures": self.meta.get("mixtures")}


def save_counts(path: str | os.PathLike[str], counts: Counts) -> Path:
    """Write ``counts`` to an ``.npz`` atomically (compressed; indices as int32 if they fit)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    m = sp.csr_matrix(counts.matrix)
    m.sort_indices()
    small = m.shape[1] < 2**31
    meta = {**counts.meta, "format_version": FORMAT_VERSION, "k": counts.k}
    if counts.n_sources != 2:
        meta["n_sources"] = counts.n_sources
    arrays: dict[str, Any] = {
        "data": m.data.astype(np.int64),
        "indices": m.indices.astype(np.int32 if small else np.int64),
        "indptr": m.indptr.astype(np.int64), "shape": np.array(m.shape, dtype=np.int64),
        "meta": np.array(json.dumps(meta, sort_keys=True))}
    if counts.pairs is not None:
        arrays["pairs"] = counts.pairs.astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes_atomic(out, buf.getvalue())


def load_counts(path: str | os.PathLike[str]) -> Counts:
    """Read a counts file written by :func:`save_counts`."""
    p = Path(path)
    if not p.is_file():
        raise LikelihoodError(f"counts file not found: {p}")
    with p.open("rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # not even the start of a zip (.npz) archive
            raise LikelihoodError(f"{p} is not a counts file (an .npz archive)")
    try:
        with np.load(p, allow_pickle=False) as f:
            shape = tuple(int(v) for v in f["shape"])
            matrix = sp.csr_matrix((f["data"].astype(np.int64), f["indices"].astype(np.int64),
                                    f["indptr"].astype(np.int64)), shape=shape)
            meta = json.loads(str(f["meta"]))
            pairs = f["pairs"].astype(np.int64) if "pairs" in f.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise LikelihoodError(f"cannot read counts file {p}: corrupt or truncated ({err})"
                              ) from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise LikelihoodError(f"{p}: unsupported counts format")
    k, n = int(meta.get("k", -1)), int(meta.get("n_sources", 2))
    if n < 2 or k < 2 or shape != (k, k ** n):
        raise LikelihoodError(f"{p}: matrix shape {shape} does not fit K = {k} and {n} "
                              "sources")
    if pairs is not None and pairs.shape != (n, k, k):
        raise LikelihoodError(f"{p}: source pair counts of shape {pairs.shape}, not "
                              f"({n}, {k}, {k})")
    return Counts(matrix, meta, pairs)


def prune_counts(counts: Counts, min_count: int) -> Counts:
    """The table without the tuples counted fewer than ``min_count`` times, keeping each
    source's pair counts of the whole table (the ``votes`` smoothing's) and saying so in
    ``meta['min_count']``: a file for shipping, which no longer merges."""
    if min_count < 2:
        raise LikelihoodError(f"pruning needs a minimum count of at least 2, got {min_count}")
    m = sp.csr_matrix(counts.matrix, copy=True)
    m.data[m.data < min_count] = 0
    m.eliminate_zeros()
    meta = {**counts.meta, "min_count": max(min_count, int(counts.meta.get("min_count", 1)))}
    return Counts(m, meta, counts.source_pairs())


#: Meta entries that differ between the shards of one counting run.
_PER_SHARD = ("shard", "shards", "triples", "mixtures", "seconds", "format_version")


def missing_shards(tables: list[Counts]) -> list[str]:
    """The shards (``"i/n"``) of the counting runs in ``tables`` that are not among them: a
    run is the tables whose settings agree except the shard (``lass-count-likelihood --shard
    i/n``); tables made otherwise are complete by themselves."""
    runs: dict[str, tuple[int, set[int]]] = {}
    for t in tables:
        shard = t.meta.get("shard")
        if "seed" not in t.meta or not isinstance(shard, str) or "/" not in shard:
            continue
        i_text, n_text = shard.split("/", 1)
        key = json.dumps({k: v for k, v in t.meta.items() if k not in _PER_SHARD},
                         sort_keys=True, default=str)
        n, got = runs.setdefault(key, (int(n_text), set()))
        if int(n_text) != n:
            raise LikelihoodError(f"shard {shard} does not split its run as the others ({n} "
                                  "shards)")
        got.add(int(i_text))
    return [f"{i}/{n}" for n, got in runs.values() for i in range(n) if i not in got]


def merge_counts(tables: list[Counts], partial: bool = False) -> Counts:
    """Add counts tables counted for the same codec, K, mixing rule and symmetry. A counting
    run split into shards must be complete (:func:`missing_shards` names what is missing)
    unless ``partial``."""
    if not tables:
        raise LikelihoodError("nothing to merge")
    first = tables[0].meta
    seen: dict[str, int] = {}
    for i, t in enumerate(tables):  # the same counting twice would double its counts
        if "seed" not in t.meta:  # not made by lass-count-likelihood: nothing to compare
            continue
        key = json.dumps({k: v for k, v in t.meta.items() if k != "format_version"},
                         sort_keys=True, default=str)
        if key in seen:
            raise LikelihoodError(f"tables {seen[key] + 1} and {i + 1} are the same counting "
                                  f"(seed {t.meta.get('seed')}, shard {t.meta.get('shard')}): "
                                  "merging it twice would double its counts")
        seen[key] = i
    if any("min_count" in t.meta for t in tables):
        raise LikelihoodError("cannot merge pruned counts (tuples counted fewer than their "
                              "min_count times are gone); merge the full tables, then prune")
    for t in tables[1:]:
        if t.n_sources != tables[0].n_sources:
            raise LikelihoodError(f"cannot merge counts of {tables[0].n_sources} and "
                                  f"{t.n_sources} sources")
        for key in ("k", "codec_identity", "mix", "symmetric", "sources"):
            if t.meta.get(key) != first.get(key):
                raise LikelihoodError(f"cannot merge counts with different {key}: "
                                      f"{first.get(key)!r} and {t.meta.get(key)!r}")
    missing = missing_shards(tables)
    if missing and not partial:
        raise LikelihoodError(f"shard(s) {', '.join(missing)} of this counting are missing "
                              "(count them, or merge a part knowingly with --partial)")
    matrix = tables[0].matrix.copy()
    for t in tables[1:]:
        matrix = matrix + t.matrix
    meta = dict(first)
    for key in ("triples", "mixtures", "seconds"):
        if all(key in t.meta for t in tables):
            meta[key] = sum(t.meta[key] for t in tables)
    meta["shards"] = [s for t in tables for s in t.meta.get("shards", [t.meta.get("shard")])]
    return Counts(sp.csr_matrix(matrix), meta)


@dataclass(frozen=True)
class Candidates:
    """Per batch row, the source-token tuples seen with its mixture token (padded).

    Attributes:
        tokens: N tensors ``(batch, C)`` int64: source ``s``'s token of each candidate.
        log_lik: ``(batch, C)`` float32 ``log p(m | i_1, ..., i_N)``; ``-inf`` where padded.
        valid: ``(batch, C)`` bool, False on padding.
        count: ``(batch,)`` int64 number of candidates of each row (0: token never seen).
    """

    tokens: tuple[torch.Tensor, ...]
    log_lik: torch.Tensor
    valid: torch.Tensor
    count: torch.Tensor

    @property
    def first(self) -> torch.Tensor:
        """``(batch, C)`` the first source's tokens."""
        return self.tokens[0]

    @property
    def second(self) -> torch.Tensor:
        """``(batch, C)`` the second source's tokens."""
        return self.tokens[1]


class CountLikelihood:
    """``p(m | i_1, ..., i_N)`` from counted tuples, sliced by mixture token on any device.

    Args:
        counts: the counts table (N sources: :attr:`Counts.n_sources`).
        smoothing: ``none``, ``additive``, ``backoff`` or ``factorised`` (two sources; see the
            module docstring).
        alpha: strength of the smoothing (pseudo-count per mixture token for ``additive``;
            total pseudo-count for ``backoff``).
        device: where :meth:`slice` returns its tensors.
        min_count: tuples counted fewer times are dropped before normalising (1: keep all).
        base: the fitted model ``q`` of the ``factorised`` smoothing.

    Attributes:
        log_votes: ``(N, K, K)`` ``log q(m | i_s) - log q(m)`` (row ``s``, ``[m, i]``) of the
            ``votes`` smoothing, or None.
    """

    def __init__(self, counts: Counts, smoothing: str = "none", alpha: float = 1.0,
                 device: str | torch.device = "cpu", min_count: int = 1,
                 base: FactorisedLikelihood | None = None) -> None:
        if smoothing not in SMOOTHINGS:
            raise LikelihoodError(f"unknown smoothing {smoothing!r}; expected one of "
                                  f"{', '.join(SMOOTHINGS)}")
        if smoothing != "none" and not alpha > 0:
            raise LikelihoodError(f"smoothing strength must be positive, got {alpha}")
        self.k = counts.k
        self.n = counts.n_sources
        self.meta = counts.meta
        self.smoothing, self.alpha = smoothing, float(alpha)
        self.device = torch.device(device)
        if min_count < 1:
            raise LikelihoodError(f"min_count must be >= 1, got {min_count}")
        self.min_count = int(min_count)
        if (smoothing == "factorised") != (base is not None):
            raise LikelihoodError("the factorised smoothing needs its fitted model (and only "
                                  "it takes one)")
        if base is not None and self.n != 2:
            raise LikelihoodError(f"the factorised smoothing is for two sources; these counts "
                                  f"have {self.n}")
        if base is not None:
            base.check_fits(counts)
        self.base = base.to(self.device) if base is not None else None
        m = sp.csr_matrix(counts.matrix, dtype=np.float64)
        if min_count > 1:
            m = m.copy()  # never change the caller's counts
            m.data[m.data < min_count] = 0
            m.eliminate_zeros()
        m.sort_indices()
        k, n = self.k, self.n
        indices = m.indices.astype(np.int64)
        if n == 2:  # K^2 totals: a dense table, c(i, j) of every pair
            self.pair_totals: np.ndarray | None = np.asarray(m.sum(axis=0)).ravel()
            totals = self.pair_totals[indices]
            self._tuples = torch.zeros(0, dtype=torch.long, device=self.device)
            self._tuple_totals = torch.zeros(0, dtype=torch.float64, device=self.device)
        else:  # the totals of the tuples seen only, sorted by tuple index
            self.pair_totals = None
            tuples, inverse = np.unique(indices, return_inverse=True)
            sums = np.bincount(inverse.ravel(), weights=m.data, minlength=tuples.size)
            totals = sums[inverse.ravel()]
            self._tuples = torch.from_numpy(tuples).to(self.device)
            self._tuple_totals = torch.from_numpy(sums).to(self.device)
        mix_totals = np.asarray(m.sum(axis=1)).ravel()  # (K,) c(m)
        # each source's pairs with the mixture token, of the whole table (before min_count
        # and any pruning): computed once, read twice below
        pairs = counts.source_pairs() if smoothing == "votes" else None
        if pairs is not None:
            mix_totals = pairs[0].sum(axis=1).astype(np.float64)
        self.mix_marginal = (mix_totals + 1.0) / (mix_totals.sum() + k)  # q(m), add-one
        self._log_marginal = torch.from_numpy(np.log(self.mix_marginal)).to(self.device)
        rows = np.repeat(np.arange(k), np.diff(m.indptr))
        self.log_votes: torch.Tensor | None = None
        if pairs is not None:
            self.log_votes = torch.from_numpy(self._source_votes(pairs)).to(self.device)
        if smoothing == "none":
            probs = m.data / totals
        elif smoothing == "additive":
            probs = (m.data + self.alpha) / (totals + self.alpha * k)
        elif smoothing == "backoff":
            probs = (m.data + self.alpha * self.mix_marginal[rows]) / (totals + self.alpha)
        elif smoothing == "votes":
            votes = self._votes_prob(torch.from_numpy(rows.astype(np.int64)).to(self.device),
                                     torch.from_numpy(indices).to(self.device))
            probs = (m.data + self.alpha * votes.double().cpu().numpy()) / (totals + self.alpha)
        else:
            assert self.base is not None
            q = self._base_prob(rows, indices)
            probs = (m.data + self.alpha * q) / (totals + self.alpha)
        self._indptr = torch.from_numpy(m.indptr.astype(np.int64)).to(self.device)
        # The tuples and log-likelihoods in CSR order, each with one padding entry at the
        # end (tuple 0, log-likelihood -inf) that :meth:`slice` reads for the rows' padding.
        tuples_t = torch.from_numpy(indices).to(self.device)
        self._pad = int(tuples_t.numel())
        padded = torch.cat([tuples_t, tuples_t.new_zeros(1)])
        # Each tuple's N tokens, split once here rather than at every slice.
        self._tokens = tuple(self.split_tuples(padded))
        self._log_p = torch.cat([torch.from_numpy(np.log(probs).astype(np.float32)).to(
            self.device), torch.full((1,), float("-inf"), device=self.device)])
        self._keys = tuples_t + torch.from_numpy(rows.astype(np.int64)).to(self.device) * k ** n
        self._pair_totals = (torch.from_numpy(self.pair_totals).to(self.device)
                             if self.pair_totals is not None else None)

    def _base_prob(self, rows: np.ndarray, pairs: np.ndarray, chunk: int = 1 << 20
                   ) -> np.ndarray:
        """``q(m | i, j)`` of the factorised model for each (row ``m``, pair ``i*K+j``)."""
        assert self.base is not None
        base = self.base.to("cpu")
        out = np.empty(rows.shape[0], dtype=np.float64)
        for lo in range(0, rows.shape[0], chunk):
            m = torch.from_numpy(rows[lo: lo + chunk])
            pair = torch.from_numpy(pairs[lo: lo + chunk])
            logq = base.log_prob(m, (pair // self.k)[:, None], (pair % self.k)[:, None])[:, 0]
            out[lo: lo + chunk] = logq.double().exp().numpy()
        return out

    def _source_votes(self, pairs: np.ndarray) -> np.ndarray:
        """``(N, K, K)`` float32 ``log q(m | i_s) - log q(m)`` from each source's pair counts
        ``pairs`` (:meth:`Counts.source_pairs`: the whole table's; ``min_count`` does not
        apply, a source's pairs are counted many times over): ``q(m | i) = (c_s(m, i) + q(m))
        / (c_s(i) + 1)``."""
        q = self.mix_marginal
        out = np.empty((self.n, self.k, self.k), dtype=np.float32)
        for s, c in enumerate(pairs.astype(np.float64)):  # [m, i]
            cond = (c + q[:, None]) / (c.sum(axis=0)[None, :] + 1.0)
            out[s] = (np.log(cond) - np.log(q)[:, None]).astype(np.float32)
        return out

    def _votes_prob(self, mix: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``q(m | t)`` (float32, at most 1) of the ``votes`` smoothing for mixture tokens
        ``mix`` and tuple indices ``index`` of the same shape."""
        assert self.log_votes is not None
        log_q = self._log_marginal[mix].float()
        for s, tok in enumerate(self.split_tuples(index)):
            log_q = log_q + self.log_votes[s][mix, tok]
        return log_q.clamp(max=0.0).exp()

    def split_tuples(self, index: torch.Tensor) -> list[torch.Tensor]:
        """Tuple indices ``(...)`` -> N token tensors ``(...)`` (source 1 first)."""
        return [(index // self.k ** (self.n - 1 - s)) % self.k for s in range(self.n)]

    def held_out_bits(self, valid: Counts) -> float:
        """Count-weighted cross-entropy of this likelihood on the tuples of other counts,
        bits per mixture token (``inf`` when it rules out a tuple they hold)."""
        if valid.n_sources != self.n:
            raise LikelihoodError(f"held-out counts of {valid.n_sources} sources for a "
                                  f"likelihood of {self.n}")
        coo = valid.matrix.tocoo()
        tuples = torch.from_numpy(coo.col.astype(np.int64))
        log_p = self.log_likelihood(torch.from_numpy(coo.row.astype(np.int64)),
                                    *(t[:, None] for t in self.split_tuples(tuples))
                                    )[:, 0].double().cpu()
        w = torch.from_numpy(coo.data.astype(np.float64))
        return float(-(w * log_p).sum() / w.sum().clamp_min(1.0) / np.log(2))

    def token_factors(self, mix_tokens: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """Per-source, per-token parts ``(batch, K)`` of the smoothed log-likelihood of unseen
        tuples (``factorised`` and ``votes`` smoothings; None otherwise): a search ranks
        tokens by them."""
        if self.log_votes is not None:
            m = self._rows(mix_tokens)
            return tuple(self.log_votes[s][m] for s in range(self.n))
        if self.base is None:
            return None
        return self.base.token_factors(self._rows(mix_tokens))

    @classmethod
    def load(cls, path: str | os.PathLike[str], smoothing: str = "none", alpha: float = 1.0,
             *, codebook_size: int | None = None, codec_identity: str | None = None,
             device: str | torch.device = "cpu", min_count: int = 1,
             base: str | os.PathLike[str] | FactorisedLikelihood | None = None,
             n_sources: int | None = None) -> CountLikelihood:
        """Load a counts file, checking that it was counted for this codec (``base``: the
        factorised model, or its file, for the ``factorised`` smoothing; ``n_sources``: the
        number of sources it must hold, if given)."""
        from likelihood.factorised import FactorisedLikelihood

        counts = load_counts(path)
        if codebook_size is not None and counts.k != codebook_size:
            raise LikelihoodError(f"{path} was counted for K = {counts.k} tokens but the codec "
                                  f"has {codebook_size} codes")
        if n_sources is not None and counts.n_sources != n_sources:
            raise LikelihoodError(f"{path} holds counts of {counts.n_sources} sources, not "
                                  f"{n_sources}")
        stored = counts.meta.get("codec_identity")
        if codec_identity is not None and stored and stored != codec_identity:
            raise LikelihoodError(f"{path} was counted with another codec (identity "
                                  f"{str(stored)[:12]}, this codec {codec_identity[:12]})")
        model = FactorisedLikelihood.load(base) if isinstance(base, (str, os.PathLike)) else base
        return cls(counts, smoothing, alpha, device, min_count, model)

    def _rows(self, mix_tokens: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(mix_tokens, device=self.device).long().reshape(-1)
        if m.numel() and (int(m.min()) < 0 or int(m.max()) >= self.k):
            raise LikelihoodError(f"mixture tokens must lie in [0, {self.k})")
        return m

    def candidate_counts(self, mix_tokens: torch.Tensor) -> torch.Tensor:
        """How many seen tuples each mixture token has: ``(...) -> (...)`` int64 (the width
        of its :meth:`slice` row without padding; 0: the token was never counted)."""
        m = torch.as_tensor(mix_tokens, device=self.device).long()
        flat = self._rows(m)
        return (self._indptr[flat + 1] - self._indptr[flat]).view(m.shape)

    def slice(self, mix_tokens: torch.Tensor) -> Candidates:
        """The seen tuples of each row's mixture token, padded to the longest row.

        ``mix_tokens: (batch,)``. No Python loop over rows: gathers on :attr:`device`.
        """
        m = self._rows(mix_tokens)
        start = self._indptr[m]
        count = self._indptr[m + 1] - start
        width = int(count.max()) if m.numel() else 0
        offs = torch.arange(width, device=self.device)
        valid = offs[None, :] < count[:, None]
        idx = (start[:, None] + offs[None, :]).masked_fill_(~valid, self._pad)
        # (the padding reads tuple 0 and log-likelihood -inf)
        return Candidates(tokens=tuple(t[idx] for t in self._tokens), log_lik=self._log_p[idx],
                          valid=valid, count=count)

    def _tuple_totals_of(self, index: torch.Tensor) -> torch.Tensor:
        """``c(t)`` (float64) of tuple indices ``index`` (0 for tuples never counted)."""
        if self._pair_totals is not None:
            return self._pair_totals[index]
        if self._tuples.numel() == 0:
            return torch.zeros(index.shape, dtype=torch.float64, device=self.device)
        pos = torch.searchsorted(self._tuples, index.reshape(-1)).reshape(index.shape)
        pos = pos.clamp(max=self._tuples.numel() - 1)
        return torch.where(self._tuples[pos] == index, self._tuple_totals[pos],
                           torch.zeros((), dtype=torch.float64, device=self.device))

    def lookup(self, mix_tokens: torch.Tensor, *tokens: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether each (mixture, tuple) was counted, and its ``log p(m | i_1, ..., i_N)``.

        ``mix_tokens (batch,)``, one ``(batch, n)`` tensor of tokens per source -> ``seen
        (batch, n)`` bool and the log-likelihood ``(batch, n)``: the smoothed value for unseen
        combinations (``-inf`` without smoothing). Seen ones have the value :meth:`slice`
        gives them.
        """
        if len(tokens) != self.n:
            raise LikelihoodError(f"give one token tensor per source ({self.n}), got "
                                  f"{len(tokens)}")
        m = self._rows(mix_tokens)
        src = [t.to(self.device).long() for t in tokens]
        pair = src[0]
        for t in src[1:]:
            pair = pair * self.k + t
        keys = m[:, None] * self.k ** self.n + pair
        pos = torch.searchsorted(self._keys, keys.reshape(-1)).reshape(keys.shape)
        pos = pos.clamp(max=max(self._keys.numel() - 1, 0))
        seen = (self._keys[pos] == keys) if self._keys.numel() else torch.zeros_like(keys,
                                                                                     dtype=torch.bool)
        seen_value = self._log_p[pos]  # (the padding entry where the table is empty)
        if self.smoothing == "none":
            unseen = torch.full_like(seen_value, float("-inf"))
        elif self.smoothing == "additive":
            totals = self._tuple_totals_of(pair)
            unseen = (torch.log(torch.tensor(self.alpha, dtype=torch.float64, device=self.device))
                      - torch.log(totals + self.alpha * self.k)).float()
        elif self.smoothing == "backoff":
            totals = self._tuple_totals_of(pair)
            unseen = (np.log(self.alpha) + self._log_marginal[m][:, None]
                      - torch.log(totals + self.alpha)).float()
        elif self.smoothing == "votes":
            totals = self._tuple_totals_of(pair)
            q = self._votes_prob(m[:, None].expand_as(pair), pair)
            unseen = (torch.log(self.alpha * q.double()) - torch.log(totals + self.alpha)).float()
        else:
            assert self.base is not None
            totals = self._tuple_totals_of(pair)
            unseen = (np.log(self.alpha) + self.base.log_prob(m, src[0], src[1])
                      - torch.log(totals + self.alpha).float())
        return seen, torch.where(seen, seen_value, unseen)

    def log_likelihood(self, mix_tokens: torch.Tensor, *tokens: torch.Tensor) -> torch.Tensor:
        """``log p(m | i_1, ..., i_N)`` for any tuples: ``mix_tokens (batch,)``, one ``(batch,
        n)`` tensor per source -> ``(batch, n)`` (``-inf`` for unseen combinations without
        smoothing)."""
        return self.lookup(mix_tokens, *tokens)[1]

    def dense(self, mix_tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, K, ..., K)`` ``log p(m | i_1, ..., i_N)`` for small tables (K^N at most
        256^2)."""
        if self.k ** self.n > DENSE_LIMIT ** 2:
            raise LikelihoodError(f"a dense (batch, K^N) slice is for K^N <= {DENSE_LIMIT}^2; "
                                  f"this table has K = {self.k}, N = {self.n}")
        m = self._rows(mix_tokens)
        grid = torch.cartesian_prod(*[torch.arange(self.k, device=self.device)] * self.n)
        grid = grid.view(-1, self.n)
        tokens = [grid[:, s][None].expand(m.numel(), -1) for s in range(self.n)]
        return self.log_likelihood(m, *tokens).view(m.numel(), *[self.k] * self.n)
