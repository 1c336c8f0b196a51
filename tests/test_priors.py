import copy
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from priors import PriorError, TransformerPrior, TransformerPriorConfig, load_prior

K = 16


def tiny(arch: str = "llama", classes: tuple[str, ...] = (), context: int = 12,
         kv_heads: int = 0) -> TransformerPrior:
    torch.manual_seed(0)
    return TransformerPrior(TransformerPriorConfig(vocab_size=K, context_length=context,
                                                   class_names=classes, arch=arch, width=32,
                                                   layers=2, heads=2, kv_heads=kv_heads)).eval()


def stepwise(prior: TransformerPrior, codes: torch.Tensor, classes=None) -> torch.Tensor:
    """(batch, tokens) log-probs of ``codes`` from one cached step per token."""
    state = prior.start(codes.shape[0], classes)
    out = []
    logp, state = prior.step(None, state)
    for t in range(codes.shape[1]):
        out.append(logp.gather(1, codes[:, t: t + 1]))
        if t + 1 < codes.shape[1]:
            logp, state = prior.step(codes[:, t], state)
    return torch.cat(out, dim=1)


def replay(prior: TransformerPrior, state, codes: torch.Tensor, plan, every: int,
           watch=None) -> list[torch.Tensor]:
    """Log-probs of a prime with ``codes``, then of each ``(index, tokens)`` of ``plan``: a
    reorder to ``index`` and a step with ``tokens``, or, every ``every``-th step, with the
    parents' tokens (rows of one parent then have equal pasts); ``watch(state)`` after each
    step."""
    out, state = prior.prime(codes, state)
    outs = [out]
    for t, (index, tokens) in enumerate(plan):
        state = prior.reorder(state, index)
        out, state = prior.step(tokens[index] if t % every == 0 else tokens, state)
        outs.append(out)
        if watch is not None:
            watch(state)
    return outs


@pytest.mark.parametrize(("arch", "kv_heads"), [("llama", 0), ("llama", 1), ("gpt2", 0)])
def test_cached_steps_equal_full_forward(arch, kv_heads):
    prior = tiny(arch, kv_heads=kv_heads)
    codes = torch.randint(0, K, (3, 12))
    with torch.no_grad():
        full = prior.token_log_probs(codes)
    torch.testing.assert_close(stepwise(prior, codes), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(prior.log_prob(codes), full.sum(-1), atol=1e-5, rtol=0)


def test_step_returns_normalised_log_probs_over_codes_only():
    prior = tiny()
    logp, _ = prior.step(None, prior.start(4))
    assert logp.shape == (4, K)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(4))


def test_causality_future_tokens_change_nothing_before():
    prior = tiny()
    codes = torch.randint(0, K, (2, 10))
    changed = codes.clone()
    changed[:, 6:] = (changed[:, 6:] + 3) % K
    with torch.no_grad():
        a, b = prior.logits(codes), prior.logits(changed)
    # The prediction of token t sees tokens 0..t-1 only: positions 0..6 are unchanged.
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("kv_heads", [0, 1])
def test_reorder_follows_beams_exactly(kv_heads):
    prior = tiny(kv_heads=kv_heads)
    codes = torch.randint(0, K, (4, 6))
    state = prior.start(4)
    _, state = prior.prime(codes, state)
    index = torch.tensor([2, 2, 0, 3, 1])  # beams may be copied and the batch may change size
    state = prior.reorder(state, index)
    nxt = torch.randint(0, K, (5,))
    logp, _ = prior.step(nxt, state)
    fresh = prior.start(5)
    expected, _ = prior.prime(torch.cat([codes[index], nxt[:, None]], dim=1), fresh)
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 0), (2, 1), (4, 2)])
def test_fast_llama_decoding_equals_the_transformers_path(heads, kv_heads):
    """The lean stepper and ``transformers`` give the same log-probs through prime, steps,
    beam reorders (also to another batch size) and a second prime after tokens."""
    torch.manual_seed(0)
    prior = TransformerPrior(TransformerPriorConfig(
        vocab_size=K, context_length=16, class_names=("a", "b"), width=32, layers=2,
        heads=heads, kv_heads=kv_heads)).eval()
    classes = torch.tensor([0, 1, 1])
    codes = torch.randint(0, K, (3, 5))
    steps = torch.randint(0, K, (4, 5))
    more = torch.randint(0, K, (5, 2))
    index = [torch.tensor([2, 0, 0]), torch.tensor([1, 1, 2, 0, 2]), torch.tensor([4, 0, 3, 3, 1]),
             torch.tensor([0, 1, 1, 3, 4])]  # one row moved in place
    runs = []
    for fast in (True, False):
        prior.fast_decoding = fast
        state = prior.start(3, classes)
        assert (type(state.cache).__name__ == "_FastCache") == fast
        out, state = prior.prime(codes, state)
        outs = [out]
        for t in range(4):
            state = prior.reorder(state, index[t])
            out, state = prior.step(steps[t, : state.batch], state)
            outs.append(out)
        out, state = prior.prime(more, state)
        outs.append(out)
        runs.append(outs)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_products_equal_plain_products(monkeypatch, dtype):
    """oneDNN's packed weights (float32 on a CPU, where they run) give the log-probs of the
    plain products through a prime, steps, beam reorders and rows with equal pasts; float64
    keeps the plain products."""
    from priors import llama

    if dtype == torch.float32 and torch.backends.mkldnn.is_available():
        assert llama.packed_products_work(torch.float32, "cpu")
    prior = tiny(kv_heads=1, context=30).to(dtype)
    gen = torch.Generator().manual_seed(3)
    rows = 6
    codes = torch.randint(0, K, (rows, 4), generator=gen)
    plan = [(torch.randint(0, 3, (rows,), generator=gen),  # parents among rows 0..2
             torch.randint(0, K, (rows,), generator=gen)) for _ in range(12)]
    runs, packed = [], []
    for flag in (True, False):
        prior.step_options = llama.StepOptions(packed_products=flag)
        state = prior.start(rows, share=rows)
        packed.append(state.cache.stepper.packed is not None)
        runs.append(replay(prior, state, codes, plan, every=2))
    assert packed == [dtype == torch.float32
                      and llama.packed_products_work(torch.float32, "cpu"), False]
    for a, b in zip(*runs, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kv_heads", [0, 1])
def test_shared_beam_past_equals_unshared(kv_heads):
    """Families of beams whose common past is stored once give the same log-probs as rows
    that each hold their whole past: through beams that coalesce (the past is shared), a
    multi-token feed (it is copied back), reorders that leave a family (sharing ends) and a
    reorder to another number of rows."""
    prior = TransformerPrior(TransformerPriorConfig(
        vocab_size=K, context_length=60, class_names=("a", "b"), width=32, layers=2, heads=4,
        kv_heads=kv_heads)).eval()
    gen = torch.Generator().manual_seed(1)
    fam, families = 4, 3
    rows = fam * families
    classes = torch.tensor([0, 1, 1]).repeat_interleave(fam)
    base = torch.arange(families).repeat_interleave(fam) * fam

    def within() -> torch.Tensor:  # beams of a family descend from one or two of its rows
        parents = torch.randint(0, 2, (rows,), generator=gen)
        return base + torch.randint(0, fam, (families, 2), generator=gen).repeat_interleave(
            fam, 0).gather(1, parents[:, None]).squeeze(1)

    plan: list[tuple[str, torch.Tensor]] = [("step", within()) for _ in range(30)]
    plan += [("prime", torch.randint(0, K, (rows, 3), generator=gen))]
    plan += [("step", within()) for _ in range(12)]
    plan += [("step", torch.randint(0, rows, (rows,), generator=gen))]  # across families
    plan += [("step", within()) for _ in range(5)]
    plan += [("step", torch.randint(0, rows, (rows - 2,), generator=gen))]
    tokens = torch.randint(0, K, (len(plan), rows), generator=gen)
    runs, shared = [], []
    for share in (0, fam):
        state = prior.start(rows, classes, share)
        out, state = prior.step(None, state)
        outs = [out]
        for t, (kind, arg) in enumerate(plan):
            if kind == "prime":
                out, state = prior.prime(arg, state)
            else:
                state = prior.reorder(state, arg)
                out, state = prior.step(tokens[t, : state.batch], state)
            outs.append(out)
            shared.append(state.cache.buffer.shared if share and t < 30 else 0)
        runs.append(outs)
    assert max(shared) >= 16  # the past was shared for most of the first 30 steps
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kv_heads", [0, 1])
def test_prime_of_families_with_a_common_start_equals_unshared(kv_heads):
    """A window's first feed (a new context window of beam search), whose rows begin with the
    same tokens within every family, runs that common start once per family into the shared
    past; the log-probs of the feed and of the steps and reorders after it equal those of
    rows that each hold their whole past, and of the ``transformers`` path."""

    prior = TransformerPrior(TransformerPriorConfig(
        vocab_size=K, context_length=60, class_names=("a", "b"), width=32, layers=2, heads=4,
        kv_heads=kv_heads)).eval()
    gen = torch.Generator().manual_seed(3)
    fam, families, n, common = 4, 2, 30, 22
    rows = fam * families
    classes = torch.tensor([0, 1]).repeat_interleave(fam)
    window = torch.randint(0, K, (families, n), generator=gen).repeat_interleave(fam, 0)
    window[:, common:] = torch.randint(0, K, (rows, n - common), generator=gen)
    window[1, common] = (window[0, common] + 1) % K  # the first difference is at ``common``
    base = torch.arange(families).repeat_interleave(fam) * fam
    steps = [(base + torch.randint(0, fam, (rows,), generator=gen),
              torch.randint(0, K, (rows,), generator=gen)) for _ in range(12)]
    runs, shared = [], []
    for fast, share in ((True, fam), (True, 0), (False, fam)):
        prior.fast_decoding = fast
        state = prior.start(rows, classes, share)
        out, state = prior.prime(window, state)
        if fast:
            shared.append(state.cache.buffer.shared)
        outs = [out]
        for index, tokens in steps:
            state = prior.reorder(state, index)
            out, state = prior.step(tokens, state)
            outs.append(out)
        runs.append(outs)
    assert shared == [1 + common, 0]  # the start token and the common tokens, once per family
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # A common start shorter than the threshold: every row on its own.
    prior.fast_decoding = True
    short = window[:, common - prior.step_options.shared_feed_min + 2:]  # 1 + 14 common
    _, state = prior.prime(short, prior.start(rows, classes, fam))
    assert state.cache.buffer.shared == 0
    # Rows equal within their family all along: all but the last position are shared.
    same = window[::fam].repeat_interleave(fam, 0)
    outs = []
    for share in (fam, 0):
        out, state = prior.prime(same, prior.start(rows, classes, share))
        outs.append(out)
        assert state.cache.buffer.shared == (n if share else 0)  # start token + n - 1
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


def step_on_and_off(monkeypatch, module, getter: str, flag: str, prior: TransformerPrior,
                    share: int, seed: int):
    """Replay one plan on 2 families of 4 rows (classes 0 and 1): a prime, then 30 reorders
    to parents among rows 0 and 1 of each family, with steps (every third with the parents'
    tokens, so that rows with equal pasts come), once with ``flag`` on and once
    off (``flag``: a field of the prior's :class:`StepOptions`, the others as the prior
    has them), counting the calls of the step ``module.<getter>()`` gives (the step the flag
    switches; asking for it without calling it, as a stepper's constructor does, is not
    counted).

    Returns the log-probs of both runs, the calls, the steps per run, and after each step
    the buffer's shared positions (of its slowest family, and of its fastest) and its
    computed rows (where equal pasts are followed).
    """

    gen = torch.Generator().manual_seed(seed)
    fam, families = 4, 2
    rows = fam * families
    classes = torch.tensor([0, 1]).repeat_interleave(fam)
    base = torch.arange(families).repeat_interleave(fam) * fam
    codes = torch.randint(0, K, (rows, 3), generator=gen)
    plan = [(base + torch.randint(0, 2, (rows,), generator=gen),
             torch.randint(0, K, (rows,), generator=gen)) for _ in range(30)]
    calls = []
    step = getattr(module, getter)()
    base_options = prior.step_options

    def run(*args: object) -> object:
        calls.append(1)
        return step(*args)

    def counted() -> object:
        return run

    monkeypatch.setattr(module, getter, counted)
    shared, unique = [], []

    def watch(state) -> None:
        buffer = state.cache.buffer
        fams = buffer.family_shared
        shared.append((buffer.shared, buffer.shared if fams is None else int(fams.max())))
        if buffer.twin is not None:
            unique.append(int((buffer.twin == np.arange(rows)).sum()))

    runs = []
    for on in (True, False):
        prior.step_options = replace(base_options, **{flag: on})
        runs.append(replay(prior, prior.start(rows, classes, share=share), codes, plan,
                           every=3, watch=watch))
    prior.step_options = base_options
    return runs, len(calls), len(plan), shared, unique


def step_prior(kv_heads: int, dtype: torch.dtype = torch.float32, width: int = 32,
               heads: int = 4) -> TransformerPrior:
    """The class-conditioned prior the step comparisons run (context 40, 2 layers)."""
    return TransformerPrior(TransformerPriorConfig(
        vocab_size=K, context_length=40, class_names=("a", "b"), width=width, layers=2,
        heads=heads, kv_heads=kv_heads)).eval().to(dtype)


@pytest.mark.parametrize(("dtype", "kv_heads"), [(torch.float32, 1), (torch.float32, 2),
                                             (torch.float64, 0)])
def test_scripted_step_equals_the_python_step(monkeypatch, dtype, kv_heads):
    """The per-token step compiled by TorchScript gives the Python step's log-probs bit for
    bit, through a prime, beams that coalesce (a shared past), rows with equal pasts
    (computed once) and reorders; float32 with oneDNN's packed products, float64 with the
    plain ones."""
    from priors import llama
    from priors.llama import stepper as stepper_module

    assert llama.scripted_step() is not None  # it compiles here
    prior = step_prior(kv_heads, dtype)
    prior.step_options = llama.StepOptions(native_step=False)  # (which would run instead)
    runs, calls, steps, shared, unique = step_on_and_off(
        monkeypatch, stepper_module, "scripted_step", "scripted_step", prior, share=4, seed=5)
    assert calls == steps  # the compiled step ran every step with the flag on
    assert max(least for least, _ in shared) > 0  # a shared past came
    assert min(unique) <= 4  # and rows with equal pasts
    for a, b in zip(*runs, strict=True):
        assert a.dtype == dtype
        assert torch.equal(a, b)


@pytest.mark.parametrize(("products", "share", "width", "heads"),
                         [("brgemm", 4, 64, 4), ("packed", 4, 64, 4), ("mm", 4, 64, 4),
                          ("brgemm", 0, 64, 4), ("brgemm", 4, 32, 4), ("brgemm", 4, 48, 3)])
def test_native_step_equals_the_python_step(monkeypatch, products, share, width, heads):
    """The C++ step (priors.native) gives the Python step's log-probs up to float rounding,
    through a prime, beams that coalesce (a shared past), rows with equal pasts and
    reorders (``share`` 4), or rows without families (``share`` 0, as sampling runs);
    with its products on oneDNN's batch-reduce GEMM kernel, on its packed linear and on
    torch.mm; with the attention in AVX-512 registers (4 heads of width 16, where the CPU
    has it) and in plain loops (width 8, or 3 heads); it runs at every step."""
    import shutil

    from priors import llama, native
    from priors.llama import kernels

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here")
    assert native.native_step() is not None, native.native_error()  # it builds here
    if products == "brgemm" and not kernels._brgemm_works():
        pytest.skip("no batch-reduce GEMM kernel here")
    prior = step_prior(1, width=width, heads=heads)
    prior.step_options = llama.StepOptions(packed_products=products == "packed",
                                                brgemm_products=products == "brgemm",
                                                scripted_step=False)
    runs, calls, steps, shared, unique = step_on_and_off(
        monkeypatch, native, "native_step", "native_step", prior, share=share, seed=6)
    assert calls == steps  # the native step ran every step with the flag on
    assert prior._stepper()._products == {"mm": 0, "packed": 1, "brgemm": 2}[products]
    if share:
        assert max(least for least, _ in shared) > 0  # a shared past came
        # and one family's shared past longer than the other's (read from its prefix)
        assert any(most > least for least, most in shared)
        assert min(unique) <= 4  # and rows with equal pasts
    else:
        assert max(most for _, most in shared) == 0
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def test_a_built_native_step_loads_without_the_build_tools(tmp_path):
    """Once built and loaded, the C++ step loads in a new process straight from its build
    folder: neither ``torch.utils.cpp_extension`` is imported nor ``ninja`` run; a library
    that does not load (damaged) is built again."""
    import shutil
    import subprocess
    import sys

    from priors import native

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here")
    assert native.native_step() is not None, native.native_error()
    probe = ("import sys; from priors import native; op = native.native_step(); "
             "print(op is not None, 'torch.utils.cpp_extension' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == ["True", "False"]
    # a damaged library (in a build folder of its own): not loaded but removed, with its
    # stamp, and built again (here with a compiler that fails, so the build fails fast)
    where = tmp_path / native.build_dir().name
    where.mkdir()
    (where / "lass_native_step.so").write_bytes(b"not a library")
    (where / native.STAMP).write_text("")
    env = {**os.environ, "LASS_NATIVE_DIR": str(tmp_path), "CXX": "false"}
    probe = ("from priors import native; print(native.native_step() is None, "
             "native.native_error() is not None)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True,
                          text=True, check=True, env=env)
    assert done.stdout.split() == ["True", "True"]
    assert not (where / "lass_native_step.so").exists()
    assert not (where / native.STAMP).exists()


@pytest.mark.parametrize("index", [[0, 0, 2, 3, 2, 5], [1, 1, 1, 1, 1, 1], [1, 0, 2, 3, 4, 5]])
def test_reorders_copy_the_rows_they_move(monkeypatch, index):
    """A key/value buffer's reorder gives every row the past of the row it continues, with
    the C++ row copy (a few rows moved in place, or most) and without it (the library's
    copies; rows that swap, whose sources are overwritten, always take that way)."""
    import shutil

    from priors import llama, native
    from priors.llama import kernels

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here")
    assert native.native_step() is not None, native.native_error()
    gen = torch.Generator().manual_seed(3)
    for ops in (native.loaded(), None):
        monkeypatch.setattr(kernels, "native_ops", lambda ops=ops: ops)
        buffer = llama.KVBuffer(6, 2, 1, 12, 8, torch.float32, torch.device("cpu"))
        buffer.data.copy_(torch.randn(buffer.data.shape, generator=gen))
        buffer.length = 9
        before = buffer.data[..., :9, :].clone()
        buffer.reorder(torch.tensor(index))
        assert torch.equal(buffer.data[..., :9, :], before[index])


def test_rows_with_equal_pasts_equal_the_library_path():
    """Beams whose pasts are equal (they differ only in the other source) are computed once by
    the stepper; every row's log-probs still equal those of the ``transformers`` path, which
    computes each row on its own."""
    prior = tiny(kv_heads=1, context=40)
    gen = torch.Generator().manual_seed(2)
    rows = 8
    plan = [(torch.randint(0, 3, (rows,), generator=gen),  # parents among rows 0..2
             torch.randint(0, K, (3,), generator=gen)) for _ in range(20)]
    runs, unique = [], []
    for fast in (True, False):
        prior.fast_decoding = fast
        state = prior.start(rows, share=rows)
        out, state = prior.step(None, state)
        outs = [out]
        for index, tokens in plan:
            state = prior.reorder(state, index)
            out, state = prior.step(tokens[index], state)  # a token per parent: equal pasts
            outs.append(out)
            if fast:
                twin = state.cache.buffer.twin
                unique.append(int((twin == np.arange(rows)).sum()))
        runs.append(outs)
    assert max(unique) <= 3  # computed once per distinct past
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_stepper_is_reused_until_a_weight_changes():
    """Each context window starts anew, but the folded and packed weights are made once; a
    weight written in place (a training step) or replaced makes them again."""
    prior = tiny(kv_heads=1)
    codes = torch.randint(0, K, (2, 6))
    first = prior.start(2).cache.stepper
    assert prior.start(3).cache.stepper is first
    with torch.no_grad():
        prior.model.model.embed_tokens.weight.mul_(1.5)
    remade = prior.start(2).cache.stepper
    assert remade is not first
    twin = copy.deepcopy(prior).double()  # a copy (packed weights do not copy) makes its own
    assert twin.start(2).cache.stepper is not remade
    a, _ = prior.prime(codes, prior.start(2))
    prior.fast_decoding = False  # the library path reads the weights as they are now
    b, _ = prior.prime(codes, prior.start(2))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_prime_equals_stepping():
    prior = tiny()
    codes = torch.randint(0, K, (2, 7))
    a, _ = prior.prime(codes, prior.start(2))
    state = prior.start(2)
    _, state = prior.step(None, state)
    for t in range(7):
        b, state = prior.step(codes[:, t], state)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_class_tokens_condition_the_prior():
    prior = tiny(classes=("drums", "bass"))
    codes = torch.randint(0, K, (2, 8))
    drums = prior.token_log_probs(codes, torch.tensor([0, 0]))
    bass = prior.token_log_probs(codes, torch.tensor([1, 1]))
    assert not torch.allclose(drums, bass)
    torch.testing.assert_close(stepwise(prior, codes, torch.tensor([1, 1])), bass, atol=1e-5,
                               rtol=0)
    with pytest.raises(PriorError, match=r"class labels must lie in \[0, 2\)"):
        prior.start(1, torch.tensor([2]))


def test_context_limit_and_bad_codes():
    prior = tiny(context=4)
    state = prior.start(1)
    _, state = prior.prime(torch.zeros(1, 4, dtype=torch.long), state)
    with pytest.raises(PriorError, match="context full"):
        prior.step(torch.zeros(1, dtype=torch.long), state)
    with pytest.raises(PriorError, match=r"codes must lie in \[0, 16\)"):
        prior.token_log_probs(torch.tensor([[0, 16]]))


def test_save_load_round_trip(tmp_path):
    prior = tiny("gpt2", classes=("drums",))
    prior.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "prior.json").read_text())
    assert meta["class"] == "TransformerPrior"
    assert meta["vocab_size"] == K
    again = load_prior(tmp_path / "p")
    codes = torch.randint(0, K, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(again.token_log_probs(codes), prior.token_log_probs(codes),
                                   rtol=0, atol=0)
    torch.testing.assert_close(stepwise(again, codes), stepwise(prior, codes), rtol=0, atol=0)


@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 0), (4, 1)])
def test_torch_backend_equals_transformers(tmp_path, heads, kv_heads):
    """A Llama prior loaded without ``transformers`` (TorchLlama) gives the library's
    teacher-forced log-probs and the same cached steps; it saves files the library reads
    and converts back to the library's network."""
    torch.manual_seed(1)
    prior = TransformerPrior(TransformerPriorConfig(
        vocab_size=K, context_length=12, class_names=("a", "b"), width=32, layers=2,
        heads=heads, kv_heads=kv_heads)).eval()
    prior.save(tmp_path / "p")
    lib = load_prior(tmp_path / "p", backend="transformers")
    plain = load_prior(tmp_path / "p")
    assert type(lib.model).__name__ == "LlamaForCausalLM"
    assert type(plain.model).__name__ == "TorchLlama"
    codes = torch.randint(0, K, (3, 12))
    classes = torch.tensor([0, 1, 1])
    with torch.no_grad():
        expected = lib.token_log_probs(codes, classes)
        torch.testing.assert_close(plain.token_log_probs(codes, classes), expected,
                                   atol=1e-5, rtol=0)
    lib.fast_decoding = False  # the library's cache, against the stepper on TorchLlama
    torch.testing.assert_close(stepwise(plain, codes, classes), stepwise(lib, codes, classes),
                               atol=1e-5, rtol=0)
    plain.fast_decoding = False
    with pytest.raises(PriorError, match="loaded without transformers"):
        plain.start(1)
    plain.fast_decoding = True
    plain.save(tmp_path / "q")  # written by TorchLlama, read by transformers
    again = load_prior(tmp_path / "q", backend="transformers")
    back = plain.with_transformers()
    assert type(back.model).__name__ == "LlamaForCausalLM"
    for other in (again, back):
        for (name, a), (_, b) in zip(sorted(lib.model.state_dict().items()),
                                     sorted(other.model.state_dict().items()), strict=True):
            assert torch.equal(a, b), name
    with pytest.raises(PriorError, match="unknown backend"):
        load_prior(tmp_path / "p", backend="onnx")


def test_auto_backend_falls_back_for_a_llama_the_torch_network_does_not_compute(tmp_path):
    tiny().save(tmp_path / "p")
    cfg_path = tmp_path / "p" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hidden_act"] = "gelu"  # the same weights, another network
    cfg_path.write_text(json.dumps(cfg))
    assert type(load_prior(tmp_path / "p").model).__name__ == "LlamaForCausalLM"
    with pytest.raises(PriorError, match="not a Llama network TorchLlama computes"):
        load_prior(tmp_path / "p", backend="torch")


def test_separation_loads_without_transformers(tmp_path):
    """Loading a Llama prior and stepping it never imports ``transformers`` (its import is
    most of a command's start-up time)."""
    import subprocess
    import sys

    tiny(kv_heads=1).save(tmp_path / "p")
    code = ("import sys; import torch; import lass.cli.separate; from priors import load_prior; "
            f"p = load_prior({str(tmp_path / 'p')!r}); s = p.start(2); lp, s = p.step(None, s); "
            "lp, s = p.step(torch.tensor([1, 2]), s); "
            "assert 'transformers' not in sys.modules, 'imported'; print(tuple(lp.shape))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"(2, {K})"


def test_wrong_codec_and_corrupt_files(tmp_path):
    prior = tiny()
    with pytest.raises(PriorError, match="models 16 tokens but the codec has 1024 codes"):
        prior.check_codebook(1024)
    prior.check_codebook(K)
    with pytest.raises(PriorError, match="prior directory not found"):
        load_prior(tmp_path / "nothing")
    prior.save(tmp_path / "p")
    weights = next((tmp_path / "p").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:64])
    for backend in ("auto", "transformers"):
        with pytest.raises(PriorError, match="cannot load the network"):
            load_prior(tmp_path / "p", backend=backend)
    prior.save(tmp_path / "r")  # weights that do not fit the config
    cfg_path = tmp_path / "r" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["intermediate_size"] += 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PriorError, match="cannot load the network"):
        load_prior(tmp_path / "r")


def test_baselines_against_direct_computation():
    import numpy as np

    from priors.baselines import baseline_bits

    rng = np.random.default_rng(0)
    # A Markov chain: next = prev + 1 (mod 8) with prob 0.9: a bigram model wins clearly.
    def chain(n):
        out = [int(rng.integers(8))]
        for _ in range(n - 1):
            out.append((out[-1] + 1) % 8 if rng.random() < 0.9 else int(rng.integers(8)))
        return np.array(out)

    train, valid = [chain(5000), chain(3000)], [chain(2000)]
    bits = baseline_bits(train, valid, 8)
    assert bits.tokens == 2000
    assert bits.unigram == pytest.approx(3.0, abs=0.02)  # nearly uniform over 8 tokens
    assert bits.unigram_entropy <= bits.unigram + 1e-9
    # True conditional entropy: p = 0.9 + 0.1/8 on the successor, 0.1/8 elsewhere.
    p_hit, p_miss = 0.9 + 0.1 / 8, 0.1 / 8
    h = -(p_hit * np.log2(p_hit) + 7 * p_miss * np.log2(p_miss))
    assert bits.bigram == pytest.approx(h, abs=0.05)


def test_token_windows_are_deterministic_and_in_range():
    import numpy as np

    from priors.train import TokenWindows

    streams = [np.arange(10), np.arange(100, 105), np.arange(200, 230)]
    win = TokenWindows(streams, 8, classes=[0, 1, 1])
    assert len(win.streams) == 2  # the 5-token stream is too short
    codes, classes = win.batch(np.random.default_rng(1), 32)
    again, _ = win.batch(np.random.default_rng(1), 32)
    assert torch.equal(codes, again)
    assert codes.shape == (32, 8)
    assert torch.all(codes[:, 1:] - codes[:, :-1] == 1)  # contiguous windows
    assert classes is not None
    assert set(classes.tolist()) <= {0, 1}
    assert torch.all((codes[:, 0] >= 200) == (classes == 1))


def test_prior_training_lowers_bits_and_resumes_exactly(tmp_path):
    import numpy as np

    from priors.train import PriorTrainConfig, PriorTrainer, TokenWindows

    rng = np.random.default_rng(0)
    streams = [np.cumsum(rng.integers(1, 3, 400)) % K for _ in range(4)]
    win = TokenWindows(streams, 12)
    cfg = PriorTrainConfig(steps=100, batch=8, lr=3e-3, warmup=5)
    trainer = PriorTrainer(tiny(), cfg)
    valid, _ = win.evenly(16)
    before = trainer.evaluate(valid)
    for step in range(100):
        codes, _ = win.batch(np.random.default_rng([0, step]), 8)
        trainer.train_step(codes)
    after = trainer.evaluate(valid)
    assert before > 3.5  # 4 bits: uniform over 16 tokens
    assert after < 1.8  # steps of +1 or +2: ideal (4 + 11 * 1) / 12 = 1.25 bits
    # Resume: 3 + 3 steps equal 6 uninterrupted steps.
    straight = PriorTrainer(tiny(), cfg)
    half = PriorTrainer(tiny(), cfg)
    for step in range(6):
        codes, _ = win.batch(np.random.default_rng([1, step]), 8)
        straight.train_step(codes)
        if step < 3:
            half.train_step(codes)
    half.save(tmp_path / "run")
    resumed = PriorTrainer.resume(tmp_path / "run", cfg)
    for step in range(3, 6):
        codes, _ = win.batch(np.random.default_rng([1, step]), 8)
        resumed.train_step(codes)
    for (name, a), (_, b) in zip(straight.prior.state_dict().items(),
                                 resumed.prior.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # A prior loaded for separation (the torch network) trains too: the trainer optimises
    # the library network it converts to, and one step moves its weights.
    from priors import llama

    tiny().save(tmp_path / "saved")
    loaded = load_prior(tmp_path / "saved")
    assert isinstance(loaded.model, llama.TorchLlama)
    from_loaded = PriorTrainer(loaded, cfg)
    start = {k: v.clone() for k, v in from_loaded.prior.state_dict().items()}
    from_loaded.train_step(win.batch(np.random.default_rng(2), 8)[0])
    assert any(not torch.equal(start[k], v) for k, v in from_loaded.prior.state_dict().items())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_with_classes_adds_sources_and_keeps_the_old_predictions(arch, tmp_path):
    torch.manual_seed(0)
    prior = TransformerPrior(TransformerPriorConfig(
        vocab_size=K, context_length=16, class_names=("drums", "bass"), arch=arch, width=32,
        layers=2, heads=2)).eval()
    grown = prior.with_classes(("drums", "bass", "other")).eval()
    assert grown.config.class_names == ("drums", "bass", "other")
    codes = torch.randint(0, K, (4, 10))
    for c in (0, 1):
        cls = torch.full((4,), c, dtype=torch.long)
        torch.testing.assert_close(grown.token_log_probs(codes, cls),
                                   prior.token_log_probs(codes, cls))
    emb = grown.model.get_input_embeddings().weight
    torch.testing.assert_close(emb[K + 3], emb[K + 1: K + 3].mean(0))
    new = grown.token_log_probs(codes, torch.full((4,), 2, dtype=torch.long))
    assert new.shape == (4, 10)
    assert torch.isfinite(new).all()
    grown.save(tmp_path / "grown")  # saves and loads like any prior
    again = load_prior(tmp_path / "grown")
    torch.testing.assert_close(again.token_log_probs(codes, torch.full((4,), 2)), new)
    for bad in (("bass", "drums", "other"), ("drums", "bass"), ("drums", "bass", "bass")):
        with pytest.raises(PriorError):
            prior.with_classes(bad)
