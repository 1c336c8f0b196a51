"""The embedded default bundle: present, within its size budget, listed in checkpoints.md with
the sha256 of every file, and separating with no ``-m`` on a fresh install."""

import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from lass.bundle import (
    BundleSpec,
    default_bundle_path,
    read_bundle,
    resolve_bundle,
    sha256_path,
    shipped_bundles,
)
from lass.cli.separate import main as separate_main

ROOT = Path(__file__).resolve().parent.parent


def test_default_bundle_is_listed_with_hashes_and_small():
    root = default_bundle_path()
    spec = read_bundle(None)  # checks every component's sha256
    assert spec.stems == ("drums", "bass")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) < 40 * 1024 * 1024
    assert listed_files("default") == {p.relative_to(root).as_posix(): sha256_path(p)
                                       for p in files}


def listed_files(bundle: str) -> dict[str, str]:
    """file -> sha256 of the table in checkpoints.md's section on the shipped ``bundle``."""
    text = (ROOT / "checkpoints.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    section = next(s for s in sections if s.startswith(f"Shipped inside the package: the "
                                                       f"{bundle} bundle"))
    return dict(re.findall(r"\| `([^`]+)` \| \d+ \| `([0-9a-f]{64})` \|", section))


def check_shipped(name: str, stems: tuple[str, ...]) -> BundleSpec:
    """Read the shipped bundle ``name`` (every component's sha256 checked) and check that it
    is found by name among the shipped bundles, separates ``stems`` at 22050 Hz from their
    mean, and lists every one of its files with its sha256 in checkpoints.md."""
    spec = read_bundle(name)
    assert spec.stems == stems
    assert spec.sample_rate == 22050
    assert spec.mix == "mean"
    root = resolve_bundle(name)
    assert root == shipped_bundles() / name
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert listed_files(name) == {p.relative_to(root).as_posix(): sha256_path(p)
                                  for p in files}
    return spec


def test_separate_with_no_model_writes_drums_and_bass(tmp_path, capsys):
    rate = 44100  # another rate than the bundle's: resampled in and out
    t = np.arange(rate) / rate
    rng = np.random.default_rng(0)
    bass = 0.2 * np.sin(2 * np.pi * 55 * t)
    clicks = np.zeros_like(t)
    clicks[:: rate // 4] = 1.0
    drums = 0.3 * np.convolve(clicks, rng.standard_normal(800) * np.exp(-np.arange(800) / 150),
                              mode="same")
    stereo = np.stack([bass + drums, bass + 0.8 * drums], axis=1).astype(np.float32)
    sf.write(tmp_path / "mix.wav", stereo, rate)
    out = tmp_path / "out"
    assert separate_main([str(tmp_path / "mix.wav"), "-o", str(out)]) == 0  # its defaults
    got = {s: sf.read(out / "default" / "mix" / f"{s}.wav", dtype="float32")
           for s in ("drums", "bass")}
    for wave, sr in got.values():
        assert sr == rate
        assert wave.shape == (rate, 2)  # stereo in, stereo out
    # The stems sum to each channel (16-bit files).
    np.testing.assert_allclose(got["drums"][0] + got["bass"][0], stereo, atol=2e-4)
    assert "downmixed" not in capsys.readouterr().err
    info = json.loads((out / "default" / "mix" / "separation.json").read_text())
    assert info["channels"] == 2
    assert info["settings"]["combine"] == "mean"  # one mask from the samples
    # 10 samples in all: 2 for each of 5 shifted copies
    assert (info["settings"]["candidates"], info["settings"]["shifts"]) == (2, 5)
    assert (info["settings"]["mask_fft"], info["settings"]["mask_iterations"]) == (8192, 1)
    assert info["settings"]["evidence_weight"] == 1.0  # the learned token evidence is on
