"""The factorised likelihood q(m | i, j) = softmax_m(A[i] + B[j] + c) and its use as the
base measure of the counts' ``factorised`` smoothing."""

import re

import numpy as np
import pytest
import torch

from lass.cli.fit_likelihood import backoff_bits
from lass.cli.fit_likelihood import main as fit_main
from likelihood import CountLikelihood, Counts, LikelihoodError, TripleCounter, save_counts
from likelihood.factorised import (
    FactorisedLikelihood,
    FitState,
    fit_factorised,
    held_out_bits,
    log_normaliser,
)

K = 6


def random_model(k: int = K, seed: int = 0, scale: float = 2.0) -> FactorisedLikelihood:
    gen = torch.Generator().manual_seed(seed)
    a, b = (scale * torch.randn(k, k, generator=gen) for _ in range(2))
    c = torch.randn(k, generator=gen)
    return FactorisedLikelihood(a, b, c, log_normaliser(a, b, c))


def sample_counts(model: FactorisedLikelihood, n: int, seed: int) -> Counts:
    """Counts of ``n`` triples with uniform pairs and m drawn from the model."""
    rng = np.random.default_rng(seed)
    k = model.k
    i, j = rng.integers(0, k, n), rng.integers(0, k, n)
    logq = model.first[i] + model.second[j] + model.bias - model.log_norm[i, j][:, None]
    m = torch.multinomial(logq.exp(), 1, generator=torch.Generator().manual_seed(seed))[:, 0]
    counter = TripleCounter(k)
    counter.add(m.numpy(), i, j)
    return Counts(counter.matrix(), {"triples": n, "codec_identity": "codec-a"})


def dense_q(model: FactorisedLikelihood) -> torch.Tensor:
    """``(K, K, K)`` q[m, i, j] straight from the definition."""
    logits = model.first[:, None, :] + model.second[None, :, :] + model.bias  # (i, j, m)
    return logits.softmax(-1).permute(2, 0, 1)


def test_normaliser_log_prob_and_token_factors_match_the_definition():
    model = random_model()
    direct = torch.logsumexp(model.first[:, None, :] + model.second[None] + model.bias, -1)
    torch.testing.assert_close(log_normaliser(model.first, model.second, model.bias, chunk=4),
                               direct)
    q = dense_q(model)
    torch.testing.assert_close(q.sum(0), torch.ones(K, K))
    grid = torch.arange(K)
    for m in range(K):
        first, second = grid.repeat_interleave(K)[None], grid.repeat(K)[None]
        got = model.log_prob(torch.tensor([m]), first, second)[0].view(K, K)
        torch.testing.assert_close(got.exp(), q[m])
        # log q = a[i] + b[j] + a residual of the normaliser alone (no m in it)
        a, b = model.token_factors(torch.tensor([m]))
        residual = got - a[0][:, None] - b[0][None, :]
        expected = -(model.log_norm - model.row_norm[:, None] - model.col_norm[None, :])
        torch.testing.assert_close(residual, expected, atol=1e-5, rtol=0)


def test_fit_recovers_a_factorised_source_and_beats_count_smoothing():
    truth = random_model(seed=1)
    train, held = sample_counts(truth, 4000, seed=2), sample_counts(truth, 4000, seed=3)
    model, state = fit_factorised(train, epochs=60, lr=0.1, batch=512, valid=held)
    fitted, true = dense_q(model), dense_q(truth)
    kl = (true * (true.log() - fitted.log())).sum(0).mean()  # per pair, nats
    assert float(kl) < 0.05
    bits = held_out_bits(model, held)
    entropy = float(-(true * true.log()).sum(0).mean()) / np.log(2)
    assert bits < entropy + 0.1
    assert bits < backoff_bits(train, held)[0]
    assert state.history[-1]["valid_bits"] == pytest.approx(bits, abs=1e-3)


def test_resumed_fit_equals_an_uninterrupted_one():
    counts = sample_counts(random_model(seed=4), 3000, seed=5)
    states: list[FitState] = []
    full, _ = fit_factorised(counts, epochs=3, batch=256, on_epoch=states.append)
    resumed, _ = fit_factorised(counts, epochs=3, batch=256, state=states[0])
    for name in ("first", "second", "bias", "log_norm"):
        torch.testing.assert_close(getattr(resumed, name), getattr(full, name))


def test_save_load_round_trip_and_errors(tmp_path):
    model = random_model(seed=6)
    path = model.save(tmp_path / "f.npz")
    back = FactorisedLikelihood.load(path)
    torch.testing.assert_close(back.first, model.first, atol=1e-2, rtol=1e-3)  # float16
    torch.testing.assert_close(dense_q(back).sum(0), torch.ones(K, K), atol=2e-3, rtol=0)
    (tmp_path / "bad.npz").write_bytes(path.read_bytes()[:200])
    with pytest.raises(LikelihoodError, match="corrupt or truncated"):
        FactorisedLikelihood.load(tmp_path / "bad.npz")
    with pytest.raises(LikelihoodError, match="not found"):
        FactorisedLikelihood.load(tmp_path / "none.npz")


@pytest.mark.parametrize("min_count", [1, 2])
def test_factorised_smoothing_equals_its_dense_reference(min_count):
    model = random_model(seed=7)
    counts = sample_counts(model, 600, seed=8)
    cube = counts.matrix.toarray().reshape(K, K, K).astype(np.float64)
    cube[cube < min_count] = 0
    alpha = 0.7
    ref = (cube + alpha * dense_q(model).double().numpy()) / (cube.sum(0, keepdims=True) + alpha)
    lik = CountLikelihood(counts, "factorised", alpha, min_count=min_count, base=model)
    dense = lik.dense(torch.arange(K)).exp().numpy()
    np.testing.assert_allclose(dense, ref, rtol=1e-5)
    np.testing.assert_allclose(dense.sum(0), 1.0, rtol=1e-5)
    cand = lik.slice(torch.arange(K))
    for row in range(K):
        n = int(cand.count[row])
        assert n == np.count_nonzero(cube[row])
        got = ref[row, cand.first[row, :n].numpy(), cand.second[row, :n].numpy()]
        np.testing.assert_allclose(cand.log_lik[row, :n].exp().numpy(), got, rtol=1e-5)
    factors = lik.token_factors(torch.tensor([0, 3]))
    assert factors is not None
    assert factors[0].shape == (2, K)
    assert CountLikelihood(counts).token_factors(torch.tensor([0])) is None
    with pytest.raises(LikelihoodError, match="needs its fitted model"):
        CountLikelihood(counts, "factorised", alpha)
    with pytest.raises(LikelihoodError, match="K = 4"):
        CountLikelihood(counts, "factorised", alpha, base=random_model(k=4))


def test_fit_cli_writes_a_model_and_reports_held_out_bits(tmp_path, capsys):
    truth = random_model(seed=9)
    save_counts(tmp_path / "train.npz", sample_counts(truth, 3000, seed=10))
    save_counts(tmp_path / "held.npz", sample_counts(truth, 1000, seed=11))
    out = tmp_path / "q.npz"
    assert fit_main([str(tmp_path / "train.npz"), "--valid", str(tmp_path / "held.npz"),
                     "--out", str(out), "--epochs", "60", "--batch", "256", "--lr", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "held-out: factorised" in text
    found = re.findall(r"([0-9.]+) bits per mixture token; .* ([0-9.]+)$",
                       text.strip().splitlines()[-1])
    fact, ref = (float(v) for v in found[0])
    assert fact < ref
    assert not (tmp_path / "q.npz.partial.pt").exists()
    lik = CountLikelihood.load(tmp_path / "train.npz", "factorised", 1.0, base=out)
    assert lik.base is not None
    assert lik.base.k == K
    (tmp_path / "broken.npz").write_text("nope")
    assert fit_main([str(tmp_path / "broken.npz"), "--out", str(tmp_path / "x.npz")]) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
