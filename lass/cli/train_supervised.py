"""``lass-train-supervised``: train the supervised reference (a small Conv-TasNet).

    lass-train-supervised --data data/band --stems drums bass other --out runs/tasnet \\
        --steps 20000

Each step draws ``--batch`` chunks of ``--seconds`` from the training split (seeded by the
step, so ``--resume`` continues a run exactly), mixes their stems by the data set's rule,
and lowers the negative SI-SDR of each output stem against the source's contribution to the
mixture (silent stems left out). Every ``--valid-every`` steps the mean SI-SDR per stem on
fixed validation chunks is logged. ``OUT/model`` is the network (``lass-evaluate
--supervised OUT/model``), ``OUT/trainer.pt`` the optimiser state, ``OUT/log.jsonl`` and
``OUT/summary.json`` the numbers.
"""

from __future__ import annotations

import argparse
import io
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
from lass.data import StemDataset, chunk_samples, find_tracks, mix, mix_gain
from lass.distributed import finish, init_world, parallel, rank_slice
from lass.errors import DataError
from lass.supervised import ConvTasNet, ConvTasNetConfig, load_supervised, si_sdr_loss
from vqvae.files import append_jsonl, read_trainer_state, write_bytes_atomic, write_text_atomic

PROG = "lass-train-supervised"


def _parser() -> argparse.ArgumentParser:
    d = ConvTasNetConfig()
    p = argparse.ArgumentParser(prog=PROG, description="Train the supervised reference "
                                "separator (a small Conv-TasNet) on a stem data set.")
    p.add_argument("--data", type=Path, required=True, help="stem data set root")
    p.add_argument("--stems", nargs="+", required=True, help="the stems it separates")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--layout", default="auto")
    p.add_argument("--mix", default=None, help="mixing rule (default: the data set's)")
    p.add_argument("--sample-rate", type=int, default=22050)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=2.0, help="length of training chunks")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--filters", type=int, default=d.filters)
    p.add_argument("--kernel", type=int, default=d.kernel)
    p.add_argument("--bottleneck", type=int, default=d.bottleneck)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--skip", type=int, default=d.skip)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--stacks", type=int, default=d.stacks)
    p.add_argument("--valid-every", type=int, default=500)
    p.add_argument("--valid-chunks", type=int, default=32)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_precision_option(p)
    return p


def _batch(data: StemDataset, rng: np.random.Generator, size: int, rule: str
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixtures ``(size, time)``, contributions ``(size, stems, time)``)."""
    stems = torch.stack([data.random_kept_chunk(rng).audio for _ in range(size)])
    mixture = mix(stems, rule, dim=1)
    return mixture, stems * mix_gain(stems.shape[1], rule)


@torch.no_grad()
def validate(net: ConvTasNet, mixture: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean SI-SDR (dB) per stem over the validation chunks (silent ones left out)."""
    net.eval()
    est = torch.cat([net(m) for m in mixture.split(8)])
    net.train()
    return {f"si_sdr_{name}": round(-float(si_sdr_loss(est[:, i: i + 1], target[:, i: i + 1])),
                                    3) for i, name in enumerate(net.stems)}


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    out: Path = args.out
    device = start_run(out, args.resume, args.threads, args.device)
    if args.steps < 1 or args.batch < 1 or args.seconds <= 0:
        raise DataError("--steps, --batch and --seconds must be positive")
    world, device = init_world(device)
    share = rank_slice(args.batch, world)
    bf16 = use_bf16(args.precision, device)
    rule = dataset_mix_rule(args.data, args.mix)
    chunk = chunk_samples(args.seconds, args.sample_rate)

    def dataset(split: str, seed: int) -> StemDataset:
        return StemDataset(find_tracks(args.data, split, args.stems, args.layout),
                           sample_rate=args.sample_rate, chunk=chunk, stems=args.stems,
                           seed=seed, require=[])

    train, valid = dataset("train", args.seed), dataset("valid", 12345)
    if world.main:  # rank 0 alone validates
        valid_mix, valid_target = _batch(valid, np.random.default_rng(12345),
                                         args.valid_chunks, rule)
    state = None
    if args.resume and (out / "trainer.pt").is_file():
        net = load_supervised(out / "model", device=device).train()
        if list(net.stems) != list(args.stems):
            raise DataError(f"the run in {out} separates {list(net.stems)}, not "
                            f"{list(args.stems)}")
        state = read_trainer_state(out, DataError, device)
    else:
        torch.manual_seed(args.seed)
        net = ConvTasNet(ConvTasNetConfig(
            stems=tuple(args.stems), sample_rate=args.sample_rate, filters=args.filters,
            kernel=args.kernel, bottleneck=args.bottleneck, hidden=args.hidden, skip=args.skip,
            layers=args.layers, stacks=args.stacks)).to(device).train()
    network = parallel(net, world, unused=True)  # (rank 0's weights on every rank)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    step = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    params = sum(p.numel() for p in net.parameters())
    if world.main:
        print(f"{PROG}: {params / 1e6:.2f}M parameters, {len(train)} train chunks of {chunk} "
              f"samples, receptive field {net.config.receptive_field} samples, device "
              f"{device}" + (f", {world.size} processes" if world.size > 1 else ""),
              file=sys.stderr)

    def save() -> None:
        net.save(out / "model")
        buf = io.BytesIO()
        torch.save({"optimizer": opt.state_dict(), "step": step}, buf)
        write_bytes_atomic(out / "trainer.pt", buf.getvalue())

    start, first = time.perf_counter(), step
    last: dict[str, float] = {}
    bar = tqdm(total=args.steps, initial=step, desc="training", unit="step", file=sys.stderr,
               dynamic_ncols=True, disable=not world.main)
    try:
        while step < args.steps:
            rng = np.random.default_rng([args.seed, step])
            mixture, target = _batch(train, rng, args.batch, rule)
            lr = float(args.lr * min(1.0, (step + 1) / 200) * (
                0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / args.steps))))
            for group in opt.param_groups:
                group["lr"] = lr
            # Every rank draws the global batch (a function of the step) and takes its share.
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                enabled=bf16):
                est = network(mixture[share].to(device))
            loss = si_sdr_loss(est.float(), target[share].to(device), across_ranks=True)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            step += 1
            train_si_sdr = -float(loss.detach())
            bar.update(1)
            bar.set_postfix(si_sdr=f"{train_si_sdr:.2f}")
            if not world.main:  # rank 0 alone validates and writes
                continue
            if step % 10 == 0 or step == args.steps:
                append_jsonl(log, {"kind": "train", "step": step, "si_sdr": train_si_sdr,
                                   "lr": lr})
            if step % args.valid_every == 0 or step == args.steps:
                last = validate(net, valid_mix.to(device), valid_target.to(device))
                append_jsonl(log, {"kind": "valid", "step": step, **last})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in last.items()))
            if step % args.checkpoint_every == 0 or step == args.steps:
                save()
    finally:
        bar.close()
    wall = time.perf_counter() - start
    finish()
    if not world.main:
        return 0
    if not last:
        last = validate(net, valid_mix.to(device), valid_target.to(device))
    summary = {"step": step, "valid": last, "parameters": params,
               "config": json.loads((out / "model" / "supervised.json").read_text()),
               "last_run": {"steps": step - first, "wall_seconds": round(wall, 1),
                            "device": device, "processes": world.size}}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"saved {out / 'model'}: " + ", ".join(f"{k} {v}" for k, v in last.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-train-supervised``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
