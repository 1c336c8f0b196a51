import json
import os
import stat

import numpy as np
import pytest
import torch

from lass import Ancestral, Separator
from lass.cli.make_bundle import main as make_bundle_main
from priors import TransformerPrior, TransformerPriorConfig
from tests.bundles import SR, K, make_debug_bundle, sources


def test_make_bundle_from_two_priors_and_from_a_shared_prior(tmp_path, capsys):
    parts = make_debug_bundle(tmp_path / "parts")
    out = tmp_path / "mine"
    assert make_bundle_main(["--codec", str(parts / "codec"),
                             "--prior", f"drums={parts / 'prior-drums'}",
                             "--prior", f"bass={parts / 'prior-bass'}",
                             "--likelihood", str(parts / "likelihood.npz"), "--beams", "2",
                             "--out", str(out)]) == 0
    spec = json.loads((out / "bundle.json").read_text())
    assert spec["stems"] == ["drums", "bass"]
    assert spec["sampler"]["num_beams"] == 2
    mask = os.umask(0)
    os.umask(mask)
    for f in [out, *out.rglob("*")]:  # as any new file or folder, not 0600 / 0700
        assert stat.S_IMODE(f.stat().st_mode) == (0o777 if f.is_dir() else 0o666) & ~mask
    sep = Separator.from_pretrained(out)
    wave = sources(1, SR // 2, seed=3)[0].mean(0).numpy()
    stems = sep.separate(wave, SR)
    assert {k: v.shape for k, v in stems.items()} == {"drums": wave.shape, "bass": wave.shape}

    codec_id = sep.codec.identity()
    torch.manual_seed(0)
    TransformerPrior(TransformerPriorConfig(vocab_size=K, context_length=64, width=16, layers=1,
                                            heads=2, class_names=("bass", "drums"),
                                            codec_identity=codec_id)).save(tmp_path / "shared")
    shared = tmp_path / "shared-bundle"
    assert make_bundle_main(["--codec", str(parts / "codec"), "--shared-prior",
                             str(tmp_path / "shared"), "--stems", "drums", "bass",
                             "--likelihood", str(parts / "likelihood.npz"),
                             "--smoothing", "backoff", "--alpha", "0.5", "--prior-top", "4",
                             "--min-count", "2", "--sampler", "ancestral", "--candidates", "3",
                             "--temperature", "0.8", "--combine", "mean",
                             "--mask-fft", "1024", "--mask-iterations", "1", "--shifts", "2",
                             "--context-overlap", "16", "--resample", "0.5", "--seed", "7",
                             "--refine-lr", "0.02", "--out", str(shared)]) == 0
    sep = Separator.from_pretrained(shared)
    assert sep.settings.sampler == Ancestral(0.8, resample=0.5)
    assert (sep.settings.context_overlap, sep.settings.seed) == (16, 7)
    assert sep.settings.refine_lr == 0.02
    assert (sep.settings.candidates, sep.settings.combine) == (3, "mean")
    assert (sep.settings.mask_fft, sep.settings.mask_iterations) == (1024, 1)
    assert sep.settings.shifts == 2
    assert sep.priors["drums"] is sep.priors["bass"]
    assert (sep.likelihood.smoothing, sep.likelihood.alpha) == ("backoff", 0.5)
    assert sep.settings.prior_top == 4
    assert sep.likelihood.min_count == 2
    assert sep.prior_classes == {"drums": 1, "bass": 0}  # the prior's own class order
    stems = sep.separate(wave, SR)
    np.testing.assert_allclose(stems["drums"] + stems["bass"], wave, atol=1e-4)  # mask output

    # components that do not fit: one line, nothing written
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert make_bundle_main(["--codec", str(parts / "codec"), "--shared-prior",
                             str(tmp_path / "shared"), "--stems", "drums", "guitar",
                             "--likelihood", str(parts / "likelihood.npz"),
                             "--out", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lass-make-bundle: error: the shared prior has classes bass, drums; no class "
                   "for guitar"]
    assert not bad.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]
    assert make_bundle_main(["--codec", str(parts / "codec"), "--shared-prior",
                             str(tmp_path / "shared"), "--likelihood",
                             str(parts / "likelihood.npz"), "--mask-fft", "12",
                             "--out", str(bad)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "lass-make-bundle: error: mask_fft must be even and at least 16, not 12"]
    assert not bad.exists()
    assert make_bundle_main(["--codec", str(parts / "codec"), "--shared-prior",
                             str(tmp_path / "shared"), "--likelihood",
                             str(parts / "likelihood.npz"), "--shifts", "0",
                             "--out", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0] == "lass-make-bundle: error: --shifts must be at least 1, not 0"
    assert not bad.exists()


def test_bundle_with_a_factorised_likelihood(tmp_path, capsys):
    from lass.bundle import BundleError, read_bundle
    from lass.cli.fit_likelihood import main as fit_main

    parts = make_debug_bundle(tmp_path / "parts")
    model = tmp_path / "q.npz"
    assert fit_main([str(parts / "likelihood.npz"), "--out", str(model), "--epochs", "2"]) == 0
    out = tmp_path / "fact"
    base = ["--codec", str(parts / "codec"), "--prior", f"drums={parts / 'prior-drums'}",
            "--prior", f"bass={parts / 'prior-bass'}", "--likelihood",
            str(parts / "likelihood.npz"), "--beams", "2"]
    assert make_bundle_main([*base, "--smoothing", "factorised", "--alpha", "2",
                             "--out", str(tmp_path / "no")]) == 1
    assert "go together" in capsys.readouterr().err
    assert make_bundle_main([*base, "--smoothing", "factorised", "--factorised", str(model),
                             "--alpha", "2", "--prior-top", "3", "--out", str(out)]) == 0
    spec = json.loads((out / "bundle.json").read_text())
    assert spec["likelihood"]["base"]["path"] == "likelihood-factorised.npz"
    sep = Separator.from_pretrained(out)
    assert sep.likelihood.smoothing == "factorised"
    assert sep.likelihood.base is not None
    wave = sources(1, SR // 2, seed=4)[0].mean(0).numpy()
    stems = sep.separate(wave, SR)
    np.testing.assert_allclose(stems["drums"] + stems["bass"], wave, atol=1e-4)
    # the model file is hashed like every component
    data = bytearray((out / "likelihood-factorised.npz").read_bytes())
    data[-1] ^= 1
    (out / "likelihood-factorised.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="factorised likelihood"):
        read_bundle(out)
