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


def test_lass_separate_method_langevin_with_a_wavenet_bundle(tmp_path, capsys):
    import json

    import soundfile as sf

    from lass.bundle import sha256_path
    from lass.cli.separate import main as separate_main
    from priors.wavenet import WaveNetConfig, WaveNetPrior

    root = tmp_path / "wn-bundle"
    entries = {}
    for i, stem in enumerate(("drums", "bass")):
        torch.manual_seed(i)
        WaveNetPrior(WaveNetConfig(stacks=1, layers=3, residual=8, gate=8, skip=8,
                                   sample_rate=8000, class_name=stem)).save(root / stem)
        entries[stem] = {"path": stem, "sha256": sha256_path(root / stem)}
    (root / "bundle.json").write_text(json.dumps({
        "format_version": 1, "method": "langevin", "name": "wn", "sample_rate": 8000,
        "stems": ["drums", "bass"], "mix": "mean", "priors": entries,
        "langevin": {"schedule": "basis", "steps": 3, "levels": 4}}))
    rate = 16000
    t = np.arange(rate // 2) / rate
    sf.write(tmp_path / "mix.wav", (0.3 * np.sin(2 * np.pi * 110 * t)).astype(np.float32), rate)
    out = tmp_path / "out"
    assert separate_main([str(tmp_path / "mix.wav"), "-m", str(root), "--method", "langevin",
                          "-o", str(out), "--float32"]) == 0
    for stem in ("drums", "bass"):
        wave, sr = sf.read(out / "wn" / "mix" / f"{stem}.wav")
        assert sr == rate
        assert wave.shape == t.shape
        assert np.all(np.isfinite(wave))
    info = json.loads((out / "wn" / "mix" / "separation.json").read_text())
    assert info["settings"]["method"] == "langevin"
    assert info["settings"]["name"] == "basis"
    # the bundle says how it separates: no --method needed, a contrary one is refused
    from lass import Separator, load_separator
    from lass.langevin import LangevinSeparator

    assert isinstance(load_separator(root), LangevinSeparator)
    assert isinstance(load_separator("toy"), Separator)
    assert separate_main([str(tmp_path / "mix.wav"), "-m", str(root), "-o",
                          str(tmp_path / "out2")]) == 0
    assert (tmp_path / "out2" / "wn" / "mix" / "drums.wav").is_file()
    capsys.readouterr()
    assert separate_main([str(tmp_path / "mix.wav"), "-m", str(root), "--method", "lass",
                          "-o", str(tmp_path / "out3")]) == 1
    assert "--method lass: the bundle separates with langevin" in capsys.readouterr().err
    # a LASS bundle asked to run Langevin, and a tampered prior: one error line each
    (root / "drums" / "config.json").write_text("{}")
    capsys.readouterr()
    assert separate_main([str(tmp_path / "mix.wav"), "-m", str(root), "--method", "langevin",
                          "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "does not match its sha256" in err
    assert "Traceback" not in err
