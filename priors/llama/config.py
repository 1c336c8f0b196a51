"""Which Llama configurations the fast path supports, and the parts of a configuration it
reads (:class:`LlamaSpec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class UnsupportedConfigError(ValueError):
    """A ``config.json`` that :class:`TorchLlama` does not compute (see
    :func:`config_supported`)."""


def _field(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` of a ``config.json`` dict or ``cfg.key`` of a config object."""
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def _rope_settings(cfg: Any) -> dict[str, Any]:
    """The rotary settings of a Llama config (object or dict; ``transformers`` 4 and 5)."""
    rope = dict(_field(cfg, "rope_parameters") or _field(cfg, "rope_scaling") or {})
    rope.setdefault("rope_theta", _field(cfg, "rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def config_supported(cfg: Any) -> bool:
    """Whether a Llama config (``config.json`` as a dict, or a config object) describes a
    network that :class:`LlamaStepper` and :class:`TorchLlama` compute exactly."""
    def get(key: str, default: Any) -> Any:
        return _field(cfg, key, default)

    return (get("model_type", "llama") == "llama" and not get("attention_bias", False)
            and not get("mlp_bias", False) and get("hidden_act", "silu") == "silu"
            and _rope_settings(cfg)["rope_type"] == "default"
            and get("pretraining_tp", 1) == 1)


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is a Llama network :class:`LlamaStepper` computes exactly (checked
    without importing ``transformers``)."""
    from priors.llama.model import TorchLlama

    if isinstance(model, TorchLlama):
        return True
    return type(model).__name__ == "LlamaForCausalLM" and config_supported(model.config)


@dataclass(frozen=True)
class LlamaSpec:
    """The sizes of a Llama network, read from its ``config.json``.

    Attributes:
        raw: the whole ``config.json`` (:meth:`TorchLlama.save_pretrained` writes it back).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> LlamaSpec:
        """From a ``config.json`` dict (``KeyError``/``TypeError``/``ValueError`` if bad)."""
        heads = int(cfg["num_attention_heads"])
        width = int(cfg["hidden_size"])
        return cls(vocab_size=int(cfg["vocab_size"]), hidden_size=width,
                   intermediate_size=int(cfg["intermediate_size"]),
                   num_hidden_layers=int(cfg["num_hidden_layers"]),
                   num_attention_heads=heads,
                   num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or width // heads),
                   rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                   rope_theta=float(_rope_settings(cfg)["rope_theta"]),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), raw=cfg)
