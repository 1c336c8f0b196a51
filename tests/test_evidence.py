import json

import numpy as np
import pytest
import torch

from likelihood import LikelihoodError
from likelihood.evidence import EvidenceTrainer, TokenEvidence, evidence_bits, log_unigrams


def test_model_gives_distributions_windows_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = TokenEvidence(16, 4, width=8, dilations=(1, 2), meta={"codec_identity": "abc"})
    model.log_unigram.copy_(torch.log_softmax(torch.randn(2, 16), 1))
    z = torch.randn(3, 4, 40)
    lp = model(z)
    assert lp.shape == (3, 40, 2, 16)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 40, 2))
    full = model.evidence(z)
    torch.testing.assert_close(full, lp - model.log_unigram[None, None])
    window = model.window(z)  # any span from the steps within the receptive field only
    assert model.receptive_field == 5
    for a, b in ((0, 7), (10, 30), (33, 40), (0, 40)):
        torch.testing.assert_close(window(a, b), full[:, a:b], atol=1e-6, rtol=0)
    # Blocks of steps computed ahead and kept: spans in order, inside a kept block, across
    # its end, going back, and longer than a block.
    for block in (1, 8, 512):
        window = model.window(z, block=block)
        for a, b in ((0, 4), (4, 8), (5, 7), (6, 13), (2, 3), (13, 40), (0, 40)):
            torch.testing.assert_close(window(a, b), full[:, a:b], atol=1e-6, rtol=0)
    model.save(tmp_path / "ev.npz")
    back = TokenEvidence.load(tmp_path / "ev.npz")
    assert torch.equal(back(z), lp.detach())
    assert torch.equal(back.log_unigram, model.log_unigram)
    assert back.meta["codec_identity"] == "abc"
    assert back.dilations == (1, 2)
    back.check_codec(16, 4, "abc")
    with pytest.raises(LikelihoodError, match="K = 16"):
        back.check_codec(32, 4, "abc")
    with pytest.raises(LikelihoodError, match="another codec"):
        back.check_codec(16, 4, "xyz")
    with pytest.raises(LikelihoodError, match=r"\(batch, 4, tokens\)"):
        model(torch.randn(1, 5, 10))
    # a truncated file, or a file of another kind: one LikelihoodError
    data = (tmp_path / "ev.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LikelihoodError, match="corrupt or truncated"):
        TokenEvidence.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", meta=np.array(json.dumps({"format_version": 1,
                                                                 "kind": "latent-gaussian"})))
    with pytest.raises(LikelihoodError, match="not a token evidence"):
        TokenEvidence.load(tmp_path / "other.npz")


def planted(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents whose first and second halves of dimensions encode each source's token."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(0, 8, (n, length), generator=gen)
    second = torch.randint(0, 8, (n, length), generator=gen)
    codes = torch.eye(8)
    latents = torch.cat([codes[first], codes[second]], 2)
    return first, second, latents + 0.3 * torch.randn(latents.shape, generator=gen)


EPOCHS = 8


def test_trainer_learns_a_planted_mapping_and_resumes_exactly():
    first, second, latents = planted(160, 20, seed=0)
    vf, vs, vl = planted(16, 20, seed=1)

    def fresh() -> EvidenceTrainer:
        torch.manual_seed(3)
        return EvidenceTrainer(TokenEvidence(8, 16, width=16, dilations=(1,)), [first, second],
                               latents, epochs=EPOCHS, batch=8, lr=1e-2, seed=2)

    before = evidence_bits(fresh().model, [vf, vs], vl)
    whole = fresh()
    for _ in range(EPOCHS):
        whole.run_epoch()
    after = evidence_bits(whole.model, [vf, vs], vl)
    assert min(before["bits"]) > 2.5
    assert max(after["bits"]) < 1.0
    assert min(after["top1"]) > 0.75
    torch.testing.assert_close(whole.model.log_unigram, log_unigrams([first, second], 8))
    # some epochs, a state dict, a new trainer that loads it and runs the others
    part = fresh()
    for _ in range(EPOCHS // 2):
        part.run_epoch()
    state = part.state_dict()
    resumed = fresh()
    resumed.load_state_dict(state)
    assert resumed.epoch == EPOCHS // 2
    while resumed.epoch < EPOCHS:
        resumed.run_epoch()
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    with pytest.raises(LikelihoodError, match="positive"):
        EvidenceTrainer(TokenEvidence(8, 16, width=4, dilations=(1,)), [first, second], latents,
                        epochs=0)


def test_a_model_that_reads_samples_learns_what_only_the_samples_carry(tmp_path):
    """Latents of pure noise; each step's hop of samples holds both sources' tokens (a
    one-hot of each in its halves): only a model that reads the samples can learn them.
    Its windows equal the whole evidence, it saves and loads with its hop, and it refuses
    a codec of another hop and a call without the samples."""
    hop, k, length = 16, 8, 20

    def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                         torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        first = torch.randint(0, k, (n, length), generator=gen)
        second = torch.randint(0, k, (n, length), generator=gen)
        codes = torch.eye(k)
        wave = torch.cat([codes[first], codes[second]], 2).reshape(n, length * hop)
        wave = wave + 0.2 * torch.randn(wave.shape, generator=gen)
        return first, second, torch.randn(n, length, 4, generator=gen), wave

    first, second, latents, wave = data(160, 0)
    vf, vs, vl, vw = data(16, 1)

    def trained(reads: bool) -> EvidenceTrainer:
        torch.manual_seed(3)
        trainer = EvidenceTrainer(TokenEvidence(k, 4, width=16, dilations=(1,),
                                                hop=hop if reads else 0),
                                  [first, second], latents, epochs=6, batch=8, lr=1e-2,
                                  seed=2, waves=wave)
        for _ in range(6):
            trainer.run_epoch()
        return trainer

    blind, reader = trained(False), trained(True)
    assert min(evidence_bits(blind.model, [vf, vs], vl, waves=vw)["bits"]) > 2.5
    got = evidence_bits(reader.model, [vf, vs], vl, waves=vw)
    assert max(got["bits"]) < 1.0
    assert min(got["top1"]) > 0.75
    model = reader.model
    z = vl.transpose(1, 2)
    full = model.evidence(z, vw)
    for block in (1, 8, 512):
        window = model.window(z, block=block, wave=vw)
        for a, b in ((0, 4), (5, 7), (6, 13), (2, 3), (13, 20), (0, 20)):
            torch.testing.assert_close(window(a, b), full[:, a:b], atol=1e-5, rtol=0)
    # samples past tokens * hop are cut, missing ones are zeros
    torch.testing.assert_close(model(z, torch.cat([vw, torch.ones(16, 5)], 1)), model(z, vw))
    torch.testing.assert_close(model(z[:, :, :19], vw[:, : 19 * hop - 3]),
                               model(z[:, :, :19], torch.cat(
                                   [vw[:, : 19 * hop - 3], torch.zeros(16, 3)], 1)))
    model.save(tmp_path / "reader.npz")
    back = TokenEvidence.load(tmp_path / "reader.npz")
    assert back.hop == hop
    assert torch.equal(back(z, vw), model(z, vw).detach())
    back.check_codec(k, 4, None, hop)
    with pytest.raises(LikelihoodError, match="hops of 16 samples"):
        back.check_codec(k, 4, None, 32)
    with pytest.raises(LikelihoodError, match="give wave"):
        back(z)
    with pytest.raises(LikelihoodError, match="give waves"):
        EvidenceTrainer(TokenEvidence(k, 4, width=4, dilations=(1,), hop=hop),
                        [first, second], latents, epochs=1)


def test_fit_evidence_cli_trains_resumes_and_reports(tmp_path, capsys, monkeypatch):
    from lass.cli import fit_evidence as fe
    from tests.test_train_prior_cli import make_codec
    from tests.test_train_vqvae_cli import make_set

    data, codec = make_set(tmp_path / "data"), make_codec(tmp_path / "codec")

    def run(out, *extra):
        return fe.main(["--codec", str(tmp_path / "codec"), "--data", str(data), "--out",
                        str(out), "--hours", "0.002", "--chunk-seconds", "0.25", "--batch", "3",
                        "--threads", "1", "--seed", "5", "--epochs", "3", "--train-batch", "4",
                        "--width", "8", "--dilations", "1", "2", "--valid-hours", "0.0005",
                        *extra])

    assert run(tmp_path / "a.npz") == 0
    got = TokenEvidence.load(tmp_path / "a.npz")
    err = capsys.readouterr().err
    assert "epoch 3: train" in err
    assert "valid bits" in err
    assert got.meta["codec_identity"] == codec.identity()
    assert got.meta["mixtures"] == 29
    assert len(got.meta["valid"]["bits"]) == 2
    got.check_codec(codec.codebook_size, codec.embedding_dim, codec.identity())
    for suffix in (".encoded.pt", ".valid.encoded.pt", ".trainer.pt"):
        assert not (tmp_path / f"a.npz{suffix}").exists()
    # --waveform: the model also reads the mixtures' samples, in hops of the codec's
    assert run(tmp_path / "w.npz", "--waveform") == 0
    reader = TokenEvidence.load(tmp_path / "w.npz")
    assert reader.hop == codec.hop_length
    assert got.hop == 0
    assert len(reader.meta["valid"]["bits"]) == 2

    # Killed in the second epoch: a new run resumes after the first, to the same weights.
    real = EvidenceTrainer.run_epoch

    def killed(self, progress=None):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real(self, progress)

    monkeypatch.setattr(EvidenceTrainer, "run_epoch", killed)
    assert run(tmp_path / "b.npz", "--checkpoint-seconds", "0") == 130
    assert (tmp_path / "b.npz.trainer.pt").is_file()
    assert not (tmp_path / "b.npz").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert run(tmp_path / "b.npz") == 0
    assert "resuming after epoch 1 of 3" in capsys.readouterr().err
    again = TokenEvidence.load(tmp_path / "b.npz")
    for name, value in got.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    # Bad input: one line, non-zero.
    assert fe.main(["--codec", str(tmp_path / "nope"), "--data", str(data), "--out",
                    str(tmp_path / "c.npz")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert run(tmp_path / "d.npz", "--epochs", "0") == 1
    assert "must be positive" in capsys.readouterr().err


def test_bundle_with_token_evidence(tmp_path, capsys):
    from lass import Separator
    from lass.bundle import BundleError, read_bundle
    from lass.cli.make_bundle import main as make_bundle_main
    from lass.errors import LassError
    from tests.bundles import SR, make_debug_bundle, sources
    from vqvae import load_codec

    parts = make_debug_bundle(tmp_path / "parts")
    codec = load_codec(parts / "codec")
    torch.manual_seed(0)
    TokenEvidence(codec.codebook_size, codec.embedding_dim, width=8, dilations=(1,),
                  meta={"codec_identity": codec.identity()}).save(tmp_path / "ev.npz")
    base = ["--codec", str(parts / "codec"), "--prior", f"drums={parts / 'prior-drums'}",
            "--prior", f"bass={parts / 'prior-bass'}", "--beams", "2", "--lam", "0.5",
            "--likelihood", str(parts / "likelihood.npz")]
    out = tmp_path / "ev-bundle"
    assert make_bundle_main([*base, "--evidence", str(tmp_path / "ev.npz"),
                             "--evidence-weight", "0.7", "--out", str(out)]) == 0
    spec = json.loads((out / "bundle.json").read_text())
    assert spec["evidence"]["path"] == "evidence.npz"
    assert spec["sampler"]["evidence_weight"] == 0.7
    sep = Separator.from_pretrained(out)
    assert sep.evidence is not None
    assert sep.settings.evidence_weight == 0.7
    wave = sources(1, SR // 2, seed=4)[0].mean(0).numpy()
    res = sep.separate_detailed(wave, SR)
    np.testing.assert_allclose(res.stems["drums"] + res.stems["bass"], wave, atol=1e-4)
    # weight 0 is the counts alone: the bundle without the model separates the same
    plain = Separator.from_pretrained(parts)
    off = sep.with_settings(evidence_weight=0.0).separate_detailed(wave, SR)
    ref = plain.with_settings(**{f: getattr(sep.settings, f) for f in (
        "sampler", "lam", "output")}).separate_detailed(wave, SR)
    for stem in ("drums", "bass"):
        assert np.array_equal(off.tokens[stem], ref.tokens[stem])
    with pytest.raises(LassError, match="has none"):
        plain.check_settings(plain.with_settings(evidence_weight=1.0).settings)
    with pytest.raises(LassError, match=">= 0"):
        sep.check_settings(sep.with_settings(evidence_weight=-1.0).settings)
    # a model that reads the samples separates too, and its stems still sum to the input
    TokenEvidence(codec.codebook_size, codec.embedding_dim, width=8, dilations=(1,),
                  meta={"codec_identity": codec.identity()}, hop=codec.hop_length
                  ).save(tmp_path / "reader.npz")
    assert make_bundle_main([*base, "--evidence", str(tmp_path / "reader.npz"),
                             "--out", str(tmp_path / "reader-bundle")]) == 0
    reads = Separator.from_pretrained(tmp_path / "reader-bundle").separate_detailed(wave, SR)
    np.testing.assert_allclose(reads.stems["drums"] + reads.stems["bass"], wave, atol=1e-4)
    # a model of another codec is refused with one line; the file is hashed
    TokenEvidence(codec.codebook_size + 1, codec.embedding_dim, width=4, dilations=(1,)
                  ).save(tmp_path / "other.npz")
    capsys.readouterr()
    assert make_bundle_main([*base, "--evidence", str(tmp_path / "other.npz"),
                             "--out", str(tmp_path / "bad")]) == 1
    assert "token evidence model is for K" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    data = bytearray((out / "evidence.npz").read_bytes())
    data[-1] ^= 1
    (out / "evidence.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="token evidence"):
        read_bundle(out)
