import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lass.bundle import (
    bundle_method,
    make_langevin_bundle,
    make_posterior_bundle,
    read_posterior_bundle,
)
from lass.errors import LassError
from lass.posterior import (
    AmortisedPosterior,
    Encoder,
    PosteriorConfig,
    PosteriorSeparator,
    elbo,
    load_posterior,
)
from lass.separator import load_separator
from tests.test_flow import gaussian_flow
from tests.test_train_vqvae_cli import SR, make_set


def test_elbo_matches_its_closed_form_for_gaussian_priors():
    """With Gaussian priors N(0, v_k) and a fixed q (the encoders' initial output: the
    shares and log std -4), the Monte Carlo ELBO is near its closed form."""
    torch.manual_seed(0)
    model = AmortisedPosterior(PosteriorConfig(stems=("a", "b"), hidden=4, layers=1,
                                               init_log_std=-2.0))
    stds = (0.2, 0.1)
    priors = [gaussian_flow(s) for s in stds]
    m = 0.2 * torch.randn(1, 32)
    gamma = 50.0
    rows = 4096
    value, parts = elbo(model, priors, m.expand(rows, -1), gamma, "mean", 0.01,
                        torch.Generator().manual_seed(0))
    mu = m[0]  # each source's share under the mean rule (mean(m, m) = m)
    q_var = math.exp(-4.0)
    t = m.shape[-1]
    # E|mean(s) - m|^2 = |mean(mu) - m|^2 + t * (q_var + q_var) / 4 (mean(mu) = m here)
    fit = -0.5 * gamma * t * 2 * q_var / 4
    prior = sum(-0.5 * ((mu.pow(2).sum() + t * q_var) / v**2) - 0.5 * t * math.log(2 * math.pi
                                                                                  * v**2)
                for v in stds)
    entropy = 2 * t * (-2.0 + 0.5 * (1 + math.log(2 * math.pi)))
    assert abs(parts["fit"] - fit / t) < 0.05 * abs(fit / t)
    assert abs(parts["prior"] - float(prior) / t) < 0.01 * abs(float(prior) / t)
    assert abs(parts["entropy"] - entropy / t) < 1e-5
    assert abs(float(value.detach()) - (fit + float(prior) + entropy) / t) < 0.02


def test_posterior_saves_loads_and_separates_into_contributions(tmp_path):
    torch.manual_seed(0)
    model = AmortisedPosterior(PosteriorConfig(stems=("a", "b", "c"), sample_rate=8000,
                                               hidden=8, layers=3, cycle=2))
    for enc in model.encoders:  # not the identity
        assert isinstance(enc, Encoder)
        torch.nn.init.normal_(enc.end.weight, std=0.1)
    model.save(tmp_path / "post")
    again = load_posterior(tmp_path / "post")
    m = torch.randn(2, 100) * 0.1
    torch.testing.assert_close(again(m)[0], model.eval()(m)[0])
    bundle = make_posterior_bundle(tmp_path / "bundle", posterior=tmp_path / "post",
                                   name="post3", description="three")
    assert bundle_method(bundle) == "posterior"
    spec = read_posterior_bundle(bundle)
    assert spec.stems == ("a", "b", "c")
    sep = load_separator(bundle)
    assert isinstance(sep, PosteriorSeparator)
    wave = (0.1 * np.random.default_rng(0).standard_normal(3000)).astype(np.float32)
    result = sep.separate_detailed(wave, 8000)
    assert set(result.stems) == {"a", "b", "c"}
    assert all(v.shape == wave.shape for v in result.stems.values())
    # Windows of the separation are independent passes: the same as one pass when long.
    sep.window = 1000
    windowed = sep.separate_detailed(wave, 8000)
    assert windowed.stems["a"].shape == wave.shape
    with pytest.raises(LassError, match="already exists"):
        make_posterior_bundle(tmp_path / "bundle", posterior=tmp_path / "post")
    (tmp_path / "post" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(LassError, match="cannot load the posterior"):
        load_posterior(tmp_path / "post")


def test_half_storage_halves_the_weights_and_keeps_the_outputs(tmp_path):
    """Bundles made with ``half=True`` store float16 weights (about half the bytes), verify
    their sha256, load into float32 models and give outputs within float16 rounding of the
    float32 originals; non-float buffers (the flows' ``initialised``) are kept."""
    from priors.flow import FlowConfig, FlowPrior, load_flow

    torch.manual_seed(0)
    model = AmortisedPosterior(PosteriorConfig(stems=("a", "b"), sample_rate=8000,
                                               hidden=16, layers=3, cycle=2))
    for enc in model.encoders:
        assert isinstance(enc, Encoder)
        torch.nn.init.normal_(enc.end.weight, std=0.1)
    model.save(tmp_path / "post")
    full = make_posterior_bundle(tmp_path / "full", posterior=tmp_path / "post")
    half = make_posterior_bundle(tmp_path / "half", posterior=tmp_path / "post", half=True)
    size = {b: (b / "posterior" / "model.safetensors").stat().st_size for b in (full, half)}
    assert size[half] < 0.6 * size[full]
    spec = read_posterior_bundle(half)  # the sha256 is that of the stored float16 files
    m = torch.randn(3, 200) * 0.1
    a = load_posterior(full / "posterior")(m)[0]
    b = load_posterior(spec.posterior)(m)[0]
    assert next(load_posterior(spec.posterior).parameters()).dtype == torch.float32
    torch.testing.assert_close(b, a, atol=2e-3, rtol=2e-3)
    assert not torch.equal(a, b)  # the weights were really rounded

    priors = {}
    for stem in ("a", "b"):
        flow = FlowPrior(FlowConfig(blocks=2, flows=2, layers=2, hidden=8, sample_rate=8000))
        flow.train()
        flow(0.1 * torch.randn(4, 64), 0.01)  # initialises the normalisations
        for c in flow.couplings:
            for q in c.parameters():
                torch.nn.init.normal_(q, std=0.05)
        flow.save(tmp_path / f"flow-{stem}")
        priors[stem] = tmp_path / f"flow-{stem}"
    sgld = {"schedule": "sgld", "sigma": 0.001, "steps": 5, "eta": 1e-5, "gamma": 100.0}
    lfull = make_langevin_bundle(tmp_path / "lfull", priors=priors, mix="mean", langevin=sgld)
    lhalf = make_langevin_bundle(tmp_path / "lhalf", priors=priors, mix="mean", langevin=sgld,
                                 half=True)
    assert load_separator(lhalf) is not None  # sha256 verified on load
    x = 0.1 * torch.randn(2, 64)
    fa, fb = load_flow(lfull / "prior-a"), load_flow(lhalf / "prior-a")
    assert bool(fb.norms[0].initialised)
    torch.testing.assert_close(fb.log_prob(x, 0.01), fa.log_prob(x, 0.01), rtol=1e-2, atol=0.5)
    torch.testing.assert_close(fb.inverse(fb(x, 0.01)[0], 0.01), x, atol=1e-5, rtol=1e-5)


def test_untrained_posterior_stems_are_shares_that_sum_to_the_input(tmp_path):
    model = AmortisedPosterior(PosteriorConfig(stems=("a", "b"), sample_rate=8000, hidden=4,
                                               layers=1))
    sep = PosteriorSeparator(model)
    wave = np.linspace(-0.3, 0.3, 512).astype(np.float32)
    stems = sep.separate_detailed(wave, 8000).stems
    np.testing.assert_allclose(stems["a"] + stems["b"], wave, atol=1e-6)


def flow_bundle(tmp_path: Path, data: Path) -> Path:
    """Two tiny flows trained a few steps on the drums and bass of ``data`` and their
    Langevin bundle (SGLD)."""
    priors = {}
    for stem in ("drums", "bass"):
        out = tmp_path / f"flow-{stem}"
        proc = subprocess.run([
            sys.executable, "-m", "lass.cli.train_prior", "--kind", "flow", "--data",
            str(data), "--stem", stem, "--out", str(out), "--blocks", "2", "--flows", "2",
            "--flow-layers", "2", "--flow-hidden", "8", "--samples", "256", "--sample-rate",
            str(SR), "--batch", "4", "--steps", "3", "--valid-every", "3",
            "--valid-windows", "2", "--threads", "1"], capture_output=True, text=True,
            check=False)
        assert proc.returncode == 0, proc.stderr
        priors[stem] = out / "model"
    return make_langevin_bundle(tmp_path / "flows", priors=priors, mix="mean", langevin={
        "schedule": "sgld", "sigma": 0.001, "steps": 5, "eta": 1e-5, "gamma": 100.0})


@pytest.mark.slow  # several trainings (~30 s on 2 cores)
def test_train_posterior_resumes_exactly_and_separates(tmp_path):
    data = make_set(tmp_path / "data")
    flows = flow_bundle(tmp_path, data)
    assert bundle_method(flows) == "langevin"

    def train(out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([
            sys.executable, "-m", "lass.cli.train_posterior", "--data", str(data),
            "--priors", str(flows), "--out", str(out), "--samples", "256", "--batch", "4",
            "--hidden", "8", "--layers", "3", "--cycle", "3", "--steps", str(steps),
            "--valid-every", "2", "--valid-chunks", "2", "--checkpoint-every", "2",
            "--threads", "1", *extra], capture_output=True, text=True, check=False)

    proc = train(tmp_path / "straight", 4)
    assert proc.returncode == 0, proc.stderr
    assert train(tmp_path / "halves", 2).returncode == 0
    proc = train(tmp_path / "halves", 4, "--resume")
    assert proc.returncode == 0, proc.stderr
    one = load_posterior(tmp_path / "straight" / "model")
    two = load_posterior(tmp_path / "halves" / "model")
    for (name, x), (_, y) in zip(one.state_dict().items(), two.state_dict().items(),
                                 strict=True):
        torch.testing.assert_close(x, y, msg=name)
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["step"] == 4
    assert set(summary["valid"]) == {"si_sdr_drums", "si_sdr_bass"}
    bad = train(tmp_path / "bad", 1, "--samples", "250")
    assert bad.returncode == 1
    assert "multiple of the flows' 4" in bad.stderr

    # Both bundles separate with lass-separate.
    from lass.cli.separate import main as separate_main

    bundle = make_posterior_bundle(tmp_path / "post", posterior=tmp_path / "straight" / "model")
    mixture = 0.2 * np.sin(np.linspace(0, 200, SR)).astype(np.float32)
    sf.write(tmp_path / "mix.wav", mixture, SR)
    for b, method in ((bundle, "posterior"), (flows, "langevin")):
        assert separate_main([str(tmp_path / "mix.wav"), "-m", str(b), "-o",
                              str(tmp_path / method), "--quiet"]) == 0
        folder = tmp_path / method / b.name / "mix"
        stems = [sf.read(folder / f"{s}.wav")[0] for s in ("drums", "bass")]
        assert all(s.shape == mixture.shape for s in stems)
        info = json.loads((folder / "separation.json").read_text())
        assert info["settings"]["method"] == method


def test_separate_many_batches_inputs_of_one_length():
    """The posterior gives the same stems batched as alone; Langevin runs one chain per
    input of a batch (their noise differs from a lone run's)."""
    from lass.langevin import LangevinSeparator, sgld_schedule
    from priors.flow import FlowConfig, FlowPrior

    torch.manual_seed(0)
    model = AmortisedPosterior(PosteriorConfig(stems=("a", "b"), sample_rate=8000, hidden=8,
                                               layers=2, cycle=2))
    for enc in model.encoders:
        assert isinstance(enc, Encoder)
        torch.nn.init.normal_(enc.end.weight, std=0.1)
    sep = PosteriorSeparator(model.eval())
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (400, 400, 300)]
    many = sep.separate_many(waves, 8000)
    for w, r in zip(waves, many, strict=True):
        alone = sep.separate_detailed(w, 8000)
        for s in ("a", "b"):
            np.testing.assert_allclose(r.stems[s], alone.stems[s], atol=1e-5)
    flows = {s: FlowPrior(FlowConfig(blocks=1, flows=1, layers=1, hidden=4, sample_rate=8000))
             for s in ("a", "b")}
    lang = LangevinSeparator(flows, ("a", "b"), 8000, "mean",
                             sgld_schedule(sigma=0.01, steps=3, eta=1e-4, gamma=10.0))
    batch = lang.separate_many(waves[:2], 8000)
    first = lang.separate_detailed(waves[0], 8000)
    assert len(batch) == 2
    for s in ("a", "b"):
        assert batch[1].stems[s].shape == waves[1].shape
        assert np.all(np.isfinite(batch[0].stems[s]))
    # every chain starts at the shares and moves little in 3 small steps
    np.testing.assert_allclose(batch[1].stems["a"] + batch[1].stems["b"], waves[1], atol=0.2)
    assert first.stems["a"].shape == waves[0].shape
