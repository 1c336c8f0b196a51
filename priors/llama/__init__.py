"""The Llama prior's network and its lean incremental decoding: the same network, fewer and
larger operations.

Modules: :mod:`~priors.llama.model` (the readable reference network, :class:`TorchLlama`),
:mod:`~priors.llama.config` (what is supported), :mod:`~priors.llama.cache` (the key/value
buffer), :mod:`~priors.llama.stepper` (the incremental forward and its options) and
:mod:`~priors.llama.kernels` (the per-token step).

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

from priors.llama.cache import KVBuffer, host_index
from priors.llama.config import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LlamaSpec,
    UnsupportedConfigError,
    config_supported,
    supports,
)
from priors.llama.kernels import packed_products_work, scripted_step, token_step
from priors.llama.model import TorchLlama
from priors.llama.stepper import LlamaStepper, StepOptions

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "KVBuffer", "LlamaSpec", "LlamaStepper",
           "StepOptions", "TorchLlama", "UnsupportedConfigError", "config_supported",
           "host_index", "packed_products_work", "scripted_step", "supports", "token_step"]
