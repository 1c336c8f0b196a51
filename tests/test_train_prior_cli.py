import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lass.data import folder_tracks
from lass.tokens import encode_tracks, encode_wave
from priors import load_prior
from tests.helpers import tone, write_audio
from tests.test_train_vqvae_cli import SR, make_set
from vqvae import ConvVQVAE, ConvVQVAEConfig


def make_codec(path: Path) -> ConvVQVAE:
    torch.manual_seed(0)
    codec = ConvVQVAE(ConvVQVAEConfig(sample_rate=SR, hop_length=16, codebook_size=32, dim=8,
                                      channels=4)).eval()
    codec.save(path)
    return codec


def test_segmented_encoding_equals_whole_encoding(monkeypatch):
    import lass.tokens as tokens

    torch.manual_seed(0)
    codec = ConvVQVAE(ConvVQVAEConfig(sample_rate=SR, hop_length=16, codebook_size=32, dim=8,
                                      channels=4)).eval()
    wave = tone(2.0, SR, 200.0, 0.4)
    whole = codec.encode(torch.from_numpy(wave)[None])[0].numpy()
    monkeypatch.setattr(tokens, "SEGMENT_TOKENS", 64)  # many segments over 1000 tokens
    monkeypatch.setattr(tokens, "MARGIN_TOKENS", 16)
    np.testing.assert_array_equal(encode_wave(codec, wave), whole)


def test_token_cache_is_reused(tmp_path):
    data = make_set(tmp_path / "data")
    codec = make_codec(tmp_path / "codec")
    tracks = folder_tracks(data, "train", ["drums", "bass"])
    a = encode_tracks(codec, tracks, "bass", tmp_path / "cache", "train")
    files = list((tmp_path / "cache").rglob("*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    b = encode_tracks(codec, tracks, "bass", tmp_path / "cache", "train")
    assert files[0].stat().st_mtime_ns == stamp
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert [x.size for x in a] == [SR // 16] * 3


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lass.cli.train_prior", *args],
                          capture_output=True, text=True, check=False)


def common(data: Path, codec: Path, out: Path) -> list[str]:
    return ["--codec", str(codec), "--data", str(data), "--out", str(out), "--context", "32",
            "--width", "32", "--layers", "1", "--heads", "2", "--batch", "4",
            "--valid-every", "2", "--checkpoint-every", "2", "--valid-windows", "4",
            "--threads", "1"]


@pytest.mark.slow  # over 10 s on 2 cores
def test_train_prior_command(tmp_path):
    data = make_set(tmp_path / "data")
    make_codec(tmp_path / "codec")
    out = tmp_path / "drums"
    proc = run(*common(data, tmp_path / "codec", out), "--stem", "drums", "--steps", "4")
    assert proc.returncode == 0, proc.stderr
    assert "valid baselines (bits/token)" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 4
    assert set(summary["baselines"]) == {"unigram_entropy", "unigram", "bigram", "tokens"}
    assert 0 < summary["valid_bits_per_token"] < 10
    prior = load_prior(out / "model")
    assert prior.vocab_size == 32
    assert prior.context_length == 32
    proc = run(*common(data, tmp_path / "codec", out), "--stem", "drums", "--steps", "6",
               "--resume")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["step"] == 6
    shared = tmp_path / "shared"
    proc = run(*common(data, tmp_path / "codec", shared), "--stem", "drums", "bass",
               "--conditional", "--steps", "2", "--kv-heads", "1")
    assert proc.returncode == 0, proc.stderr
    prior = load_prior(shared / "model")
    assert prior.config.class_names == ("drums", "bass")
    assert prior.model.config.num_key_value_heads == 1
    per_stem = json.loads((shared / "summary.json").read_text())["per_stem"]
    assert set(per_stem) == {"drums", "bass"}
    for stem in per_stem.values():
        assert 0 < stem["valid_bits_per_token"] < 10
        assert stem["bigram"] > 0


def first_run(tmp_path: Path, stem: str, steps: int) -> tuple[Path, Path]:
    """A data set and codec in ``tmp_path`` and a prior of ``stem`` trained ``steps`` steps:
    (data, run folder)."""
    data = make_set(tmp_path / "data")
    make_codec(tmp_path / "codec")
    out = tmp_path / "first"
    proc = run(*common(data, tmp_path / "codec", out), "--stem", stem, "--steps", str(steps))
    assert proc.returncode == 0, proc.stderr
    return data, out


@pytest.mark.slow  # over 10 s on 2 cores
def test_init_starts_from_saved_weights(tmp_path):
    data, first = first_run(tmp_path, "drums", 4)
    # the architecture options are read from --init: other --width and --layers are ignored
    again = [*common(data, tmp_path / "codec", tmp_path / "again"), "--width", "64",
             "--layers", "2", "--stem", "drums", "--init", str(first / "model")]
    proc = run(*again, "--steps", "2", "--lr", "0")  # no update: the same weights
    assert proc.returncode == 0, proc.stderr
    a, b = load_prior(first / "model"), load_prior(tmp_path / "again" / "model")
    assert a.config == b.config
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    bits = [json.loads((f / "summary.json").read_text())["valid_bits_per_token"]
            for f in (first, tmp_path / "again")]
    assert bits[0] == bits[1]
    proc = run(*common(data, tmp_path / "codec", tmp_path / "more"), "--stem", "drums",
               "--init", str(first / "model"), "--steps", "3")
    assert proc.returncode == 0, proc.stderr
    c = load_prior(tmp_path / "more" / "model")
    assert json.loads((tmp_path / "more" / "summary.json").read_text())["step"] == 3
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(),
                                                     strict=True))
    # A one-stem (unconditional) prior becomes a shared one: each class starts from its start
    # token, so with no update every class predicts what it predicted.
    proc = run(*common(data, tmp_path / "codec", tmp_path / "two"), "--stem", "drums", "bass",
               "--conditional", "--init", str(first / "model"), "--steps", "2", "--lr", "0")
    assert proc.returncode == 0, proc.stderr
    assert "extended with ['drums', 'bass']" in proc.stderr
    two = load_prior(tmp_path / "two" / "model")
    assert two.config.class_names == ("drums", "bass")
    codes = torch.randint(0, a.vocab_size, (3, 20))
    for label in (0, 1):
        torch.testing.assert_close(two.token_log_probs(codes, torch.full((3,), label)),
                                   a.token_log_probs(codes))
    # New stems may only follow the prior's own classes, in order.
    for i, track in enumerate(sorted(data.glob("*/*"))):
        write_audio(track / "other.wav", tone(1.0, SR, 500.0 + 20 * i, 0.3, seed=30 + i), SR)
    proc = run(*common(data, tmp_path / "codec", tmp_path / "three"), "--stem", "drums", "bass",
               "other", "--conditional", "--init", str(tmp_path / "two" / "model"),
               "--steps", "2", "--lr", "0")
    assert proc.returncode == 0, proc.stderr
    assert "classes ['drums', 'bass'] extended with ['other']" in proc.stderr
    proc = run(*common(data, tmp_path / "codec", tmp_path / "swapped"), "--stem", "bass",
               "drums", "--conditional", "--init", str(tmp_path / "two" / "model"), "--steps",
               "2")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "lass-train-prior: error: --init ")
    assert "differ from this run's ['bass', 'drums']" in proc.stderr
    wide = [*common(data, tmp_path / "codec", tmp_path / "wide"), "--stem", "drums",
            "--init", str(first / "model"), "--steps", "2", "--context", "64"]
    proc = run(*wide)
    assert proc.returncode == 1
    assert "--context 64 exceeds the context of --init" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # over 10 s on 2 cores
def test_prior_of_another_codec_is_refused(tmp_path):
    data, out = first_run(tmp_path, "bass", 2)
    torch.manual_seed(1)
    other = ConvVQVAE(ConvVQVAEConfig(sample_rate=SR, hop_length=16, codebook_size=64, dim=8,
                                      channels=4))
    other.save(tmp_path / "other")
    proc = run(*common(data, tmp_path / "other", out), "--stem", "bass", "--steps", "4",
               "--resume")
    assert proc.returncode == 1
    assert "models 32 tokens but the codec has 64 codes" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # over 10 s on 2 cores
def test_init_on_a_fine_tuned_codec_takes_its_identity(tmp_path):
    """A prior of one codec may start a run on another codec of the same size (the first
    fine-tuned): it is said, and the new prior records the new codec."""
    data, first = first_run(tmp_path, "bass", 2)
    torch.manual_seed(1)
    tuned = ConvVQVAE(ConvVQVAEConfig(sample_rate=SR, hop_length=16, codebook_size=32, dim=8,
                                      channels=4))
    tuned.save(tmp_path / "tuned")
    proc = run(*common(data, tmp_path / "tuned", tmp_path / "again"), "--stem", "bass",
               "--steps", "2", "--init", str(first / "model"))
    assert proc.returncode == 0, proc.stderr
    assert "was trained on another codec's tokens" in proc.stderr
    again = load_prior(tmp_path / "again" / "model")
    assert again.config.codec_identity == tuned.identity()
    assert load_prior(first / "model").config.codec_identity != tuned.identity()


def test_missing_stem_is_one_line(tmp_path):
    data = make_set(tmp_path / "data")
    write_audio(data / "train" / "extra" / "drums.wav", tone(1.0, SR, 100.0), SR)
    make_codec(tmp_path / "codec")
    proc = run(*common(data, tmp_path / "codec", tmp_path / "p"), "--stem", "bass",
               "--steps", "2")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "lass-train-prior: error: track is missing stem 'bass'")


# a WaveNet small enough to train in seconds (architecture), and the run options of the tests
SMALL_WAVENET = ("--stacks", "1", "--dilated-layers", "3", "--residual", "8", "--gate", "8",
                 "--skip", "8")
WAVENET_RUN = ("--samples", "256", "--batch", "2", "--valid-every", "2",
               "--checkpoint-every", "2", "--threads", "1")


@pytest.mark.slow  # over 10 s on 2 cores
def test_train_wavenet_prior_and_resume(tmp_path):
    from priors.wavenet import load_wavenet

    data = make_set(tmp_path / "data")
    out = tmp_path / "wn"
    args = ["--kind", "wavenet", "--data", str(data), "--stem", "bass", "--out", str(out),
            *SMALL_WAVENET, *WAVENET_RUN]
    proc = run(*args, "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    net = load_wavenet(out / "model")
    assert net.config.class_name == "bass"
    assert net.receptive_field == 2 * 7 + 1
    assert json.loads((out / "summary.json").read_text())["step"] == 2
    assert run(*args, "--steps", "2").returncode == 1  # a run is there: --resume or new --out
    proc = run(*args, "--steps", "4", "--resume")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 4
    assert 0 < summary["valid_nats_per_sample"] < 10


@pytest.mark.slow  # over 10 s on 2 cores
def test_wavenet_init_starts_from_saved_weights(tmp_path):
    from priors.wavenet import load_wavenet

    data = make_set(tmp_path / "data")
    first = tmp_path / "wn"
    proc = run("--kind", "wavenet", "--data", str(data), "--stem", "bass", "--out", str(first),
               *SMALL_WAVENET, *WAVENET_RUN, "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    source = load_wavenet(first / "model")
    # the architecture comes from --init: the default flags here would build another WaveNet
    base = ["--kind", "wavenet", "--data", str(data), "--init", str(first / "model"),
            *WAVENET_RUN]
    still = tmp_path / "still"
    proc = run(*base, "--stem", "bass", "--out", str(still), "--steps", "2", "--lr", "0")
    assert proc.returncode == 0, proc.stderr
    kept = load_wavenet(still / "model")
    assert kept.config == source.config
    kept_state = kept.state_dict()
    for name, value in source.state_dict().items():
        assert torch.equal(value, kept_state[name]), name
    moved = tmp_path / "moved"
    proc = run(*base, "--stem", "bass", "--out", str(moved), "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    trained = load_wavenet(moved / "model").state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in source.state_dict().items())
    proc = run(*base, "--stem", "drums", "--out", str(tmp_path / "other"), "--steps", "2")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"lass-train-prior: error: --init {first / 'model'}: its stem 'bass' differs from "
        "this run's 'drums' (--stem)")
    assert "Traceback" not in proc.stderr


SMALL_FLOW = ["--blocks", "2", "--flows", "2", "--flow-layers", "2", "--flow-hidden", "8",
              "--samples", "256", "--batch", "4", "--valid-every", "2", "--valid-windows", "4",
              "--checkpoint-every", "2", "--threads", "1", "--sample-rate", str(SR)]


@pytest.mark.slow  # over 10 s on 2 cores
def test_train_flow_prior_resumes_exactly(tmp_path):
    from priors.flow import load_flow

    data = make_set(tmp_path / "data")
    args = ["--kind", "flow", "--data", str(data), "--stem", "bass", *SMALL_FLOW]
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    proc = run(*args, "--out", str(straight), "--steps", "4")
    assert proc.returncode == 0, proc.stderr
    assert run(*args, "--out", str(halves), "--steps", "2").returncode == 0
    proc = run(*args, "--out", str(halves), "--steps", "4", "--resume")
    assert proc.returncode == 0, proc.stderr
    a, b = load_flow(straight / "model"), load_flow(halves / "model")
    assert a.config.class_name == "bass"
    assert a.config.sample_rate == SR
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=name)
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["kind"] == "flow"
    assert summary["step"] == 4
    assert np.isfinite(summary["valid_nats_per_sample"])
    bad = run(*args, "--out", str(tmp_path / "bad"), "--steps", "1", "--samples", "250")
    assert bad.returncode == 1
    assert "multiple of 2**blocks" in bad.stderr
