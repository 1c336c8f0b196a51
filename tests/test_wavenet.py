import math

import numpy as np
import pytest
import torch

from priors.errors import PriorError
from priors.wavenet import (
    WaveNetConfig,
    WaveNetPrior,
    bin_centres,
    load_wavenet,
    quantise,
)


def tiny(dtype=torch.float64) -> WaveNetPrior:
    torch.manual_seed(0)
    return WaveNetPrior(WaveNetConfig(stacks=2, layers=3, residual=8, gate=8, skip=8,
                                      sigma_embedding=4)).to(dtype).eval()


def test_pnf_size_and_receptive_field():
    net = WaveNetPrior(WaveNetConfig())
    assert net.receptive_field == 6139  # PnF's: 3 stacks of dilations 1..512, kernel 3
    params = sum(p.numel() for p in net.parameters())
    assert 3.0e6 < params < 5.0e6  # PnF's prior: about 4.0M


def test_quantisation_bins():
    c = bin_centres(dtype=torch.float64)
    assert c.shape == (256,)
    torch.testing.assert_close(quantise(c), torch.arange(256))
    assert quantise(torch.tensor([-1.0, 1.0, 7.0])).tolist() == [0, 255, 255]


def test_smoothed_likelihood_is_the_gaussian_mixture_and_a_density():
    net = tiny()
    gen = torch.Generator().manual_seed(1)
    x = 0.4 * torch.randn(2, 12, generator=gen, dtype=torch.float64)
    sigma = 0.05
    with torch.no_grad():
        got = net.smoothed_log_prob(x, sigma)
    # direct: sum over time of log sum_b pi_b N(x_t; c_b, sigma^2), written out
    with torch.no_grad():
        probs = torch.softmax(net.logits(x, sigma), dim=1).tolist()  # (B, 256, T)
    c = bin_centres(dtype=torch.float64)
    direct = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        for t in range(12):
            dens = sum(probs[b][k][t] * math.exp(-0.5 * ((float(x[b, t]) - float(c[k]))
                                                              / sigma) ** 2)
                       / (sigma * math.sqrt(2 * math.pi)) for k in range(256))
            direct[b] += math.log(dens)
    torch.testing.assert_close(got, direct, rtol=1e-9, atol=1e-9)
    # the last sample's conditional density integrates to one (trapezoid on a fine grid)
    grid = torch.linspace(-1.5, 1.5, 3001, dtype=torch.float64)
    rows = x[:1, :4].repeat(grid.numel(), 1)
    rows[:, -1] = grid
    with torch.no_grad():
        rest = net.smoothed_log_prob(rows[:, :-1], sigma)  # the last sample conditions nothing
        cond = torch.exp(net.smoothed_log_prob(rows, sigma) - rest)
    assert float(torch.trapezoid(cond, grid)) == pytest.approx(1.0, abs=1e-6)


def test_gradient_matches_finite_differences():
    net = tiny()
    x = 0.3 * torch.randn(1, 10, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64)
    sigma = 0.1
    logp, grad = net.score(x, sigma)
    torch.testing.assert_close(logp, net.smoothed_log_prob(x, sigma))
    eps = 1e-6
    for t in range(10):
        d = torch.zeros_like(x)
        d[0, t] = eps
        with torch.no_grad():
            fd = (net.smoothed_log_prob(x + d, sigma)
                  - net.smoothed_log_prob(x - d, sigma)) / (2 * eps)
        assert float(grad[0, t]) == pytest.approx(float(fd[0]), rel=1e-5, abs=1e-6)


def test_causality_and_noise_conditioning():
    net = tiny()
    x = 0.3 * torch.randn(1, 20, generator=torch.Generator().manual_seed(3),
                          dtype=torch.float64)
    y = x.clone()
    y[0, 9] += 0.5
    a, b = net.logits(x, 0.1), net.logits(y, 0.1)
    torch.testing.assert_close(a[..., :10], b[..., :10])  # logits at t see x_<t only
    assert not torch.allclose(a[..., 10:], b[..., 10:])
    assert not torch.allclose(net.logits(x, 0.1), net.logits(x, 0.5))
    with pytest.raises(PriorError, match="sigma must be positive"):
        net.logits(x, 0.0)


def test_save_load_round_trip_and_training_lowers_the_loss(tmp_path):
    net = tiny(torch.float32).train()
    t = torch.arange(400) / 8000
    clean = 0.5 * torch.sin(2 * math.pi * 220 * t)[None].repeat(4, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    torch.manual_seed(0)
    sig = torch.full((4,), 0.02)
    first = float(net.loss(clean, sig).detach())
    for _ in range(60):
        loss = net.loss(clean, sig)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(net.loss(clean, sig).detach()) < first - 1.5  # nats per sample
    net.eval().save(tmp_path / "wn")
    back = load_wavenet(tmp_path / "wn")
    torch.testing.assert_close(back.logits(clean, 0.02), net.logits(clean, 0.02))
    (tmp_path / "wn" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(PriorError, match="cannot load the WaveNet"):
        load_wavenet(tmp_path / "wn")
    np.testing.assert_equal(back.config.receptive_field, net.config.receptive_field)
