import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lass import BeamSearch, SeparationSettings, Separator
from lass.bundle import BundleError, read_bundle, sha256_path
from lass.cli.separate import main as separate_main
from lass.errors import DataError, LassError
from lass.separator import soft_masks
from tests.bundles import SR, make_debug_bundle, sources


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_debug_bundle(tmp_path_factory.mktemp("bundle") / "debug")


def mixture(seconds: float = 1.0, seed: int = 3) -> np.ndarray:
    src = sources(1, int(seconds * SR), seed=seed)[0].numpy()
    return src.mean(axis=0)


def test_separator_keeps_length_and_mask_stems_sum_to_the_input(bundle):
    sep = Separator.from_pretrained(bundle)
    x = mixture(0.5)[:3777]  # not a whole number of tokens
    stems = sep.separate(x, SR)
    assert list(stems) == ["drums", "bass"]
    for s in stems.values():
        assert s.shape == x.shape
        assert s.dtype == np.float32
    np.testing.assert_allclose(stems["drums"] + stems["bass"], x, atol=1e-5)
    decoded = sep.separate(x, SR, SeparationSettings(sampler=BeamSearch(3), output="decode"))
    assert decoded["drums"].shape == x.shape


def test_other_rates_and_channels(bundle):
    sep = Separator.from_pretrained(bundle)
    x = mixture(0.25)
    x16 = np.repeat(x, 2)  # a 16 kHz version, same length in seconds
    stereo = np.stack([x16, 0.5 * x16])
    stems = sep.separate(stereo, 2 * SR)
    assert stems["bass"].shape == stereo.shape  # the input's rate and channels
    np.testing.assert_allclose(stems["drums"] + stems["bass"], stereo, atol=1e-5)


def test_detailed_result_and_determinism(bundle):
    sep = Separator.from_pretrained(bundle)
    x = mixture(0.25)
    a = sep.separate_detailed(x, SR)
    b = sep.separate_detailed(x, SR)
    assert a.tokens["drums"].shape == (125,)
    assert np.array_equal(a.tokens["bass"], b.tokens["bass"])
    assert set(a.timings) >= {"encode", "search", "decode", "output"}
    sampled = sep.with_settings(sampler=BeamSearch(1), candidates=4)
    assert sampled.separate_detailed(x, SR).stems["drums"].shape == x.shape


def test_long_input_runs_past_the_prior_context(bundle):
    sep = Separator.from_pretrained(bundle).with_settings(sampler=BeamSearch(2))
    x = mixture(0.4)  # 200 tokens; the priors hold 64 (0.128 s)
    result = sep.separate_detailed(x, SR)
    assert result.tokens["drums"].shape == (200,)
    assert result.stems["bass"].shape == x.shape


def test_window_overlap_is_a_setting_that_reaches_the_search(bundle, monkeypatch):
    import lass.separator as separator_module
    from lass.separator import settings_from_bundle

    s = settings_from_bundle({"kind": "beam", "num_beams": 2, "context_overlap": 16})
    assert s.context_overlap == 16
    assert s.to_json()["context_overlap"] == 16
    assert settings_from_bundle({}).context_overlap is None
    seen = []
    real = separator_module.separate_tokens

    def spy(*args, **kwargs):
        seen.append(kwargs["context_overlap"])
        return real(*args, **kwargs)

    monkeypatch.setattr(separator_module, "separate_tokens", spy)
    x = mixture(0.4)
    result = Separator.from_pretrained(bundle).with_settings(
        sampler=BeamSearch(2), context_overlap=16).separate_detailed(x, SR)
    assert seen == [16]
    assert result.tokens["drums"].shape == (200,)
    assert result.stems["bass"].shape == x.shape


def test_refinement_moves_the_decodings_towards_the_mixture(bundle):
    sep = Separator.from_pretrained(bundle)
    x = mixture(0.25)
    plain = sep.separate(x, SR, SeparationSettings(sampler=BeamSearch(2), output="decode"))
    refined = sep.separate(x, SR, SeparationSettings(sampler=BeamSearch(2), output="decode",
                                                     refine_steps=30, refine_lr=0.05))

    def err(stems):
        return float(np.sum((stems["drums"] + stems["bass"] - x) ** 2))

    assert err(refined) < err(plain)


def test_soft_masks_split_the_mixture_exactly():
    rng = np.random.default_rng(0)
    est = rng.standard_normal((2, 5000)).astype(np.float32)
    mix_ = est.sum(0) + 0.1 * rng.standard_normal(5000).astype(np.float32)
    for fft in (256, 2048, 8192):
        for iterations in (0, 1, 3):
            out = soft_masks(mix_, est, fft, iterations)
            assert out.shape == (2, 5000)
            np.testing.assert_allclose(out.sum(0), mix_, atol=1e-5)
    silent = soft_masks(mix_, np.zeros((2, 5000), dtype=np.float32))
    np.testing.assert_allclose(silent[0], mix_ / 2, atol=1e-5)
    # An input shorter than half the STFT: the STFT shrinks to fit; still exact.
    short = soft_masks(mix_[:300], est[:, :300], 8192, 1)
    np.testing.assert_allclose(short.sum(0), mix_[:300], atol=1e-5)
    with pytest.raises(LassError, match="mask_iterations must be >= 0"):
        soft_masks(mix_, est, 2048, -1)


def _reference_masks(mix_, cands, fft, iterations):
    """The mask output written out step by step: per-candidate STFTs, their mean magnitude
    squared as each source's power, EM updates, ratio masks."""
    window = torch.hann_window(fft, dtype=torch.float64)

    def stft(x):
        return torch.stft(torch.from_numpy(x.astype(np.float64)), fft, fft // 4, window=window,
                          center=True, return_complex=True).numpy()

    spec = stft(mix_)
    mags = np.mean([[np.abs(stft(c[j])) for j in range(2)] for c in cands], axis=0)
    power = mags**2
    for _ in range(iterations):
        m = power / power.sum(0)
        power = np.abs(m * spec) ** 2 + (1 - m) * power
    masks = power / power.sum(0)
    return torch.istft(torch.from_numpy(masks * spec), fft, fft // 4, window=window,
                       center=True, length=mix_.shape[0]).numpy()


def test_mask_output_matches_the_written_out_wiener_filter():
    rng = np.random.default_rng(1)
    cands = rng.standard_normal((3, 2, 6000)).astype(np.float32)
    mix_ = cands[0].sum(0) + 0.2 * rng.standard_normal(6000).astype(np.float32)
    for fft, iterations in ((2048, 0), (1024, 1), (4096, 2)):
        np.testing.assert_allclose(soft_masks(mix_, cands, fft, iterations),
                                   _reference_masks(mix_, cands, fft, iterations), atol=1e-5)
        # One candidate, or the same candidate three times: the same stems.
        np.testing.assert_allclose(soft_masks(mix_, np.repeat(cands[:1], 3, 0), fft, iterations),
                                   soft_masks(mix_, cands[0], fft, iterations), atol=1e-5)


def test_mask_output_recovers_sources_the_estimates_locate():
    t = np.arange(22050) / 22050
    low, high = np.sin(2 * np.pi * 110 * t), 0.5 * np.sign(np.sin(2 * np.pi * 2500 * t))
    rng = np.random.default_rng(3)
    # Rough estimates: the right bands, wrong levels and added noise.
    est = np.stack([0.5 * low, 2.0 * high]) + 0.01 * rng.standard_normal((2, t.size))
    for fft in (2048, 8192):
        for iterations in (0, 2):
            out = soft_masks(low + high, est, fft, iterations)
            for got, true in zip(out, (low, high), strict=True):
                err = np.sum((got - true)[2000:-2000] ** 2) / np.sum(true[2000:-2000] ** 2)
                assert err < 0.05


def test_mask_stft_follows_the_input_rate():
    from lass.separator import mask_fft_at

    assert mask_fft_at(8192, 22050, 22050) == 8192
    assert mask_fft_at(8192, 44100, 22050) == 16384
    assert mask_fft_at(8192, 48000, 22050) == 16384
    assert mask_fft_at(2048, 11025, 22050) == 1024
    with pytest.raises(LassError, match="mask_fft must be even and at least 16"):
        mask_fft_at(8, 22050, 22050)


def test_bundle_hash_is_checked(bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    spec = read_bundle(copy)
    assert spec.stems == ("drums", "bass")
    assert sha256_path(copy / "codec") == json.loads((copy / "bundle.json").read_text())[
        "codec"]["sha256"]
    counts = copy / "likelihood.npz"
    counts.write_bytes(counts.read_bytes() + b"x")
    with pytest.raises(BundleError, match=r"likelihood \(likelihood\.npz\) does not match"):
        Separator.from_pretrained(copy)
    with pytest.raises(BundleError, match="bundle not found"):
        Separator.from_pretrained(tmp_path / "nothing")


def test_cli_writes_stems_and_reports_bad_inputs(bundle, tmp_path, capsys):
    x = mixture(0.3)
    sf.write(tmp_path / "song.wav", x, SR, subtype="FLOAT")
    sf.write(tmp_path / "silent.wav", np.zeros(4000, dtype=np.float32), SR)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    out = tmp_path / "out"
    code = separate_main([str(tmp_path / "song.wav"), str(tmp_path / "silent.wav"),
                          str(tmp_path / "broken.wav"), str(tmp_path / "nope.wav"),
                          "-m", str(bundle), "-o", str(out), "--beams", "2", "--float32"])
    err = capsys.readouterr().err
    assert code == 1
    assert "silent: nothing to separate" in err
    assert "cannot read audio file" in err
    assert "no audio file at" in err
    assert "Traceback" not in err
    drums, rate = sf.read(out / "debug" / "song" / "drums.wav", dtype="float32")
    bass, _ = sf.read(out / "debug" / "song" / "bass.wav", dtype="float32")
    assert rate == SR
    assert drums.shape == x.shape
    np.testing.assert_allclose(drums + bass, x, atol=1e-5)
    info = json.loads((out / "debug" / "song" / "separation.json").read_text())
    assert info["settings"]["sampler"] == {"kind": "beam", "num_beams": 2}
    assert info["bundle"]["sha256"] == read_bundle(bundle).sha256
    assert not (out / "debug" / "silent").exists()
    code = separate_main([str(tmp_path / "song.wav"), "-m", str(bundle), "-o", str(out),
                          "--sampler", "topk", "--top-k", "4", "--candidates", "3",
                          "--combine", "mean", "--output", "decode"])
    assert code == 0
    info = json.loads((out / "debug" / "song" / "separation.json").read_text())
    assert info["settings"]["combine"] == "mean"
    assert info["settings"]["candidates"] == 3
    code = separate_main([str(tmp_path / "song.wav"), "-m", str(bundle), "-o", str(out),
                          "--beams", "2", "--mask-fft", "512", "--mask-iterations", "1",
                          "--float32"])
    assert code == 0
    info = json.loads((out / "debug" / "song" / "separation.json").read_text())
    assert (info["settings"]["mask_fft"], info["settings"]["mask_iterations"]) == (512, 1)
    drums, _ = sf.read(out / "debug" / "song" / "drums.wav", dtype="float32")
    bass, _ = sf.read(out / "debug" / "song" / "bass.wav", dtype="float32")
    np.testing.assert_allclose(drums + bass, x, atol=1e-5)
    assert separate_main([str(tmp_path / "song.wav"), "-m", str(bundle), "-o", str(out),
                          "--mask-fft", "8"]) == 1
    err = capsys.readouterr().err
    assert "mask_fft must be even and at least 16" in err
    assert "Traceback" not in err
    code = separate_main([str(tmp_path / "song.wav"), "-m", str(bundle), "-o", str(out),
                          "--sampler", "ancestral", "--candidates", "4", "--combine", "mean",
                          "--resample", "0.5"])
    assert code == 0
    info = json.loads((out / "debug" / "song" / "separation.json").read_text())
    assert info["settings"]["sampler"] == {"kind": "ancestral", "temperature": 1.0,
                                           "resample": 0.5}
    assert separate_main([str(tmp_path / "song.wav"), "-m", str(bundle), "-o", str(out),
                          "--sampler", "ancestral", "--resample", "2"]) == 1
    err = capsys.readouterr().err
    assert "resample must be in [0, 1], not 2" in err
    assert "Traceback" not in err


def test_without_a_default_bundle_the_command_says_so(tmp_path, capsys, monkeypatch):
    import lass.bundle

    monkeypatch.setattr(lass.bundle, "default_bundle_path", lambda: tmp_path / "none")
    sf.write(tmp_path / "a.wav", mixture(0.25), SR)
    assert separate_main([str(tmp_path / "a.wav")]) == 1
    assert "no default bundle is installed" in capsys.readouterr().err


def test_separator_refuses_bad_waves(bundle):
    sep = Separator.from_pretrained(bundle)
    with pytest.raises(LassError, match="NaN"):
        sep.separate(np.array([0.0, np.nan], dtype=np.float32), SR)
    with pytest.raises(LassError, match=r"expected a \(time,\) waveform, or \(channels, "
                       r"time\) or \(time, channels\).*got shape \(2, 2, 2\)"):
        sep.separate(torch.zeros(2, 2, 2), SR)
    with pytest.raises(LassError, match="empty waveform"):
        sep.separate(np.zeros(0, dtype=np.float32), SR)


def test_candidates_combine_into_one_mask():
    from lass.separator import choose_candidates, combine_candidates

    rng = np.random.default_rng(1)
    cands = rng.standard_normal((3, 2, 6000)).astype(np.float32)
    mix_ = cands[0].sum(0)
    np.testing.assert_array_equal(choose_candidates(mix_, cands, "mean"), [0, 1, 2])
    np.testing.assert_array_equal(choose_candidates(mix_, cands, "best"), [0])
    np.testing.assert_allclose(combine_candidates(mix_, cands, "mean", "decode"),
                               cands.mean(0), atol=1e-6)
    np.testing.assert_allclose(combine_candidates(mix_, cands, "mean", "mask"),
                               soft_masks(mix_, cands), atol=1e-6)
    np.testing.assert_allclose(combine_candidates(mix_, cands, "best", "mask", 4, 1024, 2),
                               soft_masks(mix_, cands[0], 1024, 2), atol=1e-6)
    np.testing.assert_allclose(combine_candidates(mix_, cands, "mean", "mask").sum(0), mix_,
                               atol=1e-5)


def test_rerank_picks_the_candidate_that_mixes_back_among_the_top_ones():
    from lass.separator import choose_candidates

    rng = np.random.default_rng(2)
    mix_ = rng.standard_normal(500)
    cands = rng.standard_normal((6, 2, 500))
    cands[2] = [0.3 * mix_, 0.7 * mix_]  # mixes back exactly
    cands[5] = [0.5 * mix_, 0.5 * mix_]  # as well, but outside the top 4
    assert choose_candidates(mix_, cands, "rerank", rerank_top=4).tolist() == [2]
    assert choose_candidates(mix_, cands, "rerank", rerank_top=2).tolist() in ([0], [1])
    with pytest.raises(LassError, match="unknown combine"):
        choose_candidates(mix_, cands, "vote")


def test_separator_averages_posterior_samples(bundle):
    from lass import Ancestral

    sep = Separator.from_pretrained(bundle).with_settings(
        sampler=Ancestral(1.0), candidates=4, combine="mean")
    x = mixture(0.25)
    res = sep.separate_detailed(x, SR)
    assert res.candidates.shape == (4, 2, x.shape[0])
    np.testing.assert_allclose(res.stems["drums"] + res.stems["bass"], x, atol=1e-5)
    np.testing.assert_allclose(np.stack([res.stems["drums"], res.stems["bass"]]),
                               soft_masks(x, res.candidates), atol=1e-6)
    decoded = sep.separate_detailed(x, SR, replace(sep.settings, output="decode"))
    np.testing.assert_allclose(decoded.stems["bass"], decoded.candidates[:, 1].mean(0),
                               atol=1e-6)
    # The same seed draws the same samples: the two runs decoded the same candidates.
    np.testing.assert_array_equal(decoded.candidates, res.candidates)
    wide = sep.separate_detailed(x, SR, replace(sep.settings, mask_fft=512, mask_iterations=2))
    np.testing.assert_array_equal(wide.candidates, res.candidates)
    np.testing.assert_allclose(np.stack([wide.stems["drums"], wide.stems["bass"]]),
                               soft_masks(x, res.candidates, 512, 2), atol=1e-6)
    for bad in ({"mask_fft": 8}, {"mask_fft": 1001}, {"mask_iterations": -1}):
        with pytest.raises(LassError, match="mask_"):
            sep.separate(x, SR, replace(sep.settings, **bad))
    assert not np.allclose(res.candidates[0], res.candidates[1])
    best = sep.separate_detailed(x, SR, replace(sep.settings, combine="best"))
    assert best.candidates.shape[0] == 1
    with pytest.raises(LassError, match="refinement works on one separation"):
        sep.separate(x, SR, replace(sep.settings, refine_steps=2))
    with pytest.raises(LassError, match="unknown combine"):
        sep.separate(x, SR, replace(sep.settings, combine="vote"))


def test_shift_offsets_spread_over_one_hop():
    from lass.separator import shift_offsets

    assert shift_offsets(1, 64) == [0]
    assert shift_offsets(4, 64) == [0, 16, 32, 48]
    assert shift_offsets(10, 64) == [0, 6, 13, 19, 26, 32, 38, 45, 51, 58]
    assert shift_offsets(8, 8) == list(range(8))
    for bad in (0, 9):
        with pytest.raises(LassError, match="shifts must be between 1 and the codec's hop"):
            shift_offsets(bad, 8)


@pytest.mark.parametrize("sampler", ["beam", "ancestral"])
def test_shifted_copies_are_separated_apart_and_pooled(bundle, sampler):
    """With shifts, each delayed copy's candidates are what separating that copy alone gives
    (cut back to the input), pooled best score first; the stems still mix back exactly."""
    from lass import Ancestral
    from lass.separator import shift_offsets

    sep = Separator.from_pretrained(bundle)
    chosen = BeamSearch(2) if sampler == "beam" else Ancestral(1.0)
    base = replace(sep.settings, sampler=chosen, candidates=2, combine="mean", output="decode",
                   seed=5)
    x = mixture(0.25)[:2001]
    n = x.shape[0]
    offsets = shift_offsets(3, sep.codec.hop_length)
    pooled = sep.separate_detailed(x, SR, replace(base, shifts=3))
    assert pooled.candidates.shape == (6, 2, n)
    assert pooled.shift in offsets
    alone = []
    for k, off in enumerate(offsets):  # copy k: the input delayed by off, seeded seed + k
        copy = np.zeros(n + offsets[-1], dtype=np.float32)
        copy[off: off + n] = x
        res = sep.separate_detailed(copy, SR, replace(base, seed=base.seed + k))
        alone.append((res.score, res.candidates[:, :, off: off + n]))
    expected = np.concatenate([c for _, c in alone])
    # every pooled candidate is one of the copies' candidates, and each is used once
    matched = set()
    for cand in pooled.candidates:
        hits = [i for i, e in enumerate(expected)
                if i not in matched and np.allclose(cand, e, atol=1e-5)]
        assert hits
        matched.add(hits[0])
    np.testing.assert_allclose(pooled.stems["drums"], pooled.candidates[:, 0].mean(0),
                               atol=1e-6)
    assert np.isclose(pooled.score, max(score for score, _ in alone), atol=1e-3)
    masked = sep.separate_detailed(x, SR, replace(base, shifts=3, output="mask"))
    np.testing.assert_allclose(masked.stems["drums"] + masked.stems["bass"], x, atol=1e-5)
    np.testing.assert_allclose(np.stack([masked.stems["drums"], masked.stems["bass"]]),
                               soft_masks(x, pooled.candidates), atol=1e-6)
    one = sep.separate_detailed(x, SR, replace(base, shifts=1))
    plain = sep.separate_detailed(x, SR, base)
    np.testing.assert_array_equal(one.candidates, plain.candidates)
    assert one.shift == 0
    with pytest.raises(LassError, match="shifts must be between"):
        sep.separate(x, SR, replace(base, shifts=0))
    with pytest.raises(LassError, match="does not combine with shifts"):
        sep.separate(x, SR, replace(base, shifts=2, combine="best", refine_steps=2))


@pytest.mark.parametrize("kind", ["beam", "ancestral"])
def test_separate_many_batches_equal_lengths_and_matches_one_at_a_time(bundle, kind,
                                                                       monkeypatch):
    from lass import Ancestral, sampling

    sep = Separator.from_pretrained(bundle)
    if kind == "ancestral":
        sep = sep.with_settings(sampler=Ancestral(1.0), candidates=3, combine="mean")
    waves = [mixture(0.25, seed=3), mixture(0.25, seed=5), mixture(0.2, seed=6),
             np.stack([mixture(0.25, seed=7)] * 2)]  # stereo: separated from its downmix
    batches = []
    real = sampling.separate_tokens

    def counted(mix_codes, *args, **kwargs):
        batches.append(mix_codes.shape[0])
        return real(mix_codes, *args, **kwargs)

    monkeypatch.setattr("lass.separator.separate_tokens", counted)
    many = sep.separate_many(waves, SR)
    assert sorted(batches) == [1, 3]  # the three 0.25 s inputs searched together
    assert [r.timings["batch"] for r in many] == [3, 3, 1, 3]
    for wave, got in zip(waves, many, strict=True):
        alone = sep.separate_detailed(wave, SR)
        for stem in sep.stems:
            np.testing.assert_array_equal(got.tokens[stem], alone.tokens[stem])
            np.testing.assert_allclose(got.stems[stem], alone.stems[stem], atol=1e-5)
        assert got.fallback_steps == alone.fallback_steps
        assert got.stems["drums"].shape == np.asarray(wave).shape  # the input's channels
    assert sep.separate_many([], SR) == []


def test_separate_each_keeps_the_good_inputs_of_a_batch_with_a_bad_one(bundle):
    sep = Separator.from_pretrained(bundle).with_settings(sampler=BeamSearch(2))
    good = [mixture(0.25, seed=3), mixture(0.25, seed=5)]
    bad = np.full(good[0].shape, np.nan)
    with pytest.raises(LassError):
        sep.separate_many([good[0], bad, good[1]], SR)
    got = sep.separate_each([good[0], bad, good[1]], SR)
    assert isinstance(got[1], LassError)
    assert "finite" in str(got[1])
    for wave, result in zip(good, (got[0], got[2]), strict=True):
        assert not isinstance(result, LassError)
        alone = sep.separate_detailed(wave, SR)
        for stem in sep.stems:
            np.testing.assert_array_equal(result.tokens[stem], alone.tokens[stem])
    assert sep.separate_each(good, SR)[0].timings["batch"] == 2  # together when all are good
    single = sep.separate_each([bad], SR)
    assert len(single) == 1
    assert isinstance(single[0], LassError)


def test_cli_batches_inputs_and_isolates_a_failing_one(bundle, tmp_path, capsys, monkeypatch):
    names = {"a": mixture(0.25, seed=3), "b": mixture(0.25, seed=5), "c": mixture(0.2, seed=6)}
    poison = mixture(0.25, seed=8)
    names["d"] = 0.95 * poison / np.abs(poison).max()  # refused below, in its batch
    for name, x in names.items():
        sf.write(tmp_path / f"{name}.wav", x, SR, subtype="FLOAT")
    real = Separator.separate_many

    def picky(self, waves, rate, settings=None, progress=None):
        if any(np.abs(w).max() > 0.9 for w in waves):
            raise LassError("a poisoned input")
        return real(self, waves, rate, settings, progress)

    common = ["-m", str(bundle), "--beams", "2", "--float32"]
    files = [str(tmp_path / f"{n}.wav") for n in names]
    assert separate_main([*files[:3], "-o", str(tmp_path / "one"), "--batch", "1",
                          *common]) == 0
    monkeypatch.setattr(Separator, "separate_many", picky)
    assert separate_main([*files, "-o", str(tmp_path / "many"), "--batch", "4", *common]) == 1
    err = capsys.readouterr().err
    assert "error: a poisoned input" in err
    assert "Traceback" not in err
    assert not (tmp_path / "many" / "debug" / "d").exists()
    for name in "abc":
        for stem in ("drums", "bass"):
            got, _ = sf.read(tmp_path / "many" / "debug" / name / f"{stem}.wav")
            alone, _ = sf.read(tmp_path / "one" / "debug" / name / f"{stem}.wav")
            np.testing.assert_allclose(got, alone, atol=1e-5)
    info = json.loads((tmp_path / "one" / "debug" / "a" / "separation.json").read_text())
    assert info["timings"]["batch"] == 1
    monkeypatch.setattr(Separator, "separate_many", real)
    assert separate_main([*files[:3], "-o", str(tmp_path / "many2"), "--batch", "4",
                          *common]) == 0
    info = json.loads((tmp_path / "many2" / "debug" / "a" / "separation.json").read_text())
    assert info["timings"]["batch"] == 2  # a and b together; c has another length
    assert separate_main([files[0], "--batch", "0", *common]) == 1
    assert "--batch must be at least 1" in capsys.readouterr().err


def test_cli_says_how_many_beams_a_bundle_with_shifts_runs(bundle, tmp_path, capsys):
    """Asking for beams from a bundle that separates shifted copies says how many beams that
    makes in all, and how to run the beams asked for alone; asking for the copies says
    nothing."""
    from lass.bundle import read_bundle, write_bundle

    spec = read_bundle(bundle)
    shifted = tmp_path / "shifted"
    shutil.copytree(bundle, shifted)
    write_bundle(shifted, name="shifted", sample_rate=SR, stems=("drums", "bass"), mix=spec.mix,
                 codec="codec", priors={"drums": "prior-drums", "bass": "prior-bass"},
                 likelihood="likelihood.npz",
                 sampler={"kind": "ancestral", "lam": 3.0, "output": "mask", "shifts": 2})
    sf.write(tmp_path / "song.wav", mixture(0.2), SR, subtype="FLOAT")
    code = separate_main([str(tmp_path / "song.wav"), "-m", str(shifted), "-o",
                          str(tmp_path / "out"), "--beams", "3"])
    err = capsys.readouterr().err
    assert code == 0
    assert "2 shifted copies of each input, with 3 beams each (6 in all)" in err
    assert "--shifts 1 --combine best runs 3 beams in all" in err
    code = separate_main([str(tmp_path / "song.wav"), "-m", str(shifted), "-o",
                          str(tmp_path / "out2"), "--beams", "3", "--shifts", "2"])
    assert code == 0
    assert "shifted copies" not in capsys.readouterr().err


def test_outputs_are_readable_by_others_under_the_umask(bundle, tmp_path):
    """Stems and separation.json get the mode any new file gets (0644 under umask 022), not
    the 0600 of a temporary file."""
    import os
    import stat

    sf.write(tmp_path / "song.wav", mixture(0.3), SR, subtype="FLOAT")
    old = os.umask(0o022)
    try:
        assert separate_main([str(tmp_path / "song.wav"), "-m", str(bundle), "-o",
                              str(tmp_path / "out"), "--beams", "2"]) == 0
    finally:
        os.umask(old)
    track = tmp_path / "out" / "debug" / "song"
    for name in ("drums.wav", "bass.wav", "separation.json"):
        assert stat.S_IMODE((track / name).stat().st_mode) == 0o644


@pytest.mark.parametrize(("field", "value"), [("name", "../../escape"), ("name", "a/b"),
                                              ("stem", "../drums"), ("name", ".hidden")])
def test_a_bundle_whose_names_would_leave_the_output_folder_is_refused(bundle, tmp_path, capsys,
                                                                       field, value):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    spec = json.loads((copy / "bundle.json").read_text())
    if field == "name":
        spec["name"] = value
    else:
        spec["stems"][0] = value
        spec["priors"][value] = spec["priors"].pop("drums")
    (copy / "bundle.json").write_text(json.dumps(spec))
    sf.write(tmp_path / "song.wav", mixture(0.3), SR, subtype="FLOAT")
    out = tmp_path / "out"
    assert separate_main([str(tmp_path / "song.wav"), "-m", str(copy), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "is not a plain name" in err
    assert "Traceback" not in err
    assert not out.exists()  # refused before any output
    assert not (tmp_path.parent / "escape").exists()


def test_inputs_that_share_a_name_keep_their_own_folders(bundle, tmp_path, capsys):
    src = tmp_path / "in"
    for sub, gain in (("a", 0.3), ("b", 0.2)):
        (src / sub).mkdir(parents=True)
        sf.write(src / sub / "x.wav", mixture(gain), SR, subtype="FLOAT")
    sf.write(src / "a" / "x.flac", mixture(0.25), SR)
    out = tmp_path / "out"
    assert separate_main([str(src), "-m", str(bundle), "-o", str(out), "--beams", "2",
                          "--float32"]) == 0
    assert "separated 3 of 3" in capsys.readouterr().out
    written = sorted(p.parent.relative_to(out / "debug").as_posix()
                     for p in out.rglob("separation.json"))
    assert written == ["a/x.flac", "a/x.wav", "b/x.wav"]
    for folder, gain in (("a/x.wav", 0.3), ("b/x.wav", 0.2)):
        drums = sf.read(out / "debug" / folder / "drums.wav", dtype="float32")[0]
        bass = sf.read(out / "debug" / folder / "bass.wav", dtype="float32")[0]
        np.testing.assert_allclose(drums + bass, mixture(gain), atol=1e-5)


def test_track_folders_only_lengthen_the_names_that_collide(tmp_path):
    from lass.cli.separate import track_folders

    files = [tmp_path / "in" / "a" / "x.wav", tmp_path / "in" / "b" / "x.wav",
             tmp_path / "y.wav"]
    assert track_folders(files) == {files[0]: Path("a/x"), files[1]: Path("b/x"),
                                    files[2]: Path("y")}


@pytest.mark.parametrize(("args", "message"), [
    (["--candidates", "0"], "--candidates must be at least 1"),
    (["--beams", "0"], "--beams must be at least 1"),
    (["--sampler", "ancestral", "--temperature", "0"], "--temperature must be positive"),
    (["--sampler", "topp", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--device", "gpu"], "unknown --device 'gpu'"),
    (["--device", "mps"], "mps"),
    (["--sampler", "beam", "--temperature", "2"], "--temperature does not apply"),
    (["--top-k", "4"], "--top-k does not apply to this bundle's sampler"),
])
def test_settings_out_of_range_are_one_line_before_any_work(bundle, tmp_path, capsys, args,
                                                            message):
    """Checked before the bundle is read (a bundle path that does not exist is never
    reached), or, where the answer depends on the bundle's sampler, before any input is
    read or separated."""
    sf.write(tmp_path / "song.wav", mixture(0.3), SR, subtype="FLOAT")
    needs_bundle = "this bundle" in message
    model = str(bundle) if needs_bundle else str(tmp_path / "no-bundle")
    code = separate_main([str(tmp_path / "song.wav"), "-m", model, "-o",
                          str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err or (message == "mps" and "mps" in err)
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_sampler_options_change_the_bundles_own_sampler(bundle, tmp_path):
    """Without --sampler an option changes the bundle's sampler; --sampler of the bundle's
    own kind keeps its values of what is not given."""
    spec = json.loads((bundle / "bundle.json").read_text())
    own = tmp_path / "own"
    shutil.copytree(bundle, own)
    spec["sampler"] = {"kind": "ancestral", "temperature": 1.5, "candidates": 2, "lam": 3.0,
                       "output": "mask"}
    (own / "bundle.json").write_text(json.dumps(spec))
    sf.write(tmp_path / "song.wav", mixture(0.3), SR, subtype="FLOAT")
    for args, temperature in ((["--temperature", "2.0"], 2.0), (["--sampler", "ancestral"], 1.5)):
        out = tmp_path / f"out{temperature}"
        assert separate_main([str(tmp_path / "song.wav"), "-m", str(own), "-o", str(out),
                              *args]) == 0
        info = json.loads((out / "debug" / "song" / "separation.json").read_text())
        assert info["settings"]["sampler"]["temperature"] == temperature


@pytest.mark.parametrize(("change", "message"), [
    ({"sample_rate": "8000"}, "sample_rate must be a positive integer"),
    ({"sample_rate": None}, "sample_rate must be a positive integer"),
    ({"likelihood.min_count": 1.5}, "min_count must be an integer"),
    ({"sampler": [1, 2]}, "sampler must be an object"),
    ({"sampler.temperature": 0}, "temperature must be positive"),
    ({"sampler.candidates": 0}, "candidates must be at least 1"),
    ({"sampler.num_beams": "ten"}, "num_beams must be an integer"),
    ({"sampler.beams": 4}, "unknown key(s) in the bundle's sampler: beams"),
])
def test_bad_bundle_json_values_are_one_line(bundle, tmp_path, capsys, change, message):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    spec = json.loads((copy / "bundle.json").read_text())
    for key, value in change.items():
        *parents, last = key.split(".")
        node = spec
        for part in parents:
            node = node[part]
        node[last] = value
    (copy / "bundle.json").write_text(json.dumps(spec))
    sf.write(tmp_path / "song.wav", mixture(0.3), SR, subtype="FLOAT")
    code = separate_main([str(tmp_path / "song.wav"), "-m", str(copy), "-o",
                          str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_written_is_refused_first(tmp_path, capsys):
    sf.write(tmp_path / "song.wav", mixture(0.3), SR, subtype="FLOAT")
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file, not a folder"),
                         (tmp_path / "file" / "sub", "is a file")):
        code = separate_main([str(tmp_path / "song.wav"), "-m", str(tmp_path / "no-bundle"),
                              "-o", str(out)])
        err = capsys.readouterr().err
        assert code == 1
        assert message in err  # before the (missing) bundle is even looked at
        assert "Traceback" not in err


def test_a_failed_write_leaves_no_partial_folder_and_the_others_are_done(bundle, tmp_path,
                                                                         capsys, monkeypatch):
    import lass.output as output

    for name, gain in (("a", 0.3), ("b", 0.2), ("c", 0.25)):
        sf.write(tmp_path / f"{name}.wav", mixture(gain), SR, subtype="FLOAT")
    real = output.write_wav

    def full_disk(path, audio, rate, subtype="PCM_16", fmt="WAV"):
        if Path(path).parent.name == "b" and Path(path).name == "bass.wav":
            raise OSError(28, "No space left on device")
        real(path, audio, rate, subtype=subtype, fmt=fmt)

    monkeypatch.setattr(output, "write_wav", full_disk)
    out = tmp_path / "out"
    code = separate_main([str(tmp_path / f"{n}.wav") for n in "abc"]
                         + ["-m", str(bundle), "-o", str(out), "--beams", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "No space left on device" in captured.err
    assert "Traceback" not in captured.err
    assert "separated 2 of 3" in captured.out
    track = out / "debug"
    assert sorted(p.name for p in track.iterdir()) == ["a", "c"]  # no b, no partial folder
    for name in ("a", "c"):
        assert (track / name / "separation.json").is_file()


def test_the_api_keeps_the_input_layout_and_channels(bundle, tmp_path):
    """Stereo in, stereo out: the stems of (time, channels) and (channels, time) input keep
    that layout and sum to each channel; their downmix is the downmix's separation."""
    sep = Separator.from_pretrained(bundle).with_settings(sampler=BeamSearch(2))
    x = mixture(0.3)
    right = mixture(0.3, seed=11)
    stereo = np.stack([x, 0.5 * x + 0.3 * right], axis=1)  # (time, channels), as soundfile
    a = sep.separate(stereo, SR)
    b = sep.separate(stereo.T, SR)
    c = sep.separate(stereo.mean(axis=1), SR)
    assert isinstance(a, dict)
    assert isinstance(b, dict)
    assert isinstance(c, dict)
    for stem in sep.stems:
        assert a[stem].shape == stereo.shape
        assert b[stem].shape == stereo.T.shape
        np.testing.assert_array_equal(a[stem], b[stem].T)
        np.testing.assert_allclose(a[stem].mean(axis=1), c[stem], atol=1e-6)
    np.testing.assert_allclose(sum(a[stem] for stem in sep.stems), stereo, atol=1e-5)
    # The decode output knows only the downmix: every channel gets the same stems.
    d = sep.with_settings(output="decode").separate(stereo, SR)
    assert isinstance(d, dict)
    np.testing.assert_array_equal(d["drums"][:, 0], d["drums"][:, 1])
    sf.write(tmp_path / "song.wav", x, SR)
    with pytest.raises(LassError, match="not a file name"):
        sep.separate(str(tmp_path / "song.wav"), SR)
    with pytest.raises(LassError, match="at most 8 channels"):
        sep.separate(np.zeros((20, 30), dtype=np.float32), SR)
    with pytest.raises(LassError, match=r"more samples than channels; got shape \(4, 4\)"):
        sep.separate(np.zeros((4, 4), dtype=np.float32), SR)


def test_torch_in_torch_out_and_separate_file(bundle, tmp_path):
    import subprocess

    sep = Separator.from_pretrained(bundle).with_settings(sampler=BeamSearch(2))
    assert sep.sample_rate == SR
    assert sep.stems == ("drums", "bass")
    x = mixture(0.3)
    got = sep.separate(torch.from_numpy(x), SR)
    want = sep.separate(x, SR)
    for stem in sep.stems:
        assert isinstance(got[stem], torch.Tensor)
        np.testing.assert_array_equal(got[stem].numpy(), want[stem])
    stereo = np.stack([x, 0.7 * x], axis=1)
    sf.write(tmp_path / "song.wav", stereo, SR, subtype="FLOAT")
    res = sep.separate_file(tmp_path / "song.wav")
    assert res.sample_rate == SR
    for stem in sep.stems:
        np.testing.assert_allclose(res.stems[stem], sep.separate(stereo, SR)[stem], atol=1e-6)
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg is not None  # the install command brings it
    subprocess.run([ffmpeg, "-v", "error", "-i", str(tmp_path / "song.wav"), "-c:a", "aac",
                    str(tmp_path / "song.m4a")], check=True)
    m4a = sep.separate_file(tmp_path / "song.m4a")  # libsndfile cannot: ffmpeg decodes it
    assert m4a.stems["drums"].ndim == 2
    assert m4a.stems["drums"].shape[1] == 2
    (tmp_path / "junk.m4a").write_bytes(b"not audio at all")
    with pytest.raises(DataError, match="cannot read audio file"):
        sep.separate_file(tmp_path / "junk.m4a")
    with pytest.raises(DataError, match="not found"):
        sep.separate_file(tmp_path / "missing.wav")


@pytest.mark.parametrize(("combine", "output", "rate", "stereo"), [
    ("best", "mask", SR, False), ("mean", "mask", SR, True), ("rerank", "decode", SR, False),
    ("mean", "mask", 2 * SR, False), ("rerank", "mask", 3 * SR // 2, True)])
def test_long_inputs_are_output_in_segments_equal_to_whole(bundle, combine, output, rate,
                                                           stereo):
    """Decoding and masking segment by segment (what bounds the memory of long inputs) gives
    the stems of the whole computation, at any input rate, for every combine and output."""
    from lass import Ancestral

    sep = Separator.from_pretrained(bundle).with_settings(
        sampler=Ancestral(1.0), candidates=3, combine=combine, output=output, shifts=2,
        mask_fft=256, mask_iterations=1)
    x = mixture(1.3)
    if rate != SR:
        import soxr

        x = soxr.resample(x, SR, rate).astype(np.float32)
    wave = np.stack([x, 0.6 * x + 0.05 * np.sin(np.arange(x.shape[0]) / 7.0)]) if stereo else x
    whole = sep.separate_detailed(wave, rate)
    assert whole.candidates is not None
    sep.segment_seconds = 0.2  # six segments
    assert sep.segmented(x.shape[0], rate, sep.settings)
    parts = sep.separate_detailed(wave, rate)
    assert parts.candidates is None
    assert parts.score == whole.score
    for stem in sep.stems:
        np.testing.assert_array_equal(parts.tokens[stem], whole.tokens[stem])
        assert parts.stems[stem].shape == whole.stems[stem].shape == wave.shape
        scale = float(np.abs(whole.stems[stem]).max())
        np.testing.assert_allclose(parts.stems[stem], whole.stems[stem], atol=1e-4 * scale)
    with_copy = sep.with_settings(lam=sep.settings.lam)
    assert with_copy.segment_seconds == 0.2


def test_cli_output_formats_depth_and_templates(bundle, tmp_path, capsys):
    x = mixture(0.4)
    sf.write(tmp_path / "deep.wav", x, SR, subtype="PCM_24")
    sf.write(tmp_path / "plain.wav", x, SR, subtype="PCM_16")
    out = tmp_path / "out"
    base = ["-m", str(bundle), "-o", str(out), "--beams", "2"]
    # The input's depth by default: 24-bit in, 24-bit out.
    assert separate_main([str(tmp_path / "deep.wav"), str(tmp_path / "plain.wav"), *base]) == 0
    assert sf.info(str(out / "debug" / "deep" / "drums.wav")).subtype == "PCM_24"
    assert sf.info(str(out / "debug" / "plain" / "drums.wav")).subtype == "PCM_16"
    assert separate_main([str(tmp_path / "plain.wav"), *base, "--flac", "--int24"]) == 0
    info = sf.info(str(out / "debug" / "plain" / "bass.flac"))
    assert (info.format, info.subtype) == ("FLAC", "PCM_24")
    assert separate_main([str(tmp_path / "plain.wav"), *base, "--mp3",
                          "--filename", "{track}_{stem}.{ext}"]) == 0
    assert sf.info(str(out / "debug" / "plain_drums.mp3")).format == "MP3"
    meta = json.loads((out / "debug" / "plain_separation.json").read_text())
    assert meta["files"] == {"drums": "plain_drums.mp3", "bass": "plain_bass.mp3"}
    assert meta["format"]["container"] == "MP3"
    assert not [p for p in (out / "debug").iterdir() if p.name.startswith(".")]  # no staging
    for bad, why in (("{track}.{ext}", "must contain {track} and {stem}"),
                     ("{track}/{stem}.{fmt}", "unknown field {fmt}"),
                     ("../{track}/{stem}.{ext}", "inside the output folder")):
        assert separate_main([str(tmp_path / "plain.wav"), *base, "--filename", bad]) == 1
        assert why in capsys.readouterr().err
    assert separate_main([str(tmp_path / "plain.wav"), *base, "--flac", "--float32"]) == 1
    assert "--float32 needs WAV output" in capsys.readouterr().err
    assert separate_main([str(tmp_path / "plain.wav"), *base, "--threads", "-1"]) == 1
    assert "--threads must be 0" in capsys.readouterr().err
    assert separate_main([*base]) == 1
    assert "no input given" in capsys.readouterr().err


def test_clip_modes_keep_integer_stems_in_range():
    from lass.output import fit_range

    stems = {"drums": np.array([0.5, -1.6], np.float32), "bass": np.array([0.2, 0.8], np.float32)}
    scaled, said = fit_range(stems, "rescale")
    assert "scaled by" in said
    np.testing.assert_allclose(scaled["drums"] / stems["drums"], scaled["bass"] / stems["bass"])
    assert max(float(np.abs(a).max()) for a in scaled.values()) <= 1.0
    clamped, said = fit_range(stems, "clamp")
    np.testing.assert_array_equal(clamped["drums"], [0.5, -1.0])
    np.testing.assert_array_equal(clamped["bass"], stems["bass"])
    kept, said = fit_range(stems, "none")
    assert kept is stems
    assert "clips" in said
    quiet = {"drums": np.array([0.5], np.float32), "bass": np.array([0.2], np.float32)}
    assert fit_range(quiet, "rescale") == (quiet, "")


def test_list_models_version_and_progress(bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LASS_BUNDLES", str(bundle.parent))
    assert separate_main(["--list-models"]) == 0
    listed = capsys.readouterr().out
    assert "default (embedded): drums, bass; 22050 Hz" in listed
    assert "toy (embedded): sine, sawtooth, square, triangle" in listed
    assert "mnist (embedded): source_1, source_2; images" in listed
    assert "debug ($LASS_BUNDLES): drums, bass; 8000 Hz" in listed
    assert "FluidR3 GM" in listed  # what the default was trained on
    with pytest.raises(SystemExit) as exit_info:
        separate_main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("lass-separate 0.")
    sep = Separator.from_pretrained(bundle).with_settings(sampler=BeamSearch(2))
    calls: list[tuple[float, float]] = []
    sep.separate_many([mixture(0.3), mixture(0.3, seed=4), mixture(0.2)], SR,
                      progress=lambda done, total: calls.append((done, total)))
    done = [c[0] for c in calls]
    assert done == sorted(done)
    assert calls[-1] == pytest.approx((0.8, 0.8))


def test_save_stems_writes_what_the_cli_writes(bundle, tmp_path):
    from lass import save_stems

    sep = Separator.from_pretrained(bundle).with_settings(sampler=BeamSearch(2))
    stereo = np.stack([mixture(0.3), 0.5 * mixture(0.3)], axis=1)
    sf.write(tmp_path / "song.wav", stereo, SR, subtype="PCM_24")
    result = sep.separate_file(tmp_path / "song.wav")
    paths, clip = save_stems(result.stems, result.sample_rate, tmp_path / "out", "song",
                             channels_first=False, input_subtype="PCM_24",
                             info={"note": "by hand"})
    assert clip == ""
    assert sorted(p.name for p in (tmp_path / "out" / "song").iterdir()) == [
        "bass.wav", "drums.wav", "separation.json"]
    for stem in sep.stems:
        got, rate = sf.read(paths[stem], dtype="float32")
        assert rate == SR
        assert sf.info(str(paths[stem])).subtype == "PCM_24"
        np.testing.assert_allclose(got, result.stems[stem], atol=1e-6)
    meta = json.loads(paths["separation"].read_text())
    assert meta["note"] == "by hand"
    assert meta["files"]["drums"] == "song/drums.wav"
    with pytest.raises(LassError, match=r"take the name of separation\.json"):
        save_stems({"separation": result.stems["drums"]}, SR, tmp_path / "x", "song",
                   template="{track}/{stem}.json", info={}, channels_first=False)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
