import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lass import Ancestral
from lass.cli.evaluate import main as evaluate_main
from lass.errors import DataError
from lass.evaluate import museval_sdr, plain_sdr, si_sdr
from tests.bundles import SR, make_debug_bundle, sources
from tests.helpers import write_audio


def bundle_and_test_set(tmp_path, tracks: int, seed: int):
    """A debug bundle and a test split of ``tracks`` drums + bass tracks of 2 s under
    ``tmp_path / "data"``; returns the bundle and the sources ``(tracks, 2, time)``."""
    bundle = make_debug_bundle(tmp_path / "bundle", context=32)
    src = sources(tracks, 2 * SR, seed=seed).numpy()
    for i in range(tracks):
        write_audio(tmp_path / "data" / "test" / f"t{i}" / "drums.wav", src[i, 0], SR)
        write_audio(tmp_path / "data" / "test" / f"t{i}" / "bass.wav", src[i, 1], SR)
    return bundle, src


def test_metrics_on_known_cases():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 3 * SR))
    noisy = ref + 0.1 * rng.standard_normal(ref.shape)
    assert plain_sdr(noisy[0], ref[0]) == pytest.approx(20.0, abs=0.3)
    assert si_sdr(3.0 * ref[0], ref[0]) > 60  # a scaled copy is perfect for SI-SDR
    assert plain_sdr(3.0 * ref[0], ref[0]) == pytest.approx(-6.02, abs=0.01)
    v4 = museval_sdr(noisy, ref, SR)
    assert v4.shape == (2,)
    np.testing.assert_allclose(v4, [plain_sdr(n, r) for n, r in zip(noisy, ref, strict=True)],
                               atol=0.3)  # for mono signals v4 SDR is about plain SNR


@pytest.mark.slow  # over 10 s on 2 cores
def test_evaluate_command_writes_a_resumable_table(tmp_path, capsys):
    bundle, src = bundle_and_test_set(tmp_path, 3, seed=9)
    out = tmp_path / "results.json"
    args = ["--data", str(tmp_path / "data"), "--bundle", str(bundle), "--mixtures", "2",
            "--seconds", "0.25", "--beams", "2", "--out", str(out), "--methods", "average",
            "oracle-decode", "oracle-mask", "lass-beam-decode", "lass-greedy-mask"]
    assert evaluate_main(args) == 0
    printed = capsys.readouterr().out
    assert "| average |" in printed
    assert "lass-beam-decode" in printed
    results = json.loads(out.read_text())
    # without --candidates / --temperature: the bundle's (a beam-search bundle: 1, 1.0)
    assert results["config"]["candidates"] == 1
    assert results["config"]["temperature"] == 1.0
    rows = results["per_mixture"]["average"]
    assert len(rows) == 2
    # The average baseline of a mean mixture: the SDR of (a + b) / 2 against a.
    for r in rows:
        i = int(r["track"][1:])
        seg = src[i, :, r["start"]: r["start"] + SR // 4]
        expected = [plain_sdr(seg.mean(0), seg[k]) for k in range(2)]
        np.testing.assert_allclose(r["sdr"], expected, atol=1e-3)
    # Mask outputs of the oracle add up to the mixture; its SDR is finite.
    assert all(np.isfinite(r["sdr"]).all() for r in results["per_mixture"]["oracle-mask"])
    before = out.read_text()
    assert evaluate_main(args) == 0  # resumes: everything is already there
    assert json.loads(out.read_text())["per_mixture"] == json.loads(before)["per_mixture"]
    # The two mixtures were searched as one batch; one at a time gives the same numbers.
    single = tmp_path / "single.json"
    argv_single = [*args[: args.index("--out")], "--out", str(single), "--batch", "1",
                   *args[args.index("--out") + 2:]]
    assert evaluate_main(argv_single) == 0
    one = json.loads(single.read_text())["per_mixture"]
    for name in ("lass-beam-decode", "lass-greedy-mask"):
        for a, b in zip(one[name], results["per_mixture"][name], strict=True):
            assert a["index"] == b["index"]
            np.testing.assert_allclose(a["sdr"], b["sdr"], atol=1e-3)
    capsys.readouterr()
    assert evaluate_main([*args, "--batch", "0"]) == 1
    assert "--batch must be at least 1" in capsys.readouterr().err
    # Another mask for the LASS methods: recorded in the config, not resumed from the other
    # file's rows; the oracle's masks and the decodings do not change.
    masked = tmp_path / "masked.json"
    argv_mask = [*args[: args.index("--out")], "--out", str(masked), "--mask-fft", "512",
                 "--mask-iterations", "2", *args[args.index("--out") + 2:]]
    assert evaluate_main(argv_mask) == 0
    other = json.loads(masked.read_text())
    assert (other["config"]["mask_fft"], other["config"]["mask_iterations"]) == (512, 2)
    assert (results["config"]["mask_fft"], results["config"]["mask_iterations"]) == (2048, 0)
    def scores(rows):  # the time each took differs from run to run
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    for name in ("oracle-mask", "lass-beam-decode"):
        assert scores(other["per_mixture"][name]) == scores(results["per_mixture"][name])
    assert all(r["seconds"] > 0 for r in results["per_mixture"]["lass-beam-decode"])
    assert results["summary"]["lass-beam-decode"]["seconds"]["per mixture"] > 0
    capsys.readouterr()
    assert evaluate_main([*argv_mask, "--mask-fft", "7"]) == 1
    assert "mask_fft must be even and at least 16, not 7" in capsys.readouterr().err
    # Shifted copies reach the LASS searches (recorded; the oracle does not change).
    shifted = tmp_path / "shifted.json"
    argv_shift = [*args[: args.index("--out")], "--out", str(shifted), "--shifts", "2",
                  *args[args.index("--out") + 2:]]
    assert evaluate_main(argv_shift) == 0
    other = json.loads(shifted.read_text())
    assert other["config"]["shifts"] == 2
    assert results["config"]["shifts"] == 1
    assert scores(other["per_mixture"]["oracle-mask"]) == scores(
        results["per_mixture"]["oracle-mask"])
    assert other["per_mixture"]["lass-beam-decode"] != results["per_mixture"]["lass-beam-decode"]
    capsys.readouterr()
    assert evaluate_main([*argv_shift, "--shifts", "0"]) == 1
    assert "--shifts must be at least 1, not 0" in capsys.readouterr().err


def test_blind_baselines_split_a_tone_from_clicks():
    from lass.evaluate import hpss_separate, nmf_separate

    rate = 22050
    t = np.arange(3 * rate) / rate
    bass = 0.3 * np.sin(2 * np.pi * 82.4 * t).astype(np.float32)
    drums = np.zeros_like(bass)
    rng = np.random.default_rng(0)
    for start in range(0, drums.size - 2000, rate // 4):  # a noise burst every 250 ms
        drums[start:start + 2000] = 0.5 * rng.standard_normal(2000) * np.exp(
            -np.arange(2000) / 300)
    refs = np.stack([drums, bass]) / 2  # contributions under the mean rule
    mixture = refs.sum(0)
    for est in (hpss_separate(mixture, ["drums", "bass"]),
                nmf_separate(mixture, ["drums", "bass"], rate)):
        assert est.shape == (2, mixture.size)
        np.testing.assert_allclose(est.sum(0), mixture, atol=1e-4)  # masks sum to one
        for i in range(2):
            assert plain_sdr(est[i], refs[i]) > plain_sdr(mixture, refs[i]) + 3
    # the stem order follows the names: the percussive part goes to "drums" wherever it is
    swapped = hpss_separate(mixture, ["bass", "drums"])
    np.testing.assert_allclose(swapped[::-1], hpss_separate(mixture, ["drums", "bass"]),
                               atol=1e-6)


def test_lass_methods_of_one_sampler_share_one_search(tmp_path, monkeypatch):
    from lass import Separator
    from lass.evaluate import make_methods, parse_lass_method
    from lass.separator import soft_masks
    from tests.bundles import make_debug_bundle

    assert parse_lass_method("lass-beam-mask") == ("beam", "mask", "rerank")
    assert parse_lass_method("lass-ancestral-decode-mean") == ("ancestral", "decode", "mean")
    for bad in ("lass-beam", "lass-beam-mask-vote", "lass-viterbi-mask", "lass-beam-wave"):
        with pytest.raises(DataError, match="unknown method"):
            parse_lass_method(bad)
    sep = Separator.from_pretrained(make_debug_bundle(tmp_path / "b"))
    calls = []
    real_many = sep.separate_many

    def counted(*args, **kwargs):
        calls.append(args[2].combine)
        return real_many(*args, **kwargs)

    monkeypatch.setattr(sep, "separate_many", counted)
    names = ["lass-ancestral-decode-mean", "lass-ancestral-mask-mean", "lass-ancestral-mask",
             "lass-ancestral-decode-best"]
    methods = make_methods(sep, names, candidates=3)
    src = sources(1, SR // 4, seed=4)[0].numpy()
    mix_ = src.mean(0)
    out = {n: methods[n](mix_, src) for n in names}
    assert calls == ["mean"]  # one search; all three candidates decoded for the means
    cands = real_many([mix_], SR, replace(sep.settings, sampler=Ancestral(1.0), candidates=3,
                                   combine="mean", output="decode"))[0].candidates
    np.testing.assert_allclose(out["lass-ancestral-decode-mean"], cands.mean(0), atol=1e-6)
    np.testing.assert_allclose(out["lass-ancestral-mask-mean"], soft_masks(mix_, cands),
                               atol=1e-6)
    np.testing.assert_allclose(out["lass-ancestral-decode-best"], cands[0], atol=1e-6)
    methods["lass-ancestral-mask"](mix_ * 0.5, src)  # another mixture: a new search
    assert calls == ["mean", "mean"]
    # The separator's mask settings reach the LASS mask methods.
    wide = make_methods(sep.with_settings(mask_fft=512, mask_iterations=2),
                        ["lass-ancestral-mask-mean"], candidates=3)
    np.testing.assert_allclose(wide["lass-ancestral-mask-mean"](mix_, src),
                               soft_masks(mix_, cands, 512, 2), atol=1e-6)
    assert not np.allclose(soft_masks(mix_, cands, 512, 2), soft_masks(mix_, cands), atol=1e-4)


def test_the_supervised_reference_is_a_method(tmp_path, capsys):
    import json

    from lass.supervised import ConvTasNet, ConvTasNetConfig

    bundle, _ = bundle_and_test_set(tmp_path, 2, seed=4)
    torch.manual_seed(0)
    net = ConvTasNet(ConvTasNetConfig(stems=("drums", "bass"), sample_rate=SR, filters=8,
                                      kernel=8, bottleneck=8, hidden=8, skip=8, layers=2,
                                      stacks=1))
    net.save(tmp_path / "net")
    args = ["--data", str(tmp_path / "data"), "--bundle", str(bundle), "--mixtures", "2",
            "--seconds", "0.25", "--methods", "average", "supervised"]
    out = tmp_path / "r.json"
    assert evaluate_main([*args, "--supervised", str(tmp_path / "net"), "--out", str(out)]) == 0
    assert "| supervised |" in capsys.readouterr().out
    assert json.loads(out.read_text())["config"]["supervised"] == str(tmp_path / "net")
    assert evaluate_main(args) == 1
    assert "needs --supervised MODEL" in capsys.readouterr().err
    other = ConvTasNet(ConvTasNetConfig(stems=("bass", "drums"), sample_rate=SR, filters=8,
                                        kernel=8, bottleneck=8, hidden=8, skip=8, layers=2,
                                        stacks=1))
    other.save(tmp_path / "swapped")
    assert evaluate_main([*args, "--supervised", str(tmp_path / "swapped")]) == 1
    assert "separates ['bass', 'drums']" in capsys.readouterr().err


def test_a_left_out_stem_is_scored_by_the_energy_put_in_it(tmp_path, capsys):
    from lass.evaluate import energy_db, score

    rng = np.random.default_rng(1)
    ref = rng.standard_normal((2, 2 * SR))
    ref[1] = 0.0  # the second source is absent from this mixture
    est = np.stack([0.9 * ref[0], 0.1 * ref[0]])
    s = score(est, ref, SR)
    assert np.isnan(s["sdr"][1])
    assert np.isnan(s["si_sdr"][1])
    assert np.isnan(s["museval"][1])
    assert s["sdr"][0] == pytest.approx(20.0, abs=1e-6)  # 10 log10(1 / 0.01)
    np.testing.assert_allclose(s["energy_db"], [20 * np.log10(0.9), -20.0], atol=1e-6)
    assert energy_db(np.zeros((1, 8)), np.ones(8))[0] < -150  # silence: far below the input

    bundle, _ = bundle_and_test_set(tmp_path, 2, seed=5)
    out = tmp_path / "r.json"
    args = ["--data", str(tmp_path / "data"), "--bundle", str(bundle), "--mixtures", "2",
            "--seconds", "0.25", "--methods", "average", "oracle-mask", "--out", str(out)]
    assert evaluate_main([*args, "--without", "bass"]) == 0
    printed = capsys.readouterr().out
    assert "energy_db" in printed
    results = json.loads(out.read_text())
    assert results["config"]["without"] == ["bass"]
    for r in results["per_mixture"]["average"]:
        # the mean mixture of drums and silence: the average gives each stem half of it
        assert np.isnan(r["sdr"][1])
        np.testing.assert_allclose(r["energy_db"], [20 * np.log10(0.5)] * 2, atol=1e-4)
        assert r["sdr"][0] == pytest.approx(20 * np.log10(0.5 / 0.5) + 6.02, abs=0.01)
    # the mask output shares the input out: the two energies add up to the input's or less
    for r in results["per_mixture"]["oracle-mask"]:
        assert np.isnan(r["sdr"][1])
        assert np.isfinite(r["sdr"][0])
        assert np.sum(10 ** (np.array(r["energy_db"]) / 10)) <= 1.0 + 1e-4
    assert evaluate_main([*args, "--without", "piano"]) == 1
    assert "--without piano" in capsys.readouterr().err


def test_langevin_and_posterior_bundles_are_methods(tmp_path, capsys):
    """An untrained posterior returns each source's share; SGLD with flows runs."""
    from lass.bundle import make_langevin_bundle, make_posterior_bundle
    from lass.posterior import AmortisedPosterior, PosteriorConfig
    from priors.flow import FlowConfig, FlowPrior

    bundle, _ = bundle_and_test_set(tmp_path, 2, seed=5)
    post = AmortisedPosterior(PosteriorConfig(stems=("drums", "bass"), sample_rate=SR,
                                              hidden=4, layers=1))
    post.save(tmp_path / "post")
    posterior = make_posterior_bundle(tmp_path / "pb", posterior=tmp_path / "post")
    for stem in ("drums", "bass"):
        FlowPrior(FlowConfig(blocks=1, flows=1, layers=1, hidden=4, sample_rate=SR,
                             class_name=stem)).save(tmp_path / f"flow-{stem}")
    langevin = make_langevin_bundle(
        tmp_path / "lb", priors={s: tmp_path / f"flow-{s}" for s in ("drums", "bass")},
        mix="mean", langevin={"schedule": "sgld", "sigma": 0.001, "steps": 3, "eta": 1e-6,
                              "gamma": 10.0})
    args = ["--data", str(tmp_path / "data"), "--bundle", str(bundle), "--mixtures", "2",
            "--seconds", "0.25", "--methods", "average", "posterior", "langevin"]
    out = tmp_path / "r.json"
    assert evaluate_main([*args, "--posterior", str(posterior), "--langevin", str(langevin),
                          "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| posterior |" in printed
    assert "| langevin |" in printed
    rows = json.loads(out.read_text())["per_mixture"]
    # The untrained posterior's stems are the shares: the average baseline's numbers.
    np.testing.assert_allclose(rows["posterior"][0]["sdr"], rows["average"][0]["sdr"],
                               atol=1e-3)
    assert evaluate_main(args) == 1
    assert "needs --langevin BUNDLE" in capsys.readouterr().err
    assert evaluate_main([*args, "--posterior", str(langevin), "--langevin",
                          str(langevin)]) == 1
    assert "is a langevin bundle" in capsys.readouterr().err
