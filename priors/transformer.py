"""A Transformer prior over codec tokens, built on Hugging Face ``transformers``.

The network is a stock causal LM (Llama-style by default: RoPE, RMSNorm, SwiGLU; GPT-2
available) whose vocabulary is the K codec tokens, one unconditional start token (id K) and
one start token per class (ids K+1 ...). Incremental decoding uses the library's
``DynamicCache`` and its ``reorder_cache`` for beams; attention is the library's. A Llama
network in eval mode decodes instead with :class:`priors.llama.LlamaStepper` (the same
computation from the same weights with a preallocated key/value buffer and fused
projections; ``fast_decoding = False`` restores the library path). Saved with
``save_pretrained`` (safetensors) plus ``prior.json``; loaded offline. :func:`load_prior`
builds a saved Llama as :class:`priors.llama.TorchLlama` by default, without importing
``transformers`` at all; training loads the library's model (``backend="transformers"``),
and :meth:`TransformerPrior.with_transformers` converts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors import SafetensorError
from torch import nn

from priors import llama
from priors.errors import PriorError
from priors.prior import Prior, PriorState
from vqvae.files import write_dir_atomically

if TYPE_CHECKING:
    from transformers import GPT2Config, LlamaConfig

FORMAT_VERSION = 1
META_FILE = "prior.json"
ARCHS = ("llama", "gpt2")
BACKENDS = ("auto", "torch", "transformers")


@dataclass(frozen=True)
class TransformerPriorConfig:
    """Size and vocabulary of a :class:`TransformerPrior`.

    Attributes:
        vocab_size: codec tokens K.
        context_length: codec tokens per sequence (after the start token).
        class_names: names of the classes with their own start token (empty: unconditional;
            one name: a prior per source; several: one shared, class-conditioned prior).
        arch: ``llama`` or ``gpt2``.
        width, layers, heads: Transformer size.
        kv_heads: key/value heads of the Llama attention (grouped-query attention; 1 is
            multi-query). Fewer heads shrink the KV cache that beam search reorders every
            step. 0 means ``heads``. GPT-2 always uses ``heads``.
        dropout: dropout while training (GPT-2: residual, attention, embeddings; Llama:
            attention).
        codec_identity: identity (sha256) of the codec whose tokens the prior models.
    """

    vocab_size: int = 1024
    context_length: int = 512
    class_names: tuple[str, ...] = ()
    arch: str = "llama"
    width: int = 256
    layers: int = 3
    heads: int = 4
    kv_heads: int = 1
    dropout: float = 0.0
    codec_identity: str = ""

    @property
    def total_vocab(self) -> int:
        """Embedding rows: codec tokens, the start token and one start token per class."""
        return self.vocab_size + 1 + len(self.class_names)

    def hf_config(self) -> GPT2Config | LlamaConfig:
        """The ``transformers`` config of the network."""
        from transformers import GPT2Config, LlamaConfig

        common: dict[str, Any] = {"vocab_size": self.total_vocab, "bos_token_id": self.vocab_size,
                                  "eos_token_id": None, "pad_token_id": None}
        if self.arch == "gpt2":
            return GPT2Config(n_positions=self.context_length + 1, n_embd=self.width,
                              n_layer=self.layers, n_head=self.heads, resid_pdrop=self.dropout,
                              attn_pdrop=self.dropout, embd_pdrop=self.dropout, **common)
        if self.arch == "llama":
            return LlamaConfig(max_position_embeddings=self.context_length + 1,
                               hidden_size=self.width, intermediate_size=self.width * 8 // 3,
                               num_hidden_layers=self.layers, num_attention_heads=self.heads,
                               num_key_value_heads=self.kv_heads or self.heads,
                               attention_dropout=self.dropout,
                               tie_word_embeddings=False, **common)
        raise PriorError(f"unknown architecture {self.arch!r}; expected one of {', '.join(ARCHS)}")


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32 for the softmax; float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


@dataclass
class _FastCache:
    """The state of :class:`priors.llama.LlamaStepper` decoding."""

    stepper: llama.LlamaStepper
    buffer: llama.KVBuffer


class TransformerPrior(Prior):
    """A causal Transformer over codec tokens (see the module docstring)."""

    def __init__(self, config: TransformerPriorConfig, model: nn.Module | None = None
                 ) -> None:
        super().__init__()
        if config.vocab_size < 2 or config.context_length < 1:
            raise PriorError("vocab_size must be >= 2 and context_length >= 1")
        if config.width % config.heads:
            raise PriorError(f"width {config.width} is not a multiple of heads {config.heads}")
        if config.kv_heads < 0 or (config.kv_heads and config.heads % config.kv_heads):
            raise PriorError(f"heads {config.heads} is not a multiple of kv_heads "
                             f"{config.kv_heads}")
        self.config = config
        self.model: Any
        if model is None:
            from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

            hf = config.hf_config()
            model = (GPT2LMHeadModel(hf) if isinstance(hf, GPT2Config)
                     else LlamaForCausalLM(hf))
        self.model = model
        self.fast_decoding = True
        # The last stepper made and what it was made from (see :meth:`_stepper`).
        self._stepper_of: tuple[tuple[Any, ...], llama.LlamaStepper] | None = None
        #: The fast paths of the incremental stepper (:class:`priors.llama.StepOptions`);
        #: assign another to switch one off (the stepper is made again).
        self.step_options = llama.StepOptions()

    # -- sizes ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.model.get_input_embeddings().weight.device

    def check_codebook(self, codebook_size: int, codec_identity: str | None = None) -> None:
        """Raise :class:`PriorError` unless the prior models this codec's tokens."""
        if codebook_size != self.vocab_size:
            raise PriorError(f"the prior models {self.vocab_size} tokens but the codec has "
                             f"{codebook_size} codes")
        if codec_identity and self.config.codec_identity and \
                codec_identity != self.config.codec_identity:
            raise PriorError("the prior was trained on another codec's tokens (codec identity "
                             f"{self.config.codec_identity[:12]}, given {codec_identity[:12]})")

    def start_tokens(self, batch: int, classes: torch.Tensor | None) -> torch.Tensor:
        """``(batch,)`` start-token ids: the unconditional one, or one per class index."""
        if classes is None:
            return torch.full((batch,), self.vocab_size, dtype=torch.long, device=self.device)
        n = len(self.config.class_names)
        classes = torch.as_tensor(classes, device=self.device).long().reshape(-1)
        if classes.shape[0] != batch:
            raise PriorError(f"{classes.shape[0]} class labels for a batch of {batch}")
        if n == 0 or int(classes.min()) < 0 or int(classes.max()) >= n:
            raise PriorError(f"class labels must lie in [0, {n}) for this prior")
        return self.vocab_size + 1 + classes

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 2:
            raise PriorError(f"codes must be (batch, tokens), got {tuple(codes.shape)}")
        if codes.numel():
            lo, hi = (int(v) for v in torch.aminmax(codes))
            if lo < 0 or hi >= self.vocab_size:
                raise PriorError(f"codes must lie in [0, {self.vocab_size}), got [{lo}, {hi}]")
        return codes.to(self.device).long()

    # -- incremental decoding -------------------------------------------------------------

    def start(self, batch: int, classes: torch.Tensor | None = None, share: int = 0
              ) -> PriorState:
        if batch < 1:
            raise PriorError("batch must be >= 1")
        cache: Any
        torch_only = isinstance(self.model, llama.TorchLlama)
        if torch_only and not self.fast_decoding:
            raise PriorError("this prior was loaded without transformers; its library path "
                             "needs with_transformers()")
        if self._uses_stepper():
            stepper = self._stepper()
            cache = _FastCache(stepper, stepper.new_buffer(batch, share))
        else:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
        return PriorState(cache=cache, length=0,
                          pending=self.start_tokens(batch, classes)[:, None], batch=batch)

    def __getstate__(self) -> dict[str, Any]:
        """The module's state without the stepper (its packed weights neither copy nor
        pickle; a copy makes its own)."""
        state = dict(super().__getstate__())
        state["_stepper_of"] = None
        return state

    def _stepper(self) -> llama.LlamaStepper:
        """The stepper of the model's weights as they are now: made again only when a weight
        changed (another tensor, or one written in place) or
        :attr:`step_options` did, not at every
        :meth:`start` (each context window of a search starts one; making it folds and packs
        the weights)."""
        made_of = (self.step_options, self.vocab_size,
                   self.context_length,
                   *((p.data_ptr(), p._version, p.dtype, p.device)
                     for p in self.model.parameters()))
        if self._stepper_of is None or self._stepper_of[0] != made_of:
            stepper = llama.LlamaStepper(self.model, self.vocab_size,
                                              self.context_length + 1, self.step_options)
            self._stepper_of = (made_of, stepper)
        return self._stepper_of[1]

    def _uses_stepper(self) -> bool:
        """Whether :meth:`start` decodes with the lean stepper (else the library's cache)."""
        return isinstance(self.model, llama.TorchLlama) or (
            self.fast_decoding and not self.training and llama.supports(self.model))

    def prepare(self) -> None:
        """Make the incremental stepper now, if the searches will use one (folding and
        packing the weights, loading the C++ step): loading a model for inference calls this,
        so the first search does not pay for it (about 40 ms here)."""
        if self._uses_stepper():
            self._stepper()

    @torch.no_grad()
    def _advance(self, ids: torch.Tensor, state: PriorState) -> tuple[torch.Tensor, PriorState]:
        """Feed ``ids: (batch, n)``; return next-token log-probs ``(batch, K)``."""
        b, n = ids.shape
        if b != state.batch:
            raise PriorError(f"{b} tokens for a state of batch {state.batch}")
        if state.length + n > self.context_length + 1:
            raise PriorError(f"context full: {state.length + n - 1} tokens exceed the prior's "
                             f"context of {self.context_length}")
        if isinstance(state.cache, _FastCache):
            logits = _at_least_float32(state.cache.stepper.forward(ids, state.cache.buffer))
            return F.log_softmax(logits, dim=-1), PriorState(
                cache=state.cache, length=state.length + n, pending=None, batch=b)
        positions = torch.arange(state.length, state.length + n, device=self.device)
        out = self.model(input_ids=ids, past_key_values=state.cache, use_cache=True,
                         position_ids=positions.unsqueeze(0).expand(b, n), logits_to_keep=1)
        logits = _at_least_float32(out.logits[:, -1, : self.vocab_size])
        new = PriorState(cache=out.past_key_values, length=state.length + n, pending=None,
                         batch=b)
        return F.log_softmax(logits, dim=-1), new

    def step(self, tokens: torch.Tensor | None, state: PriorState
             ) -> tuple[torch.Tensor, PriorState]:
        parts = [] if state.pending is None else [state.pending]
        if tokens is not None:
            parts.append(self._check_codes(tokens.reshape(-1, 1)))
        if not parts:
            raise PriorError("step(None) is only allowed right after start()")
        return self._advance(torch.cat(parts, dim=1), state)

    def prime(self, codes: torch.Tensor, state: PriorState) -> tuple[torch.Tensor, PriorState]:
        codes = self._check_codes(codes)
        parts = ([] if state.pending is None else [state.pending]) + [codes]
        return self._advance(torch.cat(parts, dim=1), state)

    def reorder(self, state: PriorState, index: torch.Tensor) -> PriorState:
        index = torch.as_tensor(index, device=self.device).long().reshape(-1)
        host = llama.host_index(index)  # one small copy; the checks and bookkeeping
        lo, hi = (int(host.min()), int(host.max())) if host.size else (0, 0)
        if lo < 0 or hi >= state.batch:
            raise PriorError(f"reorder index out of range for a batch of {state.batch}")
        pending = None if state.pending is None else state.pending.index_select(0, index)
        if isinstance(state.cache, _FastCache):
            state.cache.buffer.reorder(index, host)
        elif state.length:
            state.cache.reorder_cache(index)
        return PriorState(cache=state.cache, length=state.length, pending=pending,
                          batch=int(index.numel()))

    # -- teacher forcing ------------------------------------------------------------------

    def logits(self, codes: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, tokens, K)`` next-token logits for ``codes: (batch, tokens)`` (training)."""
        codes = self._check_codes(codes)
        b, n = codes.shape
        if n > self.context_length:
            raise PriorError(f"{n} tokens exceed the prior's context of {self.context_length}")
        ids = torch.cat([self.start_tokens(b, classes)[:, None], codes[:, :-1]], dim=1)
        return self.model(input_ids=ids, use_cache=False).logits[..., : self.vocab_size]

    def forward(self, codes: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`logits` (so that a training wrapper such as DistributedDataParallel can
        call the prior)."""
        return self.logits(codes, classes)

    def token_log_probs(self, codes: torch.Tensor, classes: torch.Tensor | None = None
                        ) -> torch.Tensor:
        logp = F.log_softmax(_at_least_float32(self.logits(codes, classes)), dim=-1)
        return logp.gather(-1, self._check_codes(codes).unsqueeze(-1)).squeeze(-1)

    def with_transformers(self) -> TransformerPrior:
        """This prior on the ``transformers`` network (the same weights, on the same device),
        e.g. to train it or to run the library's decoding; itself if it is on it already."""
        if not isinstance(self.model, llama.TorchLlama):
            return self
        twin = TransformerPrior(self.config)
        twin.model.load_state_dict(self.model.state_dict(), strict=True)
        return twin.to(self.device).train(self.training)

    def with_classes(self, class_names: tuple[str, ...]) -> TransformerPrior:
        """This prior with more classes: ``class_names`` starts with its own classes, in
        order, and adds new ones (a new source for a shared prior to learn from these
        weights). The new classes' start tokens begin as the mean of the old classes' (or of
        the unconditional start token's, for an unconditional prior); the old classes keep
        their exact predictions. Runs on the ``transformers`` network, as training does."""
        old = self.config.class_names
        if tuple(class_names[: len(old)]) != old or len(class_names) <= len(old):
            raise PriorError(f"classes {list(class_names)} do not extend this prior's "
                             f"{list(old)} (its classes first, in order, then new ones)")
        if len(set(class_names)) != len(class_names):
            raise PriorError(f"class names must be distinct, got {list(class_names)}")
        base = self.with_transformers()
        config = replace(self.config, class_names=tuple(class_names))
        grown = TransformerPrior(config).to(self.device)
        state = base.model.state_dict()
        new_state = grown.model.state_dict()
        k = self.vocab_size
        for name, weight in state.items():
            target = new_state[name]
            if target.shape == weight.shape:
                target.copy_(weight)
                continue
            rows = weight.shape[0]  # an embedding or output matrix: copy, then fill new rows
            target[:rows].copy_(weight)
            source = weight[k + 1: rows] if old else weight[k: k + 1]
            target[rows:].copy_(source.mean(0, keepdim=True).expand(target.shape[0] - rows, -1))
        grown.model.load_state_dict(new_state, strict=True)
        return grown.train(self.training)

    # -- storage --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``save_pretrained`` files and ``prior.json`` into ``path`` atomically."""
        def fill(tmp: Path) -> None:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            meta = {"format_version": FORMAT_VERSION, "class": type(self).__name__,
                    **{k: list(v) if isinstance(v, tuple) else v
                       for k, v in asdict(self.config).items()}}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")

        return write_dir_atomically(path, fill)


def load_prior(path: str | os.PathLike[str], device: str | torch.device = "cpu",
               backend: str = "auto") -> TransformerPrior:
    """Load a prior saved with :meth:`TransformerPrior.save` (offline), in eval mode.

    ``backend``: ``torch`` builds a Llama network as :class:`priors.llama.TorchLlama`
    without importing ``transformers`` (separation needs nothing else); ``transformers``
    builds the library's model (training); ``auto`` takes ``torch`` where it computes the
    network (Llama, SiLU, no biases, default rotary embedding) and ``transformers``
    otherwise (GPT-2, or a Llama with another rotary embedding, activation or biases).
    """
    if backend not in BACKENDS:
        raise PriorError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    root = Path(path)
    if not root.is_dir():
        raise PriorError(f"prior directory not found: {root}")
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise PriorError(f"{root} is not a saved prior (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PriorError(f"cannot read {meta_path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise PriorError(f"{meta_path}: unsupported format (format_version "
                         f"{meta.get('format_version') if isinstance(meta, dict) else None!r})")
    if meta.get("class") != TransformerPrior.__name__:
        raise PriorError(f"{meta_path}: unknown prior class {meta.get('class')!r}")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in meta.items() if k not in ("format_version", "class")}
    try:
        config = TransformerPriorConfig(**fields)
    except TypeError as err:
        raise PriorError(f"{meta_path}: bad config ({err})") from None
    if "kv_heads" not in fields:  # saved before the field existed: all heads
        config = replace(config, kv_heads=config.heads)
    model: Any = None
    if config.arch == "llama" and backend != "transformers":
        try:
            model = llama.TorchLlama.from_pretrained(root, device)
        except llama.UnsupportedConfigError as err:
            if backend == "torch":
                raise _load_error(root, err) from None
        except _LOAD_ERRORS as err:
            raise _load_error(root, err) from None
    elif backend == "torch":
        raise PriorError(f"{root}: a {config.arch} prior needs the transformers backend")
    if model is None:  # GPT-2, a Llama the torch network does not compute, or asked for
        model = _load_transformers(root, config)
    if model.config.vocab_size != config.total_vocab:
        raise PriorError(f"{root}: network vocabulary {model.config.vocab_size} does not match "
                         f"{META_FILE} ({config.total_vocab})")
    return TransformerPrior(config, model).to(device).eval()


_LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError)


def _load_error(root: Path, err: Exception) -> PriorError:
    """One line for a network that cannot be loaded: the first line of the cause."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return PriorError(f"cannot load the network in {root}: {first}")


def _load_transformers(root: Path, config: TransformerPriorConfig) -> nn.Module:
    from transformers import GPT2LMHeadModel, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    cls = GPT2LMHeadModel if config.arch == "gpt2" else LlamaForCausalLM
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on a command's stderr
    try:
        return cls.from_pretrained(str(root), local_files_only=True)
    except _LOAD_ERRORS as err:
        raise _load_error(root, err) from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()
