import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.bundles import SR, make_debug_bundle, sources

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "scripts" /
                                                  "benchmark_cli.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_cli"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # over 10 s on 2 cores
def test_cli_benchmark_runs_both_checkouts_and_compares_their_stems(tmp_path, capsys):
    """The CLI benchmark runs ``lass-separate`` in fresh processes for this checkout and a
    baseline (here the same checkout), reads each run's timings and reports the same stems
    for the same code."""
    bundle = make_debug_bundle(tmp_path / "bundle", context=32)
    audio = tmp_path / "mix.wav"
    sf.write(str(audio), sources(1, 4000)[0].mean(0).numpy().astype(np.float32), SR)
    code = _script().main(["--audio", str(audio), "--seconds", "0.2", "--rounds", "1",
                           "--baseline", str(ROOT), "--", "-m", str(bundle), "--sampler",
                           "beam", "--beams", "2"])
    assert code == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| this", "| baseline"))]
    assert len(rows) == 2
    for row in rows:  # four timings, each a median with its range, all positive
        cells = row.strip("|").split("|")[1:]
        assert len(cells) == 4
        assert all(float(c.split()[0]) > 0 for c in cells)
    assert "stems identical" in out
    assert "--beams 2" in out
