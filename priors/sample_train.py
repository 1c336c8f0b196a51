"""Training of the priors over raw samples, WaveNet (:mod:`priors.wavenet`) and flow
(:mod:`priors.flow`), on one source, resumably.

The data come from a callable, ``draw(rng, count) -> (count, time)`` clean chunks, so this
module needs no data-set code: ``lass-train-prior --kind wavenet`` or ``--kind flow`` passes
chunks of a stem data set. Each step draws its batch and noise levels from
``numpy.random.default_rng([seed, step])`` (``sigma`` log-uniform over the configured range,
the noise from a generator seeded by the step), so a resumed run continues exactly as an
uninterrupted one. The network reads ``clean + sigma n`` and the noise level; the objective
(:func:`wavenet_objective`, :func:`flow_objective`) gives nats per sample. Under torchrun
every rank draws the same global batch and noise and trains on its contiguous share
(``shard``), through a DistributedDataParallel of the network that averages the gradients;
rank 0 alone writes the log and checkpoints.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from tqdm import tqdm

from priors.errors import PriorError
from priors.flow import LOG_2PI, FlowPrior
from priors.wavenet import WaveNetPrior, quantise
from vqvae.files import save_torch_atomic, write_json_atomic

Draw = Callable[[np.random.Generator, int], torch.Tensor]
# (network, noisy (batch, time), clean (batch, time), sigma (batch,)) -> nats per sample
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def wavenet_objective(field: int) -> Objective:
    """Cross-entropy of the clean 8-bit bins, over the samples after the first ``field``
    (those that see a full receptive field); the network's forward is the WaveNet's logits."""
    def objective(network: nn.Module, noisy: torch.Tensor, clean: torch.Tensor,
                  sigma: torch.Tensor) -> torch.Tensor:
        logits = network(noisy, sigma)
        return F.cross_entropy(logits[..., field:], quantise(clean)[:, field:])

    return objective


def flow_objective(network: nn.Module, noisy: torch.Tensor, clean: torch.Tensor,
                   sigma: torch.Tensor) -> torch.Tensor:
    """Negative log-density of the noisy window under the flow at ``sigma`` (its forward is
    ``(z, log-determinant)``), per sample."""
    z, logdet = network(noisy, sigma)
    logp = -0.5 * (z.pow(2) + LOG_2PI).sum(dim=(1, 2)) + logdet
    return -logp.mean() / noisy.shape[-1]


@dataclass(frozen=True)
class SamplePriorTrainConfig:
    """Steps, batch, learning rate, seed, the log-uniform range of noise levels (in
    quantisation bins of 1/128), and how often to validate and checkpoint."""

    steps: int = 10000
    batch: int = 4
    lr: float = 1e-3
    seed: int = 0
    sigma_bins: tuple[float, float] = (0.1, 175.9)
    valid_every: int = 500
    checkpoint_every: int = 250


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def train_sample_prior(net: WaveNetPrior | FlowPrior, draw: Draw, valid: torch.Tensor,
                       out: Path, cfg: SamplePriorTrainConfig,
                       state: dict[str, Any] | None = None, log_prefix: str = "train",
                       network: nn.Module | None = None, shard: tuple[int, int] = (0, 1)
                       ) -> dict[str, Any]:
    """Train ``net`` on chunks from ``draw`` (each ``(count, samples + receptive field)`` for
    a WaveNet, ``(count, samples)`` for a flow),
    validating on the fixed ``valid (count, time)`` chunks at fixed noise levels; checkpoints
    go to ``out/model`` and ``out/trainer.pt`` (``state``: a loaded ``trainer.pt`` to resume),
    the log to ``out/log.jsonl``. Returns the run's summary (also written to
    ``out/summary.json``). ``network``: what the steps call (a DistributedDataParallel of
    ``net`` under torchrun); ``shard``: ``(rank,
    world)``, this rank's share of each batch (rank 0 writes the files)."""
    rank, world = shard
    if cfg.batch % world:
        raise PriorError(f"a batch of {cfg.batch} does not divide among {world} processes")
    mine = slice(rank * cfg.batch // world, (rank + 1) * cfg.batch // world)
    main = rank == 0
    network = network or net
    device = next(net.parameters()).device
    if isinstance(net, WaveNetPrior):
        kind, field = "wavenet", net.config.receptive_field
        objective = wavenet_objective(field)
        about = f"WaveNet of receptive field {field}"
    else:
        kind, field, objective = "flow", 0, flow_objective
        about = f"flow of {net.config.blocks} blocks x {net.config.flows} flows"
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    lo, hi = (math.log(v / 128) for v in cfg.sigma_bins)
    valid = valid.to(device)
    vsigma = torch.exp(torch.linspace(lo, hi, valid.shape[0], device=device))
    params = sum(x.numel() for x in net.parameters())
    if main:
        print(f"{log_prefix}: {about}, {params / 1e6:.2f}M parameters, "
              f"{net.config.class_name}, device {device}", file=sys.stderr)
    log = out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", file=sys.stderr,
               dynamic_ncols=True, disable=not main)
    valid_nats = float("nan")
    try:
        while step < cfg.steps:
            rng = np.random.default_rng([cfg.seed, step])
            clean = draw(rng, cfg.batch).to(device)
            sigma = torch.exp(torch.from_numpy(rng.uniform(lo, hi, cfg.batch)).float()
                              ).to(device)
            gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
            net.train()
            noise = torch.randn(clean.shape, generator=gen, dtype=clean.dtype, device=device)
            loss = objective(network, clean[mine] + sigma[mine, None] * noise[mine],
                             clean[mine], sigma[mine])
            if not torch.isfinite(loss):
                raise PriorError(f"training diverged at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(nats=f"{float(loss.detach()):.3f}")
            if not main:
                continue
            if step % 10 == 0 or step == cfg.steps:
                _append(log, {"kind": "train", "step": step, "nats": float(loss.detach())})
            if step % cfg.valid_every == 0 or step == cfg.steps:
                net.eval()
                with torch.no_grad():
                    vgen = torch.Generator(device=device).manual_seed(cfg.seed)
                    noise = torch.randn(valid.shape, generator=vgen, dtype=valid.dtype,
                                        device=device)
                    valid_nats = float(objective(net, valid + vsigma[:, None] * noise, valid,
                                                 vsigma))
                _append(log, {"kind": "valid", "step": step, "nats": valid_nats})
                bar.write(f"step {step}: valid {valid_nats:.3f} nats/sample")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                net.eval().save(out / "model")
                save_torch_atomic(out / "trainer.pt",
                                  {"optimizer": opt.state_dict(), "step": step})
    finally:
        bar.close()
    if not main:
        return {"step": step}
    summary = {"kind": kind, "step": step, "valid_nats_per_sample": round(valid_nats, 4),
               "parameters": params, "stem": net.config.class_name,
               **({"receptive_field": field} if kind == "wavenet" else {})}
    write_json_atomic(out / "summary.json", summary)
    return summary
