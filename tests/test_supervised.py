import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lass.errors import LassError
from lass.supervised import ConvTasNet, ConvTasNetConfig, load_supervised, si_sdr_loss
from tests.test_train_vqvae_cli import SR, make_set

TINY = ConvTasNetConfig(stems=("drums", "bass"), sample_rate=SR, filters=16, kernel=8,
                        bottleneck=8, hidden=16, skip=8, layers=3, stacks=1)


def tiny() -> ConvTasNet:
    torch.manual_seed(0)
    return ConvTasNet(TINY).eval()


def test_stems_add_up_to_the_mixture_at_any_length():
    net = tiny()
    for n in (1, 7, 100, 333):
        x = torch.randn(2, n)
        with torch.no_grad():
            out = net(x)
        assert out.shape == (2, 2, n)
        torch.testing.assert_close(out.sum(1), x, atol=1e-5, rtol=0)


def test_receptive_field_bounds_what_an_output_sample_sees():
    net = tiny()
    for p in net.parameters():  # weights large enough that every layer matters
        p.data.normal_(0, 0.3)
    x = torch.randn(1, 2000)
    t, r = 1000, TINY.receptive_field
    with torch.no_grad():
        base = net(x)[0, :, t]
        far = x.clone()
        far[0, : t - r - 1] += 5.0
        far[0, t + r + 1:] += 5.0
        near = x.clone()
        near[0, t - r // 4] += 5.0
        # The residual share of the input at t is (x - sum) / k: only x[t] itself counts.
        torch.testing.assert_close(net(far)[0, :, t], base, atol=1e-4, rtol=0)
        assert not torch.allclose(net(near)[0, :, t], base, atol=1e-4)


def test_segmented_separation_equals_one_pass():
    net = tiny()
    x = np.random.default_rng(0).standard_normal(3000).astype(np.float32)
    with torch.no_grad():
        whole = net(torch.from_numpy(x)[None])[0].numpy()
    parts = net.separate(x, segment_seconds=500 / SR)
    np.testing.assert_allclose(parts, whole, atol=1e-4)


def test_si_sdr_loss_rewards_the_target_and_skips_silent_stems():
    target = torch.randn(2, 3, 800)
    target[1, 2] = 0.0  # a silent stem
    noisy = target + 0.1 * torch.randn_like(target)
    assert float(si_sdr_loss(target, target)) < -60
    assert -25 < float(si_sdr_loss(noisy, target)) < -15
    assert torch.isfinite(si_sdr_loss(torch.randn_like(target), target))


def test_save_load_and_bad_folders(tmp_path):
    net = tiny()
    net.save(tmp_path / "net")
    again = load_supervised(tmp_path / "net")
    assert again.config == TINY
    x = torch.randn(1, 400)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x))
    with pytest.raises(LassError, match="not a saved supervised separator"):
        load_supervised(tmp_path / "missing")
    (tmp_path / "net" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(LassError, match="cannot load the supervised separator"):
        load_supervised(tmp_path / "net")
    with pytest.raises(LassError, match="two or more distinct stems"):
        ConvTasNet(ConvTasNetConfig(stems=("a", "a")))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lass.cli.train_supervised", *args],
                          capture_output=True, text=True, check=False)


def common(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--stems", "drums", "bass", "--out", str(out),
            "--sample-rate", str(SR), "--batch", "2", "--seconds", "0.25", "--filters", "16",
            "--kernel", "8", "--bottleneck", "8", "--hidden", "16", "--skip", "8",
            "--layers", "2", "--stacks", "1", "--valid-every", "2", "--valid-chunks", "4",
            "--checkpoint-every", "2", "--threads", "1"]


@pytest.mark.slow  # over 10 s on 2 cores
def test_train_resumes_exactly_and_evaluates(tmp_path):
    data = make_set(tmp_path / "data")
    proc = run(*common(data, tmp_path / "a"), "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    proc = run(*common(data, tmp_path / "a"), "--steps", "4", "--resume")
    assert proc.returncode == 0, proc.stderr
    proc = run(*common(data, tmp_path / "b"), "--steps", "4")
    assert proc.returncode == 0, proc.stderr
    a, b = load_supervised(tmp_path / "a" / "model"), load_supervised(tmp_path / "b" / "model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=name)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["step"] == 4
    assert set(summary["valid"]) == {"si_sdr_drums", "si_sdr_bass"}
    proc = run(*common(data, tmp_path / "a"), "--steps", "4")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
