import math
from typing import cast

import pytest
import torch

from priors.errors import PriorError
from priors.flow import FlowConfig, FlowPrior, load_flow, squeeze, unsqueeze


def random_flow(blocks: int = 2, flows: int = 2, dtype: torch.dtype = torch.float32,
                seed: int = 0) -> FlowPrior:
    """A flow that is not the identity: ActNorm initialised on data, coupling outputs
    randomised (they start at zero)."""
    torch.manual_seed(seed)
    flow = FlowPrior(FlowConfig(blocks=blocks, flows=flows, layers=2, hidden=8,
                                sigma_embedding=4)).to(dtype)
    for _norm, coupling in flow._flows():
        end = coupling.net.end
        torch.nn.init.normal_(end.weight, std=0.2)
        torch.nn.init.normal_(cast(torch.Tensor, end.bias), std=0.2)
    flow.train()
    flow(0.3 * torch.randn(4, 32, dtype=dtype), 0.01)  # ActNorm's data-dependent start
    return flow.eval()


def test_squeeze_splits_even_and_odd_samples_and_inverts():
    x = torch.arange(16.0).view(1, 2, 8)
    y = squeeze(x)
    assert y.shape == (1, 4, 4)
    torch.testing.assert_close(y[0, 0], torch.tensor([0.0, 2, 4, 6]))  # channel 0, even
    torch.testing.assert_close(y[0, 2], torch.tensor([1.0, 3, 5, 7]))  # channel 0, odd
    torch.testing.assert_close(unsqueeze(y), x)


def test_round_trip_and_sampling():
    flow = random_flow(blocks=3)
    x = 0.3 * torch.randn(3, 64)
    z, _ = flow(x, 0.05)
    assert z.shape == (3, 8, 8)
    torch.testing.assert_close(flow.inverse(z, 0.05), x, atol=1e-5, rtol=0)
    s = flow.sample(2, 64, generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, 64)
    assert bool(torch.isfinite(s).all())
    with pytest.raises(PriorError, match="multiple of 8"):
        flow(torch.zeros(1, 60), 0.05)


def test_log_determinant_equals_the_brute_force_jacobian():
    flow = random_flow(dtype=torch.float64)
    x = 0.3 * torch.randn(2, 8, dtype=torch.float64)
    _, logdet = flow(x, 0.02)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v: flow(v[None], 0.02)[0].reshape(-1), x[i])
        sign, brute = torch.linalg.slogdet(jac)
        assert float(sign) != 0
        assert abs(float(brute) - float(logdet[i].detach())) < 1e-8


def test_score_gradient_equals_finite_differences():
    flow = random_flow(dtype=torch.float64)
    x = 0.3 * torch.randn(1, 16, dtype=torch.float64)
    logp, grad = flow.score(x, 0.02)
    eps = 1e-6
    for t in (0, 5, 11):
        e = torch.zeros_like(x)
        e[0, t] = eps
        numeric = (flow.log_prob(x + e, 0.02) - flow.log_prob(x - e, 0.02)) / (2 * eps)
        assert abs(float(numeric[0]) - float(grad[0, t])) < 1e-5 * max(1.0, abs(float(numeric)))
    torch.testing.assert_close(logp, flow.log_prob(x, 0.02))
    # Other lengths are padded; the gradient keeps the input's length.
    _, g13 = flow.score(x[:, :13], 0.02)
    assert g13.shape == (1, 13)


def test_log_prob_of_the_identity_flow_is_a_gaussian():
    torch.manual_seed(0)
    flow = FlowPrior(FlowConfig(blocks=1, flows=1, layers=1, hidden=4)).eval()
    x = torch.randn(2, 8)
    expected = -0.5 * (x.pow(2) + math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(flow.log_prob(x, 0.1), expected)


def test_training_lowers_the_negative_log_likelihood_and_saves(tmp_path):
    torch.manual_seed(0)
    flow = FlowPrior(FlowConfig(blocks=2, flows=2, layers=2, hidden=16, sigma_embedding=4))
    t = torch.arange(64) / 64.0

    def batch() -> torch.Tensor:
        phase = torch.rand(8, 1) * 2 * math.pi
        freq = 2 + torch.randint(0, 3, (8, 1))
        return 0.4 * torch.sin(2 * math.pi * freq * t + phase)

    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    sigma = torch.full((8,), 0.02)
    gen = torch.Generator().manual_seed(0)
    flow.train()
    first = float(flow.loss(batch(), sigma, gen))
    for _ in range(150):
        loss = flow.loss(batch(), sigma, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        last = float(flow.loss(batch(), sigma, torch.Generator().manual_seed(1)))
    assert last < first - 0.5, (first, last)
    flow.save(tmp_path / "flow")
    again = load_flow(tmp_path / "flow")
    x = batch()
    torch.testing.assert_close(again.log_prob(x, 0.02), flow.log_prob(x, 0.02))
    (tmp_path / "flow" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(PriorError, match="cannot load the flow"):
        load_flow(tmp_path / "flow")


def gaussian_flow(std: float) -> FlowPrior:
    """A flow whose couplings are the identity (their output layers start at zero) and whose
    normalisation divides by ``std``: the prior N(0, std^2 I)."""
    flow = FlowPrior(FlowConfig(blocks=1, flows=1, layers=1, hidden=4)).eval()
    norm, _ = flow._flows()[0]
    with torch.no_grad():
        norm.log_scale.fill_(-math.log(std))
        norm.initialised.fill_(True)
    return flow


@pytest.mark.slow  # 1600 passes through two flows (~30 s on 2 cores)
def test_sgld_with_flow_priors_samples_the_gaussian_posterior():
    """Two Gaussian flow priors and the mean mixing rule: the SGLD samples' mean and spread
    are those of the exact Gaussian posterior under the soft mixture constraint."""
    from lass.langevin import langevin_separate, sgld_schedule

    torch.manual_seed(0)
    v1, v2, gamma = 0.2**2, 0.1**2, 400.0
    m = 0.5 * (0.3 * torch.randn(1, 16) + 0.05 * torch.randn(1, 16))
    priors = [gaussian_flow(0.2).score, gaussian_flow(0.1).score]
    chains = 256
    x = langevin_separate(m.expand(chains, -1).contiguous(), priors,
                          sgld_schedule(sigma=0.01, steps=800, eta=1e-4, gamma=gamma),
                          mix_rule="mean", generator=torch.Generator().manual_seed(1))
    a = torch.tensor([0.5, 0.5], dtype=torch.float64)
    precision = torch.diag(torch.tensor([1 / v1, 1 / v2], dtype=torch.float64)) \
        + gamma * torch.outer(a, a)
    cov = torch.linalg.inv(precision)
    mean = (cov @ (gamma * a))[:, None] * m.double()  # (2, time)
    got = x.double().mean(0)
    standard_error = torch.diagonal(cov).sqrt()[:, None] / math.sqrt(chains)
    assert float(((got - mean).abs() / standard_error).max()) < 4.5
    spread = x.double().var(0).mean(-1)
    torch.testing.assert_close(spread, torch.diagonal(cov), rtol=0.1, atol=0)
