"""``lass-fit-evidence``: train the token evidence model q_s(token | mixture latents).

    lass-fit-evidence --codec runs/codec/model --data data/synth --hours 1 --out evidence.npz

Mixtures are made and encoded as ``lass-fit-latent`` makes them (the same ``--seed`` gives
the same mixtures; encoding is checkpointed to ``OUT.encoded.pt``). A small convolutional
network over each mixture's encoder outputs is then trained to predict both sources' codec
tokens at every step (:mod:`likelihood.evidence`), ``--epochs`` passes, checkpointed after
every epoch to ``OUT.trainer.pt``: a killed run started again continues exactly. After each
epoch it prints the held-out bits per token and top-1 / top-10 accuracy per source on
``--valid-hours`` of mixtures of the ``valid`` split (levels 0 dB, as evaluation mixes).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lass.cli import run_cli
from lass.cli.common import add_precision_option, resolve_device, use_bf16
from lass.cli.fit_latent import add_mixture_arguments, encode_mixtures
from lass.distributed import finish, init_world, main_first, parallel
from lass.errors import DataError
from likelihood.evidence import DEFAULT_DILATIONS, EvidenceTrainer, TokenEvidence, evidence_bits
from vqvae.files import write_bytes_atomic as write_atomically

PROG = "lass-fit-evidence"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_mixture_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="token evidence file (.npz)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-batch", type=int, default=16, help="mixtures per training step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one cycle)")
    p.add_argument("--width", type=int, default=256, help="channels of the network")
    p.add_argument("--dilations", type=int, nargs="+", default=list(DEFAULT_DILATIONS))
    p.add_argument("--waveform", action="store_true",
                   help="the model also reads the mixture's samples, cut into the codec's hops")
    p.add_argument("--valid-hours", type=float, default=0.1,
                   help="hours of validation mixtures for the held-out figures (0: none)")
    add_precision_option(p)
    return p


def _fit(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.train_batch < 1 or not args.lr > 0 or args.width < 1:
        raise DataError("--epochs, --train-batch, --lr and --width must be positive")
    out: Path = args.out
    world, args.device = init_world(resolve_device(args.device))
    with main_first(world):  # under torchrun rank 0 encodes, the others read its file
        codec, config, parts, encode_seconds = encode_mixtures(
            args, PROG, out.with_name(out.name + ".encoded.pt"), keep=world.size > 1,
            waves=args.waveform)
    valid = None
    if args.valid_hours > 0 and world.main:  # rank 0 alone measures
        vargs = argparse.Namespace(**{**vars(args), "split": "valid", "hours": args.valid_hours,
                                      "seed": args.seed + 1, "gain_db": [0.0, 0.0]})
        _c, _config, valid, _s = encode_mixtures(
            vargs, PROG, out.with_name(out.name + ".valid.encoded.pt"), waves=args.waveform)
    meta: dict[str, Any] = {**config, "hours": args.hours, "epochs": args.epochs,
                            "lr": args.lr, "train_batch": args.train_batch}
    torch.manual_seed(args.seed)
    model = TokenEvidence(codec.codebook_size, codec.embedding_dim, args.width,
                          tuple(args.dilations), meta, n_sources=len(args.sources),
                          hop=codec.hop_length if args.waveform else 0).to(codec.device)
    latents = parts["latents"].to(codec.device)
    trainer = EvidenceTrainer(model, list(parts["tokens"].unbind(1)), latents, args.epochs,
                              args.train_batch, args.lr, args.seed, (world.rank, world.size),
                              bf16=use_bf16(args.precision, args.device),
                              waves=parts.get("waves"))
    state_path = out.with_name(out.name + ".trainer.pt")
    if state_path.is_file():
        try:
            saved = torch.load(state_path, weights_only=True, map_location=codec.device)
            if saved.get("meta") == meta:
                trainer.load_state_dict(saved["trainer"])
                if world.main:
                    print(f"{PROG}: resuming after epoch {trainer.epoch} of {args.epochs}",
                          file=sys.stderr)
        except Exception:  # a torn checkpoint: start over
            if world.main:
                print(f"{PROG}: ignoring unreadable {state_path}", file=sys.stderr)
    trainer.network = parallel(model, world)
    valid_latents = valid["latents"].to(codec.device) if valid is not None else None
    valid_waves = valid.get("waves") if valid is not None else None
    figures: dict[str, list[float]] | None = None  # the held-out figures of the last epoch
    start = time.perf_counter()
    while trainer.epoch < args.epochs:
        bar = tqdm(total=trainer.steps_per_epoch, desc=f"epoch {trainer.epoch + 1}/"
                   f"{args.epochs}", unit="step", file=sys.stderr, dynamic_ncols=True,
                   disable=not world.main)

        def progress(step: int, bits: float, bar: tqdm = bar) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(bits=f"{bits:.2f}")

        train_bits = trainer.run_epoch(progress)
        bar.close()
        if not world.main:
            continue
        if valid is not None and valid_latents is not None:
            figures = evidence_bits(model, list(valid["tokens"].unbind(1)), valid_latents,
                                    waves=valid_waves)

            def each(name: str, f: dict[str, list[float]] = figures) -> str:
                return " / ".join(f"{v:.3f}" for v in f[name])

            print(f"epoch {trainer.epoch}: train {train_bits:.3f} bits; valid bits "
                  f"{each('bits')}, top-1 {each('top1')}, top-10 {each('top10')} "
                  f"({' / '.join(args.sources)})", file=sys.stderr, flush=True)
        buf = io.BytesIO()
        torch.save({"meta": meta, "trainer": trainer.state_dict()}, buf)
        write_atomically(state_path, buf.getvalue())
    finish()
    if not world.main:
        return 0
    if valid is not None and valid_latents is not None:  # (no figures: resumed when done)
        model.meta["valid"] = figures or evidence_bits(model, list(valid["tokens"].unbind(1)),
                                                       valid_latents, waves=valid_waves)
    model.meta["train_seconds"] = round(time.perf_counter() - start, 1)
    model.save(out)
    for suffix in (".encoded.pt", ".valid.encoded.pt", ".trainer.pt"):
        out.with_name(out.name + suffix).unlink(missing_ok=True)
    print(f"wrote {out}: K {model.k}, D {model.dim}, width {model.width}, receptive field "
          f"+-{model.receptive_field} steps; {parts['tokens'].shape[0]} mixtures; encoding "
          f"{encode_seconds:.0f} s, training {model.meta['train_seconds']:.0f} s")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    return _fit(_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-fit-evidence``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
