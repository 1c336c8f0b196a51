import json
import math
from typing import Any

import pytest
import torch

from vqvae import CodecError, ConvVQVAE, ConvVQVAEConfig, load_codec
from vqvae.losses import multi_resolution_stft_loss, normalised_mse, sdr_db
from vqvae.train import CodecTrainer, TrainConfig, perplexity


def tiny(**kw) -> ConvVQVAE:
    torch.manual_seed(0)
    cfg: dict[str, Any] = dict(sample_rate=8000, hop_length=16, codebook_size=32, dim=8,
                               channels=4)
    cfg.update(kw)
    return ConvVQVAE(ConvVQVAEConfig(**cfg))


def sines(n: int = 4, t: int = 1024) -> torch.Tensor:
    time = torch.arange(t) / 8000
    freqs = torch.tensor([110.0, 220.0, 330.0, 440.0])[:n, None]
    return 0.5 * torch.sin(2 * math.pi * freqs * time)


@pytest.mark.parametrize(("hop", "strides"), [(64, (4, 4, 4)), (32, (4, 4, 2)), (128, (4, 4, 4, 2)),
                                              (2, (2,))])
def test_strides_follow_the_hop(hop, strides):
    assert ConvVQVAEConfig(hop_length=hop).resolved_strides() == strides
    model = tiny(hop_length=hop)
    wave = torch.randn(2, 1000)
    codes = model.encode(wave)
    assert codes.shape == (2, math.ceil(1000 / hop))
    assert codes.dtype == torch.int64
    assert model.decode(codes).shape == (2, codes.shape[1] * hop)


def test_bad_hops_and_strides():
    with pytest.raises(CodecError, match="power of two"):
        ConvVQVAEConfig(hop_length=48).resolved_strides()
    with pytest.raises(CodecError, match="multiply to 16"):
        ConvVQVAEConfig(hop_length=64, strides=(4, 4)).resolved_strides()


def test_embed_decode_latents_and_code_round_trip():
    model = tiny().eval()
    codes = torch.randint(0, 32, (3, 20))
    latents = model.embed(codes)
    assert latents.shape == (3, 8, 20)
    torch.testing.assert_close(model.decode_latents(latents), model.decode(codes))
    # codes -> vectors -> codes: each code vector's nearest code is itself.
    flat = latents.permute(0, 2, 1).reshape(-1, 8)
    assert torch.equal(model.codebook.nearest(flat), codes.flatten())


def test_save_load_gives_identical_outputs(tmp_path):
    model = tiny().eval()
    wave = sines()
    model.save(tmp_path / "codec")
    cfg = json.loads((tmp_path / "codec" / "config.json").read_text())
    assert cfg["class"] == "ConvVQVAE"
    assert cfg["format_version"] == 1
    again = load_codec(tmp_path / "codec")
    assert again.identity() == model.identity()
    assert torch.equal(again.encode(wave), model.encode(wave))
    torch.testing.assert_close(again.decode(model.encode(wave)), model.decode(model.encode(wave)),
                               rtol=0, atol=0)


def test_load_codec_errors(tmp_path):
    with pytest.raises(CodecError, match="codec directory not found"):
        load_codec(tmp_path / "nothing")
    model = tiny()
    model.save(tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CodecError, match="corrupt or truncated"):
        load_codec(tmp_path / "c")
    model.save(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["codebook_size"] = 64
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecError, match=r"shape mismatches \(first: codebook\.embedding: file "
                                         r"\(32, 8\) vs model \(64, 8\)"):
        load_codec(tmp_path / "d")
    cfg["class"] = "Mystery"
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecError, match="unknown codec class 'Mystery'"):
        load_codec(tmp_path / "d")


def test_ema_codebook_restarts_dead_codes_on_data():
    model = tiny(codebook_size=16, dim=4)
    z = torch.nn.functional.normalize(torch.randn(64, 4), dim=-1)
    codes = model.codebook.nearest(z)
    restarted = model.codebook.update(z, codes, torch.Generator().manual_seed(0))
    assert restarted == 16  # usage starts at zero: every code is placed on real outputs
    rows = model.codebook.embedding
    dists = torch.cdist(rows, z).min(dim=1).values
    assert torch.all(dists < 1e-3)
    # A code that keeps being used is kept; unused codes decay and restart later.
    for _ in range(200):
        restarted = model.codebook.update(z[:1], torch.zeros(1, dtype=torch.long), None)
    assert model.codebook.usage[0] > 0.5


def test_losses_on_known_cases():
    ref = sines(2)
    assert float(normalised_mse(ref, ref)) == 0.0
    assert float(normalised_mse(torch.zeros_like(ref), ref)) == pytest.approx(1.0)
    torch.testing.assert_close(sdr_db(0.9 * ref, ref), torch.full((2,), 20.0), atol=1e-3,
                               rtol=0)
    assert float(multi_resolution_stft_loss(ref, ref)) < 1e-6
    assert float(multi_resolution_stft_loss(0.5 * ref, ref)) > 0.1
    assert perplexity(torch.tensor([0, 1, 2, 3]), 8) == pytest.approx(4.0)


@pytest.mark.slow  # over 10 s on 2 cores
def test_training_steps_improve_reconstruction():
    model = tiny(codebook_size=64)
    trainer = CodecTrainer(model, TrainConfig(steps=150, lr=3e-3, warmup=5, spec_weight=0.01))
    wave = sines()
    first = trainer.train_step(wave)
    for _ in range(149):
        last = trainer.train_step(wave)
    assert last.loss < 0.6 * first.loss
    assert last.sdr > first.sdr + 3.0


def test_resume_equals_an_uninterrupted_run(tmp_path):
    wave = sines()
    cfg = TrainConfig(steps=6, lr=3e-3, warmup=2)
    straight = CodecTrainer(tiny(), cfg)
    for _ in range(6):
        straight.train_step(wave)
    half = CodecTrainer(tiny(), cfg)
    for _ in range(3):
        half.train_step(wave)
    half.save(tmp_path / "run")
    resumed = CodecTrainer.resume(tmp_path / "run", cfg)
    assert resumed.step == 3
    for _ in range(3):
        resumed.train_step(wave)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("hop", [64, 32, 8])
def test_chunked_decoding_equals_decoding_whole(hop, monkeypatch):
    import vqvae.codec

    torch.manual_seed(0)
    codec = ConvVQVAE(ConvVQVAEConfig(hop_length=hop, codebook_size=32, dim=8, channels=4,
                                      max_channels=16)).eval()
    for p in codec.decoder.parameters():  # weights large enough that every layer matters
        p.data.normal_(0, 0.5)
    codes = torch.randint(0, 32, (3, 157))
    with torch.no_grad():
        whole = codec.decode_latents(codec.embed(codes))
        monkeypatch.setattr(vqvae.codec, "CPU_DECODE_CHUNK", 16)
        chunked = codec.decode(codes)
        assert chunked.shape == (3, 157 * hop)
        torch.testing.assert_close(chunked, whole, atol=1e-5 * float(whole.abs().max()), rtol=0)
        # Without the context the chunks' edges differ: the test can tell.
        monkeypatch.setattr(ConvVQVAE, "decode_context", property(lambda self: 0))
        assert not torch.allclose(codec.decode(codes), whole,
                                  atol=1e-3 * float(whole.abs().max()))


@pytest.mark.parametrize("hop", [64, 32, 8])
def test_chunked_encoding_equals_encoding_whole(hop, monkeypatch):
    import vqvae.codec

    torch.manual_seed(0)
    codec = ConvVQVAE(ConvVQVAEConfig(hop_length=hop, codebook_size=32, dim=8, channels=4,
                                      max_channels=16)).eval()
    for p in codec.encoder.parameters():  # weights large enough that every layer matters
        p.data.normal_(0, 0.5)
    wave = torch.randn(3, 157 * hop - hop // 2)  # not a whole number of tokens
    with torch.no_grad():
        whole = codec.latents(wave)
        monkeypatch.setattr(vqvae.codec, "CPU_ENCODE_CHUNK", 16)
        chunked = codec.latents_batched(wave)
        assert chunked.shape == whole.shape == (3, 8, 157)
        torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
        # Without the context the chunks' edges differ: the test can tell.
        monkeypatch.setattr(ConvVQVAE, "encode_context", property(lambda self: 0))
        assert not torch.allclose(codec.latents_batched(wave), whole, atol=1e-3)


def test_quantising_in_parts_equals_quantising_at_once(monkeypatch):
    import vqvae.conv

    torch.manual_seed(0)
    codec = ConvVQVAE(ConvVQVAEConfig(hop_length=8, codebook_size=64, dim=8, channels=4)).eval()
    z = torch.nn.functional.normalize(torch.randn(3, 8, 101), dim=1)
    whole = (z.permute(0, 2, 1).reshape(-1, 8) @ codec.codebook.embedding.t()).argmax(-1)
    monkeypatch.setattr(vqvae.conv, "NEAREST_ROWS", 7)
    assert torch.equal(codec.quantise(z).reshape(-1), whole)
    assert codec.quantise(z[:, :, :0]).shape == (3, 0)
