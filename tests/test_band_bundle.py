"""The shipped `band` bundle (drums, bass, other): found by name, listed in checkpoints.md with
every file's sha256, sharing the default bundle's codec file, and `lass-separate -m band`
writing three stems that sum to the input."""

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from lass.bundle import resolve_bundle, sha256_path, shipped_bundles
from lass.cli.separate import main as separate_main
from tests.test_default_bundle import check_shipped

ROOT = Path(__file__).resolve().parent.parent
STEMS = ("drums", "bass", "other")


def test_band_bundle_is_found_by_name_listed_and_shares_the_default_codec():
    spec = check_shipped("band", STEMS)  # every component's sha256, the shared codec's too
    root = resolve_bundle("band")
    assert not (root / "codec").exists()  # carried once, in the default bundle
    assert spec.codec.resolve() == (shipped_bundles() / "default" / "codec").resolve()
    raw = json.loads((root / "bundle.json").read_text())
    assert raw["codec"]["sha256"] == sha256_path(shipped_bundles() / "default" / "codec")


def test_lass_separate_band_writes_three_stems_that_sum_to_the_input(tmp_path):
    x, rate = sf.read(ROOT / "examples" / "band_mix.wav", dtype="float32")
    x = x[: rate // 2]  # the example's first 0.5 s
    sf.write(tmp_path / "mix.wav", x, rate, subtype="FLOAT")
    out = tmp_path / "out"
    assert separate_main([str(tmp_path / "mix.wav"), "-m", "band", "-o", str(out), "--float32",
                          "--sampler", "beam", "--beams", "2", "--shifts", "1"]) == 0
    stems = [sf.read(out / "band" / "mix" / f"{s}.wav", dtype="float32")[0] for s in STEMS]
    for s in stems:
        assert s.shape == x.shape
        assert np.abs(s).max() > 1e-4  # each stem gets part of a song with all three
    np.testing.assert_allclose(sum(stems), x, atol=1e-5)
    info = json.loads((out / "band" / "mix" / "separation.json").read_text())
    assert info["bundle"]["name"] == "band"
    assert info["settings"]["evidence_weight"] > 0
