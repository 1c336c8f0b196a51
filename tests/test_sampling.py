import itertools

import numpy as np
import pytest
import torch

from lass.sampling import Ancestral, BeamSearch, Greedy, TopK, TopP, _keep_slots, separate_tokens
from likelihood import CountLikelihood, Counts, TripleCounter
from likelihood.factorised import FactorisedLikelihood, log_normaliser
from priors import MarkovPrior


def build(k: int, length: int, seed: int, density: float = 0.6, **smoothing):
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    p1, p2 = MarkovPrior.random(k, gen), MarkovPrior.random(k, gen)
    cube = rng.integers(1, 6, (k, k, k)) * (rng.random((k, k, k)) < density)
    for i in range(k):
        for j in range(k):
            cube[(i + j) % k, i, j] = max(cube[(i + j) % k, i, j], 1)  # every pair seen once
    m_idx, i_idx, j_idx = np.nonzero(cube)
    counter = TripleCounter(k)
    counter.add(np.repeat(m_idx, cube[m_idx, i_idx, j_idx]),
                np.repeat(i_idx, cube[m_idx, i_idx, j_idx]),
                np.repeat(j_idx, cube[m_idx, i_idx, j_idx]))
    lik = CountLikelihood(Counts(counter.matrix(), {}), **smoothing)
    mix = torch.from_numpy(rng.integers(0, k, (1, length)))
    return p1, p2, lik, mix


def objective(p1, p2, lik, mix, z1, z2, lam):
    """sum_t log p1 + log p2 + lam * log p(m | i, j) for sequences (n, L)."""
    ll = lik.log_likelihood(mix[0], z1.T, z2.T).T  # (n, L)
    return (p1.token_log_probs(z1) + p2.token_log_probs(z2) + lam * ll).sum(1)


def brute_force(p1, p2, lik, mix, lam):
    k, length = lik.k, mix.shape[1]
    seqs = torch.tensor(list(itertools.product(range(k), repeat=length)))
    z1 = seqs.repeat_interleave(len(seqs), 0)
    z2 = seqs.repeat(len(seqs), 1)
    return z1, z2, objective(p1, p2, lik, mix, z1, z2, lam)


@pytest.mark.parametrize("seed", range(12))
def test_beam_search_with_enough_beams_is_exact(seed):
    k, length, lam = 3, 3, 3.0
    p1, p2, lik, mix = build(k, length, seed)
    z1, z2, obj = brute_force(p1, p2, lik, mix, lam)
    best = int(obj.argmax())
    out = separate_tokens(mix, [p1, p2], lik, BeamSearch(num_beams=(k * k) ** (length - 1)),
                          lam=lam)
    assert torch.equal(out.first[0, 0], z1[best])
    assert torch.equal(out.second[0, 0], z2[best])
    torch.testing.assert_close(out.score[0, 0], obj[best], atol=1e-4, rtol=0)
    # Every returned beam's score is its true objective, and beams are sorted.
    finite = torch.isfinite(out.score[0])
    again = objective(p1, p2, lik, mix, out.first[0][finite], out.second[0][finite], lam)
    torch.testing.assert_close(out.score[0][finite], again, atol=1e-4, rtol=0)
    assert torch.all(out.score[0][:-1] >= out.score[0][1:])


def test_lambda_zero_searches_the_seen_pairs_by_the_priors_alone():
    """At lambda 0 the likelihood only says which pairs are possible: no NaN from 0 * -inf
    on the padding, and beam search finds the best seen pairs under the priors."""
    k, length = 3, 3
    p1, p2, lik, mix = build(k, length, seed=5, density=0.3)
    z1, z2, _ = brute_force(p1, p2, lik, mix, 1.0)
    seen = torch.isfinite(lik.log_likelihood(mix[0], z1.T, z2.T).T).all(1)
    obj = (p1.token_log_probs(z1) + p2.token_log_probs(z2)).sum(1)
    obj = obj.masked_fill(~seen, float("-inf"))
    best = int(obj.argmax())
    out = separate_tokens(mix, [p1, p2], lik, BeamSearch(num_beams=(k * k) ** (length - 1)),
                          lam=0.0)
    assert torch.equal(out.first[0, 0], z1[best])
    assert torch.equal(out.second[0, 0], z2[best])
    torch.testing.assert_close(out.score[0, 0], obj[best], atol=1e-4, rtol=0)
    sampled = separate_tokens(mix, [p1, p2], lik, Ancestral(), lam=0.0, num_samples=4,
                              generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(sampled.score).all()
    rows = torch.isfinite(lik.log_likelihood(mix[0], sampled.first[0].T, sampled.second[0].T))
    assert rows.all()


def factorised_base(k: int, seed: int) -> FactorisedLikelihood:
    gen = torch.Generator().manual_seed(100 + seed)
    a, b, c = 2 * torch.randn(k, k, generator=gen), 2 * torch.randn(k, k, generator=gen), \
        torch.randn(k, generator=gen)
    return FactorisedLikelihood(a, b, c, log_normaliser(a, b, c))


@pytest.mark.parametrize("smoothing", ["backoff", "factorised"])
@pytest.mark.parametrize("seed", range(6))
def test_prior_top_candidates_make_the_search_exact_under_the_smoothed_likelihood(seed,
                                                                                  smoothing):
    """With every pair of the priors' tokens added (prior_top = K), candidates are all K^2
    pairs scored by the smoothed likelihood: enough beams find the brute-force optimum (with
    the factorised smoothing the tokens are ranked by prior plus the likelihood's votes)."""
    k, length, lam = 3, 3, 3.0
    extra = {"base": factorised_base(k, seed)} if smoothing == "factorised" else {}
    p1, p2, smooth, mix = build(k, length, seed, density=0.3, smoothing=smoothing, alpha=0.5,
                                **extra)
    z1, z2, obj = brute_force(p1, p2, smooth, mix, lam)
    best = int(obj.argmax())
    for top in (k, k + 5):
        out = separate_tokens(mix, [p1, p2], smooth, BeamSearch((k * k) ** (length - 1)),
                              lam=lam, prior_top=top)
        assert torch.equal(out.first[0, 0], z1[best])
        assert torch.equal(out.second[0, 0], z2[best])
        torch.testing.assert_close(out.score[0, 0], obj[best], atol=1e-4, rtol=0)
    # Each pair once: the number of distinct finite beams equals the number of finite ones.
    finite = torch.isfinite(out.score[0])
    rows = torch.cat([out.first[0][finite], out.second[0][finite]], dim=1)
    assert rows.unique(dim=0).shape[0] == rows.shape[0]
    # Without the extra candidates the same search cannot reach pairs counting never saw.
    plain = separate_tokens(mix, [p1, p2], smooth, BeamSearch((k * k) ** (length - 1)), lam=lam)
    assert plain.score[0, 0] <= out.score[0, 0] + 1e-5


@pytest.mark.parametrize("seed", range(12))
def test_small_beams_are_never_worse_than_greedy(seed):
    k, length, lam = 4, 4, 3.0
    p1, p2, lik, mix = build(k, length, seed, density=0.4)
    greedy = separate_tokens(mix, [p1, p2], lik, Greedy(), lam=lam)
    for beams in (1, 2, 3, 5):
        out = separate_tokens(mix, [p1, p2], lik, BeamSearch(beams), lam=lam)
        assert float(out.score[0, 0]) >= float(greedy.score[0, 0]) - 1e-5
        if beams == 1:  # one beam is greedy
            assert torch.equal(out.first[0, 0], greedy.first[0, 0])


def test_beam_search_is_batched_exactly():
    k, length, lam = 3, 4, 2.0
    problems = [build(k, length, seed) for seed in (1, 2, 3)]
    p1, p2, lik, _ = problems[0]
    mix = torch.cat([pr[3] for pr in problems])
    together = separate_tokens(mix, [p1, p2], lik, BeamSearch(4), lam=lam)
    for b in range(3):
        alone = separate_tokens(mix[b: b + 1], [p1, p2], lik, BeamSearch(4), lam=lam)
        assert torch.equal(together.first[b], alone.first[0])
        torch.testing.assert_close(together.score[b], alone.score[0])


@pytest.mark.parametrize(("k", "beams", "density"), [(5, 6, 0.6), (4, 20, 0.3), (6, 1, 0.9)])
def test_native_beam_select_equals_the_tensor_code(monkeypatch, k, beams, density):
    """The C++ beam step (the scores of the candidates a mixture's beams share, the best
    beams, their slots and tokens) gives the tensor code's search exactly: 3 mixtures
    batched, with steps of fewer candidates than beams, padded candidates (mixtures with
    fewer than the step's most), and one beam."""
    import shutil

    from lass import native, sampling

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here")
    problems = [build(k, 7, seed, density=density) for seed in (4, 5, 6)]
    p1, p2, lik, _ = problems[0]
    mix = torch.cat([pr[3] for pr in problems])
    calls = []
    assert sampling._native_beam_select() is not None, native.native_error()
    op = native.beam_select()

    def counted(*args):
        calls.append(1)
        return op(*args)

    runs = []
    for on in (True, False):
        monkeypatch.setattr(sampling, "NATIVE_BEAM_SELECT", on)
        monkeypatch.setattr(sampling, "_native_beam_select",
                            lambda on=on: counted if on else None)
        runs.append(separate_tokens(mix, [p1, p2], lik, BeamSearch(beams), lam=2.0))
    assert len(calls) == mix.shape[1]  # every step took the C++ way with it on
    fused, tensors = runs
    assert torch.equal(fused.first, tensors.first)
    assert torch.equal(fused.second, tensors.second)
    assert torch.equal(fused.score, tensors.score)


def test_fewer_candidates_than_beams():
    k = 2
    counter = TripleCounter(k)
    counter.add(np.array([0, 1]), np.array([0, 1]), np.array([1, 0]))  # one pair per token
    lik = CountLikelihood(Counts(counter.matrix(), {}))
    gen = torch.Generator().manual_seed(0)
    p1, p2 = MarkovPrior.random(k, gen), MarkovPrior.random(k, gen)
    out = separate_tokens(torch.tensor([[0, 1, 1, 0]]), [p1, p2], lik, BeamSearch(5))
    assert out.first.shape == (1, 5, 4)
    assert out.first[0, 0].tolist() == [0, 1, 1, 0]
    assert out.second[0, 0].tolist() == [1, 0, 0, 1]
    assert torch.isfinite(out.score[0, 0])
    assert torch.all(torch.isinf(out.score[0, 1:]))


def test_unseen_mixture_token_falls_back_and_is_counted():
    k = 3
    counter = TripleCounter(k)
    counter.add(np.array([0, 1]), np.array([0, 1]), np.array([1, 2]))  # token 2 never seen
    gen = torch.Generator().manual_seed(0)
    p1, p2 = MarkovPrior.random(k, gen), MarkovPrior.random(k, gen)
    for smoothing in ("none", "backoff"):
        lik = CountLikelihood(Counts(counter.matrix(), {}), smoothing=smoothing)
        for sampler in (Greedy(), BeamSearch(3), Ancestral()):
            out = separate_tokens(torch.tensor([[0, 2, 2, 1]]), [p1, p2], lik, sampler,
                                  generator=torch.Generator().manual_seed(0))
            assert out.fallback_steps == 2
            assert out.fallbacks.tolist() == [2]
            assert torch.isfinite(out.score[0, 0])
        # per mixture in a batch
        out = separate_tokens(torch.tensor([[0, 2, 2, 1], [0, 1, 2, 1], [1, 1, 0, 0]]),
                              [p1, p2], lik, Greedy())
        assert out.fallbacks.tolist() == [2, 1, 0]
        assert out.fallback_steps == 3


@pytest.mark.parametrize("sampler", [Ancestral(1.0), Ancestral(1.0, resample=1.0), TopK(2),
                                     Greedy(), BeamSearch(3)])
def test_a_mixture_separates_the_same_in_any_batch(sampler):
    # With one generator per mixture, a mixture's samples do not depend on its batch.
    k, length = 3, 6
    p1, p2, lik, _ = build(k, length, 11, density=0.8)
    mixes = torch.randint(0, k, (3, length), generator=torch.Generator().manual_seed(5))
    batched = separate_tokens(mixes, [p1, p2], lik, sampler, num_samples=4,
                              generator=[torch.Generator().manual_seed(9) for _ in range(3)])
    for b in range(3):
        alone = separate_tokens(mixes[b: b + 1], [p1, p2], lik, sampler, num_samples=4,
                                generator=torch.Generator().manual_seed(9))
        assert torch.equal(batched.first[b], alone.first[0])
        assert torch.equal(batched.second[b], alone.second[0])
        torch.testing.assert_close(batched.score[b], alone.score[0])
        assert batched.resamplings[b] == alone.resamplings[0]
        if isinstance(sampler, Ancestral) and sampler.resample:
            assert alone.resamplings[0] > 0
    with pytest.raises(ValueError, match="one generator per mixture"):
        separate_tokens(mixes, [p1, p2], lik, sampler, generator=[torch.Generator()])


def test_ancestral_matches_the_per_step_posterior():
    k, length, lam = 2, 2, 1.5
    p1, p2, lik, mix = build(k, length, 7, density=0.8)
    z1, z2, _ = brute_force(p1, p2, lik, mix, lam)
    # The sampler's distribution: product over steps of the normalised per-step posterior.
    logp = torch.zeros(len(z1))
    for t in range(length):
        c1 = p1.token_log_probs(z1)[:, t] + p2.token_log_probs(z2)[:, t]
        ll = lik.log_likelihood(mix[0, t].repeat(len(z1)), z1[:, t:t + 1], z2[:, t:t + 1])[:, 0]
        step = c1 + lam * ll
        # Normalise over the step's pairs given the same history.
        hist = (z1[:, :t] * k + z2[:, :t]).sum(1) if t else torch.zeros(len(z1), dtype=torch.long)
        norm = torch.zeros_like(step)
        for h in hist.unique():
            sel = hist == h
            pairs = z1[sel, t] * k + z2[sel, t]
            uniq = {int(pp): float(s) for pp, s in zip(pairs, step[sel], strict=True)}
            norm[sel] = torch.logsumexp(torch.tensor(list(uniq.values())), 0)
        logp += step - norm
    expected = logp.exp()
    expected = expected / expected.sum()
    n = 20000
    out = separate_tokens(mix, [p1, p2], lik, Ancestral(), lam=lam, num_samples=n,
                          generator=torch.Generator().manual_seed(123))
    z = torch.cat([out.first[0], out.second[0]], 1)
    keys = torch.cat([z1, z2], 1)
    counts = torch.tensor([int((z == key).all(1).sum()) for key in keys]).double()
    mask = expected > 0
    assert counts[~mask].sum() == 0
    chi2 = float((((counts - n * expected) ** 2) / (n * expected).clamp_min(1e-12))[mask].sum())
    dof = int(mask.sum()) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5  # far inside the 99.99% region


def _weighted_distribution(out, keys: torch.Tensor, weighted: bool) -> torch.Tensor:
    """The (weighted) empirical distribution of a search's particles over ``keys``."""
    index = {tuple(r): i for i, r in enumerate(keys.tolist())}
    w = out.log_weight[0].softmax(0) if weighted else torch.full((out.first.shape[1],),
                                                                  1.0 / out.first.shape[1])
    est = torch.zeros(len(keys), dtype=torch.float64)
    for row, wi in zip(torch.cat([out.first[0], out.second[0]], 1).tolist(), w.tolist(),
                       strict=True):
        est[index[tuple(row)]] += wi
    return est


@pytest.mark.parametrize("seed", range(3))
def test_particles_estimate_the_whole_sequence_posterior(seed):
    """Independent ancestral samples follow the per-step posteriors, not the posterior of
    the whole sequences; weighted and resampled particles do (total variation distance to
    the brute-force posterior, fixed seeds; 20000 particles put the sampling noise near
    0.03)."""
    k, length, lam, n = 3, 4, 3.0, 20000
    p1, p2, lik, mix = build(k, length, seed, density=0.8)
    z1, z2, obj = brute_force(p1, p2, lik, mix, lam)
    exact = obj.double().softmax(0)
    keys = torch.cat([z1, z2], 1)
    plain = separate_tokens(mix, [p1, p2], lik, Ancestral(), lam=lam, num_samples=n,
                            generator=torch.Generator().manual_seed(1))
    assert not plain.log_weight.any()
    assert 0.5 * float((_weighted_distribution(plain, keys, False) - exact).abs().sum()) > 0.12
    for resample in (0.5, 1.0):
        out = separate_tokens(mix, [p1, p2], lik, Ancestral(resample=resample), lam=lam,
                              num_samples=n, generator=torch.Generator().manual_seed(1))
        tv = 0.5 * float((_weighted_distribution(out, keys, True) - exact).abs().sum())
        assert tv < 0.07
        assert (int(out.resamplings[0]) > 0) == (resample == 1.0)
        # Every particle's score is still its own objective.
        torch.testing.assert_close(out.score[0], objective(p1, p2, lik, mix, out.first[0],
                                                           out.second[0], lam),
                                   atol=1e-4, rtol=0)


def test_particles_at_temperature_follow_the_tempered_posterior():
    k, length, lam, n, temperature = 3, 3, 3.0, 20000, 2.0
    p1, p2, lik, mix = build(k, length, 4, density=0.8)
    z1, z2, obj = brute_force(p1, p2, lik, mix, lam)
    exact = (obj.double() / temperature).softmax(0)
    out = separate_tokens(mix, [p1, p2], lik, Ancestral(temperature, resample=1.0), lam=lam,
                          num_samples=n, generator=torch.Generator().manual_seed(2))
    tv = 0.5 * float((_weighted_distribution(out, torch.cat([z1, z2], 1), True)
                      - exact).abs().sum())
    assert tv < 0.07


def test_resampling_off_is_plain_ancestral_and_bad_values_are_refused():
    p1, p2, lik, mix = build(3, 5, 2, density=0.8)
    a = separate_tokens(mix, [p1, p2], lik, Ancestral(1.3), num_samples=6,
                        generator=torch.Generator().manual_seed(0))
    b = separate_tokens(mix, [p1, p2], lik, Ancestral(1.3, resample=0.0), num_samples=6,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.first, b.first)
    assert torch.equal(a.second, b.second)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="resample must be in"):
            separate_tokens(mix, [p1, p2], lik, Ancestral(resample=bad), num_samples=2)


def test_top_k_and_top_p_restrict_the_support():
    k, length = 3, 3
    p1, p2, lik, mix = build(k, length, 3)
    greedy = separate_tokens(mix, [p1, p2], lik, Greedy())
    for sampler in (TopK(k=1), TopP(p=1e-6)):
        out = separate_tokens(mix, [p1, p2], lik, sampler, num_samples=5,
                              generator=torch.Generator().manual_seed(0))
        for n in range(5):  # a support of one candidate per step is greedy
            assert torch.equal(out.first[0, n], greedy.first[0, 0])
    wide = separate_tokens(mix, [p1, p2], lik, TopK(k=100), num_samples=200,
                           generator=torch.Generator().manual_seed(0))
    assert len({tuple(x) for x in wide.first[0].tolist()}) > 1


def test_long_sequences_continue_in_windows():
    k = 3
    p1, p2, lik, _ = build(k, 2, 5)
    small1 = MarkovPrior(p1.log_init.data, p1.log_trans.data, context_length=4)
    small2 = MarkovPrior(p2.log_init.data, p2.log_trans.data, context_length=4)
    mix = torch.from_numpy(np.random.default_rng(0).integers(0, k, (2, 23)))
    windowed = separate_tokens(mix, [small1, small2], lik, BeamSearch(4), context_overlap=2)
    full = separate_tokens(mix, [p1, p2], lik, BeamSearch(4))
    # A first-order chain needs one token of context: windows change nothing.
    assert torch.equal(windowed.first, full.first)
    torch.testing.assert_close(windowed.score, full.score)


@pytest.mark.parametrize("sampler", [BeamSearch(3), Greedy(), Ancestral(1.0),
                                     Ancestral(1.0, resample=1.0)])
def test_shared_prior_is_one_call_with_the_same_answer(sampler):
    import copy

    from priors import TransformerPrior, TransformerPriorConfig

    k = 6
    _, _, lik, _ = build(k, 2, 3)
    torch.manual_seed(0)
    prior = TransformerPrior(TransformerPriorConfig(vocab_size=k, context_length=8, width=16,
                                                    layers=1, heads=2,
                                                    class_names=("a", "b"))).eval()
    twin = copy.deepcopy(prior)
    calls = {"n": 0}
    forward = prior.model.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    prior.model.forward = counted
    mix = torch.from_numpy(np.random.default_rng(1).integers(0, k, (2, 13)))
    cls = (torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long))
    shared = separate_tokens(mix, [prior, prior], lik, sampler, classes=cls, num_samples=2,
                             context_overlap=3, generator=torch.Generator().manual_seed(0))
    apart = separate_tokens(mix, [prior.__class__(prior.config, twin.model).eval(), twin], lik,
                            sampler, classes=cls, num_samples=2, context_overlap=3,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(shared.first, apart.first)
    assert torch.equal(shared.second, apart.second)
    torch.testing.assert_close(shared.score, apart.score, rtol=1e-5, atol=1e-4)
    # one network call per token plus one per window restart, for both sources together
    assert calls["n"] < 13 + 4


def test_keep_slots_moves_only_rows_of_beams_without_children():
    rng = np.random.default_rng(0)
    for width in (1, 2, 5, 10):
        parent = rng.integers(0, width, (200, width))
        slot = _keep_slots(parent)
        rows = np.broadcast_to(np.arange(width), (200, width))
        # A permutation of the new beams in every mixture.
        assert np.array_equal(np.sort(slot, axis=1), rows)
        placed = np.take_along_axis(parent, slot, axis=1)  # parent of the beam in each row
        has_child = np.zeros((200, width), dtype=bool)
        np.put_along_axis(has_child, parent, True, axis=1)
        # Every beam with children keeps its row; only childless beams' rows are refilled.
        assert np.array_equal(placed == rows, has_child)


@pytest.mark.parametrize(("seed", "smoothed"), [(s, m) for s in range(3) for m in (False, True)])
def test_beam_search_with_token_evidence_is_exact(seed, smoothed):
    """Enough beams find the brute-force maximum of the objective plus the per-token
    evidence ``sum_t e[t, 0, i_t] + e[t, 1, j_t]``, also on the pairs ``prior_top`` adds
    (smoothed: every pair is a candidate); the best beam's score is its objective."""
    k, length, lam = 3, 3, 3.0
    extra = {"smoothing": "backoff", "alpha": 0.5} if smoothed else {}
    p1, p2, lik, mix = build(k, length, seed, density=0.3 if smoothed else 0.6, **extra)
    gen = torch.Generator().manual_seed(seed)
    evidence = torch.randn(1, length, 2, k, generator=gen)
    z1, z2, obj = brute_force(p1, p2, lik, mix, lam)
    steps = torch.arange(length)
    obj = obj + evidence[0, steps, 0][steps, z1].sum(1) + evidence[0, steps, 1][steps, z2].sum(1)
    best = int(obj.argmax())
    out = separate_tokens(mix, [p1, p2], lik, BeamSearch(num_beams=(k * k) ** (length - 1)),
                          lam=lam, token_evidence=evidence, prior_top=k if smoothed else 0)
    assert torch.equal(out.first[0, 0], z1[best])
    assert torch.equal(out.second[0, 0], z2[best])
    torch.testing.assert_close(out.score[0, 0], obj[best], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="token_evidence"):
        separate_tokens(mix, [p1, p2], lik, Greedy(), token_evidence=evidence[:, :, :1])


def test_beam_windows_with_a_shared_first_feed_give_the_same_search(monkeypatch):
    """Beam search over several context windows of a shared Transformer prior: each window's
    first feed runs its families' common start once (the beams agree on their older tokens)
    and gives the search of rows that each run their whole window."""
    from priors import TransformerPrior, TransformerPriorConfig, llama

    k = 6
    _, _, lik, _ = build(k, 2, 5)
    torch.manual_seed(0)
    prior = TransformerPrior(TransformerPriorConfig(vocab_size=k, context_length=32, width=16,
                                                    layers=2, heads=2, kv_heads=1,
                                                    class_names=("a", "b"))).eval()
    mix = torch.from_numpy(np.random.default_rng(2).integers(0, k, (2, 90)))
    cls = (torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long))
    shared_starts: list[int] = []
    start_shared = llama.KVBuffer.start_shared

    def noted(self, shared):
        shared_starts.append(shared)
        start_shared(self, shared)

    monkeypatch.setattr(llama.KVBuffer, "start_shared", noted)
    runs, least_shared = [], llama.StepOptions().shared_feed_min
    for least in (least_shared, 10 ** 9):
        prior.step_options = llama.StepOptions(shared_feed_min=least)
        runs.append(separate_tokens(mix, [prior, prior], lik, BeamSearch(4), classes=cls,
                                    context_overlap=24))
    assert shared_starts  # some windows shared their start
    assert min(shared_starts) >= least_shared
    assert torch.equal(runs[0].first, runs[1].first)
    assert torch.equal(runs[0].second, runs[1].second)
    torch.testing.assert_close(runs[0].score, runs[1].score, rtol=1e-5, atol=1e-4)
