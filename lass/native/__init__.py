"""The search's beam choice in C++ (``beam_select.cpp``), built on first use.

:func:`beam_select` compiles ``beam_select.cpp`` once per machine, as :mod:`priors.native`
compiles the prior step (the same build folder root, ``LASS_NATIVE_DIR``, keyed by the
source, torch, the CPU and Python), and gives ``torch.ops.lass_search.beam_select``: one
step of beam search over candidates that every beam of a mixture shares, for two sources on
a CPU in float32 (:class:`lass.sampling.BeamSearch` uses it where it applies; elsewhere, or
where it does not build, the tensor code runs: :func:`native_error` says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from priors.native import NativeLibrary

SEARCH = NativeLibrary("lass_native_search", Path(__file__).with_name("beam_select.cpp"),
                       "lass_search", "the native beam choice")


def beam_select() -> Any:
    """``torch.ops.lass_search.beam_select``, built if need be, or None where it cannot be
    built or loaded: then :func:`native_error` gives the reason."""
    ops = SEARCH.ops()
    return None if ops is None else ops.beam_select


def native_error() -> str | None:
    """Why :func:`beam_select` gave None (None if it built or was not tried)."""
    return SEARCH.error()
