"""Stages the bundle build scripts share: running and timing a stage, counting, the token
evidence, tuning a bundle's settings on validation mixtures, and installing a bundle.

A build keeps its numbers in ``WORK/build.json`` (:class:`BuildLog`); every stage is skipped
when its output exists, and the tuning resumes from the scores already in the log, so a build
can run over several sittings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lass.bundle import sha256_path
from vqvae.files import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent


class BuildLog:
    """The numbers of a build (``WORK/build.json``), written after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def save(self) -> None:
        """Write the log (whole, replacing the file)."""
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)


def run_stage(cmd: list[str], log: dict[str, Any], stage: str) -> None:
    """Run one command of a build (echoed to stderr; it raises when the command fails) and
    keep its seconds in ``log["seconds"][stage]``."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    log.setdefault("seconds", {})[stage] = round(time.perf_counter() - start, 1)


def counts_stage(work: Path, codec: Path, data: Path, stems: Sequence[str], hours: float,
                 min_count: int, dev: list[str], log: dict[str, Any]) -> Path:
    """``lass-count-likelihood`` of ``stems`` on ``hours`` hours of training mixtures (1 s
    chunks at the stems' own levels) into ``WORK/counts-full.npz``, then ``lass-merge-counts
    --min-count`` into ``WORK/counts.npz`` (returned)."""
    counts = work / "counts.npz"
    if not counts.is_file():
        full = work / "counts-full.npz"
        if not full.is_file():
            run_stage(["lass-count-likelihood", "--codec", str(codec), "--data", str(data),
                       "--sources", *stems, "--hours", str(hours), "--chunk-seconds", "1",
                       "--gain-db", "0", "0", "--seed", "0", "--out", str(full), *dev],
                      log, "counts")
        run_stage(["lass-merge-counts", str(full), "--min-count", str(min_count), "--out",
                   str(counts)], log, "counts-prune")
    return counts


def evidence_stage(work: Path, codec: Path, data: Path, stems: Sequence[str], hours: float,
                   epochs: int, dev: list[str], log: dict[str, Any],
                   options: Sequence[str] = ()) -> Path:
    """``lass-fit-evidence`` for ``stems`` on ``hours`` hours of training mixtures (and
    ``options``, e.g. ``--waveform``) into ``WORK/evidence.npz`` (returned)."""
    evidence = work / "evidence.npz"
    if not evidence.is_file():
        run_stage(["lass-fit-evidence", "--codec", str(codec), "--data", str(data),
                   "--sources", *stems, "--hours", str(hours), "--chunk-seconds", "1",
                   "--gain-db", "0", "0", "--seed", "0", "--epochs", str(epochs),
                   "--valid-hours", "0.05", "--out", str(evidence), *options, *dev], log,
                  "evidence")
    return evidence


def evaluate_summary(bundle: Path, data: Path, split: str, out: Path, methods: list[str],
                     mixtures: int, seconds: float, options: list[str]) -> dict[str, Any]:
    """``lass-evaluate`` of ``methods`` on ``mixtures`` mixtures of ``seconds`` from
    ``split``; each method's summary (the results file resumes)."""
    subprocess.run(["lass-evaluate", "--data", str(data), "--split", split, "--bundle",
                    str(bundle), "--mixtures", str(mixtures), "--seconds", f"{seconds:g}",
                    "--methods", *methods, "--out", str(out), *options], check=True,
                   stdout=subprocess.DEVNULL)
    summary: dict[str, Any] = json.loads(out.read_text())["summary"]
    return summary


Assemble = Callable[[dict[str, Any]], None]
"""Writes the bundle being tuned with the settings of a sampler entry: ``kind`` ("beam" or
"ancestral"), ``lam``, ``weight``, optionally ``temperature``, ``mask_fft``,
``mask_iterations`` and ``shifts``."""


@dataclass(frozen=True)
class Tuning:
    """What the tuning stage tries, in order, each on validation mixtures only (mean SI-SDR
    of the mask output): beam search (``beams``) over ``grid`` (lambda, evidence weight);
    the ancestral sampler (``samples``, mean) at ``temperatures`` with the best lambda and
    weight, taken when it gains ``sampler_gain_db``; the mask output's (STFT size, EM
    updates) of ``mask_grid`` and then, for the ancestral sampler, its samples spread over the
    shifted copies of ``shifts_grid`` (n copies of ``samples / n`` samples each), each taken when
    it gains ``gain_db`` over the first entry of its grid."""

    grid: tuple[tuple[float, float], ...]
    mixtures: int
    seconds: float
    beams: int = 10
    samples: int = 10
    temperatures: tuple[float, ...] = (1.0, 1.5)
    sampler_gain_db: float = 0.2
    mask_grid: tuple[tuple[int, int], ...] = ()
    shifts_grid: tuple[int, ...] = ()
    gain_db: float = 0.2


def tune_stage(work: Path, bundle: Path, data: Path, tuning: Tuning, assemble: Assemble,
               build: BuildLog) -> dict[str, Any]:
    """Tune the bundle's sampler and output settings (:class:`Tuning`) and leave the bundle
    assembled with the best; the scores go to ``build.data["tune"]`` (resumed from there),
    the results files to ``WORK/tune``. Returns the chosen settings."""
    tune = build.data.setdefault("tune", {})
    (work / "tune").mkdir(exist_ok=True)

    def valid(name: str, method: str, options: list[str]) -> float:
        summary = evaluate_summary(bundle, data, "valid", work / "tune" / f"{name}.json",
                                   [method], tuning.mixtures, tuning.seconds, options)
        return float(summary[method]["si_sdr"]["avg mean"])

    def scored(table: str, key: str, name: str, method: str, options: list[str]) -> float:
        grid = tune.setdefault(table, {})
        if key not in grid:
            grid[key] = valid(name, method, options)
            print(f"{table} {key}: valid SI-SDR {grid[key]:.2f} dB", file=sys.stderr)
            build.save()
        return float(grid[key])

    assemble({"kind": "beam", "lam": tuning.grid[0][0], "weight": tuning.grid[0][1]})
    beam = {(lam, w): scored("beam", f"lambda {lam:g} weight {w:g}", f"beam-{lam:g}-{w:g}",
                             "lass-beam-mask", ["--beams", str(tuning.beams), "--lam",
                                                str(lam), "--evidence-weight", str(w)])
            for lam, w in tuning.grid}
    lam, weight = max(tuning.grid, key=lambda g: beam[g])
    best: dict[str, Any] = {"kind": "beam", "lam": lam, "weight": weight,
                            "si_sdr": beam[(lam, weight)]}
    sampled = {t: scored("ancestral", f"lambda {lam:g} weight {weight:g} temperature {t:g}",
                         f"ancestral-{lam:g}-{weight:g}-{t:g}", "lass-ancestral-mask-mean",
                         ["--candidates", str(tuning.samples), "--temperature", str(t),
                          "--lam", str(lam), "--evidence-weight", str(weight)])
               for t in tuning.temperatures}
    if sampled:
        temp = max(sampled, key=lambda t: sampled[t])
        if sampled[temp] >= best["si_sdr"] + tuning.sampler_gain_db:
            best = {"kind": "ancestral", "lam": lam, "weight": weight, "temperature": temp,
                    "si_sdr": sampled[temp]}
    assemble(best)
    method = "lass-beam-mask" if best["kind"] == "beam" else "lass-ancestral-mask-mean"
    if tuning.mask_grid:
        masks = {g: scored("mask", f"fft {g[0]} em {g[1]}", f"mask-{g[0]}-{g[1]}", method,
                           ["--mask-fft", str(g[0]), "--mask-iterations", str(g[1])])
                 for g in tuning.mask_grid}
        fft, em = max(tuning.mask_grid, key=lambda g: masks[g])
        if masks[(fft, em)] >= masks[tuning.mask_grid[0]] + tuning.gain_db:
            best.update(mask_fft=fft, mask_iterations=em, si_sdr=masks[(fft, em)])
            assemble(best)
    if tuning.shifts_grid and best["kind"] == "ancestral":
        # the same samples spread over delayed copies: n copies x samples / n each, so the
        # search keeps its rows (and its time) as the number of copies changes
        mask = ["--mask-fft", str(best.get("mask_fft", tuning.mask_grid[0][0]
                                           if tuning.mask_grid else 2048)),
                "--mask-iterations", str(best.get("mask_iterations", 0))]
        per = {n: max(1, tuning.samples // n) for n in tuning.shifts_grid}
        shifted = {n: scored("shifts", f"shifts {n} samples {per[n]}",
                             f"shifts-{n}-{per[n]}-{best.get('mask_fft', 0)}-"
                             f"{best.get('mask_iterations', 0)}", method,
                             ["--shifts", str(n), "--candidates", str(per[n]), *mask])
                   for n in tuning.shifts_grid}
        n = max(tuning.shifts_grid, key=lambda s: shifted[s])
        if shifted[n] >= shifted[tuning.shifts_grid[0]] + tuning.gain_db:
            best.update(shifts=n, candidates=per[n], si_sdr=shifted[n])
            assemble(best)
    tune["chosen"] = best
    build.save()
    return best


def sampler_options(sampler: dict[str, Any], beams: int, samples: int) -> list[str]:
    """``lass-make-bundle`` options of a tuned sampler entry (see :data:`Assemble`)."""
    opts = ["--lam", str(sampler["lam"]), "--evidence-weight", str(sampler["weight"])]
    if sampler["kind"] == "beam":
        opts += ["--sampler", "beam", "--beams", str(beams)]
    else:
        opts += ["--sampler", "ancestral", "--candidates",
                 str(sampler.get("candidates", samples)), "--temperature",
                 str(sampler["temperature"]), "--combine", "mean"]
    if "mask_fft" in sampler:
        opts += ["--mask-fft", str(sampler["mask_fft"]), "--mask-iterations",
                 str(sampler["mask_iterations"])]
    if "shifts" in sampler:
        opts += ["--shifts", str(sampler["shifts"])]
    return opts


def bundle_report(bundle: Path, best: dict[str, Any]) -> None:
    """Print a built bundle's file count, size and chosen settings."""
    files = sorted(f for f in bundle.rglob("*") if f.is_file())
    total = sum(f.stat().st_size for f in files)
    print(f"bundle {bundle}: {len(files)} files, {total / 1e6:.1f} MB; settings {best}")


def install(bundle: Path, name: str, share_codec_with: str | None = None) -> None:
    """Copy a built bundle into the package (``lass/bundles/NAME``, replacing what is there)
    and print the rows of its table in ``checkpoints.md``. With ``share_codec_with``, a
    codec identical (sha256) to that shipped bundle's is not copied: bundle.json names the
    other bundle's codec (``../OTHER/codec``), so the package carries it once."""
    target = ROOT / "lass" / "bundles" / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(bundle, target)
    if share_codec_with is not None:
        spec_path = target / "bundle.json"
        spec = json.loads(spec_path.read_text())
        shared = ROOT / "lass" / "bundles" / share_codec_with / "codec"
        if spec["codec"]["sha256"] == sha256_path(shared):
            shutil.rmtree(target / spec["codec"]["path"])
            spec["codec"]["path"] = f"../{share_codec_with}/codec"
            write_json_atomic(spec_path, spec)
    for f in target.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # readable by all, as a package's files
    print("| file | bytes | sha256 |\n|---|---|---|")
    for f in sorted(q for q in target.rglob("*") if q.is_file()):
        print(f"| `{f.relative_to(target)}` | {f.stat().st_size} | `{sha256_path(f)}` |")
