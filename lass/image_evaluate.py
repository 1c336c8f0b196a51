"""PSNR tables of image separation methods on MNIST mixtures (``lass-evaluate`` with an image
bundle).

Mixtures: the digits of a split (:mod:`lass.data.mnist`; ``test`` is the reserved one) in a
seeded random order, paired off (each digit in one mixture), mixture = mean of the two.
Each method's two images are scored by PSNR (peak 1) against the two sources with the
better of the two assignments per mixture, averaged over the sources. Methods:

* ``average``: the mixture as each source; ``nmf``: rank-2 NMF of the mixture image;
* ``oracle``: the codec's decoding of each source's own codes; ``oracle-refine``: those
  codes refined against the mixture (what refinement can reach from the true tokens);
* ``lass-<sampler>[-rerank][-refine]`` with sampler ``greedy``, ``beam``, ``ancestral``,
  ``topk`` or ``topp``: the search's best-scored candidate, or with ``-rerank`` the
  candidate that mixes back best, then with ``-refine`` the refinement; the other
  settings (candidates, lambda, output) are the bundle's;
* ``lass``: the bundle's own settings.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from lass.data.mnist import load_mnist
from lass.errors import DataError
from lass.images import (
    SAMPLERS,
    ImageSeparator,
    ImageSettings,
    best_assignment_psnr,
    nmf_separate,
    project_to_mixture,
    refine,
)

METHOD = re.compile(r"lass-(" + "|".join(SAMPLERS) + r")((?:-rerank)?)((?:-refine)?)")
DEFAULT_IMAGE_METHODS = ["average", "nmf", "oracle", "oracle-refine", "lass"]


def disjoint_pairs(items: int, seed: int) -> np.ndarray:
    """``(items // 2, 2)``: a seeded permutation of ``range(items)`` paired off."""
    perm = np.random.default_rng(seed).permutation(items)
    return perm[: items - items % 2].reshape(-1, 2)


def method_settings(method: str, base: ImageSettings) -> ImageSettings:
    """The settings of a ``lass...`` method name (see the module docstring)."""
    if method == "lass":
        return base
    match = METHOD.fullmatch(method)
    if match is None:
        raise DataError(f"unknown image method {method!r}; expected average, nmf, oracle, "
                        "oracle-refine, lass, or lass-<sampler>[-rerank][-refine] with sampler "
                        f"{', '.join(SAMPLERS)}")
    sampler, rerank, refine_flag = match.groups()
    return dataclasses.replace(base, sampler=sampler, rerank=bool(rerank),
                               refine_steps=base.refine_steps if refine_flag else 0)


def image_methods(separator: ImageSeparator, names: Sequence[str], batch: int = 256
                  ) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Each method as ``(mixtures (B, H, W), sources (B, 2, H, W)) -> (B, 2, H, W)`` (only
    the oracles look at the sources)."""
    codec, s = separator.codec, separator.settings

    def average(m: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return torch.stack([m, m], dim=1)

    def nmf(m: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return nmf_separate(m)

    def oracle(m: torch.Tensor, src: torch.Tensor, steps: int = 0) -> torch.Tensor:
        codes = codec.encode(src.flatten(0, 1)).view(src.shape[0], 2, *codec.grid)
        pair = refine(codec, codes, m, steps, s.refine_lr, s.refine_penalty).cpu()
        return project_to_mixture(pair, m) if steps and s.output == "project" else pair

    def lass(settings: ImageSettings) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def run(m: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return torch.cat([separator.separate_batch(m[i: i + batch], settings).sources
                              for i in range(0, m.shape[0], batch)])
        return run

    out: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
    for name in names:
        if name == "average":
            out[name] = average
        elif name == "nmf":
            out[name] = nmf
        elif name == "oracle":
            out[name] = oracle
        elif name == "oracle-refine":
            out[name] = lambda m, src: oracle(m, src, s.refine_steps)
        else:
            out[name] = lass(method_settings(name, s))
    return out


def evaluate_images(separator: ImageSeparator, *, split: str = "test", mixtures: int = 500,
                    methods: Sequence[str] = DEFAULT_IMAGE_METHODS, seed: int = 0,
                    batch: int = 256, log: Callable[[str], None] | None = None
                    ) -> dict[str, Any]:
    """Score ``methods`` on ``mixtures`` mixtures of ``split``; returns ``{"config": ...,
    "table": {method: {psnr_mean, psnr_median, psnr_std, seconds_per_mixture}},
    "per_mixture": {method: [psnr, ...]}}``."""
    images, _ = load_mnist(split)
    pairs = disjoint_pairs(images.shape[0], seed)
    if mixtures > pairs.shape[0]:
        raise DataError(f"the {split} split makes {pairs.shape[0]} mixtures, not {mixtures}")
    pairs = pairs[:mixtures]
    src = torch.from_numpy(images[pairs])  # (M, 2, H, W)
    mix = src.mean(1)
    runs = image_methods(separator, methods, batch)
    table: dict[str, dict[str, float]] = {}
    per: dict[str, list[float]] = {}
    for name, run in runs.items():
        t0 = time.perf_counter()
        with torch.no_grad():  # (refinement turns gradients on for itself)
            est = run(mix, src).float()
        seconds = time.perf_counter() - t0
        value, _ = best_assignment_psnr(est.clamp(0, 1), src)
        per[name] = [round(float(v), 3) for v in value]
        table[name] = {"psnr_mean": float(value.mean()), "psnr_median": float(value.median()),
                       "psnr_std": float(value.std()),
                       "seconds_per_mixture": seconds / mixtures}
        if log is not None:
            log(f"{name}: PSNR {table[name]['psnr_mean']:.2f} dB (median "
                f"{table[name]['psnr_median']:.2f}), {table[name]['seconds_per_mixture']:.4f} "
                "s per mixture")
    config = {"split": split, "mixtures": mixtures, "seed": seed, "batch": batch,
              "settings": separator.settings.to_json(),
              "bundle": separator.bundle.sha256 if separator.bundle is not None else None}
    return {"config": config, "table": table, "per_mixture": per}


def format_image_table(table: dict[str, dict[str, float]]) -> str:
    """A Markdown table: method, PSNR mean (median), std, seconds per mixture."""
    lines = ["| method | PSNR, dB mean (median) | std | s/mixture |", "|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['psnr_mean']:.2f} ({row['psnr_median']:.2f}) | "
                     f"{row['psnr_std']:.2f} | {row['seconds_per_mixture']:.4f} |")
    return "\n".join(lines)
