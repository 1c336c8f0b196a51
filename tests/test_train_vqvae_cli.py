import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lass.cli.train_vqvae import Batches
from lass.data import StemDataset, folder_tracks
from tests.helpers import tone, write_audio
from vqvae import ConvVQVAE, load_codec

SR = 8000


def make_set(root: Path) -> Path:
    for split, n in (("train", 3), ("valid", 1), ("test", 1)):
        for i in range(n):
            write_audio(root / split / f"{split}{i}" / "drums.wav",
                        tone(1.0, SR, 300.0 + 50 * i, 0.3, seed=i), SR)
            write_audio(root / split / f"{split}{i}" / "bass.wav",
                        tone(1.0, SR, 60.0 + 10 * i, 0.4, seed=10 + i), SR)
    return root


def train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["--data", str(data), "--out", str(out), "--sample-rate", str(SR), "--hop", "16",
            "--codebook-size", "32", "--dim", "8", "--channels", "4", "--batch", "4",
            "--seconds", "0.256", "--valid-chunks", "3", "--valid-every", "2",
            "--checkpoint-every", "2", "--threads", "1", *extra]
    return subprocess.run([sys.executable, "-m", "lass.cli.train_vqvae", *args],
                          capture_output=True, text=True, check=False)


@pytest.mark.slow  # over 10 s on 2 cores
def test_train_resume_and_outputs(tmp_path):
    data = make_set(tmp_path / "data")
    out = tmp_path / "run"
    proc = train(data, out, "--steps", "4")
    assert proc.returncode == 0, proc.stderr
    codec = load_codec(out / "model")
    assert isinstance(codec, ConvVQVAE)
    assert codec.hop_length == 16
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 4
    assert set(summary["valid"]) == {"sdr_drums", "sdr_bass", "sdr_mixture", "perplexity",
                                     "used_codes"}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "valid"] == [2, 4]
    # A second run in the same folder needs --resume; with it, training goes on.
    proc = train(data, out, "--steps", "6")
    assert proc.returncode == 1
    assert "already holds a training run" in proc.stderr
    proc = train(data, out, "--steps", "6", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["step"] == 6
    # The same seed gives the same weights as one uninterrupted run of 6 steps.
    straight = tmp_path / "straight"
    assert train(data, straight, "--steps", "6").returncode == 0
    a, b = load_codec(out / "model"), load_codec(straight / "model")
    assert a.identity() == b.identity()


@pytest.mark.slow  # over 10 s on 2 cores
def test_init_fine_tunes_a_saved_codec(tmp_path):
    data = make_set(tmp_path / "data")
    first = tmp_path / "first"
    assert train(data, first, "--steps", "2").returncode == 0
    # With learning rate 0 the network's weights are those it started from (only the EMA
    # codebook moves), and the codec's own hop wins over --hop.
    proc = train(data, tmp_path / "same", "--steps", "1", "--lr", "0", "--init",
                 str(first / "model"), "--hop", "32")
    assert proc.returncode == 0, proc.stderr
    a, b = load_codec(first / "model"), load_codec(tmp_path / "same" / "model")
    assert b.hop_length == a.hop_length
    conv = [k for k, v in a.state_dict().items() if v.dim() == 3]  # the convolutions
    assert conv
    for k in conv:
        assert torch.equal(a.state_dict()[k], b.state_dict()[k]), k
    proc = train(data, tmp_path / "tuned", "--steps", "3", "--init", str(first / "model"))
    assert proc.returncode == 0, proc.stderr
    tuned = load_codec(tmp_path / "tuned" / "model")
    assert tuned.identity() != a.identity()
    assert tuned.hop_length == a.hop_length
    assert json.loads((tmp_path / "tuned" / "summary.json").read_text())["step"] == 3
    proc = train(data, tmp_path / "rate", "--steps", "1", "--init", str(first / "model"),
                 "--sample-rate", str(2 * SR))
    assert proc.returncode == 1
    assert "works at" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_missing_data_is_one_line(tmp_path):
    proc = train(tmp_path / "nowhere", tmp_path / "run", "--steps", "1")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("lass-train-vqvae: error: data set root not found")
    assert "Traceback" not in proc.stderr


def test_batches_mix_stems_and_mixtures(tmp_path):
    data = make_set(tmp_path / "data")
    ds = StemDataset(folder_tracks(data, "train", ["drums", "bass"]), sample_rate=SR,
                     chunk=800)
    batches = Batches(ds, batch=64, seed=0, mix_fraction=0.5, rule="mean")
    x = batches(3)
    assert x.shape == (64, 800)
    assert torch.equal(x, batches(3))
    assert not torch.equal(x, batches(4))
    # Mixtures hold both tones; single stems only one: look at the 60-80 Hz and 300-400 Hz bands.
    spec = np.abs(np.fft.rfft(x.numpy(), axis=1))
    low = spec[:, 5:9].max(axis=1)  # 50-90 Hz (bins of 10 Hz)
    high = spec[:, 29:41].max(axis=1)  # 290-400 Hz
    both = (low > 0.2 * spec.max(axis=1)) & (high > 0.2 * spec.max(axis=1))
    assert 10 < both.sum() < 54


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_mix_fraction_extremes(tmp_path, fraction):
    data = make_set(tmp_path / "data")
    ds = StemDataset(folder_tracks(data, "train", ["drums", "bass"]), sample_rate=SR,
                     chunk=800)
    x = Batches(ds, batch=16, seed=1, mix_fraction=fraction, rule="mean")(0).numpy()
    spec = np.abs(np.fft.rfft(x, axis=1))
    low = spec[:, 5:9].max(axis=1) > 0.2 * spec.max(axis=1)
    high = spec[:, 29:41].max(axis=1) > 0.2 * spec.max(axis=1)
    assert np.all(low & high) if fraction == 1.0 else not np.any(low & high)
