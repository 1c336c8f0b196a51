import numpy as np
import pytest
import torch

from likelihood import (
    CountLikelihood,
    Counts,
    LikelihoodError,
    TripleCounter,
    load_counts,
    merge_counts,
    save_counts,
)

K = 6


def triples(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    i = rng.integers(0, K, n)
    j = rng.integers(0, K, n)
    m = (i + 2 * j + rng.integers(0, 2, n)) % K  # mixture token depends on the pair
    m[rng.random(n) < 0.05] = K - 1  # some noise
    return m, i, j


def dense_counts(m, i, j, symmetric=False) -> np.ndarray:
    c = np.zeros((K, K, K), dtype=np.int64)
    np.add.at(c, (m, i, j), 1)
    if symmetric:
        np.add.at(c, (m, j, i), 1)
    return c


def as_dense(counts: Counts) -> np.ndarray:
    return counts.matrix.toarray().reshape(K, K, K)


@pytest.mark.parametrize("symmetric", [False, True])
def test_counts_equal_brute_force(symmetric):
    m, i, j = triples(5000)
    counter = TripleCounter(K, symmetric=symmetric, buffer=777)  # many flushes
    for s in range(0, 5000, 1234):
        counter.add(m[s: s + 1234], i[s: s + 1234], j[s: s + 1234])
    got = counter.matrix().toarray().reshape(K, K, K)
    np.testing.assert_array_equal(got, dense_counts(m, i, j, symmetric))
    assert counter.triples == 5000 * (2 if symmetric else 1)
    if symmetric:
        np.testing.assert_array_equal(got, got.transpose(0, 2, 1))


def test_shards_merge_to_a_single_pass(tmp_path):
    m, i, j = triples(3000, seed=1)
    whole = TripleCounter(K)
    whole.add(m, i, j)
    paths = []
    for shard in range(3):
        c = TripleCounter(K, buffer=100)
        c.add(m[shard::3], i[shard::3], j[shard::3])
        meta = {"codec_identity": "abc", "mix": "mean", "symmetric": False,
                "sources": ["a", "b"], "triples": c.triples, "shard": f"{shard}/3"}
        paths.append(save_counts(tmp_path / f"s{shard}.npz", Counts(c.matrix(), meta)))
    merged = merge_counts([load_counts(p) for p in paths])
    np.testing.assert_array_equal(merged.matrix.toarray(), whole.matrix().toarray())
    assert merged.meta["triples"] == 3000
    assert merged.meta["shards"] == ["0/3", "1/3", "2/3"]
    other = load_counts(paths[0])
    other.meta["codec_identity"] = "xyz"
    with pytest.raises(LikelihoodError, match="different codec_identity"):
        merge_counts([load_counts(paths[1]), other])


def test_resume_from_state_equals_uninterrupted():
    m, i, j = triples(4000, seed=2)
    straight = TripleCounter(K, buffer=500)
    straight.add(m, i, j)
    first = TripleCounter(K, buffer=500)
    first.add(m[:1500], i[:1500], j[:1500])
    resumed = TripleCounter.from_state(first.state(), buffer=333)
    resumed.add(m[1500:], i[1500:], j[1500:])
    np.testing.assert_array_equal(resumed.matrix().toarray(), straight.matrix().toarray())
    assert resumed.triples == straight.triples


def test_save_load_round_trip_and_errors(tmp_path):
    m, i, j = triples(1000)
    c = TripleCounter(K)
    c.add(m, i, j)
    path = save_counts(tmp_path / "c.npz", Counts(c.matrix(), {"codec_identity": "abc"}))
    back = load_counts(path)
    np.testing.assert_array_equal(back.matrix.toarray(), c.matrix().toarray())
    assert back.matrix.dtype == np.int64
    stats = back.stats()
    assert stats["k"] == K
    assert stats["nonzeros"] == back.matrix.nnz
    assert stats["bytes_dense_int64"] == 8 * K**3
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(LikelihoodError, match="corrupt or truncated"):
        load_counts(path)
    with pytest.raises(LikelihoodError, match="counts file not found"):
        load_counts(tmp_path / "none.npz")
    with pytest.raises(LikelihoodError, match=r"tokens must lie in \[0, 6\)"):
        c.add(np.array([6]), np.array([0]), np.array([0]))


def reference_table(counts: np.ndarray, smoothing: str, alpha: float) -> np.ndarray:
    """Dense p(m | i, j) computed directly from the (m, i, j) count cube."""
    pair = counts.sum(axis=0, keepdims=True).astype(np.float64)
    if smoothing == "none":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, counts / pair, 0.0)
    if smoothing == "additive":
        return (counts + alpha) / (pair + alpha * K)
    mix = counts.sum(axis=(1, 2)).astype(np.float64)
    q = (mix + 1) / (mix.sum() + K)
    return (counts + alpha * q[:, None, None]) / (pair + alpha)


@pytest.mark.parametrize(("smoothing", "min_count"),
                         [("none", 1), ("additive", 1), ("backoff", 1), ("none", 3),
                          ("backoff", 2)])
def test_slice_and_dense_equal_the_normalised_table(smoothing, min_count):
    m, i, j = triples(2000, seed=3)
    c = TripleCounter(K)
    c.add(m, i, j)
    cube = dense_counts(m, i, j)
    cube[cube < min_count] = 0  # rare triples dropped before normalising
    ref = reference_table(cube, smoothing, 0.5)
    counts = Counts(c.matrix(), {})
    before = counts.matrix.copy()
    lik = CountLikelihood(counts, smoothing=smoothing, alpha=0.5, min_count=min_count)
    assert (counts.matrix != before).nnz == 0  # the caller's counts are untouched
    mix = torch.arange(K)
    dense = lik.dense(mix).exp().numpy()
    np.testing.assert_allclose(dense, ref, rtol=1e-5, atol=1e-7)
    if smoothing != "none":  # every pair's distribution over m sums to one
        np.testing.assert_allclose(dense.sum(axis=0), 1.0, rtol=1e-5)
    cand = lik.slice(mix)
    for row in range(K):
        n = int(cand.count[row])
        assert n == np.count_nonzero(cube[row])
        assert bool(cand.valid[row, :n].all())
        assert not bool(cand.valid[row, n:].any())
        got = ref[row, cand.first[row, :n].numpy(), cand.second[row, :n].numpy()]
        np.testing.assert_allclose(cand.log_lik[row, :n].exp().numpy(), got, rtol=1e-5)
        assert torch.all(torch.isinf(cand.log_lik[row, n:]))


def test_unseen_mixture_token_gives_no_candidates_without_crashing():
    c = TripleCounter(K)
    c.add(np.array([0, 1, 1]), np.array([2, 3, 3]), np.array([4, 5, 0]))
    lik = CountLikelihood(Counts(c.matrix(), {}))
    cand = lik.slice(torch.tensor([5, 1, 5]))
    assert cand.count.tolist() == [0, 2, 0]
    assert cand.first.shape == (3, 2)
    assert not bool(cand.valid[0].any())
    smooth = CountLikelihood(Counts(c.matrix(), {}), smoothing="backoff")
    values = smooth.log_likelihood(torch.tensor([5]), torch.tensor([[0, 2]]),
                                   torch.tensor([[0, 4]]))
    assert torch.all(torch.isfinite(values))


def test_load_checks_codec_and_k(tmp_path):
    c = TripleCounter(K)
    c.add(*triples(100))
    path = save_counts(tmp_path / "c.npz", Counts(c.matrix(), {"codec_identity": "a" * 64}))
    CountLikelihood.load(path, codebook_size=K, codec_identity="a" * 64)
    with pytest.raises(LikelihoodError, match="counted for K = 6 tokens but the codec has 8"):
        CountLikelihood.load(path, codebook_size=8)
    with pytest.raises(LikelihoodError, match="counted with another codec"):
        CountLikelihood.load(path, codec_identity="b" * 64)
    with pytest.raises(LikelihoodError, match="unknown smoothing 'laplace'"):
        CountLikelihood.load(path, smoothing="laplace")
