"""The one mixing rule of the toolkit: every mixture is made here.

LASS and the thesis mix by the *mean* of the sources; ``sum`` is available for data
whose stems already sum to the published mixture (e.g. MUSDB18).
"""

from __future__ import annotations

from typing import Literal, TypeVar, get_args

import numpy as np
import torch

from lass.errors import DataError

MixRule = Literal["mean", "sum"]
MIX_RULES: tuple[str, ...] = get_args(MixRule)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def check_mix_rule(rule: str) -> MixRule:
    """Return ``rule`` if it names a mixing rule, else raise :class:`DataError`."""
    if rule not in MIX_RULES:
        raise DataError(f"unknown mixing rule {rule!r}; expected one of {', '.join(MIX_RULES)}")
    return rule  # type: ignore[return-value]


def mix(stems: ArrayT, rule: str = "mean", dim: int = -2) -> ArrayT:
    """Mix aligned sources into a mixture.

    Args:
        stems: ``(..., sources, time)`` array or tensor (the sources axis is ``dim``).
        rule: ``"mean"`` (default, as LASS and the thesis) or ``"sum"``.
        dim: the axis that holds the sources.

    Returns:
        ``(..., time)``: the mixture, same type and dtype as ``stems``.
    """
    rule = check_mix_rule(rule)
    if isinstance(stems, torch.Tensor):
        return stems.mean(dim=dim) if rule == "mean" else stems.sum(dim=dim)
    out = stems.mean(axis=dim) if rule == "mean" else stems.sum(axis=dim)
    return np.asarray(out, dtype=stems.dtype)


def mix_gain(num_sources: int, rule: str = "mean") -> float:
    """The factor each source is multiplied by in the mixture: ``1/num_sources`` or ``1``."""
    rule = check_mix_rule(rule)
    if num_sources < 1:
        raise DataError("a mixture needs at least one source")
    return 1.0 / num_sources if rule == "mean" else 1.0


def sum_to_input(stems: np.ndarray, total: np.ndarray) -> np.ndarray:
    """The contributions nearest to ``stems: (N, time)`` (least squares) that add up to
    ``total: (time,)``: each stem gets an equal share of what they miss. Separators whose
    estimates do not add up exactly (Langevin chains, posterior means) return these."""
    stems = np.asarray(stems, dtype=np.float32)
    missing = np.asarray(total, dtype=np.float32) - stems.sum(axis=0)
    return stems + missing[None] / stems.shape[0]
