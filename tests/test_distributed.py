"""Data-parallel training under torchrun (gloo, 2 processes of 1 thread) against one process
with the same global batch: the weights after a few steps agree within float32 rounding
(``ATOL`` on every weight; the reductions add in another order)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_prior_cli import make_codec
from tests.test_train_vqvae_cli import SR, make_set

ATOL = 2e-5  # on weights of order 0.1 after 3 AdamW steps of lr 1e-3 (update size 1e-3)


def launch(module: str, args: list[str], processes: int) -> subprocess.CompletedProcess[str]:
    """``module`` in one process, or under torchrun with ``processes`` (gloo on the CPU)."""
    if processes == 1:
        cmd = [sys.executable, "-m", module]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(processes), "-m", module]
    return subprocess.run(cmd + args, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    (file,) = [p for p in folder.iterdir() if p.suffix == ".safetensors"]
    return load_file(str(file))


def assert_same_weights(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst < ATOL, worst
    return worst


@pytest.mark.slow  # four launches of torch (~40 s on 2 cores)
def test_distributed_prior_training_equals_one_process(tmp_path):
    data = make_set(tmp_path / "data")
    make_codec(tmp_path / "codec")
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"prior{n}"
        proc = launch("lass.cli.train_prior", [
            "--codec", str(tmp_path / "codec"), "--data", str(data), "--out", str(out),
            "--stem", "drums", "bass", "--conditional", "--context", "32", "--width", "32",
            "--layers", "1", "--heads", "2", "--batch", "4", "--steps", "3",
            "--valid-every", "3", "--valid-windows", "4", "--threads", "1", "--device", "cpu",
            "--token-cache", str(tmp_path / f"cache{n}")], n)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = out
    assert_same_weights(runs[1] / "model", runs[2] / "model")
    # Only rank 0 wrote: one log line per 10 steps and the summary names the processes.
    summary = (runs[2] / "summary.json").read_text()
    assert '"processes": 2' in summary
    # A resumed run under another world size continues the same batches.
    proc = launch("lass.cli.train_prior", [
        "--codec", str(tmp_path / "codec"), "--data", str(data), "--out", str(runs[2]),
        "--stem", "drums", "bass", "--conditional", "--context", "32", "--batch", "4",
        "--steps", "5", "--valid-every", "5", "--valid-windows", "4", "--threads", "1",
        "--device", "cpu", "--resume", "--token-cache", str(tmp_path / "cache2")], 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = launch("lass.cli.train_prior", [
        "--codec", str(tmp_path / "codec"), "--data", str(data), "--out", str(runs[1]),
        "--stem", "drums", "bass", "--conditional", "--context", "32", "--batch", "4",
        "--steps", "5", "--valid-every", "5", "--valid-windows", "4", "--threads", "1",
        "--device", "cpu", "--resume", "--token-cache", str(tmp_path / "cache1")], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(runs[1] / "model", runs[2] / "model")


@pytest.mark.slow
def test_distributed_codec_training_equals_one_process(tmp_path):
    """The EMA codebook and the spectral convergence gather the ranks' shares."""
    data = make_set(tmp_path / "data")
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"codec{n}"
        proc = launch("lass.cli.train_vqvae", [
            "--data", str(data), "--out", str(out), "--sample-rate", str(SR), "--hop", "16",
            "--codebook-size", "32", "--dim", "8", "--channels", "4", "--batch", "4",
            "--seconds", "0.256", "--valid-chunks", "3", "--valid-every", "3", "--steps", "3",
            "--threads", "1", "--device", "cpu"], n)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = out
    assert_same_weights(runs[1] / "model", runs[2] / "model")


@pytest.mark.slow
def test_distributed_wavenet_and_evidence_equal_one_process(tmp_path):
    data = make_set(tmp_path / "data")
    make_codec(tmp_path / "codec")
    for n in (1, 2):
        proc = launch("lass.cli.train_prior", [
            "--kind", "wavenet", "--data", str(data), "--stem", "bass",
            "--out", str(tmp_path / f"wavenet{n}"), "--stacks", "1", "--dilated-layers", "3",
            "--residual", "8", "--gate", "8", "--skip", "8", "--samples", "256",
            "--batch", "4", "--steps", "3", "--valid-every", "3", "--valid-windows", "2",
            "--threads", "1", "--device", "cpu"], n)
        assert proc.returncode == 0, proc.stderr[-3000:]
        proc = launch("lass.cli.fit_evidence", [
            "--codec", str(tmp_path / "codec"), "--data", str(data), "--sources", "drums",
            "bass", "--hours", "0.005", "--chunk-seconds", "0.5", "--epochs", "2",
            "--train-batch", "4", "--width", "16", "--dilations", "1", "2",
            "--valid-hours", "0.001", "--threads", "1", "--device", "cpu",
            "--out", str(tmp_path / f"evidence{n}.npz")], n)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(tmp_path / "wavenet1" / "model", tmp_path / "wavenet2" / "model")
    one = dict(np.load(tmp_path / "evidence1.npz"))
    two = dict(np.load(tmp_path / "evidence2.npz"))
    floats = [k for k in one if one[k].dtype.kind == "f"]
    assert floats
    assert max(float(abs(one[k] - two[k]).max()) for k in floats) < ATOL


def test_distributed_batch_that_does_not_divide_is_one_line():
    from lass.distributed import World, rank_slice
    from lass.errors import LassError

    assert rank_slice(8, World(1, 2)) == slice(4, 8)
    assert rank_slice(8, World()) == slice(0, 8)
    with pytest.raises(LassError, match="does not divide among 3 processes"):
        rank_slice(8, World(0, 3))


@pytest.mark.slow
def test_distributed_supervised_training_equals_one_process(tmp_path):
    """The silence threshold and the count of kept items are the whole batch's."""
    data = make_set(tmp_path / "data")
    for n in (1, 2):
        proc = launch("lass.cli.train_supervised", [
            "--data", str(data), "--stems", "drums", "bass", "--out", str(tmp_path / f"sup{n}"),
            "--sample-rate", str(SR), "--batch", "4", "--seconds", "0.25", "--filters", "16",
            "--kernel", "8", "--bottleneck", "8", "--hidden", "16", "--skip", "8",
            "--layers", "2", "--stacks", "1", "--steps", "3", "--valid-every", "3",
            "--valid-chunks", "2", "--threads", "1", "--device", "cpu"], n)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(tmp_path / "sup1" / "model", tmp_path / "sup2" / "model")


@pytest.mark.slow
def test_distributed_flow_training_equals_one_process(tmp_path):
    """From a flow whose ActNorm is initialised (at its data-dependent start the gradients of
    the normalisations vanish, so Adam's first step turns rounding into updates of size lr;
    the start itself gathers the statistics of the whole batch)."""
    data = make_set(tmp_path / "data")
    args = ["--kind", "flow", "--data", str(data), "--stem", "bass", "--blocks", "2",
            "--flows", "2", "--flow-layers", "2", "--flow-hidden", "8", "--samples", "256",
            "--sample-rate", str(SR), "--batch", "4", "--valid-every", "3",
            "--valid-windows", "2", "--threads", "1", "--device", "cpu"]
    proc = launch("lass.cli.train_prior", [*args, "--out", str(tmp_path / "start"),
                                           "--steps", "2"], 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for n in (1, 2):
        proc = launch("lass.cli.train_prior", [
            *args, "--out", str(tmp_path / f"flow{n}"), "--steps", "3",
            "--init", str(tmp_path / "start" / "model")], n)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(tmp_path / "flow1" / "model", tmp_path / "flow2" / "model")
