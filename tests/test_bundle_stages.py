"""The tuning stage the bundle build scripts share: what it picks, and that it resumes."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bundle_stages
from bundle_stages import BuildLog, Tuning, sampler_options, tune_stage


def fake_scores(calls: list[tuple[str, tuple[str, ...]]], bundle: dict,
                shifts_pay: bool = False):
    """A stand-in for lass-evaluate: SI-SDR as a known function of the settings, those the
    options name over those of the bundle last assembled (``bundle``), as lass-evaluate
    does."""

    def evaluate(path, data, split, out, methods, mixtures, seconds, options):
        assert split == "valid"
        calls.append((methods[0], tuple(options)))
        opts = dict(zip(options[::2], options[1::2], strict=True))

        def value_of(flag: str, key: str) -> str:
            return opts[flag] if flag in opts else str(bundle[key])

        lam = float(value_of("--lam", "lam"))
        weight = float(value_of("--evidence-weight", "weight"))
        value = 5.0 - abs(lam - 5.0) / 5 + (0.1 if weight == 2.0 else 0.0)
        if methods[0] == "lass-ancestral-mask-mean":
            value += 0.5 if float(value_of("--temperature", "temperature")) == 1.5 else 0.1
        fft = int(opts.get("--mask-fft", bundle.get("mask_fft", 2048)))
        value += {4096: 0.1, 8192: 0.3}.get(fft, 0.0)
        shifts = int(opts.get("--shifts", bundle.get("shifts", 1)))
        if "--shifts" in opts:  # the samples are spread over the copies, not multiplied
            assert int(opts["--candidates"]) * shifts == 10
        value += (0.1 if shifts_pay else 0.04) * (shifts - 1)
        return {methods[0]: {"si_sdr": {"avg mean": value}}}

    return evaluate


@pytest.mark.parametrize("shifts_pay", [False, True])
def test_tuning_picks_the_best_and_resumes(tmp_path, monkeypatch, shifts_pay):
    calls: list[tuple[str, tuple[str, ...]]] = []
    bundle: dict = {}
    monkeypatch.setattr(bundle_stages, "evaluate_summary",
                        fake_scores(calls, bundle, shifts_pay))
    assembled: list[dict] = []

    def assemble(settings: dict) -> None:
        assembled.append(dict(settings))
        bundle.clear()
        bundle.update(settings)

    tuning = Tuning(grid=((0.0, 1.0), (5.0, 1.0), (5.0, 2.0), (10.0, 1.0)), mixtures=2,
                    seconds=1.0, mask_grid=((2048, 0), (4096, 0), (8192, 0)),
                    shifts_grid=(1, 5))
    build = BuildLog(tmp_path / "build.json")
    best = tune_stage(tmp_path, tmp_path / "bundle", tmp_path / "data", tuning,
                      assemble, build)
    # lambda 5 with weight 2 wins the beam grid (5.1); sampling at 1.5 gains 0.5 dB; the
    # 8192-sample mask gains 0.3 dB; the 10 samples as 5 copies x 2 gain 0.16 dB (under the
    # 0.2 dB asked for) or 0.4 dB (taken)
    expected = {"kind": "ancestral", "lam": 5.0, "weight": 2.0, "temperature": 1.5,
                "mask_fft": 8192, "mask_iterations": 0, "si_sdr": pytest.approx(5.9)}
    if shifts_pay:
        expected.update(shifts=5, candidates=2, si_sdr=pytest.approx(6.3))
    assert best == expected
    assert assembled[-1] == best
    assert len(calls) == 4 + 2 + 3 + 2
    saved = BuildLog(tmp_path / "build.json").data["tune"]
    assert saved["chosen"] == best
    assert saved["beam"]["lambda 5 weight 2"] == pytest.approx(5.1)
    # a second run reads every score from the log and evaluates nothing
    calls.clear()
    again = tune_stage(tmp_path, tmp_path / "bundle", tmp_path / "data", tuning,
                       lambda s: None, BuildLog(tmp_path / "build.json"))
    assert again == best
    assert calls == []


def test_sampler_options_name_every_setting():
    beam = sampler_options({"kind": "beam", "lam": 2.0, "weight": 1.0}, 10, 4)
    assert beam == ["--lam", "2.0", "--evidence-weight", "1.0", "--sampler", "beam",
                    "--beams", "10"]
    sampled = sampler_options({"kind": "ancestral", "lam": 5.0, "weight": 0.5,
                               "temperature": 1.5, "mask_fft": 8192, "mask_iterations": 1,
                               "shifts": 3}, 10, 4)
    assert sampled == ["--lam", "5.0", "--evidence-weight", "0.5", "--sampler", "ancestral",
                       "--candidates", "4", "--temperature", "1.5", "--combine", "mean",
                       "--mask-fft", "8192", "--mask-iterations", "1", "--shifts", "3"]


def test_evidence_stage_passes_its_options_and_skips_a_done_stage(tmp_path, monkeypatch):
    ran: list[list[str]] = []

    def run(cmd, log, stage):
        ran.append(cmd)
        Path(cmd[cmd.index("--out") + 1]).write_bytes(b"model")

    monkeypatch.setattr(bundle_stages, "run_stage", run)
    log: dict = {}
    out = bundle_stages.evidence_stage(tmp_path, Path("codec"), Path("data"), ("a", "b", "c"),
                                       4.0, 6, ["--device", "cpu"], log,
                                       ("--waveform", "--dilations", "1", "2"))
    assert out == tmp_path / "evidence.npz"
    cmd = ran[0]
    assert cmd[0] == "lass-fit-evidence"
    assert cmd[cmd.index("--sources") + 1: cmd.index("--sources") + 4] == ["a", "b", "c"]
    assert cmd[cmd.index("--hours") + 1] == "4.0"
    assert "--waveform" in cmd
    assert cmd[cmd.index("--dilations") + 1: cmd.index("--dilations") + 3] == ["1", "2"]
    bundle_stages.evidence_stage(tmp_path, Path("codec"), Path("data"), ("a", "b", "c"), 4.0,
                                 6, [], log)
    assert len(ran) == 1  # its output exists: not run again
