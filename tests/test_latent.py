import itertools
import json
import math

import numpy as np
import pytest
import torch

from lass.sampling import BeamSearch, Greedy, separate_tokens
from likelihood import LikelihoodError
from likelihood.latent import LatentLikelihood, fit_latent, lagged
from priors import MarkovPrior


def random_model(k: int, d: int, context: int, seed: int, scale: float = 1.0
                 ) -> LatentLikelihood:
    gen = torch.Generator().manual_seed(seed)
    return LatentLikelihood(scale * torch.randn(context, k, d, generator=gen),
                            scale * torch.randn(context, k, d, generator=gen),
                            torch.randn(d, generator=gen),
                            0.2 + torch.rand(d, generator=gen), {"codec_identity": "c"})


def dense_log_prob(model: LatentLikelihood, h: torch.Tensor, z1: torch.Tensor,
                   z2: torch.Tensor) -> torch.Tensor:
    """Reference: the Gaussian density of every step, written out step by step."""
    out = []
    for t in range(h.shape[0]):
        mean = model.bias.clone()
        for lag in range(model.context):
            if t - lag >= 0:
                mean = mean + model.first[lag, z1[t - lag]] + model.second[lag, z2[t - lag]]
        normal = torch.distributions.Normal(mean.double(), model.var.double().sqrt())
        out.append(normal.log_prob(h[t].double()).sum())
    return torch.stack(out).float()


def test_log_prob_pair_and_grid_match_the_gaussian_density():
    k, d, ctx, length = 5, 3, 3, 7
    model = random_model(k, d, ctx, 0)
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randint(0, k, (length,), generator=gen), torch.randint(0, k, (length,),
                                                                          generator=gen)
    h = torch.randn(length, d, generator=gen)
    ref = dense_log_prob(model, h, z1, z2)
    torch.testing.assert_close(model.log_prob(h, z1, z2), ref, atol=1e-4, rtol=1e-5)
    all_i = torch.arange(k).repeat_interleave(k)[None]
    all_j = torch.arange(k).repeat(k)[None]
    for t in range(length):
        past = max(0, t - ctx + 1)
        r = model.residual(h[t: t + 1], z1[None, past:t], z2[None, past:t])
        pair = model.pair_log_lik(r, z1[None, t: t + 1], z2[None, t: t + 1])[0, 0]
        torch.testing.assert_close(pair, ref[t], atol=1e-4, rtol=1e-5)
        votes = model.votes(r)
        dense = model.pair_log_lik(r, all_i, all_j).view(k, k)
        grid = model.grid_log_lik(r, torch.arange(k)[None], torch.arange(k)[None], votes)[0]
        torch.testing.assert_close(grid, dense, atol=1e-4, rtol=1e-5)
        # The votes are the per-token parts: dense - vote1 - vote2 depends on i and j only
        # through the cross term.
        cross = -2 * (model.first[0][:, None] * model.weight * model.second[0][None]).sum(-1)
        rest = dense - votes[0][0][:, None] - votes[1][0][None] - cross
        torch.testing.assert_close(rest, rest[0, 0].expand(k, k), atol=1e-4, rtol=1e-5)


def test_fit_recovers_a_planted_model():
    k, d, ctx, noise = 6, 4, 2, 0.05
    truth = random_model(k, d, ctx, 3)
    gen = torch.Generator().manual_seed(4)
    z1, z2 = torch.randint(0, k, (300, 40), generator=gen), torch.randint(0, k, (300, 40),
                                                                          generator=gen)

    def means(model: LatentLikelihood, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = model.bias.expand(*a.shape, d).clone()
        for lag in range(model.context):
            la, lb = lagged(a, lag), lagged(b, lag)
            ok = (la >= 0)[..., None]
            out += ok * (model.first[lag][la.clamp(min=0)] + model.second[lag][lb.clamp(min=0)])
        return out

    h = means(truth, z1, z2) + noise * torch.randn(300, 40, d, generator=gen)
    seen = []
    fit = fit_latent(z1, z2, h, k, context=ctx, passes=30,
                     progress=lambda i, n: seen.append((i, n)))
    assert seen[-1] == (30, 30)
    t1, t2 = torch.randint(0, k, (20, 40), generator=gen), torch.randint(0, k, (20, 40),
                                                                         generator=gen)
    # The fitted tables are centred (a missing past token counts as its mean): the means
    # agree wherever the whole context is there.
    err = (means(fit, t1, t2) - means(truth, t1, t2))[:, ctx - 1:]
    assert float(err.abs().max()) < 0.05
    torch.testing.assert_close(fit.var, torch.full((d,), noise ** 2), atol=4e-4, rtol=0)
    assert fit.meta["explained_variance"] > 0.99
    # A model with less context explains less.
    short = fit_latent(z1, z2, h, k, context=1)
    assert short.meta["explained_variance"] < fit.meta["explained_variance"] - 0.1


def test_fit_rejects_bad_input():
    z = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(LikelihoodError):
        fit_latent(z, z, torch.zeros(2, 4, 3), 4)
    with pytest.raises(LikelihoodError):
        fit_latent(z + 4, z, torch.zeros(2, 5, 3), 4)
    with pytest.raises(LikelihoodError):
        fit_latent(z, z, torch.zeros(2, 5, 3), 4, context=0)


def test_save_load_round_trip_and_bad_files(tmp_path):
    model = random_model(7, 3, 2, 5)
    path = model.save(tmp_path / "lat.npz")
    back = LatentLikelihood.load(path)
    torch.testing.assert_close(back.first, model.first.half().float())
    torch.testing.assert_close(back.var, model.var)
    assert back.meta["codec_identity"] == "c"
    assert (back.k, back.context) == (7, 2)
    back.check_codec(7, "c")
    with pytest.raises(LikelihoodError, match="K = 7"):
        back.check_codec(8, "c")
    with pytest.raises(LikelihoodError, match="another codec"):
        back.check_codec(7, "other")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LikelihoodError, match="corrupt or truncated"):
        LatentLikelihood.load(tmp_path / "cut.npz")
    with pytest.raises(LikelihoodError, match="not found"):
        LatentLikelihood.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", first=np.zeros(1))
    with pytest.raises(LikelihoodError):
        LatentLikelihood.load(tmp_path / "other.npz")
    assert not list(tmp_path.glob(".*tmp"))


def brute_force(p1, p2, model, h, lam):
    k, length = model.k, h.shape[0]
    seqs = torch.tensor(list(itertools.product(range(k), repeat=length)))
    z1 = seqs.repeat_interleave(len(seqs), 0)
    z2 = seqs.repeat(len(seqs), 1)
    ll = torch.stack([model.log_prob(h, a, b) for a, b in zip(z1, z2, strict=True)])
    return z1, z2, (p1.token_log_probs(z1) + p2.token_log_probs(z2) + lam * ll).sum(1)


@pytest.mark.parametrize("seed", range(6))
def test_beam_search_under_the_latent_likelihood_is_exact(seed):
    """With every token paired (prior_top = K) and a beam for every history, the search
    returns the brute-force maximum of sum_t log p1 + log p2 + lam * log p(h[t] | tokens)."""
    k, length, lam, ctx = 3, 3, 0.7, 2
    gen = torch.Generator().manual_seed(seed)
    p1, p2 = MarkovPrior.random(k, gen), MarkovPrior.random(k, gen)
    model = random_model(k, 2, ctx, 10 + seed, scale=0.7)
    h = torch.randn(length, 2, generator=gen)
    z1, z2, obj = brute_force(p1, p2, model, h, lam)
    best = int(obj.argmax())
    mix = torch.zeros(1, length, dtype=torch.long)
    out = separate_tokens(mix, [p1, p2], model, BeamSearch((k * k) ** (length - 1)), lam=lam,
                          mix_latents=h[None], prior_top=k)
    assert torch.equal(out.first[0, 0], z1[best])
    assert torch.equal(out.second[0, 0], z2[best])
    assert math.isclose(float(out.score[0, 0]), float(obj[best]), abs_tol=1e-3)
    # Greedy is a legal path whose score is its objective.
    greedy = separate_tokens(mix, [p1, p2], model, Greedy(), lam=lam, mix_latents=h[None],
                             prior_top=k)
    again = (p1.token_log_probs(greedy.first[0]) + p2.token_log_probs(greedy.second[0])
             + lam * model.log_prob(h, greedy.first[0, 0], greedy.second[0, 0])).sum()
    assert math.isclose(float(greedy.score[0, 0]), float(again), abs_tol=1e-3)
    assert float(greedy.score[0, 0]) <= float(out.score[0, 0]) + 1e-4
    with pytest.raises(ValueError, match="mix_latents"):
        separate_tokens(mix, [p1, p2], model, Greedy(), lam=lam)


def test_fit_latent_cli_matches_the_library_and_resumes(tmp_path, capsys, monkeypatch):
    from lass.cli import fit_latent as fl
    from lass.counting import MixturePlan
    from lass.data import StemDataset, folder_tracks, mix
    from tests.test_train_prior_cli import make_codec
    from tests.test_train_vqvae_cli import make_set

    data, codec = make_set(tmp_path / "data"), make_codec(tmp_path / "codec")

    def run(out, *extra):
        return fl.main(["--codec", str(tmp_path / "codec"), "--data", str(data), "--out",
                        str(out), "--hours", "0.001", "--chunk-seconds", "0.25", "--batch", "3",
                        "--threads", "1", "--seed", "5", "--passes", "4", *extra])

    assert run(tmp_path / "a.npz") == 0
    got = LatentLikelihood.load(tmp_path / "a.npz")
    assert "explained variance" in capsys.readouterr().out
    # The same mixtures as lass-count-likelihood with this seed, fitted by the library.
    tracks = folder_tracks(data, "train", ["drums", "bass"])
    pools = [StemDataset(tracks, sample_rate=8000, chunk=2000, stems=[s], shuffle=False)
             for s in ("drums", "bass")]
    plan = MixturePlan(pools, False, (-6.0, 0.0), "mean", 5)
    src = torch.stack([plan.sources(n) for n in range(15)])
    with torch.no_grad():
        z1, z2 = codec.encode(src[:, 0]), codec.encode(src[:, 1])
        h = codec.latents(mix(src, "mean", dim=1)).transpose(1, 2).half().float()
    ref = fit_latent(z1, z2, h, codec.codebook_size, context=2, passes=4)
    torch.testing.assert_close(got.first, ref.first.half().float())
    torch.testing.assert_close(got.var, ref.var)
    assert got.meta["codec_identity"] == codec.identity()
    assert got.meta["mixtures"] == 15

    # Killed during the fit: the encodings are kept and a new run resumes from them.
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fl, "fit_latent", killed)
    assert run(tmp_path / "b.npz", "--checkpoint-seconds", "0") == 130
    assert (tmp_path / "b.npz.encoded.pt").is_file()
    assert not (tmp_path / "b.npz").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert run(tmp_path / "b.npz") == 0
    assert "resuming at mixture 15 of 15" in capsys.readouterr().err
    torch.testing.assert_close(LatentLikelihood.load(tmp_path / "b.npz").first, got.first)
    assert not (tmp_path / "b.npz.encoded.pt").exists()
    # Bad input: one line, non-zero.
    assert fl.main(["--codec", str(tmp_path / "nope"), "--data", str(data), "--out",
                    str(tmp_path / "c.npz")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bundle_with_a_latent_likelihood(tmp_path, capsys):
    from lass import Separator
    from lass.bundle import BundleError, read_bundle
    from lass.cli.make_bundle import main as make_bundle_main
    from lass.data import mix
    from tests.bundles import SR, make_debug_bundle, sources
    from vqvae import load_codec

    parts = make_debug_bundle(tmp_path / "parts")
    codec = load_codec(parts / "codec")
    src = sources(12, 4000, seed=1)
    with torch.no_grad():
        z1, z2 = codec.encode(src[:, 0]), codec.encode(src[:, 1])
        h = codec.latents(mix(src, "mean", dim=1)).transpose(1, 2)
    fit_latent(z1, z2, h, codec.codebook_size, meta={"codec_identity": codec.identity()}
               ).save(tmp_path / "lat.npz")
    base = ["--codec", str(parts / "codec"), "--prior", f"drums={parts / 'prior-drums'}",
            "--prior", f"bass={parts / 'prior-bass'}", "--beams", "2", "--lam", "0.5"]
    out = tmp_path / "lat-bundle"
    assert make_bundle_main([*base, "--likelihood", str(tmp_path / "lat.npz"), "--latent",
                             "--prior-top", "5", "--out", str(out)]) == 0
    spec = json.loads((out / "bundle.json").read_text())
    assert spec["likelihood"]["kind"] == "latent"
    assert "smoothing" not in spec["likelihood"]
    sep = Separator.from_pretrained(out)
    assert isinstance(sep.likelihood, LatentLikelihood)
    assert sep.settings.prior_top == 5
    wave = sources(1, SR // 2, seed=4)[0].mean(0).numpy()
    res = sep.separate_detailed(wave, SR)
    np.testing.assert_allclose(res.stems["drums"] + res.stems["bass"], wave, atol=1e-4)
    assert res.tokens["drums"].shape == (codec.num_tokens(wave.shape[0]),)
    # counts given as a latent model, or a latent model with count options: one line
    capsys.readouterr()
    assert make_bundle_main([*base, "--likelihood", str(parts / "likelihood.npz"), "--latent",
                             "--out", str(tmp_path / "bad")]) == 1
    assert "not a latent likelihood" in capsys.readouterr().err
    assert make_bundle_main([*base, "--likelihood", str(tmp_path / "lat.npz"), "--latent",
                             "--min-count", "2", "--out", str(tmp_path / "bad")]) == 1
    assert "apply to counts" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # the model file is hashed like every component
    data = bytearray((out / "likelihood.npz").read_bytes())
    data[-1] ^= 1
    (out / "likelihood.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="likelihood"):
        read_bundle(out)
