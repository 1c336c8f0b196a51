"""Counts files and the likelihood p(z_mix | z_1, z_2) made from them.

A counts file (``.npz``) holds the int64 counts as a CSR matrix of shape ``(K, K*K)`` (row:
mixture token m; column: pair index ``i * K + j``) and a JSON metadata record: ``k``, the
codec's identity, the data description, the mixing rule, whether the table is symmetric,
and how many triples and mixtures were counted. Counts, not probabilities, are stored, so
shards merge by addition; normalisation and smoothing happen at load:

* ``none``: ``p(m | i, j) = c(m, i, j) / c(i, j)`` (as the paper and the official code);
  unseen combinations are not candidates.
* ``additive``: ``(c + alpha) / (c(i, j) + alpha * K)``: every mixture token keeps some
  probability for every pair.
* ``backoff``: ``(c + beta * q(m)) / (c(i, j) + beta)`` with ``q`` the smoothed marginal of
  mixture tokens: unseen combinations keep a probability proportional to how common m is.

* ``factorised``: ``(c + alpha * q(m | i, j)) / (c(i, j) + alpha)`` with ``q`` a
  :class:`~likelihood.factorised.FactorisedLikelihood` fitted to the counts: unseen
  combinations keep the probability a model of each source token's votes gives them.

``min_count`` drops the triples counted fewer times before normalising: a triple seen once
in hours of mixtures is mostly chance, yet without smoothing it gets ``p = 1`` when its pair
was seen once, and every such triple is one more candidate for the search.
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

if TYPE_CHECKING:
    from likelihood.factorised import FactorisedLikelihood

FORMAT_VERSION = 1
SMOOTHINGS = ("none", "additive", "backoff", "factorised")
DENSE_LIMIT = 256


@dataclass(frozen=True)
class Counts:
    """A counts table and its metadata (``meta['k']``, ``meta['codec_identity']``, ...)."""

    matrix: sp.csr_matrix
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Codebook size K."""
        return int(self.matrix.shape[0])

    def stats(self) -> dict[str, Any]:
        """Size and density figures of the table."""
        k = self.k
        nnz = int(self.matrix.nnz)
        sparse_bytes = int(self.matrix.data.nbytes + self.matrix.indices.nbytes
                           + self.matrix.indptr.nbytes)
        return {"k": k, "nonzeros": nnz, "density": nnz / float(k) ** 3,
                "bytes_in_memory": sparse_bytes, "bytes_dense_int64": 8 * k ** 3,
                "pairs_seen": int(np.count_nonzero(np.asarray(self.matrix.sum(axis=0)))),
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
    buf = io.BytesIO()
    np.savez_compressed(buf, data=m.data.astype(np.int64),
                        indices=m.indices.astype(np.int32 if small else np.int64),
                        indptr=m.indptr.astype(np.int64), shape=np.array(m.shape, dtype=np.int64),
                        meta=np.array(json.dumps(meta, sort_keys=True)))
    return write_atomically(out, buf.getvalue())


def write_atomically(out: Path, data: bytes) -> Path:
    """Write ``data`` to ``out`` through a temporary file renamed into place."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def save_model_file(path: str | os.PathLike[str], arrays: dict[str, np.ndarray],
                    meta: dict[str, Any]) -> Path:
    """Write named arrays and a JSON ``meta`` record to an ``.npz`` atomically (the format
    of the fitted likelihood models: factorised, latent)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    payload: dict[str, Any] = {**arrays, "meta": np.array(json.dumps(meta, sort_keys=True))}
    np.savez_compressed(buf, **payload)
    return write_atomically(out, buf.getvalue())


def load_model_file(path: str | os.PathLike[str], what: str, kind: str, version: int,
                    names: tuple[str, ...]) -> tuple[Path, dict[str, torch.Tensor],
                                                     dict[str, Any]]:
    """Read a :func:`save_model_file` file whose meta says ``kind`` and ``version``.

    Returns the path, the arrays ``names`` as float32 tensors and the meta record; a
    missing, foreign, corrupt or truncated file raises :class:`LikelihoodError` naming
    ``what`` it should have been.
    """
    p = Path(path)
    if not p.is_file():
        raise LikelihoodError(f"{what} not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"])) if "meta" in f.files else None
            if not isinstance(meta, dict) or meta.get("format_version") != version \
                    or meta.get("kind") != kind:
                raise LikelihoodError(f"{p}: not a {what} file")
            arrays = {n: torch.from_numpy(f[n].astype(np.float32)) for n in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise LikelihoodError(f"cannot read {what} {p}: corrupt or truncated ({err})"
                              ) from None
    return p, arrays, meta


def load_counts(path: str | os.PathLike[str]) -> Counts:
    """Read a counts file written by :func:`save_counts`."""
    p = Path(path)
    if not p.is_file():
        raise LikelihoodError(f"counts file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as f:
            shape = tuple(int(v) for v in f["shape"])
            matrix = sp.csr_matrix((f["data"].astype(np.int64), f["indices"].astype(np.int64),
                                    f["indptr"].astype(np.int64)), shape=shape)
            meta = json.loads(str(f["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise LikelihoodError(f"cannot read counts file {p}: corrupt or truncated ({err})"
                              ) from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise LikelihoodError(f"{p}: unsupported counts format")
    k = int(meta.get("k", -1))
    if shape != (k, k * k):
        raise LikelihoodError(f"{p}: matrix shape {shape} does not fit K = {k}")
    return Counts(matrix, meta)


def merge_counts(tables: list[Counts]) -> Counts:
    """Add counts tables counted for the same codec, K, mixing rule and symmetry."""
    if not tables:
        raise LikelihoodError("nothing to merge")
    first = tables[0].meta
    for t in tables[1:]:
        for key in ("k", "codec_identity", "mix", "symmetric", "sources"):
            if t.meta.get(key) != first.get(key):
                raise LikelihoodError(f"cannot merge counts with different {key}: "
                                      f"{first.get(key)!r} and {t.meta.get(key)!r}")
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
    """Per batch row, the source-token pairs seen with its mixture token (padded).

    Attributes:
        first, second: ``(batch, C)`` int64 tokens i and j.
        log_lik: ``(batch, C)`` float32 ``log p(m | i, j)``; ``-inf`` where padded.
        valid: ``(batch, C)`` bool, False on padding.
        count: ``(batch,)`` int64 number of candidates of each row (0: token never seen).
    """

    first: torch.Tensor
    second: torch.Tensor
    log_lik: torch.Tensor
    valid: torch.Tensor
    count: torch.Tensor


class CountLikelihood:
    """``p(m | i, j)`` from counted triples, sliced by mixture token on any device.

    Args:
        counts: the counts table.
        smoothing: ``none``, ``additive`` or ``backoff`` (see the module docstring).
        alpha: strength of the smoothing (pseudo-count per mixture token for ``additive``;
            total pseudo-count for ``backoff``).
        device: where :meth:`slice` returns its tensors.
        min_count: triples counted fewer times are dropped before normalising (1: keep all).
        base: the fitted model ``q`` of the ``factorised`` smoothing.
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
        self.meta = counts.meta
        self.smoothing, self.alpha = smoothing, float(alpha)
        self.device = torch.device(device)
        if min_count < 1:
            raise LikelihoodError(f"min_count must be >= 1, got {min_count}")
        self.min_count = int(min_count)
        if (smoothing == "factorised") != (base is not None):
            raise LikelihoodError("the factorised smoothing needs its fitted model (and only "
                                  "it takes one)")
        if base is not None:
            base.check_fits(counts)
        self.base = base.to(self.device) if base is not None else None
        m = sp.csr_matrix(counts.matrix, dtype=np.float64)
        if min_count > 1:
            m = m.copy()  # never change the caller's counts
            m.data[m.data < min_count] = 0
            m.eliminate_zeros()
        m.sort_indices()
        k = self.k
        self.pair_totals = np.asarray(m.sum(axis=0)).ravel()  # (K*K,) c(i, j)
        mix_totals = np.asarray(m.sum(axis=1)).ravel()  # (K,) c(m)
        self.mix_marginal = (mix_totals + 1.0) / (mix_totals.sum() + k)  # q(m), add-one
        rows = np.repeat(np.arange(k), np.diff(m.indptr))
        totals = self.pair_totals[m.indices]
        if smoothing == "none":
            probs = m.data / totals
        elif smoothing == "additive":
            probs = (m.data + self.alpha) / (totals + self.alpha * k)
        elif smoothing == "backoff":
            probs = (m.data + self.alpha * self.mix_marginal[rows]) / (totals + self.alpha)
        else:
            assert self.base is not None
            q = self._base_prob(rows, m.indices.astype(np.int64))
            probs = (m.data + self.alpha * q) / (totals + self.alpha)
        self._indptr = torch.from_numpy(m.indptr.astype(np.int64)).to(self.device)
        # The pairs and log-likelihoods in CSR order, each with one padding entry at the end
        # (pair 0, log-likelihood -inf) that :meth:`slice` reads for the rows' padding.
        pairs = torch.from_numpy(m.indices.astype(np.int64)).to(self.device)
        self._pad = int(pairs.numel())
        padded = torch.cat([pairs, pairs.new_zeros(1)])
        # Each pair's two tokens, split once here rather than at every slice.
        self._first, self._second = padded // k, padded % k
        self._log_p = torch.cat([torch.from_numpy(np.log(probs).astype(np.float32)).to(
            self.device), torch.full((1,), float("-inf"), device=self.device)])
        self._keys = pairs + torch.from_numpy(rows.astype(np.int64)).to(self.device) * k * k
        self._pair_totals = torch.from_numpy(self.pair_totals).to(self.device)
        self._log_marginal = torch.from_numpy(np.log(self.mix_marginal)).to(self.device)

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

    def held_out_bits(self, valid: Counts) -> float:
        """Count-weighted cross-entropy of this likelihood on the triples of other counts,
        bits per mixture token (``inf`` when it rules out a triple they hold)."""
        coo = valid.matrix.tocoo()
        pairs = torch.from_numpy(coo.col.astype(np.int64))
        log_p = self.log_likelihood(torch.from_numpy(coo.row.astype(np.int64)),
                                    (pairs // self.k)[:, None],
                                    (pairs % self.k)[:, None])[:, 0].double().cpu()
        w = torch.from_numpy(coo.data.astype(np.float64))
        return float(-(w * log_p).sum() / w.sum().clamp_min(1.0) / np.log(2))

    def token_factors(self, mix_tokens: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-token parts ``(batch, K)`` of the smoothed log-likelihood of unseen pairs
        (``factorised`` smoothing; None otherwise): a search ranks tokens by them."""
        if self.base is None:
            return None
        return self.base.token_factors(self._rows(mix_tokens))

    @classmethod
    def load(cls, path: str | os.PathLike[str], smoothing: str = "none", alpha: float = 1.0,
             *, codebook_size: int | None = None, codec_identity: str | None = None,
             device: str | torch.device = "cpu", min_count: int = 1,
             base: str | os.PathLike[str] | FactorisedLikelihood | None = None
             ) -> CountLikelihood:
        """Load a counts file, checking that it was counted for this codec (``base``: the
        factorised model, or its file, for the ``factorised`` smoothing)."""
        from likelihood.factorised import FactorisedLikelihood

        counts = load_counts(path)
        if codebook_size is not None and counts.k != codebook_size:
            raise LikelihoodError(f"{path} was counted for K = {counts.k} tokens but the codec "
                                  f"has {codebook_size} codes")
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
        """How many seen pairs each mixture token has: ``(...) -> (...)`` int64 (the width
        of its :meth:`slice` row without padding; 0: the token was never counted)."""
        m = torch.as_tensor(mix_tokens, device=self.device).long()
        flat = self._rows(m)
        return (self._indptr[flat + 1] - self._indptr[flat]).view(m.shape)

    def slice(self, mix_tokens: torch.Tensor) -> Candidates:
        """The seen pairs of each row's mixture token, padded to the longest row.

        ``mix_tokens: (batch,)``. No Python loop over rows: gathers on :attr:`device`.
        """
        m = self._rows(mix_tokens)
        start = self._indptr[m]
        count = self._indptr[m + 1] - start
        width = int(count.max()) if m.numel() else 0
        offs = torch.arange(width, device=self.device)
        valid = offs[None, :] < count[:, None]
        idx = (start[:, None] + offs[None, :]).masked_fill_(~valid, self._pad)
        # (the padding reads pair 0 and log-likelihood -inf)
        return Candidates(first=self._first[idx], second=self._second[idx],
                          log_lik=self._log_p[idx], valid=valid, count=count)

    def lookup(self, mix_tokens: torch.Tensor, first: torch.Tensor, second: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether each triple was counted, and its ``log p(m | i, j)``.

        ``mix_tokens (batch,)``, ``first, second (batch, n)`` -> ``seen (batch, n)`` bool and
        the log-likelihood ``(batch, n)``: the smoothed value for unseen triples (``-inf``
        without smoothing). Seen triples have the value :meth:`slice` gives them.
        """
        m = self._rows(mix_tokens)
        i = first.to(self.device).long()
        j = second.to(self.device).long()
        pair = i * self.k + j
        keys = m[:, None] * self.k * self.k + pair
        pos = torch.searchsorted(self._keys, keys.reshape(-1)).reshape(keys.shape)
        pos = pos.clamp(max=max(self._keys.numel() - 1, 0))
        seen = (self._keys[pos] == keys) if self._keys.numel() else torch.zeros_like(keys,
                                                                                     dtype=torch.bool)
        seen_value = self._log_p[pos]  # (the padding entry where the table is empty)
        totals = self._pair_totals[pair]
        if self.smoothing == "none":
            unseen = torch.full_like(seen_value, float("-inf"))
        elif self.smoothing == "additive":
            unseen = (torch.log(torch.tensor(self.alpha, dtype=torch.float64, device=self.device))
                      - torch.log(totals + self.alpha * self.k)).float()
        elif self.smoothing == "backoff":
            unseen = (np.log(self.alpha) + self._log_marginal[m][:, None]
                      - torch.log(totals + self.alpha)).float()
        else:
            assert self.base is not None
            unseen = (np.log(self.alpha) + self.base.log_prob(m, i, j)
                      - torch.log(totals + self.alpha).float())
        return seen, torch.where(seen, seen_value, unseen)

    def log_likelihood(self, mix_tokens: torch.Tensor, first: torch.Tensor,
                       second: torch.Tensor) -> torch.Tensor:
        """``log p(m | i, j)`` for any pairs: ``mix_tokens (batch,)``, ``first, second
        (batch, n)`` -> ``(batch, n)`` (``-inf`` for unseen combinations without smoothing)."""
        return self.lookup(mix_tokens, first, second)[1]

    def dense(self, mix_tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, K, K)`` ``log p(m | i, j)`` for small K (at most 256)."""
        if self.k > DENSE_LIMIT:
            raise LikelihoodError(f"a dense (batch, K, K) slice is for K <= {DENSE_LIMIT}; "
                                  f"this table has K = {self.k}")
        m = self._rows(mix_tokens)
        grid = torch.arange(self.k, device=self.device)
        first = grid.repeat_interleave(self.k)[None].expand(m.numel(), -1)
        second = grid.repeat(self.k)[None].expand(m.numel(), -1)
        return self.log_likelihood(m, first, second).view(m.numel(), self.k, self.k)
