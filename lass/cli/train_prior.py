"""``lass-train-prior``: train a Transformer prior on a codec's tokens of one or more stems.

    lass-train-prior --codec runs/codec/model --data data/synth --stem drums --out runs/prior-drums
    lass-train-prior --kind wavenet --data data/synth --stem drums --out runs/wavenet-drums

One ``--stem``: a prior for that source class (weakly supervised, as LASS). Several stems:
one shared prior over all of them (unsupervised), class-conditioned with ``--conditional``
(each stem's sequences start with its own class token). The stems are encoded once into a
token cache (``--token-cache``, default ``DATA/.lass-tokens``) reused by later runs. Every
``--valid-every`` steps the validation bits per token are measured; the unigram and bigram
baselines on the same validation tokens are printed at the start and kept in
``OUT/summary.json``. ``--resume`` continues a run exactly. ``--init MODEL`` starts a new run
from a saved prior's weights (its architecture and classes; a fresh optimizer and learning-rate
schedule): fine-tuning on other data, or more training when the first run's folder is gone;
``--stem`` may list the saved prior's classes followed by new ones (a shared prior learning
another source; see :meth:`priors.transformer.TransformerPrior.with_classes`); with ``--kind
wavenet``, a saved WaveNet of the same stem.

``--kind image`` trains the shared prior of image LASS over raster-ordered code grids of
augmented MNIST training digits (``--codec``: an image codec, ``lass-train-vqvae --kind
image``; no ``--data`` or ``--stem``; ``--copies`` augmented versions of each digit; the
architecture and optimisation options apply)::

    lass-train-prior --kind image --codec runs/mnist/codec/model --out runs/mnist/prior

``--kind wavenet`` trains the data-domain prior of PnF-style Langevin separation instead
(:mod:`priors.wavenet`): raw samples of one stem, noise levels drawn log-uniformly from
``--sigma-bins`` (quantisation bins) added to the input, clean 8-bit targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lass.cli import run_cli
from lass.cli.common import add_precision_option, start_run, use_bf16
from lass.data import find_tracks
from lass.distributed import World, finish, init_world, main_first, parallel, rank_slice
from lass.errors import DataError
from lass.tokens import encode_tracks
from priors.baselines import baseline_bits
from priors.train import PriorTrainConfig, PriorTrainer, TokenWindows
from priors.transformer import TransformerPrior, TransformerPriorConfig, load_prior
from vqvae import Codec, load_codec
from vqvae.files import append_jsonl, read_trainer_state, write_text_atomic

PROG = "lass-train-prior"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="transformer",
                   choices=["transformer", "wavenet", "flow", "image"],
                   help="transformer: tokens of --codec; wavenet: raw samples (PnF); flow: "
                        "raw sample windows (a FloWaveNet-style flow, the thesis' prior); "
                        "image: code grids of MNIST digits (--codec an image codec)")
    p.add_argument("--codec", type=Path, default=None, help="saved codec directory")
    p.add_argument("--data", type=Path, default=None, help="stem data set root")
    p.add_argument("--stem", nargs="+", default=None, help="stem(s) the prior models")
    p.add_argument("--copies", type=int, default=1,
                   help="--kind image: versions of each digit (the first unaugmented; more "
                        "lowers the prior's bits but separates worse, docs/images.md)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--conditional", action="store_true",
                   help="with several stems: one class token per stem")
    p.add_argument("--layout", default="auto")
    p.add_argument("--token-cache", type=Path, default=None)
    p.add_argument("--context", type=int, default=512, help="tokens per training sequence")
    p.add_argument("--arch", default="llama", choices=["llama", "gpt2"])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=1,
                   help="key/value heads (Llama; 1 = multi-query; 0 = --heads)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--valid-every", type=int, default=500)
    p.add_argument("--valid-windows", type=int, default=64)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", type=Path, default=None, metavar="MODEL",
                   help="start a new run from this saved prior's weights (the architecture "
                        "options are taken from it); with --resume, a run already in --out "
                        "continues instead")
    add_precision_option(p)
    w = p.add_argument_group("--kind wavenet")
    w.add_argument("--stacks", type=int, default=3, help="stacks of dilations 1..512")
    w.add_argument("--dilated-layers", type=int, default=10, help="dilated layers per stack")
    w.add_argument("--residual", type=int, default=128)
    w.add_argument("--gate", type=int, default=256)
    w.add_argument("--skip", type=int, default=128)
    w.add_argument("--samples", type=int, default=16000,
                   help="samples per training chunk (WaveNet: after the receptive field; "
                        "flow: the window, a multiple of 2**blocks)")
    w.add_argument("--sigma-bins", type=float, nargs=2, default=[0.1, 175.9],
                   metavar=("LO", "HI"), help="noise levels drawn log-uniformly, in bins "
                                              "of 1/128 (also for --kind flow)")
    f = p.add_argument_group("--kind flow (also --samples, --sigma-bins)")
    f.add_argument("--blocks", type=int, default=3, help="squeeze-then-flows blocks")
    f.add_argument("--flows", type=int, default=4, help="flows per block")
    f.add_argument("--flow-layers", type=int, default=4, help="layers of each coupling WaveNet")
    f.add_argument("--flow-hidden", type=int, default=32, help="channels of the couplings")
    f.add_argument("--sample-rate", type=int, default=22050,
                   help="rate the flow models (the data are resampled to it)")
    return p


def _main_samples(args: argparse.Namespace, device: str, world: World) -> int:
    """Train a noise-conditioned WaveNet or flow on raw samples of one stem."""
    from lass.data import StemDataset
    from priors.flow import FlowConfig, FlowPrior, load_flow
    from priors.sample_train import SamplePriorTrainConfig, train_sample_prior
    from priors.wavenet import WaveNetConfig, WaveNetPrior, load_wavenet

    if len(args.stem) != 1:
        raise DataError(f"--kind {args.kind} models one stem: give one --stem")
    stem = args.stem[0]
    out: Path = args.out
    load = load_wavenet if args.kind == "wavenet" else load_flow
    state: dict[str, Any] | None = None
    net: WaveNetPrior | FlowPrior
    if args.resume and (out / "trainer.pt").is_file():
        net = load(out / "model", device=device)
        state = read_trainer_state(out, DataError, device)
    elif args.init is not None:  # a new run from saved weights: its architecture and stem
        net = load(args.init, device=device).train()
        if net.config.class_name != stem:
            raise DataError(f"--init {args.init}: its stem {net.config.class_name!r} differs "
                            f"from this run's {stem!r} (--stem)")
    elif args.kind == "wavenet":
        torch.manual_seed(args.seed)
        net = WaveNetPrior(WaveNetConfig(
            stacks=args.stacks, layers=args.dilated_layers, residual=args.residual,
            gate=args.gate, skip=args.skip, class_name=stem)).to(device)
    else:
        torch.manual_seed(args.seed)
        net = FlowPrior(FlowConfig(
            blocks=args.blocks, flows=args.flows, layers=args.flow_layers,
            hidden=args.flow_hidden, sample_rate=args.sample_rate, class_name=stem,
            sigma_range=(args.sigma_bins[0] / 128, args.sigma_bins[1] / 128))).to(device)
    if isinstance(net, WaveNetPrior):
        length = args.samples + net.config.receptive_field
    else:
        length = args.samples
        if length % net.config.multiple:
            raise DataError(f"--samples {length} is not a multiple of 2**blocks "
                            f"({net.config.multiple})")

    def data(split: str) -> StemDataset:
        return StemDataset(find_tracks(args.data, split, [stem], args.layout),
                           sample_rate=net.config.sample_rate, chunk=length, stems=[stem])

    train, valid = data("train"), data("valid")
    vrng = np.random.default_rng([args.seed, 1 << 20])
    vbatch = torch.stack([valid.random_kept_chunk(vrng).audio[0]
                          for _ in range(min(args.valid_windows, 16))])

    def draw(rng: np.random.Generator, count: int) -> torch.Tensor:
        return torch.stack([train.random_kept_chunk(rng).audio[0] for _ in range(count)])

    rank_slice(args.batch, world)  # (one line when the batch does not divide)
    summary = train_sample_prior(net, draw, vbatch, out, SamplePriorTrainConfig(
        steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
        sigma_bins=(args.sigma_bins[0], args.sigma_bins[1]), valid_every=args.valid_every,
        checkpoint_every=args.checkpoint_every), state, log_prefix=PROG,
        network=parallel(net, world, unused=True), shard=(world.rank, world.size))
    finish()
    if not world.main:
        return 0
    print(f"saved {out / 'model'}: valid {summary['valid_nats_per_sample']:.3f} nats/sample")
    return 0


def _quiet(*_args: object, **_kwargs: object) -> None:
    """What the ranks other than 0 print: nothing."""


def _streams(args: argparse.Namespace, codec: Codec, split: str
             ) -> tuple[list[np.ndarray], list[int]]:
    cache = args.token_cache or (args.data / ".lass-tokens")
    tracks = find_tracks(args.data, split, args.stem, args.layout)
    streams: list[np.ndarray] = []
    classes: list[int] = []
    for c, stem in enumerate(args.stem):
        bar = tqdm(total=len(tracks), desc=f"encoding {split} {stem}", unit="track",
                   file=sys.stderr, dynamic_ncols=True)

        def progress(done: int, total: int, bar: tqdm[Any] = bar) -> None:
            bar.n = done
            bar.refresh()

        try:
            got = encode_tracks(codec, tracks, stem, cache, split, progress)
        finally:
            bar.close()
        streams += got
        classes += [c] * len(got)
    return streams, classes


def _new_prior(args: argparse.Namespace, codec: Codec, conditional: bool, device: str
               ) -> TransformerPrior:
    """The prior a new run starts from: the weights of ``--init``, checked against the codec,
    the stems and the context, or a fresh prior of the architecture options."""
    classes = tuple(args.stem) if conditional else ()
    if args.init is None:
        return TransformerPrior(TransformerPriorConfig(
            vocab_size=codec.codebook_size, context_length=args.context, class_names=classes,
            arch=args.arch, width=args.width, layers=args.layers, heads=args.heads,
            kv_heads=args.kv_heads, dropout=args.dropout, codec_identity=codec.identity(),
        )).to(device)
    prior = load_prior(args.init, device=device, backend="transformers")
    prior.check_codebook(codec.codebook_size)
    if prior.config.codec_identity and prior.config.codec_identity != codec.identity():
        # Another codec of the same size (e.g. the prior's codec fine-tuned with lass-train-
        # vqvae --init): the run learns the new codec's tokens and records that codec.
        print(f"{PROG}: --init {args.init} was trained on another codec's tokens "
              f"({prior.config.codec_identity[:12]}); this run trains it on "
              f"{args.codec}'s ({codec.identity()[:12]})", file=sys.stderr)
        prior.config = dataclasses.replace(prior.config, codec_identity=codec.identity())
    old = prior.config.class_names
    if old != classes:
        if not (len(classes) > len(old) and classes[: len(old)] == old):
            raise DataError(f"--init {args.init}: its classes {list(old)} differ from this "
                            f"run's {list(classes)} (--stem, --conditional; new stems may "
                            "only follow the prior's own)")
        prior = prior.with_classes(classes)
        print(f"{PROG}: --init {args.init}: classes {list(old)} extended with "
              f"{list(classes[len(old):])} (their start tokens begin as the mean of the old "
              "ones)", file=sys.stderr)
    if args.context > prior.context_length:
        raise DataError(f"--context {args.context} exceeds the context of --init {args.init} "
                        f"({prior.context_length})")
    return prior


def _main_image(args: argparse.Namespace) -> int:
    """``--kind image``: the shared prior over MNIST code grids."""
    from lass.image_training import train_image_prior
    from vqvae.image import load_image_codec

    if args.codec is None:
        raise DataError("--codec is required: the image codec whose code grids are modelled")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume and (args.out / "trainer.pt").is_file():
        raise DataError(f"{args.out} holds a run: pass --resume to continue it, or another "
                        "--out")
    codec = load_image_codec(args.codec)
    train_image_prior(codec, args.out, copies=args.copies,
                      config=PriorTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr,
                                              warmup=args.warmup, seed=args.seed),
                      width=args.width, layers=args.layers, heads=args.heads,
                      dropout=args.dropout, valid_every=args.valid_every, seed=args.seed,
                      resume=args.resume, log=lambda line: print(line, file=sys.stderr))
    print(f"saved {args.out / 'model'}")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.kind == "image":
        return _main_image(args)
    if args.data is None or not args.stem:
        raise DataError("--data and --stem are required (except with --kind image)")
    out: Path = args.out
    device = start_run(out, args.resume, args.threads, args.device)
    world, device = init_world(device)
    if args.kind in ("wavenet", "flow"):
        return _main_samples(args, device, world)
    if args.codec is None:
        raise DataError("--codec is required for a Transformer prior")
    if len(set(args.stem)) != len(args.stem):
        raise DataError("--stem names must be distinct")
    share = rank_slice(args.batch, world)
    codec = load_codec(args.codec)
    with main_first(world):  # rank 0 fills the token cache, the others read it
        train_streams, train_classes = _streams(args, codec, "train")
        valid_streams, valid_classes = _streams(args, codec, "valid")
    conditional = args.conditional and len(args.stem) > 1
    windows = TokenWindows(train_streams, args.context, train_classes if conditional else None)
    valid_windows = TokenWindows(valid_streams, args.context,
                                 valid_classes if conditional else None)
    valid_codes, valid_cls = valid_windows.evenly(args.valid_windows)
    baselines = baseline_bits(train_streams, valid_streams, codec.codebook_size)
    per_stem = {}  # several stems: each stem's baselines and bits on its own tokens
    if len(args.stem) > 1:
        for c, stem in enumerate(args.stem):
            per_stem[stem] = baseline_bits(
                [s for s, k in zip(train_streams, train_classes, strict=True) if k == c],
                [s for s, k in zip(valid_streams, valid_classes, strict=True) if k == c],
                codec.codebook_size)
            (print if world.main else _quiet)(
                  f"{PROG}: {stem} baselines (bits/token): unigram "
                  f"{per_stem[stem].unigram:.3f}, bigram {per_stem[stem].bigram:.3f}",
                  file=sys.stderr)
    labelled = TokenWindows(valid_streams, args.context, valid_classes)
    label_of_window = torch.tensor(labelled.classes)[
        torch.from_numpy(labelled.evenly_streams(args.valid_windows))]

    def evaluate_per_stem() -> dict[str, float]:
        return {stem: trainer.evaluate(valid_codes[label_of_window == c],
                                       None if valid_cls is None
                                       else valid_cls[label_of_window == c])
                for c, stem in enumerate(args.stem) if bool((label_of_window == c).any())}

    say = print if world.main else _quiet
    say(f"{PROG}: valid baselines (bits/token): unigram entropy {baselines.unigram_entropy:.3f}"
          f", unigram {baselines.unigram:.3f}, bigram {baselines.bigram:.3f} "
          f"({baselines.tokens} tokens)", file=sys.stderr)
    tcfg = PriorTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
                            seed=args.seed, bf16=use_bf16(args.precision, device))
    if args.resume and (out / "trainer.pt").is_file():
        trainer = PriorTrainer.resume(out, tcfg, device=device)
        trainer.prior.check_codebook(codec.codebook_size, codec.identity())
    else:
        torch.manual_seed(args.seed)
        trainer = PriorTrainer(_new_prior(args, codec, conditional, device), tcfg)
    trainer.network = parallel(trainer.prior, world)  # (rank 0's weights on every rank)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    params = sum(p.numel() for p in trainer.prior.parameters())
    say(f"{PROG}: {params / 1e6:.2f}M parameters, {len(windows.streams)} train streams, "
        f"context {args.context}, device {device}"
        + (f", {world.size} processes of {args.batch // world.size} windows" if world.size > 1
           else ""), file=sys.stderr)
    start, start_step = time.perf_counter(), trainer.step
    valid_bits = float("nan")
    bar = tqdm(total=args.steps, initial=trainer.step, desc="training", unit="step",
               file=sys.stderr, dynamic_ncols=True, disable=not world.main)
    try:
        while trainer.step < args.steps:
            codes, classes = windows.batch(np.random.default_rng([args.seed, trainer.step]),
                                           args.batch)
            bits = trainer.train_step(codes[share], None if classes is None else classes[share])
            bar.update(1)
            bar.set_postfix(bits=f"{bits:.3f}")
            step = trainer.step
            if not world.main:  # rank 0 alone validates and writes
                continue
            if step % 10 == 0 or step == args.steps:
                append_jsonl(log, {"kind": "train", "step": step, "bits": bits,
                                   "lr": trainer.lr_at(step - 1)})
            if step % args.valid_every == 0 or step == args.steps:
                valid_bits = trainer.evaluate(valid_codes, valid_cls)
                stem_bits = evaluate_per_stem() if per_stem else {}
                append_jsonl(log, {"kind": "valid", "step": step, "bits": valid_bits,
                                   **{f"bits_{k}": v for k, v in stem_bits.items()}})
                bar.write(f"step {step}: valid {valid_bits:.3f} bits/token (bigram "
                          f"{baselines.bigram:.3f}, unigram {baselines.unigram:.3f})" +
                          "".join(f"; {k} {v:.3f} (bigram {per_stem[k].bigram:.3f})"
                                  for k, v in stem_bits.items()))
            if step % args.checkpoint_every == 0 or step == args.steps:
                trainer.save(out)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    finish()
    if not world.main:
        return 0
    if valid_bits != valid_bits:  # nothing ran: measure once
        valid_bits = trainer.evaluate(valid_codes, valid_cls)
    summary = {"step": trainer.step, "valid_bits_per_token": round(valid_bits, 4),
               "baselines": {k: round(v, 4) if isinstance(v, float) else v
                             for k, v in dataclasses.asdict(baselines).items()},
               "per_stem": {k: {"valid_bits_per_token": round(v, 4),
                                **{b: round(x, 4) if isinstance(x, float) else x
                                   for b, x in dataclasses.asdict(per_stem[k]).items()}}
                            for k, v in (evaluate_per_stem() if per_stem else {}).items()},
               "parameters": params, "stems": args.stem, "conditional": conditional,
               "last_run": {"steps": trainer.step - start_step, "wall_seconds": round(wall, 1),
                            "device": device, "processes": world.size}}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"saved {out / 'model'}: valid {valid_bits:.3f} bits/token; bigram "
          f"{baselines.bigram:.3f}, unigram {baselines.unigram:.3f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-train-prior``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
