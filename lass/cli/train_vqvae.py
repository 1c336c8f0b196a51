"""``lass-train-vqvae``: train the convolutional VQ-VAE on stems *and* their mixtures.

    lass-train-vqvae --data data/synth --out runs/codec --steps 20000

Each training item is, at random, one stem or the mixture of all stems (the data set's
mixing rule), with a random gain, so the codec encodes mixtures as well as single sources.
Every ``--valid-every`` steps the reconstruction SDR on the valid split is measured per stem
and on mixtures, with the codebook's perplexity. Checkpoints go to ``OUT/model`` (the codec,
loadable with ``vqvae.load_codec``) and ``OUT/trainer.pt``; ``--resume`` continues a run
exactly; ``--init MODEL`` starts a new run from a saved codec (fine-tuning).
``OUT/log.jsonl`` records the numbers; ``OUT/summary.json`` the last validation.

``--kind image`` trains the 2-D image codec (:mod:`vqvae.image`) on augmented MNIST training
digits and mixtures of two (no ``--data``; ``--codebook-size``, ``--dim``, ``--channels``,
``--steps``, ``--batch``, ``--lr``, ``--warmup``, ``--mix-fraction``, ``--seed`` apply):

    lass-train-vqvae --kind image --out runs/mnist/codec --codebook-size 256 --steps 5000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lass.cli import run_cli
from lass.cli.common import (
    add_precision_option,
    dataset_mix_rule,
    start_run,
    use_bf16,
)
from lass.data import StemDataset, chunk_samples, find_tracks, mix
from lass.distributed import finish, init_world, parallel, rank_slice
from lass.errors import DataError
from vqvae import load_codec
from vqvae.conv import ConvVQVAE, ConvVQVAEConfig
from vqvae.files import append_jsonl, write_text_atomic
from vqvae.train import CodecTrainer, TrainConfig, perplexity, reconstruction_sdr

PROG = "lass-train-vqvae"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["audio", "image"], default="audio",
                   help="audio: the 1-D codec on --data; image: the 2-D codec on MNIST digits")
    p.add_argument("--data", type=Path, default=None, help="stem data set root (audio)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--stems", nargs="+", default=["drums", "bass"])
    p.add_argument("--layout", default="auto", help="auto, folder, slakh or musdb")
    p.add_argument("--mix", default=None, help="mixing rule (default: the data set's, or mean)")
    p.add_argument("--sample-rate", type=int, default=22050)
    p.add_argument("--hop", type=int, default=64)
    p.add_argument("--codebook-size", type=int, default=1024)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=1.0, help="length of training chunks")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--spec-weight", type=float, default=0.02)
    p.add_argument("--mix-fraction", type=float, default=1 / 3,
                   help="share of training items that are mixtures")
    p.add_argument("--valid-every", type=int, default=500)
    p.add_argument("--valid-chunks", type=int, default=64)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init", type=Path, default=None, metavar="MODEL",
                   help="start a new run from this saved codec's weights and codebook (its "
                        "architecture; a fresh optimizer and schedule): fine-tuning on other "
                        "data keeps its codes close to what they were, so priors trained on "
                        "its tokens can be fine-tuned too; with --resume, a run already in "
                        "--out continues instead")
    add_precision_option(p)
    return p


class Batches:
    """Training batches as a pure function of ``(seed, step)`` (so resuming is exact)."""

    def __init__(self, data: StemDataset, batch: int, seed: int, mix_fraction: float,
                 rule: str) -> None:
        self.data, self.batch, self.seed, self.rule = data, batch, seed, rule
        self.mix_fraction = mix_fraction

    def __call__(self, step: int) -> torch.Tensor:
        """``(batch, time)`` waveforms for ``step``."""
        rng = np.random.default_rng([self.seed, step])
        items = []
        for _ in range(self.batch):
            chunk = self.data.random_kept_chunk(rng)
            if rng.random() < self.mix_fraction:
                wave = mix(chunk.audio, self.rule, dim=0)
            else:
                wave = chunk.audio[int(rng.integers(chunk.audio.shape[0]))]
            items.append(wave * float(rng.uniform(0.6, 1.4)))
        return torch.stack(items)


def _valid_set(data: StemDataset, n: int, rule: str) -> dict[str, torch.Tensor]:
    chunks = []
    for chunk in data:
        chunks.append(chunk)
        if len(chunks) == n:
            break
    if not chunks:
        raise DataError("the valid split has no non-silent chunk")
    audio = torch.stack([c.audio for c in chunks])  # (n, stems, time)
    out = {name: audio[:, i] for i, name in enumerate(data.stems)}
    out["mixture"] = mix(audio, rule, dim=1)
    return out


def validate(model: ConvVQVAE, valid: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean reconstruction SDR per stem and on mixtures, and the codebook's perplexity."""
    result: dict[str, float] = {}
    all_codes = []
    for name, wave in valid.items():
        sdr, codes = reconstruction_sdr(model, wave)
        result[f"sdr_{name}"] = round(float(sdr.mean()), 3)
        all_codes.append(codes)
    codes = torch.cat([c.flatten() for c in all_codes])
    result["perplexity"] = round(perplexity(codes, model.codebook_size), 1)
    result["used_codes"] = int(torch.unique(codes).numel())
    return result


def _main_image(args: argparse.Namespace) -> int:
    """``--kind image``: the image codec on augmented MNIST training digits."""
    from lass.image_training import train_image_codec
    from vqvae.image import ImageTrainConfig, ImageVQVAEConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume and (args.out / "trainer.pt").is_file():
        raise DataError(f"{args.out} holds a run: pass --resume to continue it, or another "
                        "--out")
    train_image_codec(args.out, config=ImageVQVAEConfig(codebook_size=args.codebook_size,
                                                        dim=args.dim, channels=args.channels),
                      train=ImageTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr,
                                             warmup=args.warmup, seed=args.seed),
                      mix_fraction=args.mix_fraction, valid_every=args.valid_every,
                      resume=args.resume, log=lambda line: print(line, file=sys.stderr))
    print(f"saved {args.out / 'model'}")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.kind == "image":
        return _main_image(args)
    if args.data is None:
        raise DataError("--data is needed: the stem data set root")
    out: Path = args.out
    device = start_run(out, args.resume, args.threads, args.device)
    world, device = init_world(device)
    share = rank_slice(args.batch, world)
    rule = dataset_mix_rule(args.data, args.mix)
    train_tracks = find_tracks(args.data, "train", args.stems, args.layout)
    valid_tracks = find_tracks(args.data, "valid", args.stems, args.layout)
    chunk = chunk_samples(args.seconds, args.sample_rate)
    if args.init is not None and not (args.resume and (out / "trainer.pt").is_file()):
        args.hop = load_codec(args.init).hop_length  # the chunks follow the codec's hop
    chunk -= chunk % args.hop
    if chunk <= 0:
        raise DataError(f"--seconds {args.seconds} is shorter than one hop")
    train = StemDataset(train_tracks, sample_rate=args.sample_rate, chunk=chunk,
                        stems=args.stems, seed=args.seed)
    valid = StemDataset(valid_tracks, sample_rate=args.sample_rate, chunk=chunk,
                        stems=args.stems, seed=12345)
    tcfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
                       spec_weight=args.spec_weight, seed=args.seed,
                       bf16=use_bf16(args.precision, device))
    if args.resume and (out / "trainer.pt").is_file():
        trainer = CodecTrainer.resume(out, tcfg, device=device)
        if trainer.model.sample_rate != args.sample_rate:
            raise DataError(f"the run in {out} is at {trainer.model.sample_rate} Hz, not "
                            f"{args.sample_rate}")
    elif args.init is not None:
        torch.manual_seed(args.seed)
        init = load_codec(args.init, device=device)
        if not isinstance(init, ConvVQVAE):
            raise DataError(f"--init {args.init}: a {type(init).__name__} cannot be trained "
                            "here; only the convolutional VQ-VAE")
        if init.sample_rate != args.sample_rate:
            raise DataError(f"--init {args.init} works at {init.sample_rate} Hz, not "
                            f"--sample-rate {args.sample_rate}")
        trainer = CodecTrainer(init.train(), tcfg)
    else:
        torch.manual_seed(args.seed)
        model = ConvVQVAE(ConvVQVAEConfig(sample_rate=args.sample_rate, hop_length=args.hop,
                                          codebook_size=args.codebook_size, dim=args.dim,
                                          channels=args.channels)).to(device)
        trainer = CodecTrainer(model, tcfg)
    trainer.network = parallel(trainer.model, world)  # (rank 0's weights on every rank)
    batches = Batches(train, args.batch, args.seed, args.mix_fraction, rule)
    valid_set = _valid_set(valid, args.valid_chunks, rule) if world.main else {}
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    params = sum(p.numel() for p in trainer.model.parameters())
    if world.main:
        per = share.stop - share.start
        print(f"{PROG}: {params / 1e6:.2f}M parameters, hop {trainer.model.hop_length}, "
              f"{trainer.model.codebook_size} codes, {len(train)} train chunks of {chunk} "
              f"samples, device {device}"
              + (f", {world.size} processes of {per} chunks" if world.size > 1 else ""),
              file=sys.stderr)
    start, start_step = time.perf_counter(), trainer.step
    last_valid: dict[str, float] = {}
    bar = tqdm(total=args.steps, initial=trainer.step, desc="training", unit="step",
               file=sys.stderr, dynamic_ncols=True, disable=not world.main)
    try:
        while trainer.step < args.steps:
            # Every rank draws the global batch (a function of the step) and takes its share.
            stats = trainer.train_step(batches(trainer.step)[share])
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.3f}", sdr=f"{stats.sdr:.1f}",
                            ppl=f"{stats.perplexity:.0f}", used=stats.used)
            if not world.main:  # rank 0 alone validates and writes
                continue
            if stats.step % 10 == 0 or stats.step == args.steps:
                append_jsonl(log, {"kind": "train", **stats.__dict__})
            if stats.step % args.valid_every == 0 or stats.step == args.steps:
                last_valid = validate(trainer.model, valid_set)
                append_jsonl(log, {"kind": "valid", "step": stats.step, **last_valid})
                bar.write(f"step {stats.step}: " + ", ".join(f"{k} {v}" for k, v in
                                                             last_valid.items()))
            if stats.step % args.checkpoint_every == 0 or stats.step == args.steps:
                trainer.save(out)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    finish()
    if not world.main:
        return 0
    steps_done = trainer.step - start_step
    if not last_valid:
        last_valid = validate(trainer.model, valid_set)
    summary = {"step": trainer.step, "valid": last_valid, "parameters": params,
               "config": trainer.model.config_dict(), "train": tcfg.__dict__,
               "last_run": {"steps": steps_done, "wall_seconds": round(wall, 1),
                            "steps_per_second": round(steps_done / wall, 3) if wall else None,
                            "device": device, "processes": world.size}}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"saved {out / 'model'}: " + ", ".join(f"{k} {v}" for k, v in last_valid.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-train-vqvae``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
