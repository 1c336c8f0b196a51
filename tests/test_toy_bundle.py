"""The shipped `toy` bundle (four ToyData oscillators): found by name, listed in checkpoints.md
with every file's sha256, all shipped bundles within their budget, and `lass-separate -m toy`
writing the four stems as contributions that sum to the input."""

import json

import numpy as np
import soundfile as sf

from lass.bundle import resolve_bundle, shipped_bundles
from lass.cli.separate import main as separate_main
from lass.data import ToyData, mix
from tests.test_default_bundle import check_shipped

STEMS = ("sine", "sawtooth", "square", "triangle")


def test_toy_bundle_is_found_by_name_and_listed_with_hashes():
    check_shipped("toy", STEMS)
    total = sum(p.stat().st_size for p in shipped_bundles().rglob("*") if p.is_file())
    assert total < 80 * 1000 * 1000


def test_lass_separate_toy_writes_four_stems_that_sum_to_the_input(tmp_path):
    # A ToyData mixture of another seed than the bundle's data set (seed 0), 0.4 s.
    item = ToyData(length=8820, size=4, seed=777)[1]
    x = mix(item.audio[None], "mean", dim=1)[0].numpy().astype(np.float32)
    sf.write(tmp_path / "mix.wav", x, 22050, subtype="FLOAT")
    out = tmp_path / "out"
    assert separate_main([str(tmp_path / "mix.wav"), "-m", "toy", "-o", str(out), "--float32",
                          "--candidates", "2"]) == 0
    stems = [sf.read(out / "toy" / "mix" / f"{s}.wav", dtype="float32")[0] for s in STEMS]
    for s in stems:
        assert s.shape == x.shape
    np.testing.assert_allclose(sum(stems), x, atol=1e-5)
    info = json.loads((out / "toy" / "mix" / "separation.json").read_text())
    assert info["bundle"]["name"] == "toy"
    shipped = json.loads((resolve_bundle("toy") / "bundle.json").read_text())["sampler"]
    assert info["settings"]["evidence_weight"] == shipped["evidence_weight"] > 0
    assert info["settings"]["lam"] == shipped["lam"]
