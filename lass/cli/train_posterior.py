"""``lass-train-posterior``: train the amortised posterior against fixed flow priors.

    lass-train-posterior --data data/toy --priors bundles/toy-flow --out runs/posterior \\
        --steps 5000

``--priors`` is a Langevin bundle of flow priors (``lass-train-prior --kind flow``, one per
stem): its stems, mixing rule and priors, which stay fixed. Each step draws ``--batch``
chunks of ``--samples`` from the training split (seeded by the step, so ``--resume``
continues a run exactly), mixes their stems by the bundle's rule and raises the ELBO
(:mod:`lass.posterior`) with precision ``--gamma`` around the mixing rule and the priors at
their smallest noise level. Every ``--valid-every`` steps the mean SI-SDR of the posterior
means against the sources on fixed validation chunks is logged per stem. ``OUT/model`` is
the posterior (``lass-make-bundle --posterior OUT/model`` or
:func:`lass.bundle.make_posterior_bundle`), ``OUT/trainer.pt`` the optimiser state,
``OUT/log.jsonl`` and ``OUT/summary.json`` the numbers. Runs data-parallel under torchrun.
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

from lass.bundle import read_langevin_bundle
from lass.cli import run_cli
from lass.cli.common import start_run
from lass.data import StemDataset, find_tracks, mix
from lass.distributed import finish, init_world, parallel, rank_slice
from lass.errors import DataError
from lass.posterior import AmortisedPosterior, PosteriorConfig, elbo, load_posterior
from lass.supervised import si_sdr_loss
from priors.flow import FlowPrior, load_flow
from vqvae.files import append_jsonl, read_trainer_state, write_bytes_atomic, write_text_atomic

PROG = "lass-train-posterior"


def _parser() -> argparse.ArgumentParser:
    d = PosteriorConfig(stems=("a", "b"))
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="stem data set root")
    p.add_argument("--priors", type=Path, required=True,
                   help="a Langevin bundle of flow priors, one per stem")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--layout", default="auto")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--samples", type=int, default=4096,
                   help="samples per training chunk (a multiple of the flows' 2**blocks)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gamma", type=float, default=1e4,
                   help="precision of the Gaussian around the mixing rule")
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--cycle", type=int, default=d.cycle, help="layers per dilation cycle")
    p.add_argument("--valid-every", type=int, default=500)
    p.add_argument("--valid-chunks", type=int, default=16)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    return p


@torch.no_grad()
def validate(model: AmortisedPosterior, mixture: torch.Tensor, sources: torch.Tensor
             ) -> dict[str, float]:
    """Mean SI-SDR (dB) of the posterior means per stem on ``(n, time)`` mixtures against
    ``(n, stems, time)`` sources (silent ones left out)."""
    model.eval()
    mean = torch.cat([model(m)[0] for m in mixture.split(8)])
    model.train()
    return {f"si_sdr_{name}": round(-float(si_sdr_loss(mean[:, i: i + 1],
                                                       sources[:, i: i + 1])), 3)
            for i, name in enumerate(model.config.stems)}


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    out: Path = args.out
    device = start_run(out, args.resume, args.threads, args.device)
    if args.steps < 1 or args.batch < 1 or args.samples < 1 or not args.gamma > 0:
        raise DataError("--steps, --batch, --samples and --gamma must be positive")
    world, device = init_world(device)
    share = rank_slice(args.batch, world)
    spec = read_langevin_bundle(args.priors)
    flows: list[FlowPrior] = []
    for stem in spec.stems:
        try:
            flow = load_flow(spec.priors[stem], device=device)
        except Exception as err:
            raise DataError(f"--priors {args.priors}: the {stem} prior is not a flow "
                            f"({err})") from None
        flow.requires_grad_(False)
        flows.append(flow)
    multiple = max(f.config.multiple for f in flows)
    if args.samples % multiple:
        raise DataError(f"--samples {args.samples} is not a multiple of the flows' {multiple}")
    sigma = max(f.config.sigma_range[0] for f in flows)

    def dataset(split: str, seed: int) -> StemDataset:
        return StemDataset(find_tracks(args.data, split, list(spec.stems), args.layout),
                           sample_rate=spec.sample_rate, chunk=args.samples,
                           stems=list(spec.stems), seed=seed, require=[])

    def draw(data: StemDataset, rng: np.random.Generator, size: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        sources = torch.stack([data.random_kept_chunk(rng).audio for _ in range(size)])
        return mix(sources, spec.mix, dim=1), sources

    train, valid = dataset("train", args.seed), dataset("valid", 12345)
    if world.main:
        valid_mix, valid_src = draw(valid, np.random.default_rng(12345), args.valid_chunks)
    state = None
    if args.resume and (out / "trainer.pt").is_file():
        model = load_posterior(out / "model", device=device).train()
        if model.config.stems != spec.stems or model.config.mix != spec.mix:
            raise DataError(f"the run in {out} separates {list(model.config.stems)}, not "
                            f"the priors' {list(spec.stems)}")
        state = read_trainer_state(out, DataError, device)
    else:
        torch.manual_seed(args.seed)
        model = AmortisedPosterior(PosteriorConfig(
            stems=spec.stems, sample_rate=spec.sample_rate, mix=spec.mix, hidden=args.hidden,
            layers=args.layers, cycle=args.cycle)).to(device).train()
    network = parallel(model, world)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    params = sum(p.numel() for p in model.parameters())
    if world.main:
        print(f"{PROG}: {params / 1e6:.2f}M parameters, stems {', '.join(spec.stems)}, "
              f"flows at sigma {sigma:g}, chunks of {args.samples} samples, device {device}"
              + (f", {world.size} processes" if world.size > 1 else ""), file=sys.stderr)

    def save() -> None:
        model.save(out / "model")
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
            mixture, _sources = draw(train, rng, args.batch)
            lr = float(args.lr * min(1.0, (step + 1) / 200) * (
                0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / args.steps))))
            for group in opt.param_groups:
                group["lr"] = lr
            gen = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step)
            # The reparameterisation noise of the global batch (every rank draws it all).
            eps = torch.randn((args.batch, len(spec.stems), args.samples), generator=gen,
                              device=device)
            value, parts = elbo(network, flows, mixture[share].to(device), args.gamma,
                                spec.mix, sigma, eps=eps[share])
            if not torch.isfinite(value):
                raise DataError(f"training diverged at step {step}")
            opt.zero_grad()
            (-value).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            elbo_value = float(value.detach())
            bar.update(1)
            bar.set_postfix(elbo=f"{elbo_value:.3f}")
            if not world.main:
                continue
            if step % 10 == 0 or step == args.steps:
                append_jsonl(log, {"kind": "train", "step": step, "elbo": elbo_value,
                                   **parts, "lr": lr})
            if step % args.valid_every == 0 or step == args.steps:
                last = validate(model, valid_mix.to(device), valid_src.to(device))
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
        last = validate(model, valid_mix.to(device), valid_src.to(device))
    summary = {"step": step, "valid": last, "parameters": params, "gamma": args.gamma,
               "sigma": sigma, "priors": str(args.priors),
               "last_run": {"steps": step - first, "wall_seconds": round(wall, 1),
                            "device": device, "processes": world.size}}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"saved {out / 'model'}: " + ", ".join(f"{k} {v}" for k, v in last.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-train-posterior``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
