"""Build the thesis' two ToyData bundles from seed: `toy-flow` (flow priors, Langevin) and
`toy-posterior` (the amortised posterior against those priors), stage by stage.

    python scripts/build_toy_flow_bundles.py --work runs/toy-flow --data runs/toy/data \\
        [--install]

The data are the `toy` bundle's (``lass-make-dataset toy --items 3000 --seconds 1 --seed
0``; made here when ``--data`` is missing): sine, sawtooth, square and triangle, mixture =
mean. Stages (each is skipped when its output exists; the trainings resume when
interrupted; the numbers go to ``WORK/build.json``):

1. ``flows``: ``lass-train-prior --kind flow`` for each source (``FLOW``: 3 blocks of 4
   flows, couplings of 4 layers and 16 channels; windows of 2048 samples; noise levels
   log-uniform over ``SIGMA_BINS``; ``FLOW_STEPS`` steps).
2. ``langevin``: on ``TUNE_MIXTURES`` validation mixtures of ``TUNE_SECONDS`` (never
   test), the mean SI-SDR of each Langevin schedule of ``schedules()``, from plain SGLD at
   the flows' smallest noise level (the thesis' Algorithm 2) to annealing from
   ``SIGMA_START`` down to it; the best is the `toy-flow` bundle's. Both kinds are
   reported, which says whether plain SGLD mixes.
3. ``posterior``: ``lass-train-posterior`` against the flows (``POSTERIOR``,
   ``POSTERIOR_STEPS`` steps).
4. ``report``: ``lass-evaluate`` on ``REPORT_MIXTURES`` test mixtures of
   ``REPORT_SECONDS``: the average, the oracle (the codec's, through the shipped `toy` LASS
   bundle), LASS with the `toy` bundle and Langevin with the flows in ``WORK/report.json``
   (``--until langevin`` stops after it), the posterior in ``WORK/report-posterior.json``.
5. ``assemble``: ``WORK/toy-flow`` and ``WORK/toy-posterior``, their weights stored as
   float16 (computed in float32; half the bytes); ``--install`` copies them to
   ``lass/bundles/`` and prints the rows of ``checkpoints.md``.

``--quick`` shrinks every stage to a few steps and mixtures (a rehearsal of the commands).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bundle_stages import BuildLog, evaluate_summary, install, run_stage

from lass.bundle import make_langevin_bundle, make_posterior_bundle

ROOT = Path(__file__).resolve().parent.parent
STEMS = ("sine", "sawtooth", "square", "triangle")
ITEMS = 3000
SIGMA_BINS = (0.1, 64.0)  # noise levels of the flows, in bins of 1/128
FLOW = ["--blocks", "3", "--flows", "4", "--flow-layers", "4", "--flow-hidden", "16",
        "--samples", "2048", "--batch", "16", "--lr", "1e-3"]
FLOW_STEPS = 4000
SIGMA_START = 0.25  # where annealing starts (signal units; the sources reach 1.0)
LANGEVIN_STEPS = 200
TUNE_SECONDS = 0.25
TUNE_MIXTURES = 8
REPORT_SECONDS = 0.5
REPORT_MIXTURES = 16
POSTERIOR = ["--samples", "2048", "--batch", "8", "--hidden", "32", "--layers", "10",
             "--cycle", "10", "--gamma", "1e4", "--lr", "1e-3"]
POSTERIOR_STEPS = 2500
LASS_METHOD = "lass-beam-mask"  # the shipped toy bundle's method
FLOW_DESCRIPTION = ("ToyData's four oscillators (sine, sawtooth, square, triangle) by "
                    "Langevin dynamics with one noise-conditioned flow prior per source "
                    "(the thesis' method); 22.05 kHz mono, mixture = mean.")
POSTERIOR_DESCRIPTION = ("ToyData's four oscillators (sine, sawtooth, square, triangle) in "
                         "one pass of an amortised Gaussian posterior trained against flow "
                         "priors (the thesis' variational method); 22.05 kHz mono, mixture "
                         "= mean.")


def schedules(sigma_min: float, quick: bool) -> dict[str, dict[str, Any]]:
    """The Langevin schedules the build compares, each of ``LANGEVIN_STEPS`` updates: plain
    SGLD at the flows' smallest noise level (the thesis' Algorithm 2) at two step sizes, and
    annealing from ``SIGMA_START`` down to it (10 levels) at two mixture weights."""
    steps = 4 if quick else LANGEVIN_STEPS
    out: dict[str, dict[str, Any]] = {}
    for eta in (0.1, 0.5):
        out[f"sgld-eta{eta:g}"] = {"schedule": "sgld", "sigma": sigma_min, "steps": steps,
                                   "eta": eta * sigma_min**2, "gamma": 1 / sigma_min**2}
    for gamma in (1.0, 15.0):
        out[f"annealed-eta0.1-gamma{gamma:g}"] = {
            "schedule": "annealed", "start": SIGMA_START, "stop": sigma_min,
            "levels": 2 if quick else 10, "steps": 2 if quick else steps // 10,
            "eta_scale": 0.1, "eta_ref": 1.0, "gamma_scale": gamma}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="the toy data set (default: "
                   "WORK/data, made here)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a rehearsal: a few steps each")
    p.add_argument("--install", action="store_true")
    p.add_argument("--until", choices=("flows", "langevin", "posterior"), default=None,
                   help="stop after this stage")
    args = p.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    build = BuildLog(work / "build.json")
    log = build.data
    dev = ["--device", args.device]
    quick = args.quick
    data: Path = args.data or work / "data"
    manifest = data / "dataset.json"
    if not manifest.is_file() or not json.loads(manifest.read_text()).get("complete"):
        run_stage(["lass-make-dataset", "toy", "--items", str(ITEMS), "--seconds", "1",
                   "--seed", "0", "--out", str(data)], log, "data")
    flow_steps = 3 if quick else FLOW_STEPS
    for stem in STEMS:
        out = work / f"flow-{stem}"
        done = out / "summary.json"
        if not (done.is_file() and json.loads(done.read_text())["step"] >= flow_steps):
            run_stage(["lass-train-prior", "--kind", "flow", "--data", str(data), "--stem",
                       stem, "--out", str(out), *FLOW, "--sigma-bins", str(SIGMA_BINS[0]),
                       str(SIGMA_BINS[1]), "--steps", str(flow_steps), "--seed", "0", *dev]
                      + (["--resume"] if (out / "trainer.pt").is_file() else []),
                      log, f"flow-{stem}")
    build.save()
    if args.until == "flows":
        return
    priors = {s: work / f"flow-{s}" / "model" for s in STEMS}
    sigma_min = SIGMA_BINS[0] / 128
    toy = ROOT / "lass" / "bundles" / "toy"
    mixtures = 2 if quick else TUNE_MIXTURES
    tune = log.setdefault("langevin", {})
    for name, schedule in schedules(sigma_min, quick).items():
        if name in tune:
            continue
        candidate = work / "candidates" / name
        if candidate.exists():
            shutil.rmtree(candidate)
        make_langevin_bundle(candidate, priors=priors, mix="mean", langevin=schedule,
                             name="toy-flow", description=FLOW_DESCRIPTION)
        summary = evaluate_summary(toy, data, "valid", work / f"tune-{name}.json",
                                   ["langevin"], mixtures, TUNE_SECONDS,
                                   ["--langevin", str(candidate)])
        tune[name] = {"schedule": schedule,
                      "si_sdr": summary["langevin"]["si_sdr"]["avg mean"]}
        print(f"langevin {name}: valid SI-SDR {tune[name]['si_sdr']:.2f} dB", file=sys.stderr)
        build.save()
    best = max(tune, key=lambda n: tune[n]["si_sdr"])
    log["langevin_chosen"] = best
    flow_bundle = work / "toy-flow"
    if flow_bundle.exists():
        shutil.rmtree(flow_bundle)
    make_langevin_bundle(flow_bundle, priors=priors, mix="mean",
                         langevin=tune[best]["schedule"], name="toy-flow",
                         description=FLOW_DESCRIPTION, half=True)
    # Two results files: the Langevin run does not wait for the posterior's training.
    mixtures, seconds = (2, 0.1) if quick else (REPORT_MIXTURES, REPORT_SECONDS)
    summary = evaluate_summary(
        toy, data, "test", work / "report.json",
        ["average", "oracle-mask", LASS_METHOD, "langevin"], mixtures, seconds,
        ["--langevin", str(flow_bundle)])
    if args.until == "langevin":
        return
    posterior = work / "posterior"
    posterior_steps = 3 if quick else POSTERIOR_STEPS
    done = posterior / "summary.json"
    if not (done.is_file() and json.loads(done.read_text())["step"] >= posterior_steps):
        run_stage(["lass-train-posterior", "--data", str(data), "--priors", str(flow_bundle),
                   "--out", str(posterior), *POSTERIOR, "--steps", str(posterior_steps),
                   "--seed", "0", *dev]
                  + (["--resume"] if (posterior / "trainer.pt").is_file() else []),
                  log, "posterior")
    if args.until == "posterior":
        return
    posterior_bundle = work / "toy-posterior"
    if posterior_bundle.exists():
        shutil.rmtree(posterior_bundle)
    make_posterior_bundle(posterior_bundle, posterior=posterior / "model",
                          name="toy-posterior", description=POSTERIOR_DESCRIPTION, half=True)
    summary |= evaluate_summary(toy, data, "test", work / "report-posterior.json",
                                ["posterior"], mixtures, seconds,
                                ["--posterior", str(posterior_bundle)])
    log["report"] = {m: {"si_sdr": summary[m]["si_sdr"], "seconds": summary[m]["seconds"]}
                     for m in summary}
    build.save()
    for m in summary:
        print(f"test {m}: SI-SDR {summary[m]['si_sdr']['avg mean']:.2f} dB, "
              f"{summary[m]['seconds']['per mixture']:.2f} s per mixture", file=sys.stderr)
    if args.install:
        install(flow_bundle, "toy-flow")
        install(posterior_bundle, "toy-posterior")


if __name__ == "__main__":
    main()
