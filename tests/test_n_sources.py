"""LASS with N > 2 sources: counting, the likelihood and its smoothings, the search against
brute force, and a three-stem bundle end to end."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lass import Separator
from lass.bundle import write_bundle
from lass.data import mix as mix_rule
from lass.sampling import Ancestral, BeamSearch, Greedy, separate_tokens
from likelihood import CountLikelihood, Counts, LikelihoodError, TupleCounter
from likelihood.table import load_counts, merge_counts, save_counts
from priors import MarkovPrior, TransformerPrior, TransformerPriorConfig
from vqvae import ConvVQVAE, ConvVQVAEConfig


def dense_counts(k: int, n: int, mix: np.ndarray, *src: np.ndarray) -> np.ndarray:
    cube = np.zeros((k,) * (n + 1), dtype=np.int64)
    np.add.at(cube, (mix, *src), 1)
    return cube.reshape(k, k ** n)


@pytest.mark.parametrize("n", [3, 4])
def test_tuple_counting_equals_a_dense_reference(n):
    k, rng = 3, np.random.default_rng(n)
    tokens = rng.integers(0, k, (n + 1, 5000))
    counter = TupleCounter(k, n=n, buffer=700)  # several flushes
    counter.add(tokens[0, :2000], *tokens[1:, :2000])
    counter.add(tokens[0, 2000:], *tokens[1:, 2000:])
    np.testing.assert_array_equal(counter.matrix().toarray(), dense_counts(k, n, *tokens))
    # Symmetric: every order of the sources is counted.
    sym = TupleCounter(k, symmetric=True, n=n)
    sym.add(tokens[0], *tokens[1:])
    expected = sum(dense_counts(k, n, tokens[0], *(tokens[1 + p] for p in perm))
                   for perm in itertools.permutations(range(n)))
    np.testing.assert_array_equal(sym.matrix().toarray(), expected)


def test_counts_of_three_sources_round_trip_and_check_their_n(tmp_path):
    k, rng = 4, np.random.default_rng(0)
    tokens = rng.integers(0, k, (4, 3000))
    counter = TupleCounter(k, n=3)
    counter.add(tokens[0], *tokens[1:])
    path = save_counts(tmp_path / "c.npz", Counts(counter.matrix(), {"n_sources": 3}))
    back = load_counts(path)
    assert back.n_sources == 3
    assert back.k == k
    np.testing.assert_array_equal(back.matrix.toarray(), dense_counts(k, 3, *tokens))
    assert back.stats()["n_sources"] == 3
    with pytest.raises(LikelihoodError, match="3 sources, not 2"):
        CountLikelihood.load(path, n_sources=2)
    pair = TupleCounter(k)
    pair.add(tokens[0], tokens[1], tokens[2])
    with pytest.raises(LikelihoodError):
        merge_counts([back, Counts(pair.matrix(), {})])
    lik = CountLikelihood.load(path)
    # The likelihood is c(m, t) / c(t) for every seen combination.
    cube = dense_counts(k, 3, *tokens).astype(float)
    probs = cube / cube.sum(0, keepdims=True).clip(min=1)
    dense = lik.dense(torch.arange(k)).exp().reshape(k, -1).numpy()
    np.testing.assert_allclose(dense, probs, atol=1e-6)


def test_votes_smoothing_is_the_naive_bayes_of_each_sources_pairs():
    k, n, rng = 4, 3, np.random.default_rng(1)
    src = rng.integers(0, k, (n, 4000))
    m = (src.sum(0) + rng.integers(0, 2, 4000)) % k
    counter = TupleCounter(k, n=n)
    counter.add(m, *src)
    counts = Counts(counter.matrix(), {"n_sources": n})
    alpha = 2.0
    lik = CountLikelihood(counts, "votes", alpha)
    cube = dense_counts(k, n, m, *src).astype(float).reshape(k, *(k,) * n)
    c_m = cube.reshape(k, -1).sum(1)
    q_m = (c_m + 1) / (c_m.sum() + k)
    log_q = np.log(q_m)[:, None, None, None] * np.ones((k,) * (n + 1))
    for s in range(n):
        pairs = cube.sum(axis=tuple(a for a in range(1, n + 1) if a != s + 1))  # (m, i)
        cond = (pairs + q_m[:, None]) / (pairs.sum(0)[None] + 1)
        vote = np.log(cond) - np.log(q_m)[:, None]
        shape = [k, 1, 1, 1]
        shape[s + 1] = k
        log_q = log_q + vote.reshape(shape)
    q = np.exp(np.minimum(log_q, 0.0))
    totals = cube.sum(0, keepdims=True)
    expected = (cube + alpha * q) / (totals + alpha)
    got = lik.dense(torch.arange(k)).exp().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # The per-source votes the search ranks tokens by.
    factors = lik.token_factors(torch.tensor([2]))
    assert factors is not None
    assert len(factors) == n
    assert lik.log_votes is not None
    assert torch.allclose(factors[1][0], lik.log_votes[1][2])


def build3(k: int, length: int, seed: int, density: float = 0.6, n: int = 3, **smoothing):
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    priors = [MarkovPrior.random(k, gen) for _ in range(n)]
    shape = (k,) * (n + 1)
    cube = rng.integers(1, 6, shape) * (rng.random(shape) < density)
    for tup in itertools.product(range(k), repeat=n):  # every tuple seen at least once
        key = (sum(tup) % k, *tup)
        cube[key] = max(cube[key], 1)
    idx = np.nonzero(cube)
    reps = cube[idx]
    counter = TupleCounter(k, n=n)
    counter.add(*(np.repeat(a, reps) for a in idx))
    lik = CountLikelihood(Counts(counter.matrix(), {"n_sources": n}), **smoothing)
    mix = torch.from_numpy(rng.integers(0, k, (1, length)))
    return priors, lik, mix


def objective(priors, lik, mix, zs, lam):
    ll = lik.log_likelihood(mix[0], *(z.T for z in zs)).T
    return sum(p.token_log_probs(z) for p, z in zip(priors, zs, strict=True)) + lam * ll


def brute_force(priors, lik, mix, lam):
    k, length, n = lik.k, mix.shape[1], len(priors)
    seqs = torch.tensor(list(itertools.product(range(k), repeat=length)))
    combos = torch.tensor(list(itertools.product(range(len(seqs)), repeat=n)))
    zs = [seqs[combos[:, s]] for s in range(n)]
    return zs, objective(priors, lik, mix, zs, lam).sum(1)


@pytest.mark.parametrize("seed", range(6))
def test_three_source_beam_search_with_enough_beams_is_exact(seed):
    k, length, lam = 2, 3, 2.0
    priors, lik, mix = build3(k, length, seed)
    zs, obj = brute_force(priors, lik, mix, lam)
    best = int(obj.argmax())
    out = separate_tokens(mix, priors, lik, BeamSearch(num_beams=(k ** 3) ** (length - 1)),
                          lam=lam)
    for s in range(3):
        assert torch.equal(out.sources[s][0, 0], zs[s][best])
    torch.testing.assert_close(out.score[0, 0], obj[best], atol=1e-4, rtol=0)
    finite = torch.isfinite(out.score[0])
    again = objective(priors, lik, mix, [x[0][finite] for x in out.sources], lam).sum(1)
    torch.testing.assert_close(out.score[0][finite], again, atol=1e-4, rtol=0)
    assert torch.all(out.score[0][:-1] >= out.score[0][1:])


def test_four_sources_beam_search_and_greedy():
    k, length, lam = 2, 2, 2.0
    priors, lik, mix = build3(k, length, 3, n=4)
    _zs, obj = brute_force(priors, lik, mix, lam)
    best = int(obj.argmax())
    out = separate_tokens(mix, priors, lik, BeamSearch(num_beams=k ** 4), lam=lam)
    torch.testing.assert_close(out.score[0, 0], obj[best], atol=1e-4, rtol=0)
    greedy = separate_tokens(mix, priors, lik, Greedy(), lam=lam)
    assert float(greedy.score[0, 0]) <= float(out.score[0, 0]) + 1e-5
    assert len(greedy.sources) == 4


def test_three_source_ancestral_matches_the_per_step_posterior():
    k, length, lam, n_samples = 2, 2, 1.5, 20000
    priors, lik, mix = build3(k, length, 7, density=0.8)
    zs, _ = brute_force(priors, lik, mix, lam)
    # Independent samples follow the product over steps of the per-step posteriors given the
    # history: normalise each step's scores over the tuples sharing that history.
    steps = objective(priors, lik, mix, zs, lam)  # (combos, L)
    logp = torch.zeros(len(zs[0]))
    for t in range(length):
        hist = [tuple(int(z[c, u]) for z in zs for u in range(t)) for c in range(len(zs[0]))]
        tup = [tuple(int(z[c, t]) for z in zs) for c in range(len(zs[0]))]
        groups: dict = {}
        for c, h in enumerate(hist):
            groups.setdefault(h, {})[tup[c]] = float(steps[c, t])
        norm = torch.tensor([torch.logsumexp(torch.tensor(list(groups[h].values())), 0)
                             for h in hist])
        logp += steps[:, t] - norm
    expected = logp.exp()
    expected = expected / expected.sum()
    out = separate_tokens(mix, priors, lik, Ancestral(), lam=lam, num_samples=n_samples,
                          generator=torch.Generator().manual_seed(5))
    keys = {tuple(r): i for i, r in enumerate(torch.cat(zs, 1).tolist())}
    counts = torch.zeros(len(keys), dtype=torch.float64)
    for row in torch.cat([x[0] for x in out.sources], 1).tolist():
        counts[keys[tuple(row)]] += 1
    mask = expected > 0
    assert counts[~mask].sum() == 0
    chi2 = float((((counts - n_samples * expected) ** 2)
                  / (n_samples * expected).clamp_min(1e-12))[mask].sum())
    dof = int(mask.sum()) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5


def test_three_source_particles_estimate_the_whole_sequence_posterior():
    k, length, lam, n_samples = 2, 3, 2.0, 20000
    priors, lik, mix = build3(k, length, 2, density=0.8)
    zs, obj = brute_force(priors, lik, mix, lam)
    exact = obj.double().softmax(0)
    out = separate_tokens(mix, priors, lik, Ancestral(resample=1.0), lam=lam,
                          num_samples=n_samples, generator=torch.Generator().manual_seed(3))
    keys = {tuple(r): i for i, r in enumerate(torch.cat(zs, 1).tolist())}
    est = torch.zeros(len(keys), dtype=torch.float64)
    w = out.log_weight[0].double().softmax(0)
    for row, wi in zip(torch.cat([x[0] for x in out.sources], 1).tolist(), w.tolist(),
                       strict=True):
        est[keys[tuple(row)]] += wi
    assert 0.5 * float((est - exact).abs().sum()) < 0.08


def test_unseen_tuples_fall_back_and_every_path_is_reported():
    """A mixture token never counted falls back to the priors' grid; with the votes
    smoothing and a prior_top grid, enough beams find the brute-force optimum under the
    smoothed likelihood, and the unseen choices are counted."""
    k, _length, lam, n = 3, 2, 2.0, 3
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    priors = [MarkovPrior.random(k, gen) for _ in range(n)]
    src = rng.integers(0, k, (n, 400))
    m = src.sum(0) % 2  # token 2 is never a mixture token
    counter = TupleCounter(k, n=n)
    counter.add(m[:40], *src[:, :40])  # few tuples counted: many unseen
    counts = Counts(counter.matrix(), {"n_sources": n})
    plain = CountLikelihood(counts)
    mix = torch.tensor([[2, 0]])
    out = separate_tokens(mix, priors, plain, Greedy(), lam=lam, fallback_top=8)
    assert int(out.fallbacks[0]) == 1
    assert out.fallback_steps == 1
    smooth = CountLikelihood(counts, "votes", 1.0)
    _zs, obj = brute_force(priors, smooth, mix, lam)
    best = int(obj.argmax())
    beam = separate_tokens(mix, priors, smooth, BeamSearch(num_beams=k ** n), lam=lam,
                           prior_top=6, fallback_top=6)  # grids of all 3 ** 3 tuples
    torch.testing.assert_close(beam.score[0, 0], obj[best], atol=1e-4, rtol=0)
    chosen = [x[0, 0] for x in beam.sources]
    seen, _ = smooth.lookup(mix[0], *(c[:, None] for c in chosen))
    assert int(beam.unseen[0]) >= int((~seen).sum())


def make_three_stem_bundle(root: Path) -> Path:
    sr, k, stems = 8000, 32, ("low", "mid", "high")
    torch.manual_seed(0)
    codec = ConvVQVAE(ConvVQVAEConfig(sample_rate=sr, hop_length=16, codebook_size=k, dim=8,
                                      channels=4)).eval()
    codec.save(root / "codec")
    TransformerPrior(TransformerPriorConfig(vocab_size=k, context_length=64, width=32,
                                            layers=1, heads=2, class_names=stems,
                                            codec_identity=codec.identity())
                     ).save(root / "prior")
    rng = np.random.default_rng(0)
    t = np.arange(4000) / sr
    src = torch.from_numpy(np.stack([
        np.stack([0.4 * np.sin(2 * np.pi * rng.uniform(lo, hi) * t + rng.uniform(0, 6))
                  for lo, hi in ((60, 120), (300, 500), (1200, 2000))])
        for _ in range(16)]).astype(np.float32))  # (16, 3, T)
    with torch.no_grad():
        codes = [codec.encode(x).numpy() for x in (mix_rule(src, "mean", dim=1),
                                                   *src.unbind(1))]
    counter = TupleCounter(k, n=3)
    counter.add(*codes)
    save_counts(root / "likelihood.npz", Counts(counter.matrix(), {
        "codec_identity": codec.identity(), "mix": "mean", "n_sources": 3,
        "sources": list(stems)}))
    write_bundle(root, name="three", sample_rate=sr, stems=stems, mix="mean", codec="codec",
                 priors=dict.fromkeys(stems, "prior"),
                 prior_classes={s: i for i, s in enumerate(stems)},
                 likelihood="likelihood.npz", smoothing="votes",
                 sampler={"kind": "beam", "num_beams": 3, "lam": 3.0, "output": "mask",
                          "prior_top": 8})
    return root


@pytest.mark.parametrize("output", ["mask", "decode"])
def test_a_three_stem_bundle_separates_into_three_stems(tmp_path, output):
    sep = Separator.from_pretrained(make_three_stem_bundle(tmp_path / "b"))
    sep = sep.with_settings(output=output)
    assert tuple(sep.stems) == ("low", "mid", "high")
    wave = (0.3 * np.sin(np.arange(6000) / 8000 * 2 * np.pi * 440.0)).astype(np.float32)
    stems = sep.separate(wave, 8000)
    assert list(stems) == ["low", "mid", "high"]
    for s in stems.values():
        assert s.shape == wave.shape
        assert np.isfinite(s).all()
    if output == "mask":  # the stems are contributions that sum to the input
        np.testing.assert_allclose(sum(stems.values()), wave, atol=1e-4)
    # Posterior samples over shifted copies, combined into one mask (or one mean decoding).
    pooled = sep.with_settings(sampler=Ancestral(temperature=1.5), candidates=2, shifts=2,
                               combine="mean").separate(wave, 8000)
    assert list(pooled) == ["low", "mid", "high"]
    if output == "mask":
        np.testing.assert_allclose(sum(pooled.values()), wave, atol=1e-4)


def test_lass_separate_writes_one_file_per_stem_that_sum_to_the_input(tmp_path, capsys):
    import soundfile as sf

    from lass.cli.separate import main as separate_main

    bundle = make_three_stem_bundle(tmp_path / "b")
    rng = np.random.default_rng(3)
    t = np.arange(6000) / 8000
    x = (0.2 * np.sin(2 * np.pi * 90 * t) + 0.2 * np.sin(2 * np.pi * 400 * t)
         + 0.1 * rng.standard_normal(6000)).astype(np.float32)
    sf.write(tmp_path / "mix.wav", x, 8000, subtype="FLOAT")
    out = tmp_path / "out"
    assert separate_main([str(tmp_path / "mix.wav"), "-m", str(bundle), "-o", str(out),
                          "--float32"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    stems = [sf.read(out / "three" / "mix" / f"{s}.wav", dtype="float32")[0]
             for s in ("low", "mid", "high")]
    for s in stems:
        assert s.shape == x.shape
    np.testing.assert_allclose(sum(stems), x, atol=1e-5)
    info = json.loads((out / "three" / "mix" / "separation.json").read_text())
    assert info["bundle"]["name"] == "three"


def test_pruned_counts_keep_the_votes_of_the_whole_table(tmp_path):
    from lass.cli.merge_counts import main as merge_main

    k, n, rng = 5, 3, np.random.default_rng(2)
    src = rng.integers(0, k, (n, 1500))
    m = (src.sum(0) + rng.integers(0, 2, 1500)) % k
    counter = TupleCounter(k, n=n)
    counter.add(m, *src)
    full = save_counts(tmp_path / "full.npz", Counts(counter.matrix(), {"n_sources": n}))
    assert merge_main([str(full), "--min-count", "2", "--out", str(tmp_path / "p.npz")]) == 0
    pruned = load_counts(tmp_path / "p.npz")
    whole = load_counts(full)
    assert pruned.matrix.nnz < whole.matrix.nnz
    assert pruned.matrix.data.min() >= 2
    np.testing.assert_array_equal(pruned.source_pairs(), whole.source_pairs())
    a = CountLikelihood(whole, "votes", 2.0, min_count=2)
    b = CountLikelihood(pruned, "votes", 2.0)
    np.testing.assert_allclose(a.dense(torch.arange(k)).numpy(), b.dense(torch.arange(k)).numpy(),
                               rtol=1e-5)
    with pytest.raises(LikelihoodError, match="pruned"):
        merge_counts([pruned, whole])
