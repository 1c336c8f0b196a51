"""A tiny debug bundle (untrained codec and priors, a likelihood counted on tones) for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lass.bundle import write_bundle
from lass.data import mix
from likelihood import Counts, TripleCounter, save_counts
from priors import TransformerPrior, TransformerPriorConfig
from vqvae import ConvVQVAE, ConvVQVAEConfig

SR = 8000
K = 32


def sources(n: int, length: int, seed: int = 0) -> torch.Tensor:
    """``(n, 2, length)``: a low tone (bass) and noisy bursts (drums)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / SR
    out = np.zeros((n, 2, length), dtype=np.float32)
    for k in range(n):
        env = (np.sin(2 * np.pi * rng.uniform(1, 4) * t) > 0.3).astype(np.float32)
        out[k, 0] = 0.3 * env * rng.standard_normal(length)
        out[k, 1] = 0.4 * np.sin(2 * np.pi * rng.uniform(50, 120) * t + rng.uniform(0, 6))
    return torch.from_numpy(out)


def make_debug_bundle(root: Path, context: int = 64) -> Path:
    torch.manual_seed(0)
    codec = ConvVQVAE(ConvVQVAEConfig(sample_rate=SR, hop_length=16, codebook_size=K, dim=8,
                                      channels=4)).eval()
    codec.save(root / "codec")
    for i, stem in enumerate(("drums", "bass")):
        torch.manual_seed(10 + i)
        TransformerPrior(TransformerPriorConfig(vocab_size=K, context_length=context, width=32,
                                                layers=1, heads=2,
                                                codec_identity=codec.identity())
                         ).save(root / f"prior-{stem}")
    counter = TripleCounter(K)
    src = sources(24, 4000)
    with torch.no_grad():
        codes = codec.encode(torch.cat([mix(src, "mean", dim=1), src[:, 0], src[:, 1]])).numpy()
    counter.add(codes[:24], codes[24:48], codes[48:])
    save_counts(root / "likelihood.npz", Counts(counter.matrix(), {
        "codec_identity": codec.identity(), "mix": "mean", "symmetric": False,
        "sources": ["drums", "bass"], "triples": counter.triples}))
    write_bundle(root, name="debug", sample_rate=SR, stems=("drums", "bass"), mix="mean",
                 codec="codec", priors={"drums": "prior-drums", "bass": "prior-bass"},
                 likelihood="likelihood.npz",
                 sampler={"kind": "beam", "num_beams": 3, "lam": 3.0, "output": "mask"})
    return root
