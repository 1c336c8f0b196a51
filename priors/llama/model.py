"""The readable reference network: :class:`TorchLlama`, the same Llama as ``transformers``'
``LlamaForCausalLM`` in plain ``torch`` modules, reading and writing its files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from priors.llama.config import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LlamaSpec,
    UnsupportedConfigError,
    config_supported,
)


class _Norm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()  # as transformers: normalise in float32, scale in the input's dtype
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False)


class _Attention(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        w, d = spec.hidden_size, spec.head_dim
        self.q_proj = _linear(w, spec.num_attention_heads * d)
        self.k_proj = _linear(w, spec.num_key_value_heads * d)
        self.v_proj = _linear(w, spec.num_key_value_heads * d)
        self.o_proj = _linear(spec.num_attention_heads * d, w)


class _MLP(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.gate_proj = _linear(spec.hidden_size, spec.intermediate_size)
        self.up_proj = _linear(spec.hidden_size, spec.intermediate_size)
        self.down_proj = _linear(spec.intermediate_size, spec.hidden_size)


class _Layer(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.input_layernorm = _Norm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = _Attention(spec)
        self.post_attention_layernorm = _Norm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = _MLP(spec)


class _Rotary(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        d = spec.head_dim
        exponents = torch.arange(0, d, 2, dtype=torch.int64).float() / d
        self.register_buffer("inv_freq", 1.0 / (spec.rope_theta ** exponents), persistent=False)
        self.attention_scaling = 1.0


class _Inner(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(_Layer(spec) for _ in range(spec.num_hidden_layers))
        self.norm = _Norm(spec.hidden_size, spec.rms_norm_eps)
        self.rotary_emb = _Rotary(spec)


class TorchLlama(nn.Module):
    """``LlamaForCausalLM`` (SiLU, no biases, default rotary embedding) in plain ``torch``.

    Same parameter names, hence the same ``model.safetensors``; :meth:`forward` is the
    teacher-forced pass (causal attention over the whole sequence), incremental decoding is
    :class:`LlamaStepper`'s. No dropout: the network is for inference (training builds the
    ``transformers`` model).
    """

    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.config = SimpleNamespace(**{**spec.raw, **{
            k: getattr(spec, k) for k in spec.__dataclass_fields__ if k != "raw"}})
        self.spec = spec
        self.model = _Inner(spec)
        self.lm_head = _linear(spec.hidden_size, spec.vocab_size)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (as ``transformers`` models have it)."""
        return self.model.embed_tokens

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        """``input_ids: (batch, n)`` -> ``.logits (batch, n, vocab)``, each position seeing
        itself and the positions before it."""
        spec, inner = self.spec, self.model
        layers: list[Any] = list(inner.layers)
        b, n = input_ids.shape
        h_, kv_, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
        x = inner.embed_tokens(input_ids)
        pos = torch.arange(n, device=input_ids.device, dtype=torch.float32)
        inv_freq: torch.Tensor = inner.rotary_emb.inv_freq  # type: ignore[assignment]
        freqs = pos[:, None] * inv_freq[None].float()
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)  # (n, head_dim)

        def rope(t: torch.Tensor) -> torch.Tensor:  # (b, heads, n, head_dim)
            t1, t2 = t.chunk(2, dim=-1)
            return t * cos + torch.cat([-t2, t1], dim=-1) * sin

        for layer in layers:
            att, mlp = layer.self_attn, layer.mlp
            h = layer.input_layernorm(x)
            q = rope(att.q_proj(h).view(b, n, h_, d).transpose(1, 2))
            k = rope(att.k_proj(h).view(b, n, kv_, d).transpose(1, 2))
            v = att.v_proj(h).view(b, n, kv_, d).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k.repeat_interleave(h_ // kv_, dim=1),
                                                 v.repeat_interleave(h_ // kv_, dim=1),
                                                 is_causal=True)
            x = x + att.o_proj(out.transpose(1, 2).reshape(b, n, h_ * d))
            h = layer.post_attention_layernorm(x)
            x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        return SimpleNamespace(logits=self.lm_head(inner.norm(x)))

    def save_pretrained(self, path: str | os.PathLike[str], safe_serialization: bool = True
                        ) -> None:
        """Write ``config.json`` and ``model.safetensors`` (what ``transformers`` reads)."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("TorchLlama writes safetensors only")
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / CONFIG_FILE).write_text(json.dumps(self.spec.raw, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.spec.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(root / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str],
                        device: str | torch.device = "cpu") -> TorchLlama:
        """Read a folder ``save_pretrained`` wrote. Raises :class:`UnsupportedConfigError` (a
        network this class does not compute), ``ValueError`` (bad config, missing or
        unexpected weights), ``OSError`` or ``SafetensorError``."""
        from safetensors.torch import load_file

        root = Path(path)
        cfg = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError(f"{root / CONFIG_FILE}: not a config")
        if not config_supported(cfg):
            raise UnsupportedConfigError(f"{root / CONFIG_FILE}: not a Llama network TorchLlama "
                                    "computes")
        try:
            spec = LlamaSpec.from_dict(cfg)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{root / CONFIG_FILE}: bad config ({err})") from None
        state = load_file(str(root / WEIGHTS_FILE), device=str(device))
        if spec.tie_word_embeddings and "lm_head.weight" not in state:
            state["lm_head.weight"] = state.get("model.embed_tokens.weight", torch.empty(0))
        net = cls(spec)  # (not on the meta device: its initialisers import torch._dynamo)
        expected = set(net.state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(f"{root / WEIGHTS_FILE}: weights do not match the config (missing "
                             f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        net.load_state_dict(state, strict=True, assign=True)
        return net.to(device).eval()  # the weights are there already; the rotary buffer too
