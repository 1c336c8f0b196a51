"""The shipped thesis bundles `toy-flow` (flow priors, Langevin) and `toy-posterior` (the
amortised posterior): found by name, every file listed with its sha256 in checkpoints.md,
weights stored as float16, and `lass-separate -m NAME` writing the four ToyData stems as
contributions that sum to the input."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from lass.bundle import (
    bundle_method,
    read_langevin_bundle,
    read_posterior_bundle,
    resolve_bundle,
    sha256_path,
    shipped_bundles,
)
from lass.cli.separate import main as separate_main
from lass.data import ToyData, mix
from lass.data.mixing import sum_to_input
from tests.test_default_bundle import listed_files

STEMS = ("sine", "sawtooth", "square", "triangle")


def test_sum_to_input_is_the_least_squares_projection():
    rng = np.random.default_rng(0)
    stems = rng.standard_normal((3, 50)).astype(np.float32)
    total = rng.standard_normal(50).astype(np.float32)
    out = sum_to_input(stems, total)
    np.testing.assert_allclose(out.sum(axis=0), total, atol=1e-5)
    # the correction is the same for every stem (the nearest point of the constraint set)
    diff = out - stems
    np.testing.assert_allclose(diff, np.broadcast_to(diff[0], diff.shape), atol=1e-6)
    np.testing.assert_allclose(sum_to_input(out, total), out, atol=1e-6)  # idempotent


def test_list_models_reads_the_thesis_bundles(capsys):
    assert separate_main(["--list-models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("toy-flow (embedded): sine, sawtooth, square, triangle; "
                               "22050 Hz; langevin;") for line in lines)
    assert any(line.startswith("toy-posterior (embedded): sine, sawtooth, square, "
                               "triangle; 22050 Hz; posterior;") for line in lines)
    assert not any("unreadable" in line for line in lines)


@pytest.mark.parametrize("name", ["toy-flow", "toy-posterior"])
def test_thesis_bundles_are_shipped_with_hashes_in_float16(name):
    root = resolve_bundle(name)
    assert root == shipped_bundles() / name
    method = bundle_method(name)
    assert method == {"toy-flow": "langevin", "toy-posterior": "posterior"}[name]
    spec = (read_langevin_bundle(name) if method == "langevin"  # sha256 checked
            else read_posterior_bundle(name))
    assert spec.stems == STEMS
    assert spec.sample_rate == 22050
    assert spec.mix == "mean"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert listed_files(name) == {p.relative_to(root).as_posix(): sha256_path(p)
                                  for p in files}
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) == (4 if method == "langevin" else 1)
    dtypes = {t.dtype for p in weights for t in load_file(str(p)).values()
              if t.is_floating_point()}
    assert dtypes == {torch.float16}


@pytest.mark.parametrize("name", ["toy-posterior", "toy-flow"])
def test_lass_separate_thesis_bundles_write_stems_that_sum_to_the_input(tmp_path, name):
    # A ToyData mixture of another seed than the bundles' data set (seed 0), 0.05 s.
    item = ToyData(length=1102, size=4, seed=777)[2]
    x = mix(item.audio[None], "mean", dim=1)[0].numpy().astype(np.float32)
    sf.write(tmp_path / "mix.wav", x, 22050, subtype="FLOAT")
    out = tmp_path / "out"
    assert separate_main([str(tmp_path / "mix.wav"), "-m", name, "-o", str(out),
                          "--float32"]) == 0
    stems = [sf.read(out / name / "mix" / f"{s}.wav", dtype="float32")[0] for s in STEMS]
    for s in stems:
        assert s.shape == x.shape
        assert np.all(np.isfinite(s))
    np.testing.assert_allclose(sum(stems), x, atol=1e-5)
    info = json.loads((out / name / "mix" / "separation.json").read_text())
    assert info["bundle"]["name"] == name
