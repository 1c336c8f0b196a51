"""The amortised variational posterior of the thesis: separation in one forward pass.

For each source ``k`` an encoder gives a Gaussian ``q_phi(s_k | m) = N(mu_k(m),
diag(sigma_k(m)^2))`` over the source's samples. It is trained against fixed priors
``p_theta(s_k)`` (flows, :mod:`priors.flow`, at their smallest noise level) by maximising
the ELBO of the mixture

    E_q[ log p(m | s) + sum_k log p_theta(s_k) - sum_k log q_phi(s_k | m) ],

with the decoder the data layer's mixing rule and a Gaussian of precision ``gamma`` around
it, ``log p(m | s) = -gamma / 2 |mix(s) - m|^2 + const``; the expectation is taken with one
reparameterised sample ``s_k = mu_k + sigma_k eps``, and ``-E_q log q`` is the Gaussian's
entropy ``sum log sigma_k + const``. Separation is ``mu(m)``.

Each encoder is a non-causal WaveNet over the mixture (dilated convolutions, gated units,
residual and skip connections) whose mean starts at the source's share of the mixture
(``m / (N g)`` with the rule's gain ``g``, so the shares mix back to ``m``) and learns a
correction to it. Saved as ``config.json`` + ``model.safetensors``
(:meth:`AmortisedPosterior.save`, :func:`load_posterior`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lass.data.mixing import check_mix_rule, mix, mix_gain
from lass.errors import LassError
from vqvae.files import write_dir_atomically

if TYPE_CHECKING:
    from lass.separator import SeparationResult

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class PosteriorConfig:
    """Size and setting of an :class:`AmortisedPosterior`.

    Attributes:
        stems: the sources, in order.
        sample_rate: of the audio.
        mix: the mixing rule (``mean`` or ``sum``).
        hidden: channels of each encoder.
        layers: dilated layers of each encoder (dilations ``1, 2, 4, ...``, repeated every
            ``cycle`` layers).
        cycle: layers per dilation cycle.
        kernel: kernel size (odd).
        init_log_std: the log standard deviation the encoders start at.
    """

    stems: tuple[str, ...]
    sample_rate: int = 22050
    mix: str = "mean"
    hidden: int = 64
    layers: int = 10
    cycle: int = 10
    kernel: int = 3
    init_log_std: float = -4.0


class Encoder(nn.Module):
    """``(B, T)`` mixture -> ``(B, 2, T)``: a correction to the mean and the log std."""

    def __init__(self, cfg: PosteriorConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.start = nn.Conv1d(1, h, 1)
        dilations = [2 ** (i % cfg.cycle) for i in range(cfg.layers)]
        self.dilated = nn.ModuleList(nn.Conv1d(h, 2 * h, cfg.kernel, dilation=d,
                                               padding=(cfg.kernel // 2) * d) for d in dilations)
        self.res = nn.ModuleList(nn.Conv1d(h, h, 1) for _ in dilations)
        self.skip = nn.ModuleList(nn.Conv1d(h, h, 1) for _ in dilations)
        self.end = nn.Conv1d(h, 2, 1)
        nn.init.zeros_(self.end.weight)
        with torch.no_grad():
            self.end.bias.copy_(torch.tensor([0.0, cfg.init_log_std]))  # type: ignore[union-attr]

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        h = self.start(mixture[:, None])
        total = torch.zeros_like(h)
        for conv, res, skip in zip(self.dilated, self.res, self.skip, strict=True):
            a, b = conv(h).chunk(2, dim=1)
            g = torch.tanh(a) * torch.sigmoid(b)
            h = h + res(g)
            total = total + skip(g)
        return self.end(F.relu(total))


class AmortisedPosterior(nn.Module):
    """One Gaussian encoder per source (see the module docstring)."""

    def __init__(self, config: PosteriorConfig) -> None:
        super().__init__()
        if len(config.stems) < 2 or len(set(config.stems)) != len(config.stems):
            raise LassError(f"a posterior separates two or more distinct stems, got "
                            f"{list(config.stems)}")
        if config.kernel % 2 == 0 or config.layers < 1 or config.cycle < 1:
            raise LassError("the encoders need an odd kernel and at least one layer")
        check_mix_rule(config.mix)
        self.config = config
        self.encoders = nn.ModuleList(Encoder(config) for _ in config.stems)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mixture: (batch, time)`` -> mean and log standard deviation, each ``(batch,
        sources, time)``, in source units (``mix`` of the means is near the mixture)."""
        if mixture.dim() != 2:
            raise LassError(f"expected a (batch, time) mixture, got {tuple(mixture.shape)}")
        n = len(self.config.stems)
        share = mixture / (n * mix_gain(n, self.config.mix))
        out = torch.stack([enc(mixture) for enc in self.encoders], dim=1)  # (B, N, 2, T)
        return share[:, None] + out[:, :, 0], out[:, :, 1]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``path`` atomically."""
        def fill(tmp: Path) -> None:
            meta = {"format_version": FORMAT_VERSION, "class": type(self).__name__,
                    **asdict(self.config)}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                      str(tmp / WEIGHTS_FILE))

        return write_dir_atomically(path, fill)


def load_posterior(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                   ) -> AmortisedPosterior:
    """Load an :class:`AmortisedPosterior` saved with :meth:`AmortisedPosterior.save`, in
    eval mode."""
    root = Path(path)
    cfg_path = root / CONFIG_FILE
    try:
        meta: Any = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LassError(f"{root} is not a saved posterior ({err})") from None
    if not isinstance(meta, dict) or meta.get("class") != AmortisedPosterior.__name__ or \
            meta.get("format_version") != FORMAT_VERSION:
        raise LassError(f"{cfg_path}: not a posterior of a supported format")
    fields = {k: v for k, v in meta.items() if k not in ("format_version", "class")}
    try:
        fields["stems"] = tuple(fields["stems"])
        model = AmortisedPosterior(PosteriorConfig(**fields))
        model.load_state_dict(load_file(str(root / WEIGHTS_FILE)), strict=True)
    except (KeyError, TypeError, OSError, RuntimeError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LassError(f"cannot load the posterior in {root}: {first}") from None
    return model.to(device).eval()


def elbo(posterior: nn.Module, priors: Sequence[Any], mixture: torch.Tensor, gamma: float,
         mix_rule: str, sigma: float, generator: torch.Generator | None = None,
         eps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The ELBO of ``mixture: (batch, time)`` in nats per mixture sample (mean over the
    batch; one reparameterised sample), and its three terms for logging.

    ``posterior``: an :class:`AmortisedPosterior` (or a wrapper whose forward is its);
    ``priors``: one per source with ``log_prob(x (batch, time), sigma) -> (batch,)``, held
    fixed (their parameters are not trained here); ``sigma``: the priors' noise level;
    ``eps``: the ``(batch, sources, time)`` standard normal noise of the sample (default:
    drawn from ``generator``).
    """
    mean, log_std = posterior(mixture)
    if eps is None:
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                          device=mean.device)
    s = mean + torch.exp(log_std) * eps
    t = mixture.shape[-1]
    fit = -0.5 * gamma * (mix(s, mix_rule, dim=1) - mixture).pow(2).sum(-1)  # (B,)
    prior = sum(p.log_prob(s[:, k], sigma) for k, p in enumerate(priors))
    entropy = (log_std + 0.5 * (1 + LOG_2PI)).sum(dim=(1, 2))
    total = (fit + prior + entropy).mean() / t
    return total, {"fit": float(fit.detach().mean()) / t,
                   "prior": float(prior.detach().mean()) / t,
                   "entropy": float(entropy.detach().mean()) / t}


class PosteriorSeparator:
    """Separation with an amortised posterior from a bundle (``"method": "posterior"``)::

        {"format_version": 1, "method": "posterior", "name": "...", "sample_rate": 22050,
         "stems": ["sine", ...], "mix": "mean",
         "posterior": {"path": "posterior", "sha256": "..."}}

    ``separate_detailed`` has the signature of
    :meth:`lass.separator.Separator.separate_detailed`; the stems are the posterior means,
    as contributions (scaled by the mixing rule's gain), made to add up to the input exactly
    by giving each an equal share of what they miss (:func:`lass.data.mixing.sum_to_input`),
    computed in windows of ``window`` samples.
    """

    def __init__(self, posterior: AmortisedPosterior, bundle: Any = None,
                 window: int = 1 << 16) -> None:
        self.posterior, self.bundle, self.window = posterior, bundle, window
        self.stems = posterior.config.stems
        self.sample_rate = posterior.config.sample_rate
        self.mix_rule = posterior.config.mix

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] | None,
                        device: str | torch.device = "cpu", verify: bool = True
                        ) -> PosteriorSeparator:
        from lass.bundle import read_posterior_bundle

        spec = read_posterior_bundle(name_or_path, verify=verify)
        model = load_posterior(spec.posterior, device=device)
        if model.config.stems != spec.stems or model.config.mix != spec.mix:
            raise LassError(f"{spec.root}: the posterior separates {list(model.config.stems)} "
                            f"({model.config.mix}), the bundle names {list(spec.stems)} "
                            f"({spec.mix})")
        return cls(model, spec)

    def separate_detailed(self, wave: np.ndarray, sample_rate: int,
                          settings: Any = None) -> SeparationResult:
        """``wave: (time,)`` -> stems at ``sample_rate`` and length."""
        return self.separate_many([wave], sample_rate)[0]

    @torch.no_grad()
    def separate_many(self, waves: Sequence[np.ndarray], sample_rate: int,
                      settings: Any = None) -> list[SeparationResult]:
        """Several inputs; those of one length run as one batch (the same stems as alone)."""
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
        gain = mix_gain(len(self.stems), self.mix_rule)
        results: list[SeparationResult | None] = [None] * len(inputs)
        by_length: dict[int, list[int]] = {}
        for i, x in enumerate(inputs):
            by_length.setdefault(x.shape[0], []).append(i)
        for group in by_length.values():
            t0 = time.perf_counter()
            xs = torch.from_numpy(np.stack([resample(inputs[i], sample_rate, self.sample_rate)
                                            for i in group]))
            parts = [self.posterior(xs[:, j: j + self.window].to(self.posterior.device))[0]
                     for j in range(0, xs.shape[1], self.window)]
            est = torch.cat(parts, dim=-1).cpu().numpy()  # (batch, N, time)
            share = (time.perf_counter() - t0) / len(group)
            for row, i in enumerate(group):
                results[i] = waveform_result(est[row], self.stems, gain, self.sample_rate,
                                             inputs[i], sample_rate, "posterior", share)
        return [r for r in results if r is not None]
