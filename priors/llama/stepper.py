"""The incremental forward of a Llama network (:class:`LlamaStepper`) and the choice of its
fast paths (:class:`StepOptions`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from priors.llama.cache import KVBuffer
from priors.llama.kernels import (
    _brgemm_works,
    _product,
    _rms_divisor,
    packed_products_work,
    scripted_step,
    token_step,
)


@dataclass(frozen=True)
class StepOptions:
    """Which fast paths a :class:`LlamaStepper` takes (each falls back where it does not
    apply or does not work here; every path gives the same log-probabilities within the
    tolerances the tests check).

    Attributes:
        packed_products: on a CPU, the per-token products on oneDNN's linear with the
            weights packed once per stepper (where :func:`packed_products_work`); False:
            plain ``torch.mm``.
        shared_feed_min: a multi-token feed into an empty buffer whose families' rows begin
            with at least this many equal tokens computes that common start once per family.
        scripted_step: the per-token step compiled by TorchScript (:func:`scripted_step`,
            where it compiles); False: the same function in Python.
        native_step: the per-token step as the C++ operator of :mod:`priors.native` where
            that applies (float32 on a CPU, one key/value head) and builds; False: as
            ``scripted_step`` says.
        brgemm_products: the C++ step's products on oneDNN's batch-reduce GEMM kernel (where
            it works here) on plain weights; False: as ``packed_products`` says.
    """

    packed_products: bool = True
    shared_feed_min: int = 16
    scripted_step: bool = True
    native_step: bool = True
    brgemm_products: bool = True


class LlamaStepper:
    """The incremental forward of one Llama network (see the module docstring)."""

    def __init__(self, model: nn.Module, vocab: int, capacity: int,
                 options: StepOptions | None = None) -> None:
        self.options = options or StepOptions()
        net: Any = model  # a LlamaForCausalLM (see :func:`supports`)
        cfg, inner = net.config, net.model
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads or cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.eps = float(cfg.rms_norm_eps)
        self.capacity = capacity
        self.inner_size = int(cfg.intermediate_size)
        self._flat_weights: list[torch.Tensor] = []  # the step's weights, 4 per layer
        with torch.no_grad():
            self.embed = inner.embed_tokens.weight.detach()
            # The attention scale is folded into the query rows, so the scores need no
            # extra product (exact where it is a power of two, as for head_dim 64).
            scale = self.head_dim ** -0.5
            # Each RMS norm's weight is folded into the product after it, with sqrt(width):
            # norm(x) @ W = (x @ (sqrt(width) diag(w) W)) / sqrt(|x|^2 + width eps), and the
            # denominator is one vector norm and one hypot per row (see :meth:`_scale`)
            # where the library's norm takes seven operations.
            width = int(cfg.hidden_size)
            root = width ** 0.5

            def fold(norm: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                """``w: (out, in)`` after the norm of weight ``norm`` -> ``(in, out)``."""
                return (w * (norm * root)[None, :]).t().contiguous()

            self.layers: list[tuple[torch.Tensor, ...]] = []
            for layer in inner.layers:
                att, mlp = layer.self_attn, layer.mlp
                qkv = torch.cat([att.q_proj.weight * scale, att.k_proj.weight, att.v_proj.weight])
                gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
                # (in, out) layouts: x @ w is the projection (:func:`_product`).
                self.layers.append((fold(layer.input_layernorm.weight, qkv),
                                    att.o_proj.weight.detach().t(),
                                    fold(layer.post_attention_layernorm.weight, gate_up),
                                    mlp.down_proj.weight.detach().t()))
            self.head = fold(inner.norm.weight, net.lm_head.weight[:vocab])
            # sqrt(width eps): hypot(|x|, it) = sqrt(|x|^2 + width eps)
            self._eps_root = torch.tensor((width * float(cfg.rms_norm_eps)) ** 0.5,
                                          dtype=self.head.dtype, device=self.head.device)
            # The same products with oneDNN's packed weights, where that works (per token).
            self.packed: list[tuple[torch.Tensor, ...]] | None = None
            self.packed_head: torch.Tensor | None = None
            if self.options.packed_products and packed_products_work(self.head.dtype,
                                                                     self.head.device.type):
                pack = torch.ops.mkldnn._reorder_linear_weight
                self.packed = [tuple(pack(w.t().contiguous()) for w in layer)
                               for layer in self.layers]
                self.packed_head = pack(self.head.t().contiguous())
            self._flat_weights = [w for layer in (self.packed or self.layers) for w in layer]
            rotary = inner.rotary_emb
            inv_freq = rotary.inv_freq.to(self.embed.device, torch.float32)
            freqs = torch.arange(capacity, device=self.embed.device,
                                 dtype=torch.float32)[:, None] * inv_freq[None]
            rscale = float(getattr(rotary, "attention_scaling", 1.0))
            self.cos = (freqs.cos() * rscale).to(self.embed.dtype)  # (capacity, head_dim / 2)
            self.sin = (freqs.sin() * rscale).to(self.embed.dtype)
            # x @ rotation[p] is the rotary embedding of x at position p:
            # [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] as one (head_dim, head_dim) matrix.
            half = self.head_dim // 2
            rot = self.embed.new_zeros(capacity, self.head_dim, self.head_dim)
            diag = torch.arange(half, device=self.embed.device)
            rot[:, diag, diag] = self.cos
            rot[:, diag + half, diag + half] = self.cos
            rot[:, diag + half, diag] = -self.sin
            rot[:, diag, diag + half] = self.sin
            self.rotation = rot
        # the C++ step, loaded (built if need be) with the prior, not in the first step; its
        # products: 0 torch.mm, 1 oneDNN's packed linear, 2 its batch-reduce GEMM kernel
        self._products = 0 if self.packed is None else 1
        self._native_head = self._head()
        if self._native() is not None and self.options.brgemm_products and _brgemm_works():
            self._products = 2
            self._flat_weights = [w.contiguous() for layer in self.layers for w in layer]
            self._native_head = self.head.contiguous()

    def new_buffer(self, rows: int, share: int = 0) -> KVBuffer:
        """An empty key/value buffer for ``rows`` sequences (``share``: rows per family of
        beams whose common past is stored once, see :class:`KVBuffer`)."""
        return KVBuffer(rows, len(self.layers), self.kv_heads, self.capacity, self.head_dim,
                        self.embed.dtype, self.embed.device, share=share)

    def _product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x @ w`` for ``x: (rows, in)``, ``w`` from :attr:`layers` or, packed, from
        :attr:`packed`."""
        return _product(x, w, self.packed is not None)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., 1)`` the divisor that makes ``x @ w`` (a folded weight, see ``__init__``)
        the product of the RMS-normed ``x`` (:func:`_rms_divisor`)."""
        return _rms_divisor(x, self._eps_root)

    def _rope(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Rotate ``x: (rows, n, heads, head_dim)`` to positions ``start .. end - 1``."""
        if end - start == 1:  # one position for every row: one product with its rotation
            return torch.matmul(x, self.rotation[start])
        cos = self.cos[start:end, None, :]
        sin = self.sin[start:end, None, :]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: KVBuffer) -> torch.Tensor:
        """Feed ``ids: (rows, n)`` after the cache's tokens; return ``(rows, K)`` logits."""
        n = ids.shape[1]
        start = cache.length
        end = start + n
        if end > self.capacity:
            raise ValueError(f"{end} positions exceed the buffer's capacity {self.capacity}")
        cache.extend(ids)
        if n == 1:
            return self._step(ids[:, 0], cache)
        cache.unshare()  # (several new positions per row: each row's whole past in place)
        # (the last position runs per row even where the rows agree on all of them)
        common = min(cache.common_start(ids), n - 1) if start == 0 else 0
        if common >= self.options.shared_feed_min:
            # The families' common start once per family, into the shared prefix; then each
            # row's own positions, attending to its family's prefix and to its own past.
            fam, prefix = cache.share, cache.family_prefix()
            self._feed(ids[::fam, :common], prefix, 0)
            last = self._feed(ids[:, common:], cache.data, common,
                              before=prefix[..., :common, :].repeat_interleave(fam, 0))
            cache.start_shared(common)
        else:
            last = self._feed(ids, cache.data, start)
        cache.length = end
        return self._product(last, self._head()).div_(self._scale(last))

    def _head(self) -> torch.Tensor:
        """The output layer's weight for :meth:`_product`."""
        return self.head if self.packed_head is None else self.packed_head

    def _feed(self, ids: torch.Tensor, buf: torch.Tensor, start: int,
              before: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``ids: (rows, n)`` at positions ``start .. start + n - 1``, writing their keys
        and values into ``buf: (rows, layers, 2, kv_heads, capacity, head_dim)``.

        The positions before ``start`` are read from ``buf`` too, or, when given, from
        ``before: (rows, layers, 2, kv_heads, start, head_dim)``. Returns ``(rows, width)``
        the last position's hidden state before the final norm. Only the last position goes
        through the last layer's attention output and MLP (nothing else reads them).
        """
        rows, n = ids.shape
        end = start + n
        h_, kv_, d = self.heads, self.kv_heads, self.head_dim
        group = h_ // kv_
        x = F.embedding(ids, self.embed)  # (rows, n, width)
        keys = torch.arange(end, device=ids.device)
        mask = keys[None, :] <= torch.arange(start, end, device=ids.device)[:, None]
        for li, (w_qkv, w_o, w_gu, w_down) in enumerate(self.layers):
            qkv = torch.matmul(x, w_qkv).div_(self._scale(x)).view(rows, n, h_ + 2 * kv_, d)
            qk = self._rope(qkv[:, :, : h_ + kv_], start, end)
            buf[:, li, 0, :, start:end] = qk[:, :, h_:].transpose(1, 2)
            buf[:, li, 1, :, start:end] = qkv[:, :, h_ + kv_:].transpose(1, 2)
            k_all = buf[:, li, 0, :, :end]  # (rows, kv_heads, end, head_dim)
            v_all = buf[:, li, 1, :, :end]
            if before is not None:
                k_all = torch.cat([before[:, li, 0], k_all[:, :, start:]], dim=2)
                v_all = torch.cat([before[:, li, 1], v_all[:, :, start:]], dim=2)
            q = qk[:, :, :h_].transpose(1, 2)  # (rows, heads, n, head_dim), already scaled
            m = mask
            if li == len(self.layers) - 1:  # the last layer: the last position only
                q, m, x = q[:, :, -1:], mask[-1:], x[:, -1:]
            out = F.scaled_dot_product_attention(
                q, k_all.repeat_interleave(group, dim=1), v_all.repeat_interleave(group, dim=1),
                attn_mask=m, scale=1.0)
            x = x + torch.matmul(out.transpose(1, 2).reshape(rows, -1, h_ * d), w_o)
            gate, up = torch.matmul(x, w_gu).div_(self._scale(x)).split(self.inner_size, dim=-1)
            x = x + torch.matmul(F.silu(gate) * up, w_down)
        return x[:, -1]

    def _native(self) -> Any:
        """The C++ step (:func:`priors.native.native_step`) where it applies: float32 on a
        CPU, one key/value head, ``options.native_step`` on, and it builds here; else None.
        The stepper's constructor asks for it once, so that loading (or building) it is
        part of loading the prior, not of the first search."""
        if not (self.options.native_step and self.kv_heads == 1
                and self.embed.dtype == torch.float32
                and self.embed.device.type == "cpu"):
            return None
        from priors.native import native_step

        return native_step()

    def _step(self, ids: torch.Tensor, cache: KVBuffer) -> torch.Tensor:
        """One new token per row, ``ids: (rows,)``: the same computation in 2-D tensors and
        as few operations as it takes (the per-token path of beam search and sampling), in
        :func:`token_step`, compiled by TorchScript where it can be (:func:`scripted_step`)."""
        rows = ids.shape[0]
        pos = cache.length
        # Rows with equal pasts (beams that differ only in the other source) are computed
        # once, except the attention, which runs for every row on its own keys and values.
        keep = spread = None
        if cache.twin is not None:
            first = cache.twin == np.arange(rows)
            if int(first.sum()) * 5 <= rows * 4:
                keep = torch.from_numpy(np.flatnonzero(first)).to(ids.device)  # (unique,)
                # (rows,) the computed row of each row
                spread = torch.from_numpy((np.cumsum(first) - 1)[cache.twin]).to(ids.device)
                ids = ids.index_select(0, keep)
        lo = cache.shared
        views = cache.layer_views(cache.data)
        native = self._native()
        # The C++ step reads each family's own (longer) shared past from the prefix; the
        # others read positions [0, lo) from it and the rest from the rows.
        fams = cache.family_shared if native is not None else None
        longer = fams is not None and int(fams.max()) > lo
        prefix = (cache.layer_views(cache.prefix) if (lo or longer) and cache.prefix is not None
                  else [])
        if native is not None:
            logits = native(
                F.embedding(ids, self.embed), self._flat_weights, self._native_head,
                self._eps_root, [self.heads, self.kv_heads, self.inner_size, self._products],
                [t for kv in views for t in kv], [t for kv in prefix for t in kv],
                self.rotation[pos], [pos, lo, cache.share], keep, spread,
                torch.from_numpy(fams) if longer else None)
            cache.length = pos + 1
            return logits
        packed = self.packed is not None
        step = scripted_step() if self.options.scripted_step else None
        logits = (step or token_step)(
            F.embedding(ids, self.embed), self.packed if packed else self.layers,  # type: ignore[arg-type]
            self._head(), self._eps_root, (self.heads, self.kv_heads, self.inner_size), packed,
            views, prefix, self.rotation[pos], (pos, lo, cache.share), keep, spread)
        cache.length = pos + 1
        return logits
