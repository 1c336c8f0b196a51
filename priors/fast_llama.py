"""Lean incremental decoding of a Llama prior: the same network, fewer and larger operations.

Beam search calls the prior once per token with a small batch (mixtures x beams rows), so
the time of a step is mostly per-operation overhead rather than arithmetic: the stock
``transformers`` forward spends about 1.75 ms per layer on this project's 2-core CPU in
Python, module dispatch and cache bookkeeping. :class:`LlamaStepper` runs the identical
computation from the model's own weights with

- the query/key/value projections fused into one matrix and the gate/up projections into
  another (one GEMM each),
- rotary tables computed once per context,
- one preallocated key/value buffer ``(rows, layers, 2, kv_heads, capacity, head_dim)``
  written in place (no concatenation), and beam reordering as a single ``index_select``
  into a second buffer (double buffering, only the filled positions are copied),
- grouped-query attention for one new token as two batched matrix products, without
  expanding the shared key/value heads,
- the output layer restricted to the K codec tokens.

The weights are read from the model when a stepper is made (one per :meth:`start`), so a
stepper always matches the model it came from. Supported: ``LlamaForCausalLM`` with SiLU,
no biases and the default rotary embedding (what :class:`priors.TransformerPrior` builds);
anything else uses the ``transformers`` path (:func:`supports`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is a Llama network :class:`LlamaStepper` computes exactly."""
    from transformers import LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM):
        return False
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    return (not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
            and cfg.hidden_act == "silu" and rope.get("rope_type", "default") == "default"
            and getattr(cfg, "pretraining_tp", 1) == 1)


class KVBuffer:
    """Keys and values of ``rows`` sequences: ``(rows, layers, 2, kv_heads, capacity, head_dim)``.

    Attributes:
        data: the buffer in use; positions ``[:length]`` are filled.
        spare: a second buffer of the same shape that :meth:`reorder` writes into.
        length: filled positions.
    """

    def __init__(self, rows: int, layers: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (rows, layers, 2, kv_heads, capacity, head_dim)
        self.data = torch.empty(shape, dtype=dtype, device=device)
        self.spare: torch.Tensor | None = None
        self.length = 0

    @property
    def rows(self) -> int:
        """Sequences held."""
        return int(self.data.shape[0])

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``i`` becomes row ``index[i]`` (``index: (rows',)``, on the buffer's device)."""
        n = self.length
        if index.numel() != self.rows:  # a new batch size: a fresh buffer
            fresh = self.data.new_empty((index.numel(), *self.data.shape[1:]))
            if n:
                torch.index_select(self.data[..., :n, :], 0, index, out=fresh[..., :n, :])
            self.data, self.spare = fresh, None
            return
        if not n:
            return
        moved = index != torch.arange(self.rows, device=index.device)
        dst = moved.nonzero().squeeze(1)
        if dst.numel() * 2 < self.rows:
            src = index[dst]
            if not bool(moved[src].any()):  # no source is overwritten: move rows in place
                filled = self.data[..., :n, :]
                filled.index_copy_(0, dst, filled.index_select(0, src))
                return
        if self.spare is None:
            self.spare = torch.empty_like(self.data)
        torch.index_select(self.data[..., :n, :], 0, index, out=self.spare[..., :n, :])
        self.data, self.spare = self.spare, self.data


class LlamaStepper:
    """The incremental forward of one Llama network (see the module docstring)."""

    def __init__(self, model: nn.Module, vocab: int, capacity: int) -> None:
        net: Any = model  # a LlamaForCausalLM (see :func:`supports`)
        cfg, inner = net.config, net.model
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads or cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.eps = float(cfg.rms_norm_eps)
        self.capacity = capacity
        self.inner_size = int(cfg.intermediate_size)
        with torch.no_grad():
            self.embed = inner.embed_tokens.weight.detach()
            self.layers: list[tuple[torch.Tensor, ...]] = []
            for layer in inner.layers:
                att, mlp = layer.self_attn, layer.mlp
                qkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
                gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
                self.layers.append((layer.input_layernorm.weight.detach(), qkv,
                                    att.o_proj.weight.detach(),
                                    layer.post_attention_layernorm.weight.detach(), gate_up,
                                    mlp.down_proj.weight.detach()))
            self.norm = inner.norm.weight.detach()
            self.head = net.lm_head.weight[:vocab].detach()
            rotary = inner.rotary_emb
            inv_freq = rotary.inv_freq.to(self.embed.device, torch.float32)
            freqs = torch.arange(capacity, device=self.embed.device,
                                 dtype=torch.float32)[:, None] * inv_freq[None]
            scale = float(getattr(rotary, "attention_scaling", 1.0))
            self.cos = (freqs.cos() * scale).to(self.embed.dtype)  # (capacity, head_dim / 2)
            self.sin = (freqs.sin() * scale).to(self.embed.dtype)
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
        self.scale = self.head_dim ** -0.5

    def new_buffer(self, rows: int) -> KVBuffer:
        """An empty key/value buffer for ``rows`` sequences."""
        return KVBuffer(rows, len(self.layers), self.kv_heads, self.capacity, self.head_dim,
                        self.embed.dtype, self.embed.device)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float32, torch.float64):
            return F.rms_norm(x, weight.shape, weight, self.eps)
        var = x.float().pow(2).mean(-1, keepdim=True)  # half precision: as transformers does
        return weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)

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
        rows, n = ids.shape
        start = cache.length
        end = start + n
        if end > self.capacity:
            raise ValueError(f"{end} positions exceed the buffer's capacity {self.capacity}")
        h_, kv_, d = self.heads, self.kv_heads, self.head_dim
        group = h_ // kv_
        x = F.embedding(ids, self.embed)  # (rows, n, width)
        buf = cache.data
        if n > 1:
            keys = torch.arange(end, device=ids.device)
            mask = keys[None, :] <= torch.arange(start, end, device=ids.device)[:, None]
        for li, (ln1, w_qkv, w_o, ln2, w_gu, w_down) in enumerate(self.layers):
            qkv = F.linear(self._rms(x, ln1), w_qkv).view(rows, n, h_ + 2 * kv_, d)
            qk = self._rope(qkv[:, :, : h_ + kv_], start, end)
            buf[:, li, 0, :, start:end] = qk[:, :, h_:].transpose(1, 2)
            buf[:, li, 1, :, start:end] = qkv[:, :, h_ + kv_:].transpose(1, 2)
            k_all = buf[:, li, 0, :, :end]  # (rows, kv_heads, end, head_dim)
            v_all = buf[:, li, 1, :, :end]
            if n == 1:
                q = qk[:, 0, :h_].reshape(rows, kv_, group, d)
                att = torch.matmul(q, k_all.transpose(-1, -2)).mul_(self.scale).softmax(-1)
                out = torch.matmul(att, v_all).reshape(rows, 1, h_ * d)
            else:
                q = qk[:, :, :h_].transpose(1, 2)  # (rows, heads, n, head_dim)
                out = F.scaled_dot_product_attention(
                    q, k_all.repeat_interleave(group, dim=1), v_all.repeat_interleave(group, dim=1),
                    attn_mask=mask, scale=self.scale)
                out = out.transpose(1, 2).reshape(rows, n, h_ * d)
            x = x + F.linear(out, w_o)
            gate, up = F.linear(self._rms(x, ln2), w_gu).split(self.inner_size, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w_down)
        cache.length = end
        return F.linear(self._rms(x[:, -1], self.norm), self.head)
