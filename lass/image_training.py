"""Training of the MNIST models of image LASS: the image codec, the code-grid prior, and the
counted likelihood of mixture codes given source-code pairs.

Each function is one resumable stage writing into its own folder (the build script
``scripts/build_mnist_bundle.py`` and ``lass-train-vqvae --kind image`` call them). Only the
``train`` and ``valid`` splits of :mod:`lass.data.mnist` are read here: the ``test`` digits
are reserved for evaluation.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lass.data.mnist import augment, augmented_copies, load_mnist, mixture_pairs
from likelihood import Counts, save_counts
from likelihood.counting import TupleCounter
from likelihood.image_evidence import ImageEvidence
from priors import TransformerPrior, TransformerPriorConfig, load_prior
from priors.train import PriorTrainConfig, PriorTrainer, TokenWindows
from vqvae.files import append_jsonl, save_torch_atomic, write_text_atomic
from vqvae.image import (
    ImageCodecTrainer,
    ImageTrainConfig,
    ImageVQVAE,
    ImageVQVAEConfig,
    codec_identity,
    load_image_codec,
    reconstruction_psnr,
)

Log = Callable[[str], None]


def _augmented_pairs(images: torch.Tensor, size: int, gen: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` random pairs of ``images``, each image augmented: two ``(size, H, W)``."""
    pick = torch.randint(0, images.shape[0], (size, 2), generator=gen)
    return augment(images[pick[:, 0]], gen), augment(images[pick[:, 1]], gen)


def _batch(images: torch.Tensor, size: int, mix_fraction: float, gen: torch.Generator
           ) -> torch.Tensor:
    """``size`` augmented training images, ``mix_fraction`` of them mixtures of two."""
    a, b = _augmented_pairs(images, size, gen)
    mixed = torch.rand(size, generator=gen) < mix_fraction
    return torch.where(mixed[:, None, None], (a + b) / 2, a)


def train_image_codec(out: Path, *, config: ImageVQVAEConfig | None = None,
                      train: ImageTrainConfig | None = None, mix_fraction: float = 0.25,
                      valid_every: int = 500, resume: bool = True, log: Log = print
                      ) -> ImageVQVAE:
    """Train an :class:`ImageVQVAE` on augmented MNIST training digits (and mixtures of two,
    ``mix_fraction`` of each batch) into ``out`` (``out/model`` is the codec); resumes a run
    left there. Logs validation PSNR of digits and of mixtures to ``out/log.jsonl``."""
    train = train or ImageTrainConfig()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train.seed)
    if resume and (out / "trainer.pt").is_file():
        trainer = ImageCodecTrainer.resume(out, train)
        log(f"codec: resuming at step {trainer.step}")
    else:
        trainer = ImageCodecTrainer(ImageVQVAE(config), train)
    images = torch.from_numpy(load_mnist("train")[0])
    valid = torch.from_numpy(load_mnist("valid")[0])
    pairs = torch.from_numpy(mixture_pairs(400, valid.shape[0], seed=1))
    valid_mix = (valid[pairs[:, 0]] + valid[pairs[:, 1]]) / 2
    t0 = time.perf_counter()
    while trainer.step < train.steps:
        gen = torch.Generator().manual_seed(train.seed * 7919 + trainer.step)
        stats = trainer.train_step(_batch(images, train.batch, mix_fraction, gen))
        if trainer.step % valid_every == 0 or trainer.step == train.steps:
            record = {**stats, "valid_psnr": float(reconstruction_psnr(trainer.model,
                                                                       valid).mean()),
                      "valid_mix_psnr": float(reconstruction_psnr(trainer.model,
                                                                  valid_mix).mean()),
                      "seconds": round(time.perf_counter() - t0, 1)}
            append_jsonl(out / "log.jsonl", record)
            log(f"codec step {trainer.step}: train {stats['psnr']:.2f} dB, valid "
                f"{record['valid_psnr']:.2f} dB (mixtures {record['valid_mix_psnr']:.2f}), "
                f"{stats['used']} codes used")
            trainer.save(out)
    return load_image_codec(out / "model")


@torch.no_grad()
def encode_images(codec: ImageVQVAE, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """``images: (n, H, W)`` -> ``(n, h * w)`` int64 codes in raster order."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return torch.cat([codec.encode(part).flatten(1).cpu() for part in x.split(batch)]).numpy()


def prior_streams(codec: ImageVQVAE, split: str, copies: int, seed: int) -> np.ndarray:
    """Code sequences ``(copies * n, h * w)`` of a split's digits and ``copies - 1``
    augmented versions of each (the prior's training or validation set)."""
    return encode_images(codec, augmented_copies(load_mnist(split)[0], copies, seed))


def count_image_likelihood(codec: ImageVQVAE, out: Path, *, mixtures: int, seed: int = 0,
                           augment_copies: int = 4, chunk: int = 20000, log: Log = print
                           ) -> Counts:
    """Count ``(m, i, j)`` over ``mixtures`` random pairs of augmented training digits
    (mixture = mean; both orders, so the table is symmetric) at every grid position; saved
    to ``out`` (a counts ``.npz``) and returned."""
    pool = augmented_copies(load_mnist("train")[0], augment_copies, seed)
    pool_codes = encode_images(codec, pool)
    counter = TupleCounter(codec.codebook_size, symmetric=True)
    pairs = mixture_pairs(mixtures, pool.shape[0], seed + 1)
    t0 = time.perf_counter()
    for lo in range(0, mixtures, chunk):
        part = pairs[lo: lo + chunk]
        mix = (pool[part[:, 0]] + pool[part[:, 1]]) / 2
        m = encode_images(codec, mix)
        counter.add(m.ravel(), pool_codes[part[:, 0]].ravel(), pool_codes[part[:, 1]].ravel())
        log(f"counting: {min(lo + chunk, mixtures)} of {mixtures} mixtures "
            f"({time.perf_counter() - t0:.0f} s)")
    counter.flush()
    counts = Counts(matrix=counter.matrix(),
                    meta={"codec_identity": codec_identity(codec), "mixtures": mixtures,
                          "triples": counter.triples, "source": "mnist train"})
    save_counts(out, counts)
    write_text_atomic(out.with_suffix(".json"), json.dumps(
        {"mixtures": mixtures, "seed": seed, "augment_copies": augment_copies,
         **counts.stats()}, indent=1) + "\n")
    return counts


def train_image_prior(codec: ImageVQVAE, out: Path, *, copies: int = 1,
                      config: PriorTrainConfig | None = None, width: int = 128, layers: int = 3,
                      heads: int = 4, dropout: float = 0.1, valid_every: int = 500,
                      seed: int = 0, resume: bool = True, log: Log = print) -> TransformerPrior:
    """Train the shared prior over raster-ordered code grids of augmented training digits
    (``copies`` per digit, the first unaugmented) into ``out`` (``out/model``); resumes a
    run left there. Logs validation bits per token (unaugmented validation digits) to
    ``out/log.jsonl``."""
    config = config or PriorTrainConfig(steps=6000, batch=64, lr=1e-3, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    h, w = codec.grid
    length = h * w
    cache = out / f"codes-x{copies}-seed{seed}.npy"
    if cache.is_file():
        streams = np.load(cache)
    else:
        streams = prior_streams(codec, "train", copies, seed)
        np.save(cache, streams)
    valid = torch.from_numpy(encode_images(codec, load_mnist("valid")[0]))
    torch.manual_seed(seed)
    if resume and (out / "trainer.pt").is_file():
        trainer = PriorTrainer.resume(out, config)
        log(f"prior: resuming at step {trainer.step}")
    else:
        prior = TransformerPrior(TransformerPriorConfig(
            vocab_size=codec.codebook_size, context_length=length, width=width, layers=layers,
            heads=heads, kv_heads=1, dropout=dropout, codec_identity=codec_identity(codec)))
        trainer = PriorTrainer(prior, config)
    windows = TokenWindows(list(streams), length)
    rng = np.random.default_rng(seed * 7919 + trainer.step)
    t0 = time.perf_counter()
    while trainer.step < config.steps:
        codes, _ = windows.batch(rng, config.batch)
        bits = trainer.train_step(codes)
        if trainer.step % valid_every == 0 or trainer.step == config.steps:
            record = {"step": trainer.step, "train_bits": bits,
                      "valid_bits": trainer.evaluate(valid, batch=400),
                      "seconds": round(time.perf_counter() - t0, 1)}
            append_jsonl(out / "log.jsonl", record)
            log(f"prior step {trainer.step}: train {bits:.3f}, valid "
                f"{record['valid_bits']:.3f} bits per token")
            trainer.save(out)
    return load_prior(out / "model")


def train_image_evidence(codec: ImageVQVAE, out: Path, *, steps: int = 3000, batch: int = 128,
                         lr: float = 2e-3, width: int = 128, blocks: int = 4, seed: int = 0,
                         valid_every: int = 500, resume: bool = True, log: Log = print
                         ) -> ImageEvidence:
    """Train the image token evidence (:mod:`likelihood.image_evidence`) on mixtures of two
    augmented training digits against the codec's codes of the two, into ``out`` (``out/
    evidence.npz``; ``out/state.pt`` resumes). Logs the validation nats per position and how
    often the model's two most likely codes are the sources' codes."""
    out.mkdir(parents=True, exist_ok=True)
    images = torch.from_numpy(load_mnist("train")[0])
    pool_codes = torch.from_numpy(encode_images(codec, images.numpy()))
    log_u = torch.log(torch.bincount(pool_codes.flatten(), minlength=codec.codebook_size)
                      .double().add(1.0) / (pool_codes.numel() + codec.codebook_size)).float()
    valid = load_mnist("valid")[0]
    pairs = mixture_pairs(400, valid.shape[0], seed=2)
    valid_mix = torch.from_numpy((valid[pairs[:, 0]] + valid[pairs[:, 1]]) / 2)
    valid_codes = torch.from_numpy(np.stack([encode_images(codec, valid[pairs[:, 0]]),
                                             encode_images(codec, valid[pairs[:, 1]])], 1))
    torch.manual_seed(seed)
    h, _ = codec.grid
    model = ImageEvidence(codec.codebook_size, codec.image_shape[0], h, width, blocks,
                          meta={"codec_identity": codec_identity(codec),
                                "trained_on": "mixtures of two augmented MNIST train digits"})
    model.log_unigram.copy_(log_u)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    step = 0
    if resume and (out / "state.pt").is_file():
        state = torch.load(str(out / "state.pt"), weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log(f"evidence: resuming at step {step}")
    t0 = time.perf_counter()
    while step < steps:
        gen = torch.Generator().manual_seed(seed * 7919 + step)
        a, b = _augmented_pairs(images, batch, gen)
        with torch.no_grad():
            codes = torch.stack([codec.encode(a).flatten(1), codec.encode(b).flatten(1)], 1)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (
                1 + math.cos(math.pi * step / steps))
        model.train()
        loss = model.loss((a + b) / 2, codes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % valid_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                v = float(model.loss(valid_mix, valid_codes))
                top2 = model(valid_mix).topk(2, dim=-1).indices  # (n, T, 2)
                hit = (top2[..., :1] == valid_codes.transpose(1, 2)).any(-1).float().mean()
            record = {"step": step, "train_nats": float(loss.detach()), "valid_nats": v,
                      "valid_top1_is_a_source": float(hit),
                      "seconds": round(time.perf_counter() - t0, 1)}
            append_jsonl(out / "log.jsonl", record)
            log(f"evidence step {step}: train {float(loss.detach()):.3f}, valid {v:.3f} nats; "
                f"top code a source's {float(hit):.2f}")
            model.save(out / "evidence.npz")
            save_torch_atomic(out / "state.pt", {"model": model.state_dict(),
                                                        "optimizer": opt.state_dict(),
                                                        "step": step})
    return ImageEvidence.load(out / "evidence.npz")
