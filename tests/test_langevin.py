import math

import numpy as np
import pytest
import torch

from lass.errors import LassError
from lass.evaluate import plain_sdr
from lass.langevin import (
    BIN,
    LangevinSchedule,
    basis_schedule,
    geometric,
    langevin_separate,
    pnf_schedule,
)

N = 512


def band_prior(lo: float, hi: float):
    """A stationary Gaussian prior with unit power between ``lo`` and ``hi`` (fractions of
    Nyquist) and 1e-4 elsewhere; smoothed at sigma it is N(0, C + sigma^2 I), scored exactly
    through the FFT of whatever length it is given."""

    def power_of(n: int) -> torch.Tensor:
        f = torch.linspace(0.0, 1.0, n // 2 + 1, dtype=torch.float64)
        return torch.where((f >= lo) & (f < hi), 1.0, 1e-4).to(torch.float64)

    def score(x: torch.Tensor, sigma: float):
        n = x.shape[-1]
        weight = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0  # DC and Nyquist have no conjugate twin
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            spec = torch.fft.rfft(xg, norm="ortho")
            logp = -0.5 * (weight * spec.abs() ** 2 / (power_of(n) + sigma**2)).sum(-1)
            (grad,) = torch.autograd.grad(logp.sum(), xg)
        return logp.detach(), grad

    def sample(gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(N // 2 + 1, generator=gen, dtype=torch.float64) + 1j * torch.randn(
            N // 2 + 1, generator=gen, dtype=torch.float64)
        return torch.fft.irfft(z * torch.sqrt(power_of(N) / 2), n=N, norm="ortho")

    return score, sample


def test_schedules_follow_the_papers():
    pnf = pnf_schedule()
    assert len(pnf.sigmas) == 24
    assert pnf.sigmas[0] == pytest.approx(175.9 * BIN)
    assert pnf.sigmas[-1] == pytest.approx(0.1 * BIN)
    s = pnf.sigmas[5]
    assert pnf.eta(s) == pytest.approx(0.05 * s**2)
    assert pnf.gamma(s) == pytest.approx(15 / s**2)
    assert (pnf.window, pnf.context) == (20000, 6139)
    basis = basis_schedule()
    assert basis.sigmas[0] == pytest.approx(1.0)
    assert basis.sigmas[-1] == pytest.approx(0.01)
    assert basis.total_steps == 1000
    assert basis.eta(0.1) == pytest.approx(3e-5 * 100)
    np.testing.assert_allclose(np.diff(np.log(geometric(2.0, 0.02, 5))), np.log(0.01) / 4)


@pytest.mark.parametrize("rule", ["mean", "sum"])
def test_disjoint_bands_separate_far_better_than_the_average(rule):
    gen = torch.Generator().manual_seed(0)
    low, sample_low = band_prior(0.004, 0.15)
    high, sample_high = band_prior(0.3, 0.8)
    sources = torch.stack([torch.stack([sample_low(gen), sample_high(gen)]) for _ in range(3)])
    gain = 0.5 if rule == "mean" else 1.0
    mixture = gain * sources.sum(1)  # (3, N)
    schedule = LangevinSchedule(sigmas=geometric(1.0, 0.01, 8), steps=40, eta_scale=3e-5,
                                eta_ref=0.01, gamma_scale=1.0)
    est = langevin_separate(mixture, [low, high], schedule, mix_rule=rule, generator=gen)
    assert est.shape == (3, 2, N)
    for b in range(3):
        for k in range(2):
            ours = plain_sdr(est[b, k].numpy(), sources[b, k].numpy())
            average = plain_sdr(mixture[b].numpy() / (2 * gain), sources[b, k].numpy())
            assert ours > average + 10, (b, k, ours, average)
    # the mixture constraint holds at the end
    back = gain * est.sum(1)
    assert float((back - mixture).pow(2).mean().sqrt()) < 0.05 * float(mixture.std())


def test_windowed_sweeps_update_every_part_and_bad_input_is_refused():
    gen = torch.Generator().manual_seed(1)
    low, sample_low = band_prior(0.004, 0.15)
    high, sample_high = band_prior(0.3, 0.8)
    src = torch.stack([sample_low(gen), sample_high(gen)])[None]
    mixture = 0.5 * src.sum(1)
    windowed = LangevinSchedule(sigmas=geometric(1.0, 0.01, 6), steps=60, eta_scale=3e-5,
                                eta_ref=0.01, window=128, context=64)
    est = langevin_separate(mixture, [low, high], windowed, generator=gen)
    assert plain_sdr(est[0, 0].numpy(), src[0, 0].numpy()) > 5
    with pytest.raises(LassError, match="NaN"):
        langevin_separate(torch.full((1, 8), math.nan), [low, high], windowed)
    with pytest.raises(LassError, match="one prior per source"):
        langevin_separate(mixture, [low], windowed)
