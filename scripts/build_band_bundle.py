"""Build the three-stem `band` bundle (drums, bass, other) from seed, stage by stage.

    python scripts/build_band_bundle.py --work runs/band [--data data/band] [--install]
    python scripts/build_band_bundle.py --work runs/band --until prior   # stop after a stage

Stages (each is skipped when its output exists; the training stages resume when
interrupted, so the build can run over several sittings and later work can go on from what
each stage left in WORK):

1. ``data``: ``lass-make-dataset synth-band --hours 10 --seed 0`` (train / valid / test, and
   ``heldout``: the test songs rendered with the held-out soundfonts, csound and
   avl-red-zeppelin; neither test split is used to train or tune)
2. ``codec``: the default bundle's codec (hop 64, 1024 codes, trained on drums and bass of
   FluidR3 GM) fine-tuned on the band set's three stems and their mixtures
   (``lass-train-vqvae --init``, ``CODEC_STEPS`` steps at learning rate ``CODEC_LR``): its
   oracles on the band set are far below those on its own set (the other stem above all),
   and fine-tuning keeps its codes close enough for the default prior to start from.
   ``codec-check`` measures both codecs' oracles (decode and mask) on ``CHECK_MIXTURES``
   validation mixtures and keeps the better by oracle-mask SDR; it also reports both
   codecs' oracles, the average and HPSS on ``REPORT_MIXTURES`` test and heldout mixtures
3. ``prior``: ``lass-train-prior`` of one shared prior over drums, bass and other, started
   from the default bundle's drums+bass prior (``--init``: its two classes keep their
   weights, ``other`` starts from their mean; on the fine-tuned codec, it records that
   codec) and trained on the band set's tokens for ``PRIOR_STEPS`` steps
4. ``counts``: ``lass-count-likelihood --sources drums bass other`` on ``COUNT_HOURS`` hours
   of training mixtures (1 s chunks, the stems' own levels), the 4-tuples (mixture token,
   three source tokens), then ``lass-merge-counts --min-count COUNT_MIN``
5. ``evidence``: ``lass-fit-evidence`` for the three sources (``EVIDENCE_HOURS`` hours,
   ``EVIDENCE_EPOCHS`` epochs)
6. ``tune``: on 24 validation mixtures of 3 s (never test or heldout), ``TUNING``: mean
   SI-SDR of the mask output of beam search (``BEAMS`` beams) over a grid of (lambda,
   evidence weight); then the ancestral sampler (``SAMPLES`` samples, mean) at two
   temperatures with the best lambda and weight, taken when it gains 0.2 dB; then the mask
   output's STFT size and EM updates, and for the sampler its 10 samples spread as 2 over
   each of 5 shifted copies, each taken when it gains 0.2 dB (``bundle_stages.tune_stage``)
7. ``supervised``: the supervised reference, ``lass-train-supervised`` (a small Conv-TasNet)
   on the same three stems for ``SUPERVISED_STEPS`` steps
8. ``report``: ``lass-evaluate`` of the average, HPSS, the codec's oracles, the bundle's
   LASS method and (in its own results file; ``--skip-supervised`` leaves it out) the
   supervised reference on ``REPORT_TEST_MIXTURES`` mixtures of 3 s of
   the test split, of the heldout split, and of the heldout split with the other stem left
   out (``--without other``: what the bundle puts into a stem the song does not have);
   ``WORK/report-*.json``, the means in ``WORK/build.json`` under ``report``
9. ``assemble``: the bundle in ``WORK/bundle``; ``--install`` copies it to
   ``lass/bundles/band`` and prints the rows of ``checkpoints.md``.

The likelihood uses the ``votes`` smoothing with a ``PRIOR_TOP`` grid per step, as the
four-source `toy` bundle does: with three sources most 4-tuples of a mixture are unseen in
counting. Commands run on the CPU unless ``--device cuda``; the numbers of a build go to
``WORK/build.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bundle_stages import (
    BuildLog,
    Tuning,
    bundle_report,
    counts_stage,
    evaluate_summary,
    evidence_stage,
    install,
    run_stage,
    sampler_options,
    tune_stage,
)

from vqvae import load_codec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "lass" / "bundles" / "default"
STEMS = ("drums", "bass", "other")
STAGES = ("data", "codec", "codec-check", "prior", "counts", "evidence", "tune", "supervised",
          "report")
DATA_HOURS = 10
CODEC_STEPS = 1000
CODEC_LR = 5e-4
CHECK_MIXTURES = 24  # validation mixtures deciding the codec
REPORT_MIXTURES = 48  # test and heldout mixtures of the codec report
PRIOR_STEPS = 800
PRIOR_OPTIONS = ["--context", "512", "--batch", "16"]
COUNT_HOURS = 2.0
COUNT_MIN = 2
EVIDENCE_HOURS = 1.5
EVIDENCE_EPOCHS = 6
EVIDENCE_OPTIONS = ("--waveform", "--dilations", "1", "2", "4", "8", "16")
PRIOR_TOP = 27  # a 3 x 3 x 3 grid of the sources' likeliest tokens per step
SMOOTHING = ("votes", 1.0)
BEAMS = 10
SAMPLES = 10
# The Conv-TasNet reference (lass-train-supervised's default size, batches of 8 x 2 s): 2400
# steps take about 1.6 h on one CPU thread, about the CPU time of this bundle's own prior,
# counts and evidence stages (a comparable training budget).
SUPERVISED_STEPS = 2400
REPORT_TEST_MIXTURES = 100  # 3 s mixtures of each table
DESCRIPTION = ("Drums, bass and other (every other instrument). Trained on 10 hours of "
               "synthetic songs in 16 styles with drums, bass and chords, pads, arpeggios "
               "and leads, rendered with six General MIDI soundfonts and per-stem effects, "
               "22.05 kHz mono. Expect weaker stems on real recordings.")
TUNING = Tuning(
    grid=((0.0, 4.0), (2.0, 4.0), (5.0, 1.0), (5.0, 2.0), (5.0, 4.0), (0.0, 8.0), (0.0, 16.0),
          (2.0, 8.0)),
    mixtures=24, seconds=3.0, beams=BEAMS, samples=SAMPLES, temperatures=(1.0, 1.5),
    sampler_gain_db=0.2, mask_grid=((2048, 0), (4096, 0), (8192, 0)),
    shifts_grid=(1, 5), gain_db=0.2)


def _evaluate(bundle: Path, data: Path, split: str, out: Path, methods: list[str],
              mixtures: int) -> dict[str, Any]:
    """``lass-evaluate`` of ``methods`` on ``mixtures`` 3 s mixtures of ``split``; the
    summary of each method (the results file resumes)."""
    return evaluate_summary(bundle, data, split, out, methods, mixtures, 3.0, [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None,
                   help="the band data set (default: WORK/data, made by the first stage)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    p.add_argument("--codec", choices=("default", "fine-tune"), default="default",
                   help="the default bundle's codec as it is (its oracle holds on held-out "
                        "timbres), or fine-tuned on the band set and kept when its oracle "
                        "is better on validation mixtures")
    p.add_argument("--install", action="store_true")
    p.add_argument("--skip-supervised", action="store_true",
                   help="leave the supervised reference out (its stage and its column)")
    args = p.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    build = BuildLog(work / "build.json")
    log = build.data
    dev = ["--device", args.device]

    def done(stage: str) -> bool:
        build.save()
        return args.until == stage

    data: Path = args.data or work / "data"
    manifest = data / "dataset.json"
    if not manifest.is_file() or not json.loads(manifest.read_text()).get("complete"):
        run_stage(["lass-make-dataset", "synth-band", "--hours", str(DATA_HOURS), "--seed", "0",
                   "--out", str(data)], log, "data")
    if done("data"):
        return
    if not (work / "codec-default" / "model").is_dir():
        shutil.copytree(DEFAULT / "codec", work / "codec-default" / "model")
    bundle = work / "bundle"

    def assemble(sampler: dict[str, Any], prior: Path, extra: list[str],
                 codec_dir: Path | None = None) -> None:
        if bundle.exists():
            shutil.rmtree(bundle)
        subprocess.run(["lass-make-bundle", "--codec", str((codec_dir or codec) / "model"),
                        "--shared-prior", str(prior), "--name", "band", "--description",
                        DESCRIPTION, "--out", str(bundle), "--output", "mask", *extra,
                        *sampler_options({"weight": 1.0, **sampler}, BEAMS, SAMPLES)],
                       check=True, stdout=subprocess.DEVNULL)

    def oracle_bundle(codec_dir: Path) -> None:
        """A bundle of the three stems on ``codec_dir`` for lass-evaluate's oracles, which
        read only the codec: the default prior extended (untrained for other; its codec
        identity set to this codec) and a few minutes' counts."""
        from priors import load_prior

        seed_prior = codec_dir / "prior-seed"
        codec_id = load_codec(codec_dir / "model").identity()
        if not seed_prior.is_dir():
            grown = load_prior(DEFAULT / "prior", backend="transformers").with_classes(STEMS)
            grown.config = replace(grown.config, codec_identity=codec_id)
            grown.save(seed_prior)
        few = codec_dir / "counts-check.npz"
        if not few.is_file():
            subprocess.run(["lass-count-likelihood", "--codec", str(codec_dir / "model"),
                            "--data", str(data), "--sources", *STEMS, "--hours", "0.01",
                            "--out", str(few), *dev], check=True, stdout=subprocess.DEVNULL)
        assemble({"kind": "beam", "lam": 0.0}, seed_prior, ["--likelihood", str(few)],
                 codec_dir)

    if args.codec == "default":
        # The default bundle's codec: its oracle does not fall on held-out timbres, and
        # fine-tuning gains 0.7 dB of it at 95 minutes (docs/band.md).
        codec = work / "codec-default"
    else:
        codec = work / "codec"  # the fine-tuned codec's run; WORK/codec-default: the default's
        if not (codec / "summary.json").is_file() or json.loads(
                (codec / "summary.json").read_text())["step"] < CODEC_STEPS:
            cmd = ["lass-train-vqvae", "--data", str(data), "--stems", *STEMS, "--out", str(codec),
                   "--steps", str(CODEC_STEPS), "--lr", str(CODEC_LR), "--seed", "0", *dev]
            cmd += ["--resume"] if codec.exists() else ["--init", str(DEFAULT / "codec")]
            run_stage(cmd, log, "codec")
        if done("codec"):
            return
        check = log.setdefault("codec_check", {})
        for name in ("default", "fine-tuned"):
            if name not in check.get("valid", {}):
                codec_dir = work / "codec-default" if name == "default" else codec
                oracle_bundle(codec_dir)
                summary = _evaluate(bundle, data, "valid", codec_dir / "oracle-valid.json",
                                    ["oracle-decode", "oracle-mask"], CHECK_MIXTURES)
                check.setdefault("valid", {})[name] = {
                    m: {k: summary[m][k]["avg mean"] for k in ("sdr", "si_sdr")} for m in summary}
                print(f"codec check valid, {name}: {check['valid'][name]}", file=sys.stderr)
                build.save()
        valid_sdr = {n: check["valid"][n]["oracle-mask"]["sdr"] for n in check["valid"]}
        check["chosen"] = max(valid_sdr, key=lambda n: (valid_sdr[n], n == "fine-tuned"))
        if check["chosen"] == "default":
            codec = work / "codec-default"
        for name in ("default", "fine-tuned"):
            codec_dir = work / "codec-default" if name == "default" else work / "codec"
            for split in ("test", "heldout"):
                if name not in check.get(split, {}):
                    oracle_bundle(codec_dir)
                    summary = _evaluate(bundle, data, split, codec_dir / f"oracle-{split}.json",
                                        ["average", "hpss", "oracle-decode", "oracle-mask"],
                                        REPORT_MIXTURES)
                    check.setdefault(split, {})[name] = {
                        m: {s: {k: v for k, v in summary[m][s].items() if k.endswith("mean")}
                            for s in ("sdr", "si_sdr")} for m in summary}
                    print(f"codec check {split}, {name}: {check[split][name]}", file=sys.stderr)
                    build.save()
    if done("codec-check"):
        return
    prior = work / "prior"
    summary_path = prior / "summary.json"
    if not (summary_path.is_file()
            and json.loads(summary_path.read_text())["step"] >= PRIOR_STEPS):
        cmd = ["lass-train-prior", "--codec", str(codec / "model"), "--data", str(data),
               "--stem", *STEMS, "--conditional", "--out", str(prior), *PRIOR_OPTIONS,
               "--steps", str(PRIOR_STEPS), "--seed", "0", *dev]
        cmd += ["--resume"] if prior.exists() else ["--init", str(DEFAULT / "prior")]
        run_stage(cmd, log, "prior")
    if done("prior"):
        return
    counts = counts_stage(work, codec / "model", data, STEMS, COUNT_HOURS, COUNT_MIN, dev, log)
    if done("counts"):
        return
    evidence = evidence_stage(work, codec / "model", data, STEMS, EVIDENCE_HOURS,
                              EVIDENCE_EPOCHS, dev, log, EVIDENCE_OPTIONS)
    if done("evidence"):
        return
    likelihood = ["--likelihood", str(counts), "--smoothing", SMOOTHING[0], "--alpha",
                  str(SMOOTHING[1]), "--prior-top", str(PRIOR_TOP), "--evidence", str(evidence)]
    best = tune_stage(work, bundle, data, TUNING,
                      lambda sampler: assemble(sampler, prior / "model", likelihood), build)
    if done("tune"):
        return
    supervised = work / "supervised"
    trained = supervised / "summary.json"
    if not args.skip_supervised and not (
            trained.is_file() and json.loads(trained.read_text()).get("step", 0)
            >= SUPERVISED_STEPS):
        run_stage(["lass-train-supervised", "--data", str(data), "--stems", *STEMS, "--out",
                   str(supervised), "--steps", str(SUPERVISED_STEPS), "--seed", "0", *dev]
                  + (["--resume"] if (supervised / "trainer.pt").is_file() else []),
                  log, "supervised")
    if done("supervised"):
        return
    # The tables: test (timbres seen in training) and heldout (never heard), and heldout
    # drums + bass alone (the other stem left out: what the bundle puts into it).
    method = ("lass-beam-mask" if best["kind"] == "beam" else "lass-ancestral-mask-mean")
    methods = ["average", "hpss", "oracle-decode", "oracle-mask", method]
    report = log.setdefault("report", {})
    # (held-out timbres first: the targets are judged there)
    for name, split, extra in (("heldout", "heldout", []), ("test", "test", []),
                               ("heldout-without-other", "heldout", ["--without", "other"])):
        # The supervised reference has its own results file (the same mixtures), so that
        # it can be added to a report without measuring the others again.
        runs = [(work / f"report-{name}.json", methods, extra)]
        if not args.skip_supervised:
            runs.append((work / f"report-{name}-supervised.json", ["supervised"],
                         ["--supervised", str(supervised / "model"), *extra]))
        report[name] = {}
        for out, these, options in runs:
            summary_of = evaluate_summary(bundle, data, split, out, these,
                                          REPORT_TEST_MIXTURES, 3.0, options)
            report[name].update({
                m: {metric: {k: v for k, v in summary_of[m][metric].items()
                             if k.endswith("mean")}
                    for metric in summary_of[m] if metric != "seconds"}
                for m in summary_of})
        build.save()
    if done("report"):
        return
    bundle_report(bundle, best)
    if args.install:
        install(bundle, "band", "default" if args.codec == "default" else None)


if __name__ == "__main__":
    main()
