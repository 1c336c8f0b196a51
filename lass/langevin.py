"""Annealed Langevin separation with differentiable priors (PnF and BASIS schedules).

Each source ``x_k`` is moved by Langevin dynamics on its prior smoothed at a decreasing noise
level ``sigma``, pulled towards the mixture by a quadratic constraint written with the data
layer's mixing rule (``lass.data.mix``):

    x_k += eta * [ d/dx_k log p_sigma(x_k) - gamma * (mix(x) - m) * d mix / d x_k ]
           + sqrt(2 eta) z,        z ~ N(0, I)

With the ``sum`` rule the constraint term is PnF's ``-eta gamma (x_1 + x_2 - m)``; with
``mean`` the same energy ``gamma/2 |mix(x) - m|^2`` is used. ``eta`` and ``gamma`` are
functions of ``sigma`` (both schedules' formulas are unit-free: signals live in [-1, 1]).

* :func:`pnf_schedule`: 24 geometric levels from 175.9 to 0.1 quantisation bins (a bin is
  1/128), ``eta = 0.05 sigma^2``, ``gamma = 15 / sigma^2``, 256 window updates per level, each
  on a random window of 20000 samples whose gradient is taken with the prior's receptive
  field of context before it (PnF's sweeps).
* :func:`basis_schedule`: 10 geometric levels 1 -> 0.01, 100 steps each,
  ``eta = 3e-5 (sigma / 0.01)^2``, ``gamma = 1 / sigma^2``, whole signals.

A prior is any callable ``score(x: (batch, time), sigma) -> (log_p (batch,), grad (batch,
time))``; :meth:`priors.wavenet.WaveNetPrior.score` is one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lass.data.mixing import check_mix_rule, mix, mix_gain
from lass.errors import LassError

if TYPE_CHECKING:
    from lass.separator import SeparationResult

Score = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
BIN = 1.0 / 128  # one linear 8-bit quantisation bin over [-1, 1]


@dataclass(frozen=True)
class LangevinSchedule:
    """Noise levels and step sizes.

    Attributes:
        sigmas: noise levels, largest first (signal units).
        steps: updates per level.
        eta_scale, eta_ref: step size ``eta = eta_scale * (sigma / eta_ref)^2``.
        gamma_scale: mixture weight ``gamma = gamma_scale / sigma^2``.
        window: samples updated per step (0: the whole signal).
        context: samples of context before a window fed to the prior (its receptive field).
        name: for reports.
    """

    sigmas: tuple[float, ...]
    steps: int
    eta_scale: float
    eta_ref: float = 1.0
    gamma_scale: float = 1.0
    window: int = 0
    context: int = 0
    name: str = "custom"

    def eta(self, sigma: float) -> float:
        return self.eta_scale * (sigma / self.eta_ref) ** 2

    def gamma(self, sigma: float) -> float:
        return self.gamma_scale / sigma**2

    @property
    def total_steps(self) -> int:
        return self.steps * len(self.sigmas)


def geometric(start: float, stop: float, levels: int) -> tuple[float, ...]:
    """``levels`` values from ``start`` to ``stop``, evenly spaced in log."""
    if levels == 1:
        return (float(start),)
    r = (stop / start) ** (1.0 / (levels - 1))
    return tuple(float(start * r**i) for i in range(levels))


def pnf_schedule(receptive_field: int = 6139, steps: int = 256, window: int = 20000,
                 levels: int = 24) -> LangevinSchedule:
    """PnF's schedule (REFERENCE.md): 24 levels 175.9 -> 0.1 bins, eta 0.05 sigma^2, gamma
    15 / sigma^2, ``steps`` random-window updates per level with receptive-field context."""
    return LangevinSchedule(sigmas=tuple(s * BIN for s in geometric(175.9, 0.1, levels)),
                            steps=steps, eta_scale=0.05, gamma_scale=15.0, window=window,
                            context=receptive_field, name="pnf")


def basis_schedule(steps: int = 100, levels: int = 10) -> LangevinSchedule:
    """BASIS' schedule: 10 levels 1 -> 0.01, 100 steps each, eta 3e-5 (sigma/0.01)^2,
    gamma 1 / sigma^2."""
    return LangevinSchedule(sigmas=geometric(1.0, 0.01, levels), steps=steps, eta_scale=3e-5,
                            eta_ref=0.01, gamma_scale=1.0, name="basis")


@torch.no_grad()
def langevin_separate(mixture: torch.Tensor, priors: Sequence[Score],
                      schedule: LangevinSchedule, mix_rule: str = "mean",
                      generator: torch.Generator | None = None,
                      progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Separate ``mixture: (batch, time)`` into ``(batch, sources, time)`` sources.

    The sources start at the mixture's per-source share plus noise at the first level and
    follow the update of the module docstring; the last level's samples are returned.
    """
    rule = check_mix_rule(mix_rule)
    if mixture.dim() != 2:
        raise LassError(f"expected a (batch, time) mixture, got {tuple(mixture.shape)}")
    if not bool(torch.isfinite(mixture).all()):
        raise LassError("the mixture holds NaN or infinite samples")
    n = len(priors)
    if n < 2:
        raise LassError("give one prior per source (at least two)")
    batch, length = mixture.shape
    gain = mix_gain(n, rule)
    share = mixture / (n * gain)  # each source's share: mix(shares) == mixture
    noise = torch.randn((batch, n, length), generator=generator, dtype=mixture.dtype,
                        device=mixture.device)
    x = share[:, None, :] + schedule.sigmas[0] * noise
    window = schedule.window if 0 < schedule.window < length else length
    done, total = 0, schedule.total_steps
    for sigma in schedule.sigmas:
        eta, gamma = schedule.eta(sigma), schedule.gamma(sigma)
        for _ in range(schedule.steps):
            start = 0 if window == length else int(torch.randint(
                0, length - window + 1, (1,), generator=generator, device="cpu"))
            lo = max(start - schedule.context, 0)
            stop = start + window
            residual = mix(x[:, :, start:stop], rule, dim=1) - mixture[:, start:stop]
            for k, prior in enumerate(priors):
                _, grad = prior(x[:, k, lo:stop], sigma)
                drift = grad[:, start - lo:] - gamma * gain * residual
                z = torch.randn((batch, stop - start), generator=generator, dtype=x.dtype,
                                device=x.device)
                x[:, k, start:stop] += eta * drift + math.sqrt(2 * eta) * z
            done += 1
            if progress is not None:
                progress(done, total)
    return x


def sgld_schedule(sigma: float, steps: int, eta: float, gamma: float) -> LangevinSchedule:
    """Plain SGLD (the thesis' Algorithm 2): ``steps`` whole-signal updates at one noise
    level ``sigma`` (a noise-conditioned prior's smallest, i.e. the prior of clean audio),
    step size ``eta`` and mixture weight ``gamma``."""
    if not (sigma > 0 and eta > 0 and gamma > 0 and steps > 0):
        raise LassError("SGLD needs a positive sigma, eta, gamma and number of steps")
    return LangevinSchedule(sigmas=(float(sigma),), steps=int(steps), eta_scale=float(eta),
                            eta_ref=float(sigma), gamma_scale=float(gamma) * sigma**2,
                            name="sgld")


def annealed_schedule(start: float, stop: float, levels: int, steps: int, eta_scale: float,
                      eta_ref: float, gamma_scale: float) -> LangevinSchedule:
    """Whole-signal annealed Langevin: ``levels`` geometric noise levels ``start -> stop``,
    ``steps`` updates each, ``eta = eta_scale (sigma / eta_ref)^2``, ``gamma = gamma_scale /
    sigma^2`` (BASIS' form with free constants)."""
    if not (start >= stop > 0 and levels > 0 and steps > 0 and eta_scale > 0 and eta_ref > 0
            and gamma_scale > 0):
        raise LassError("an annealed schedule needs start >= stop > 0 and positive levels, "
                        "steps, eta and gamma")
    return LangevinSchedule(sigmas=geometric(start, stop, levels), steps=steps,
                            eta_scale=eta_scale, eta_ref=eta_ref, gamma_scale=gamma_scale,
                            name="annealed")


def schedule_from_json(entry: dict[str, Any], receptive_field: int) -> LangevinSchedule:
    """A schedule from a bundle's ``langevin`` entry: ``{"schedule": "pnf" | "basis",
    "steps": N, "window": W, "levels": L}`` (missing fields: the paper's values);
    ``{"schedule": "sgld", "sigma", "steps", "eta", "gamma"}`` (:func:`sgld_schedule`); or
    ``{"schedule": "annealed", "start", "stop", "levels", "steps", "eta_scale", "eta_ref",
    "gamma_scale"}`` (:func:`annealed_schedule`)."""
    kind = str(entry.get("schedule", "pnf"))
    try:
        if kind == "sgld":
            return sgld_schedule(float(entry["sigma"]), int(entry["steps"]),
                                 float(entry["eta"]), float(entry["gamma"]))
        if kind == "annealed":
            return annealed_schedule(
                float(entry["start"]), float(entry["stop"]), int(entry["levels"]),
                int(entry["steps"]), float(entry["eta_scale"]), float(entry["eta_ref"]),
                float(entry["gamma_scale"]))
    except (KeyError, TypeError, ValueError) as err:
        raise LassError(f"the {kind} schedule of the bundle lacks or mistypes {err}") from None
    if kind == "pnf":
        return pnf_schedule(receptive_field, steps=int(entry.get("steps", 256)),
                            window=int(entry.get("window", 20000)),
                            levels=int(entry.get("levels", 24)))
    if kind == "basis":
        return basis_schedule(steps=int(entry.get("steps", 100)),
                              levels=int(entry.get("levels", 10)))
    raise LassError(f"unknown Langevin schedule {kind!r}; expected pnf, basis, sgld or "
                    "annealed")


def load_langevin_prior(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                        ) -> Any:
    """A saved WaveNet (:mod:`priors.wavenet`) or flow (:mod:`priors.flow`) prior, by the
    ``class`` of its ``config.json``; either has ``score(x, sigma)``."""
    import json
    from pathlib import Path

    from priors.flow import FlowPrior, load_flow
    from priors.wavenet import load_wavenet

    try:
        kind = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("class")
    except (OSError, ValueError, AttributeError):
        kind = None
    return load_flow(path, device) if kind == FlowPrior.__name__ else load_wavenet(path, device)


class LangevinSeparator:
    """Annealed Langevin separation with one WaveNet or flow prior per stem, from a bundle.

    ``bundle.json``::

        {"format_version": 1, "method": "langevin", "name": "...", "sample_rate": 22050,
         "stems": ["drums", "bass"], "mix": "mean",
         "priors": {"drums": {"path": "wavenet-drums", "sha256": "..."}, "bass": {...}},
         "langevin": {"schedule": "pnf", "steps": 256, "window": 20000}}

    ``separate_detailed`` has the signature of :meth:`lass.separator.Separator.separate_detailed`
    (``lass-separate --method langevin`` uses it); the stems are the last level's samples as
    contributions (scaled by the mixing rule's gain), made to add up to the input by giving
    each an equal share of what they miss (:func:`lass.data.mixing.sum_to_input`).
    """

    def __init__(self, priors: dict[str, Any], stems: tuple[str, ...], sample_rate: int,
                 mix_rule: str, schedule: LangevinSchedule, bundle: Any = None,
                 seed: int = 0) -> None:
        self.priors, self.stems, self.sample_rate = priors, stems, sample_rate
        self.mix_rule = check_mix_rule(mix_rule)
        self.schedule, self.bundle, self.seed = schedule, bundle, seed

    @property
    def settings(self) -> LangevinSchedule:
        return self.schedule

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] | None,
                        device: str | torch.device = "cpu", verify: bool = True
                        ) -> LangevinSeparator:
        from lass.bundle import read_langevin_bundle

        spec = read_langevin_bundle(name_or_path, verify=verify)
        priors = {stem: load_langevin_prior(path, device=device)
                  for stem, path in spec.priors.items()}
        # (a flow sees the whole window: windowed schedules suit the causal WaveNet only)
        field = max(int(getattr(p, "receptive_field", 0)) for p in priors.values())
        return cls(priors, spec.stems, spec.sample_rate, spec.mix,
                   schedule_from_json(spec.langevin, field), spec)

    def separate_detailed(self, wave: np.ndarray, sample_rate: int,
                          settings: Any = None) -> SeparationResult:
        """``wave: (time,)`` -> stems at ``sample_rate`` and length (see the class docstring)."""
        return self.separate_many([wave], sample_rate)[0]

    def separate_many(self, waves: Sequence[np.ndarray], sample_rate: int,
                      settings: Any = None) -> list[SeparationResult]:
        """Several inputs; those of one length run as one batch of chains (each input's
        result is the one it gets alone only up to the noise drawn for it)."""
        from lass.data.audio import resample
        from lass.separator import waveform_result

        inputs = []
        for wave in waves:
            x = np.asarray(wave, dtype=np.float32)
            if x.ndim == 2:
                x = x.mean(axis=0)
            if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
                raise LassError("expected a finite (time,) or (channels, time) waveform")
            inputs.append(x)
        device = next(iter(self.priors.values())).device
        gain = mix_gain(len(self.stems), self.mix_rule)
        results: list[SeparationResult | None] = [None] * len(inputs)
        by_length: dict[int, list[int]] = {}
        for i, x in enumerate(inputs):
            by_length.setdefault(x.shape[0], []).append(i)
        for group in by_length.values():
            t0 = time.perf_counter()
            xs = np.stack([resample(inputs[i], sample_rate, self.sample_rate) for i in group])
            gen = torch.Generator(device=device).manual_seed(self.seed)
            est = langevin_separate(torch.from_numpy(xs).to(device),
                                    [self.priors[s].score for s in self.stems], self.schedule,
                                    self.mix_rule, generator=gen).cpu().numpy()
            share = (time.perf_counter() - t0) / len(group)
            for row, i in enumerate(group):
                results[i] = waveform_result(est[row], self.stems, gain, self.sample_rate,
                                             inputs[i], sample_rate, "langevin", share)
        return [r for r in results if r is not None]
