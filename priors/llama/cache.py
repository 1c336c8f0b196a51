"""The key/value buffer of a stepper (:class:`KVBuffer`): families of beams sharing their
common past, marks, rows with equal pasts, prefixes, reorders."""

from __future__ import annotations

import numpy as np
import torch

from priors.llama import kernels


def _first_equal(same: np.ndarray) -> np.ndarray:
    """``same: (rows, rows)`` an equivalence of rows -> ``(rows,)`` the first row equal to
    each."""
    return same.argmax(axis=1)


def host_index(index: torch.Tensor) -> np.ndarray:
    """``index`` as an int64 NumPy array on the host (no copy for a CPU tensor)."""
    return index.detach().to("cpu", torch.long).numpy()


class KVBuffer:
    """Keys and values of ``rows`` sequences: ``(rows, layers, 2, kv_heads, capacity, head_dim)``.

    With ``share`` > 0 the rows come in families of ``share`` consecutive rows (the beams of
    one mixture) that :meth:`reorder` only ever moves within their family. Beams soon
    descend from one beam of some earlier step, and from then on their past up to that step
    is the same: it is stored once per family in :attr:`prefix` (positions ``[0, shared)``),
    so the attention reads it once for all of the family's rows (one product with all their
    queries) and :meth:`reorder` copies only the positions after it. Which past is common is
    found from the reorders alone: every ``stride`` positions a mark records each row's
    ancestor, and a mark whose ancestors agree within a family moves that family's
    :attr:`family_shared` up to it. :attr:`shared`, the least of them, is what every row
    need not hold: the rows hold positions from there on, and each family's prefix holds its
    own longer common past too, which the C++ step (:mod:`priors.native`) reads from the
    prefix (where each family's own positions then start at its own shared length; with
    many families the slowest would otherwise set the length of all of them).

    The bookkeeping (families, marks, twins) is a few integers per row, kept in NumPy on the
    host: a search step then costs a handful of NumPy operations of about a microsecond each
    instead of some twenty tensor operations, and only the keys and values stay on the
    device.

    Attributes:
        data: the buffer in use; positions ``[shared:length]`` of every row are filled
            (``[:length]`` when nothing is shared).
        spare: a second buffer of the same shape that :meth:`reorder` writes into.
        length: filled positions.
        share: rows per family (0: nothing is shared).
        shared: positions held in :attr:`prefix` for every family (the least of
            :attr:`family_shared`).
        family_shared: ``(rows / share,)`` NumPy int64, the positions held in :attr:`prefix`
            for each family (each >= :attr:`shared`), or ``None`` without families.
        prefix: ``(rows / share, layers, 2, kv_heads, capacity, head_dim)`` or ``None``.
        twin: ``(rows,)`` NumPy int64, for each row the first row whose past equals its own,
            or ``None`` (followed only when made with ``share`` > 1).
    """

    def __init__(self, rows: int, layers: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, share: int = 0,
                 stride: int = 8) -> None:
        shape = (rows, layers, 2, kv_heads, capacity, head_dim)
        self.data = torch.empty(shape, dtype=dtype, device=device)
        self.spare: torch.Tensor | None = None
        self.length = 0
        self.share = share if share > 1 and rows % share == 0 else 0
        self._family = np.arange(rows) // self.share if self.share else None
        self.stride = max(1, stride)
        self.shared = 0
        self.family_shared: np.ndarray | None = (np.zeros(rows // self.share, dtype=np.int64)
                                                 if self.share else None)
        self.prefix: torch.Tensor | None = None
        self._marks: list[int] = []  # lengths at which each mark was taken
        # per family, how many of the marks its family_shared has passed already
        self._passed = np.zeros(rows // self.share if self.share else 0, dtype=np.int64)
        self._origin = np.empty((rows, 0), dtype=np.int64)
        # twin[i]: the first row whose past equals row i's (at the start all are empty).
        # Followed only for beams (share > 1): independent samples seldom have equal pasts.
        self.twin: np.ndarray | None = (np.zeros(rows, dtype=np.int64) if share > 1
                                        else None)
        # Per-layer key and value views of the last buffers asked for (data, spare, prefix):
        # made once per buffer rather than indexed anew at every layer of every step.
        self._views: list[tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]] = []

    def layer_views(self, buffer: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``buffer`` (:attr:`data` or :attr:`prefix`) as per-layer ``(keys, values)`` views,
        each ``(rows or families, kv_heads, capacity, head_dim)``."""
        for held, views in self._views:
            if held is buffer:
                return views
        views = [(buffer[:, li, 0], buffer[:, li, 1]) for li in range(buffer.shape[1])]
        self._views = [*self._views[-2:], (buffer, views)]
        return views

    @property
    def rows(self) -> int:
        """Sequences held."""
        return int(self.data.shape[0])

    def unshare(self) -> None:
        """Copy the shared prefix back into every row, which then holds its whole past again
        (before a multi-token feed, whose new positions differ between rows); sharing starts
        over from the next reorders."""
        if self.shared and self.prefix is not None:
            n = self.shared
            self.data[..., :n, :] = self.prefix[..., :n, :].repeat_interleave(self.share, 0)
        self._restart_sharing(0)

    def common_start(self, ids: torch.Tensor) -> int:
        """How many leading tokens of ``ids: (rows, n)`` agree within every family (0
        without families)."""
        if not self.share:
            return 0
        tokens = host_index(ids).reshape(-1, self.share, ids.shape[1])
        differ = (tokens != tokens[:, :1]).any(axis=(0, 1))  # (n,)
        return int(differ.argmax()) if differ.any() else int(ids.shape[1])

    def start_shared(self, shared: int) -> None:
        """Note that :attr:`prefix` holds positions ``[0, shared)`` of every family (written
        by the caller) and the rows hold only the positions after them; no marks are
        pending."""
        self._restart_sharing(shared)

    def _restart_sharing(self, shared: int) -> None:
        """Every family shares positions ``[0, shared)``; no marks are pending."""
        self.shared = shared
        if self.family_shared is not None:
            self.family_shared[:] = shared
        self._marks = []
        self._passed[:] = 0
        self._origin = self._origin[:, :0]

    def family_prefix(self) -> torch.Tensor:
        """:attr:`prefix`, allocated on first use: ``(rows / share, layers, 2, kv_heads,
        capacity, head_dim)``."""
        if self.prefix is None:
            self.prefix = self.data.new_empty((self.rows // self.share, *self.data.shape[1:]))
        return self.prefix

    def _stop_sharing(self) -> None:
        """Every row holds its whole past again, and no families are kept from now on."""
        self.unshare()
        self.share, self._family, self.family_shared = 0, None, None
        self._passed = self._passed[:0]

    def _commit(self) -> None:
        """Move each family's :attr:`family_shared` up to its latest mark whose ancestors
        agree within the family (copying those positions of any of its rows into the
        prefix), and :attr:`shared` up to the least of them; drop the marks every family
        has passed."""
        if not self._marks or self.family_shared is None:
            return
        fam = self._origin.reshape(-1, self.share, len(self._marks))
        agree = (fam == fam[:, :1]).all(axis=1)  # (families, marks): True, then False
        done = agree.cumprod(axis=1).sum(axis=1)
        moved = np.flatnonzero(done > self._passed)
        if moved.size:
            prefix = self.family_prefix()
            ends = np.asarray(self._marks)[done[moved] - 1]
            starts = self.family_shared[moved]
            # (the families that move the same span, in one copy)
            spans: dict[tuple[int, int], list[int]] = {}
            for f, a, b in zip(moved.tolist(), starts.tolist(), ends.tolist(), strict=True):
                spans.setdefault((a, b), []).append(f)
            for (a, b), fams in spans.items():
                which = torch.tensor(fams, device=self.data.device)
                # any row of a family holds its common past: the family's first
                prefix[..., a:b, :].index_copy_(
                    0, which, self.data[..., a:b, :].index_select(0, which * self.share))
            self.family_shared[moved] = ends
            self._passed[moved] = done[moved]
        drop = int(self._passed.min())
        if drop:
            self._marks = self._marks[drop:]
            self._origin = self._origin[:, drop:]
            self._passed -= drop
        self.shared = int(self.family_shared.min())

    def extend(self, ids: torch.Tensor) -> None:
        """Note that ``ids: (rows, n)`` are appended to the rows' pasts (for :attr:`twin`)."""
        if self.twin is not None:
            new = host_index(ids)
            self.twin = _first_equal((self.twin[:, None] == self.twin[None, :])
                                     & (new[:, None] == new[None]).all(-1))

    def reorder(self, index: torch.Tensor, host: np.ndarray | None = None) -> None:
        """Row ``i`` becomes row ``index[i]`` (``index: (rows',)``, on the buffer's device;
        ``host``: the same as a NumPy array, if the caller has it)."""
        idx = host_index(index) if host is None else host
        if self.twin is not None:
            key = self.twin[idx]
            self.twin = _first_equal(key[:, None] == key[None, :])
        n = self.length
        if idx.size != self.rows:  # a new batch size: a fresh buffer, no families
            self._stop_sharing()
            fresh = self.data.new_empty((idx.size, *self.data.shape[1:]))
            if n:
                torch.index_select(self.data[..., :n, :], 0, index, out=fresh[..., :n, :])
            self.data, self.spare, self._views = fresh, None, []
            return
        if self._family is not None:
            if (idx // self.share != self._family).any():  # rows leave their family
                self._stop_sharing()
            else:
                if n - (self._marks[-1] if self._marks else self.shared) >= self.stride:
                    self._marks.append(n)  # each row's past of length n, by its row now
                    self._origin = np.concatenate(
                        [self._origin, np.arange(self.rows)[:, None]], axis=1)
                self._origin = self._origin[idx]
        self._move(index, idx, self.shared, n)
        if self.share:
            self._commit()

    def _move(self, index: torch.Tensor, idx: np.ndarray, lo: int, n: int) -> None:
        """Positions ``[lo, n)`` of row ``i`` become those of row ``index[i]`` (``idx``: the
        same on the host)."""
        if n <= lo:
            return
        moved = idx != np.arange(self.rows)
        dst = np.flatnonzero(moved)
        if dst.size == 0:  # every row continues its own past
            return
        src = idx[dst]
        in_place = not moved[src].any()  # no source is overwritten: move rows in place
        ops = kernels.native_ops() if in_place and self.data.device.type == "cpu" else None
        if ops is not None:  # the moved rows only, one copy each (C++)
            ops.copy_rows(self.data, dst.tolist(), src.tolist(), lo, n, self.data.shape[-2])
            return
        if in_place and dst.size * 2 < self.rows:
            filled = self.data[..., lo:n, :]
            device = self.data.device
            filled.index_copy_(0, torch.from_numpy(dst).to(device),
                               filled.index_select(0, torch.from_numpy(src).to(device)))
            return
        if self.spare is None:
            self.spare = torch.empty_like(self.data)
        torch.index_select(self.data[..., lo:n, :], 0, index, out=self.spare[..., lo:n, :])
        self.data, self.spare = self.spare, self.data
