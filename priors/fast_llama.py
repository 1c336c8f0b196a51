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
- the output layer restricted to the K codec tokens,
- for beam search, each mixture's beams (a family, ``share`` rows) keep the past they have in
  common once (:class:`KVBuffer`): the attention reads it with one product for the whole
  family and reordering copies only the positions after it,
- rows whose pasts are equal (beams that differ only in the other source's tokens, tracked
  through reorders and new tokens as :attr:`KVBuffer.twin`) go through the projections and
  the MLP once, when that saves at least a fifth of the rows,
- the attention scale folded into the query rows, and each RMS norm's weight (with
  ``sqrt(width)``) into the product after it, so that a norm is one vector norm and one
  ``hypot`` per row, divided out of the product's rows (the library's norm is seven
  operations),
- for one new token per row (the search's step) the whole layer in 2-D tensors with the
  residual sums inside the products (oneDNN's fused add),
- the beams' bookkeeping (families, marks, rows with equal pasts) in NumPy on the host: a
  few integers per row, where tensor operations would cost several microseconds each,
- a multi-token feed into an empty buffer (the first feed of each context window of a search),
  whose rows begin with the same tokens within every family, runs that common start once per
  family, straight into the shared past, and then only each row's own positions (the last
  always among them); the last layer's attention output and MLP run for the last position
  only (nothing reads the others),
- the per-token step's layers (:func:`token_step`) compiled by TorchScript
  (:func:`scripted_step`): the same operations and results, bit for bit, without Python's
  cost per operation; where it does not compile, the function runs in Python.
- for float32 on a CPU with one key/value head, that step as one C++ operator
  (:mod:`priors.native`, ``StepOptions.native_step``): the products on oneDNN's batch-reduce
  GEMM kernel where it runs (``StepOptions.brgemm_products``), the attention and everything else in
  loops, each family's longer shared past (:attr:`KVBuffer.family_shared`) read from its
  prefix; equal to :func:`token_step` up to float rounding. The same library copies the
  rows a reorder moves (``copy_rows``).

The weights are read from the model when a stepper is made; :class:`priors.TransformerPrior`
keeps its last stepper until a weight changes, so a stepper always matches the model it
came from. Supported: ``LlamaForCausalLM`` with SiLU, no biases and the default rotary
embedding (what :class:`priors.TransformerPrior` builds); anything else uses the
``transformers`` path (:func:`supports`).

:class:`TorchLlama` is the same network in plain ``torch`` modules, with the parameter names
of ``transformers``' ``LlamaForCausalLM`` so that it reads and writes the same
``config.json`` + ``model.safetensors``. Loading a prior for separation with it skips
``import transformers`` (about 4.5 s of every command's start on a 2-core CPU).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


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


def _first_equal(same: np.ndarray) -> np.ndarray:
    """``same: (rows, rows)`` an equivalence of rows -> ``(rows,)`` the first row equal to
    each."""
    return same.argmax(axis=1)


@functools.cache
def _brgemm_works() -> bool:
    """Whether the C++ library's batch-reduce GEMM products run here (and give torch.mm's)."""
    ops = _native_ops()
    return ops is not None and bool(ops.brgemm_works())


def _native_ops() -> Any:
    """``torch.ops.lass_native`` where :mod:`priors.native` has loaded it, else None."""
    from priors import native

    return native.loaded()


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
        ops = _native_ops() if in_place and self.data.device.type == "cpu" else None
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
                [t for kv in views for t in kv], [t for kv in prefix for t in kv],
                self.rotation[pos], pos, lo, cache.share, self.heads, self.kv_heads,
                self.inner_size, self._eps_root, self._products, keep, spread,
                torch.from_numpy(fams) if longer else None)
            cache.length = pos + 1
            return logits
        packed = self.packed is not None
        step = scripted_step() if self.options.scripted_step else None
        logits = (step or token_step)(
            F.embedding(ids, self.embed), self.packed if packed else self.layers,  # type: ignore[arg-type]
            self._head(), views, prefix, self.rotation[pos], pos, lo, cache.share, self.heads,
            self.kv_heads, self.inner_size, self._eps_root, packed, keep, spread)
        cache.length = pos + 1
        return logits


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
               head: torch.Tensor, views: list[tuple[torch.Tensor, torch.Tensor]],
               prefix: list[tuple[torch.Tensor, torch.Tensor]], rot: torch.Tensor, pos: int,
               lo: int, fam: int, heads: int, kv_heads: int, inner: int,
               eps_root: torch.Tensor, packed: bool, keep: torch.Tensor | None,
               spread: torch.Tensor | None) -> torch.Tensor:
    """The layers and output of :meth:`LlamaStepper._step`: one new token per row.

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
        rot: ``(head_dim, head_dim)`` the rotary embedding of position ``pos``.
        fam: rows per family; heads, kv_heads: the query and key/value heads; inner: the
            MLP's width; eps_root: ``sqrt(width eps)`` (:func:`_rms_divisor`).
        keep: ``(unique,)`` the computed rows; spread: ``(rows,)`` the computed row of each
            row.

    Returns:
        ``(rows, K)`` the next token's logits.
    """
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
