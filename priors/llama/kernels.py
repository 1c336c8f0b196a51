"""The per-token step of a Llama layer stack as one function (:func:`token_step`), compiled
by TorchScript where it can be (:func:`scripted_step`), and the products it is made of
(plain, oneDNN's packed linear, or in the C++ step oneDNN's batch-reduce GEMM)."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812


@functools.cache
def packed_products_work(dtype: torch.dtype, device_type: str) -> bool:
    """Whether oneDNN's prepacked linear (``torch.ops.mkldnn._linear_pointwise``, the one
    PyTorch's compiler uses on CPUs) runs here for ``dtype`` and gives the products of
    ``torch.mm``. For the search's products of a few rows by a weight matrix it is about
    1.7x faster than ``torch.mm`` on the project's 2-core CPU, which repacks the weight at
    every call; float32 on a CPU only."""
    if device_type != "cpu" or dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        w, x, acc = (torch.randn(*shape, generator=gen) for shape in ((24, 16), (3, 16), (3, 24)))
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        plain = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        added = torch.ops.mkldnn._linear_pointwise.binary(x, acc, packed, None, "add")
        return bool(torch.allclose(plain, x @ w.t(), atol=1e-4)
                    and torch.allclose(added, x @ w.t() + acc, atol=1e-4))
    except (AttributeError, NotImplementedError, RuntimeError):
        return False


def native_ops() -> Any:
    """``torch.ops.lass_native`` where :mod:`priors.native` has loaded it, else None."""
    from priors import native

    return native.loaded()


@functools.cache
def _brgemm_works() -> bool:
    """Whether the C++ library's batch-reduce GEMM products run here (and give torch.mm's)."""
    ops = native_ops()
    return ops is not None and bool(ops.brgemm_works())


def _product(x: torch.Tensor, w: torch.Tensor, packed: bool) -> torch.Tensor:
    """``x @ w`` for ``x: (rows, in)``: ``w`` is ``(in, out)``, or oneDNN's packed weight
    where ``packed``."""
    if not packed:
        return torch.mm(x, w)
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def _product_add(acc: torch.Tensor, x: torch.Tensor, w: torch.Tensor, packed: bool
                 ) -> torch.Tensor:
    """``acc + x @ w`` (as :func:`_product`). The plain product adds ``acc`` after it (not
    ``addmm``, which TorchScript's optimiser splits into these two, rounding otherwise)."""
    if not packed:
        return torch.mm(x, w).add_(acc)
    # TorchScript picks the overload from the arguments, and compiles only the branch it
    # runs (so the else stays: it does not know ``.binary``).
    if torch.jit.is_scripting():
        return torch.ops.mkldnn._linear_pointwise(x, acc, w, None, "add")
    else:
        return torch.ops.mkldnn._linear_pointwise.binary(x, acc, w, None, "add")


def _rms_divisor(x: torch.Tensor, eps_root: torch.Tensor) -> torch.Tensor:
    """``(..., 1)`` the divisor ``sqrt(|x|^2 + width eps)`` of ``x: (..., width)``
    (``eps_root``: ``sqrt(width eps)``) that makes ``x @ w`` of a weight with the norm's
    folded in (see :class:`LlamaStepper`) the product of the RMS-normed ``x``: one vector
    norm and one ``hypot`` per row; half precision in float32."""
    if x.dtype == torch.float32 or x.dtype == torch.float64:
        return torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), eps_root)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    return torch.hypot(norm, eps_root.float()).to(x.dtype)


def _by_family(t: torch.Tensor, fam: int) -> torch.Tensor:
    """``(rows, kv_heads, group, m)``, families of ``fam`` consecutive rows ->
    ``(families, kv_heads, fam * group, m)`` (several key/value heads; one takes
    :func:`_shared_attention`'s 3-D path)."""
    _, kv_heads, group, m = t.shape
    return t.reshape(-1, fam, kv_heads, group, m).transpose(1, 2).reshape(
        -1, kv_heads, fam * group, m)


def _by_row(t: torch.Tensor, fam: int, group: int) -> torch.Tensor:
    """The inverse of :func:`_by_family`."""
    families, kv_heads, _, m = t.shape
    return t.reshape(families, kv_heads, fam, group, m).transpose(1, 2).reshape(
        families * fam, kv_heads, group, m)


def _shared_attention(q: torch.Tensor, k_own: torch.Tensor, v_own: torch.Tensor,
                      k_pre: torch.Tensor, v_pre: torch.Tensor, fam: int) -> torch.Tensor:
    """Attention of one new query per row over its family's shared past and its own.

    Args:
        q: ``(rows, kv_heads, group, head_dim)`` scaled queries.
        k_own, v_own: ``(rows, kv_heads, own, head_dim)`` each row's positions after the
            shared ones.
        k_pre, v_pre: ``(families, kv_heads, shared, head_dim)`` the shared positions.
        fam: rows per family (consecutive rows).

    Returns:
        ``(rows, kv_heads, group, head_dim)``: the softmax over all positions, shared and
        own, of the scores, applied to the values (one softmax, as unshared).
    """
    rows, kv_heads, group, d = q.shape
    n = k_pre.shape[2]
    if kv_heads == 1:  # the same products as 3-D batches, without matmul's reshapes and
        # expansions (one key/value head: the head dimension is 1 everywhere)
        q3, k3, v3 = q.view(rows, group, d), k_own.squeeze(1), v_own.squeeze(1)
        pre = torch.bmm(q3.reshape(-1, fam * group, d), k_pre.squeeze(1).transpose(1, 2))
        scores = torch.cat([pre.view(rows, group, n), torch.bmm(q3, k3.transpose(1, 2))],
                           dim=-1).softmax(-1)
        out = torch.bmm(scores[..., n:], v3)
        out.add_(torch.bmm(scores[..., :n].reshape(-1, fam * group, n), v_pre.squeeze(1))
                 .view(rows, group, d))
        return out.view(rows, 1, group, d)
    scores = torch.cat([_by_row(torch.matmul(_by_family(q, fam), k_pre.transpose(-1, -2)), fam,
                                group),
                        torch.matmul(q, k_own.transpose(-1, -2))], dim=-1).softmax(-1)
    out = torch.matmul(scores[..., n:], v_own)
    return out.add_(_by_row(torch.matmul(_by_family(scores[..., :n], fam), v_pre), fam, group))


def token_step(x: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                    torch.Tensor]],
               head: torch.Tensor, eps_root: torch.Tensor, sizes: tuple[int, int, int],
               packed: bool, views: list[tuple[torch.Tensor, torch.Tensor]],
               prefix: list[tuple[torch.Tensor, torch.Tensor]], rot: torch.Tensor,
               where: tuple[int, int, int], keep: torch.Tensor | None,
               spread: torch.Tensor | None) -> torch.Tensor:
    """The layers and output of :meth:`LlamaStepper._step`: one new token per row.

    The arguments come in three groups: the network (``weights``, ``head``, ``eps_root``,
    ``sizes``, ``packed``), the step (``views``, ``prefix``, ``rot``, ``where``) and the
    rows computed (``keep``, ``spread``).

    Args:
        x: ``(unique, width)`` the new tokens' embeddings: one per row, or per computed row
            where rows with equal pasts are computed once (``keep`` and ``spread`` given).
        weights: per layer the folded ``(qkv, o, gate_up, down)`` products'
            weights (:attr:`LlamaStepper.layers`, or :attr:`LlamaStepper.packed` where
            ``packed``); ``head``: the output layer's.
        views: per layer the buffer's ``(keys, values)``, each ``(rows, kv_heads, capacity,
            head_dim)``: the new position ``pos`` is written into them, and positions
            ``[lo, pos]`` are read.
        prefix: per layer the families' shared ``(keys, values)``, each ``(rows / fam,
            kv_heads, capacity, head_dim)``, positions ``[0, lo)`` read (empty when ``lo``
            is 0).
        eps_root: ``sqrt(width eps)`` (:func:`_rms_divisor`).
        sizes: ``(heads, kv_heads, inner)``: the query and key/value heads and the MLP's
            width.
        rot: ``(head_dim, head_dim)`` the rotary embedding of position ``pos``.
        where: ``(pos, lo, fam)``: the new position, the first position the rows hold
            themselves (the ones before are their family's, in ``prefix``) and the rows per
            family.
        keep: ``(unique,)`` the computed rows; spread: ``(rows,)`` the computed row of each
            row.

    Returns:
        ``(rows, K)`` the next token's logits.
    """
    heads, kv_heads, inner = sizes
    pos, lo, fam = where
    rows = views[0][0].shape[0]
    d = rot.shape[0]
    group = heads // kv_heads
    for li, (w_qkv, w_o, w_gu, w_down) in enumerate(weights):
        qkv = _product(x, w_qkv, packed).div_(_rms_divisor(x, eps_root)).view(
            -1, heads + 2 * kv_heads, d)
        # V rotated too (unused): one product for all
        qkv_rot = torch.mm(qkv.view(-1, d), rot).view(qkv.shape)
        if spread is not None:
            qkv, qkv_rot = qkv.index_select(0, spread), qkv_rot.index_select(0, spread)
        k_buf, v_buf = views[li]
        k_buf.select(2, pos).copy_(qkv_rot[:, heads: heads + kv_heads])
        v_buf.select(2, pos).copy_(qkv[:, heads + kv_heads:])
        k_all = k_buf.narrow(2, lo, pos + 1 - lo)  # (rows, kv_heads, pos + 1 - lo, head_dim)
        v_all = v_buf.narrow(2, lo, pos + 1 - lo)
        q = qkv_rot[:, :heads].view(rows, kv_heads, group, d)  # already scaled
        if lo > 0:
            k_pre, v_pre = prefix[li]
            out = _shared_attention(q, k_all, v_all, k_pre.narrow(2, 0, lo),
                                    v_pre.narrow(2, 0, lo), fam)
        else:
            out = torch.matmul(torch.matmul(q, k_all.transpose(-1, -2)).softmax(-1), v_all)
        out = out.reshape(rows, heads * d)
        if keep is not None:
            out = out.index_select(0, keep)
        x = _product_add(x, out, w_o, packed)
        gu = _product(x, w_gu, packed).div_(_rms_divisor(x, eps_root))
        x = _product_add(x, F.silu(gu[:, :inner]).mul_(gu[:, inner:]), w_down, packed)
    logits = _product(x, head, packed).div_(_rms_divisor(x, eps_root))
    if spread is not None:
        logits = logits.index_select(0, spread)
    return logits


@functools.cache
def scripted_step() -> Any:
    """:func:`token_step` compiled by TorchScript (the same operations without Python's
    cost per operation: 0.85-0.9x the time of a replayed 10-beam search step on the
    project's 2-core CPU, the same results bit for bit), or None where it cannot be
    compiled (no TorchScript, or no source files to compile from): then :func:`token_step`
    runs as it is."""
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, not gone: torch < 2.14
            warnings.simplefilter("ignore")
            return torch.jit.script(token_step)
    except Exception:  # whatever TorchScript raises (RuntimeError, OSError, ...): eager
        return None
