"""The server's rule check and default pass as compiled kernels (fedrec.optim.fused; issue 14 item 2):
the same verdicts as the eager check for every registered optimizer rule, on honest and forged rows;
the default rows of the eager pass (the state tables bit for bit, theta to its last rounding), one
kernel for every round; an eager fallback with one warning where compilation fails; and when a run
compiles (``run.compile``)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedrec.optim.fused as fused_mod
from fedrec.federation.simulation import COMPILE_ROUNDS, fuse_verification
from fedrec.optim import RULES, adam_check, adam_pass, make_rule
from fedrec.optim.fused import DefaultPass, RuleCheck, compiler_available, row_checks

needs_compiler = pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for torch.compile")


def problem(rule, seed: int, K: int = 40, d: int = 8, n_rows: int = 30):
    """Global tables after a few steps, ``K`` listed rows (repeats across clients, as in a round), the
    honest uploads at round ``t``, then forged rows: scaled theta, a negative state, a NaN, a huge
    gradient."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_rows, d, generator=gen)
    tables = {"theta": theta, **rule.init_state(theta)}
    for t in range(1, 4):  # a few steps so the states are not zero
        prev = dict(tables)
        tables = rule.client_step(prev, torch.randn(n_rows, d, generator=gen), t)
    t = 4
    rows = torch.randint(0, n_rows, (K,), generator=gen)
    prev = {k: x[rows] for k, x in tables.items()}
    up = rule.client_step(prev, 0.5 * torch.randn(K, d, generator=gen), t)
    up = {k: x.clone() for k, x in up.items()}
    up["theta"][0] *= 1.01  # breaks the rule's last equation
    up["theta"][1, 3] = float("nan")
    up["theta"][2] = prev["theta"][2] - 1e30  # a step no bounded gradient explains
    for name in rule.nonnegative:
        up[name][3, 0] = -1.0
    if rule.state_names:  # an implied gradient of ~1e6 in one coordinate
        up[rule.state_names[0]][4, 1] += 1e6
    return tables, rows, up, t


@needs_compiler
@pytest.mark.parametrize("name", list(RULES))
def test_compiled_check_gives_the_eager_verdicts(name):
    rule = make_rule(name)
    check = RuleCheck(rule, fused=True, native=False)
    for seed in range(3):
        tables, rows, up, t = problem(rule, seed, K=40 + 7 * seed)
        for verify in (True, False):
            got = check(tables, rows, up, t, 1e4, verify)
            want = row_checks(rule, tables, rows, up, t, 1e4, verify)
            assert check.mode == "compiled"
            for g, w in zip(got[:3], want[:3], strict=True):
                assert torch.equal(g, w)
            torch.testing.assert_close(got[3], want[3], rtol=1e-6, atol=0, equal_nan=True)  # the gradients
            domain, broken, too_big, _ = want
            if verify:  # the forged rows are caught at all (a NaN theta: by validate's finite check too)
                assert bool(broken[1] | too_big[1]) and bool(broken[2] | too_big[2])
                assert bool(broken[0]) == bool(rule.state_names)  # plain SGD: any theta is some gradient
            if rule.nonnegative:
                assert bool(domain[3])
            assert not bool((domain | broken | too_big)[5:].any())  # honest rows pass


needs_cc = pytest.mark.skipif(adam_check.native() is None, reason="no C compiler for the C check")


@needs_cc
@given(
    seed=st.integers(0, 10**6),
    K=st.integers(1, 90),
    d=st.sampled_from([4, 5, 16, 64, 67]),
    max_grad=st.sampled_from([0.1, 0.3, 1.0, 1e4, 3.4e38]),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e3]),
)
@settings(max_examples=60, deadline=None)
def test_the_c_check_of_adam_is_the_eager_check_bit_for_bit(seed, K, d, max_grad, scale):
    """One C loop (fedrec.optim.adam_check) against the eager function it replaces: the same float64
    operations in the same order, so the gradients are bit-identical and every verdict equal, on
    honest rows at several scales (subnormal moments included), the forged rows of ``problem``, signed
    zeros, infinities and bounds that float32 does not hold exactly (0.1, 0.3)."""
    rule = make_rule("adam")
    tables, rows, up, t = problem(rule, seed, K=max(K, 6), d=d)
    gen = torch.Generator().manual_seed(seed)
    up = {k: x.clone() for k, x in up.items()}
    up["m"] = up["m"] * scale
    pick = torch.randint(0, up["m"].shape[0], (3,), generator=gen)
    up["m"][pick[0]] = -0.0
    up["v"][pick[1], 0] = float("inf")
    up["theta"][pick[2], -1] = float("-inf")
    check = RuleCheck(rule, fused=False)
    for verify in (True, False):
        got = check(tables, rows, up, t, max_grad, verify)
        assert check.mode == "native"
        want = row_checks(rule, tables, rows, up, t, max_grad, verify)
        for g, w in zip(got[:3], want[:3], strict=True):
            assert torch.equal(g, w)
        assert torch.equal(got[3].view(torch.int32), want[3].view(torch.int32))  # NaN and -0 bits too


@needs_cc
def test_the_c_check_refuses_a_row_outside_the_table_and_leaves_other_rules_alone():
    rule = make_rule("adam")
    tables, rows, up, t = problem(rule, 0)
    for bad in (30, -1):
        rows_bad = rows.clone()
        rows_bad[5] = bad
        with pytest.raises(IndexError):
            RuleCheck(rule, fused=False)(tables, rows_bad, up, t, 1e4, True)
    for name in RULES:
        if name != "adam":
            other = make_rule(name)
            check = RuleCheck(other, fused=False)
            check(*problem(other, 0)[:3], 4, 1e4, True)
            assert check.mode == "eager"
    f64 = {k: x.double() for k, x in tables.items()}
    assert not adam_check.applies(rule, f64, rows, {k: x.double() for k, x in up.items()})


@pytest.mark.parametrize(
    "error", [RuntimeError("inductor: no working compiler\nmore text"), AssertionError(), MemoryError()]
)
def test_a_failing_compiler_falls_back_to_the_eager_check_with_one_warning(monkeypatch, error):
    rule = make_rule("adam")
    monkeypatch.setattr(fused_mod, "compiler_available", lambda: True)

    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise error  # an inductor assert has no message at all

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    check = RuleCheck(rule, fused=True, native=False)
    tables, rows, up, t = problem(rule, 0)
    with pytest.warns(RuntimeWarning, match="fused rule check unavailable"):
        got = check(tables, rows, up, t, 1e4, True)
    assert check.mode == f"eager ({type(error).__name__})"
    want = row_checks(rule, tables, rows, up, t, 1e4, True)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    again = check(tables, rows, up, t, 1e4, True)  # no second warning, no second try
    assert all(torch.equal(g, w) for g, w in zip(again, want, strict=True))


def test_unfused_or_tiny_batches_never_compile(monkeypatch):
    def no_compile(fn, **kw):
        raise AssertionError("torch.compile called")

    monkeypatch.setattr(torch, "compile", no_compile)
    rule = make_rule("adam")
    tables, rows, up, t = problem(rule, 0)
    assert RuleCheck(rule, fused=False)(tables, rows, up, t, 1e4, True)[0].shape == rows.shape
    one = {k: x[:1] for k, x in up.items()}  # one row: sizes 0 and 1 would recompile a dynamic kernel
    monkeypatch.setattr(fused_mod, "compiler_available", lambda: True)
    assert RuleCheck(rule, fused=True)(tables, rows[:1], one, t, 1e4, True)[0].shape == (1,)


def test_when_a_run_compiles(monkeypatch):
    monkeypatch.setattr("fedrec.federation.simulation.compiler_available", lambda: True)
    assert not fuse_verification(None, COMPILE_ROUNDS - 1)
    assert fuse_verification(None, COMPILE_ROUNDS)
    assert fuse_verification(True, 1)
    assert not fuse_verification(False, 10**6)
    monkeypatch.setattr("fedrec.federation.simulation.compiler_available", lambda: False)
    monkeypatch.setattr(fused_mod, "compiler_available", lambda: False)
    assert not fuse_verification(None, 10**6)
    assert fuse_verification(True, 1)  # asked for: RuleCheck finds no compiler and says so
    assert RuleCheck(make_rule("adam"), fused=True).mode == "eager (no C++ compiler or dynamo)"


def test_which_configs_compile(monkeypatch):
    from fedrec.config import Config
    from fedrec.federation.simulation import compiles

    monkeypatch.setattr("fedrec.federation.simulation.compiler_available", lambda: True)
    cfg = Config()
    cfg.train.mode, cfg.federated.rounds = "federated", None
    cfg.federated.fraction, cfg.federated.epochs = 0.5, COMPILE_ROUNDS / 2  # epochs / e rounds
    assert compiles(cfg)
    cfg.federated.epochs = (COMPILE_ROUNDS - 1) / 2
    assert not compiles(cfg)
    cfg.run.compile = True
    assert compiles(cfg)
    cfg.train.mode = "centralized"  # no server, no rule check
    assert not compiles(cfg)


@needs_compiler
@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_default_pass_gives_the_eager_default_rows(name, dtype):
    """State tables bit for bit; theta within one rounding of theta and a few of the step ``s`` (eager
    torch fuses ``theta_bar - eta_t s`` into one multiply-add, and its vectorised square root is not
    always correctly rounded; the compiled loop rounds each operation): ``2u |theta| + 6u |s|``. One
    kernel for all rounds: the step size is an input, not a constant."""
    import torch._dynamo

    rule = make_rule(name)
    pass_ = DefaultPass(rule, fused=True, native=False)  # inductor's kernel (the C pass: below)
    u = torch.finfo(dtype).eps / 2
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    for seed in range(6):  # theta near the step too (seed 2 at this shape: a few ulps of theta)
        gen = torch.Generator().manual_seed(seed)
        theta = torch.randn(50, 8, generator=gen, dtype=torch.float64).to(dtype)
        tables = {"theta": theta, **rule.init_state(theta)}
        for t in range(1, 4):
            tables = rule.client_step(dict(tables), torch.randn(50, 8, generator=gen, dtype=dtype), t)
        for t in range(4, 10):
            got, want = pass_(tables, t), rule.default_rows(tables, t)
            assert pass_.mode == (
                "compiled" if name == "adam" else "eager (a copy or one pass: nothing to fuse)"
            )
            assert set(got) == set(want) and all(got[k].dtype == dtype for k in got)
            for k in rule.state_names:
                assert torch.equal(got[k], want[k]), k
            step = (want["theta"] - tables["theta"]).abs()
            gap = (got["theta"] - want["theta"]).abs()
            assert bool((gap <= 2 * u * want["theta"].abs() + 6 * u * step).all()), float(gap.max())
            tables = want
    if name == "adam":  # one compiled frame for 36 rounds of one table shape
        assert torch._dynamo.utils.counters["frames"]["ok"] - frames == 1


def test_a_failing_compiler_falls_back_to_the_eager_default_pass_with_one_warning(monkeypatch):
    rule = make_rule("adam")
    monkeypatch.setattr(fused_mod, "compiler_available", lambda: True)

    calls = []

    def broken_compile(fn, **kw):
        def run(*a, **k):
            calls.append(1)
            raise RuntimeError("inductor: no working compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    pass_ = DefaultPass(rule, fused=True, native=False)  # inductor's way (the C pass compiles no kernel)
    tables, _, _, t = problem(rule, 0)
    with pytest.warns(RuntimeWarning, match="fused default pass unavailable"):
        got = pass_(tables, t)
    assert pass_.mode == "eager (RuntimeError)"
    want = rule.default_rows(tables, t)
    assert all(torch.equal(got[k], want[k]) for k in want)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        again = pass_(tables, t)
    assert all(torch.equal(again[k], want[k]) for k in want)
    assert len(calls) == 1  # no second try


@needs_compiler
def test_a_run_with_the_compiled_check_is_the_eager_run(monkeypatch):
    """Bit for bit while only the check is compiled (the default pass kept eager), and with the C check
    of Adam (fedrec.optim.adam_check); with the default pass compiled too, the same verdicts and tables
    equal to float round-off."""
    import fedrec.federation.server as server_mod
    from fedrec.config import Config
    from fedrec.data import split_per_user, synthetic
    from fedrec.federation.simulation import FederatedRun
    from fedrec.optim.fused import default_pass, rule_check

    split = split_per_user(synthetic(60, 40, seed=1), seed=0)
    native = adam_check.native
    monkeypatch.setattr(adam_check, "native", lambda: None)  # the torch ways first
    rule_check.cache_clear()  # a check an earlier test ran in C says so in its mode

    def run_of(compiled: bool) -> FederatedRun:
        cfg = Config()
        cfg.model.dim, cfg.federated.fraction, cfg.run.compile = 8, 0.3, compiled
        cfg.attack.name, cfg.attack.fraction, cfg.defense.name = "alie", 0.3, "a-rfrs"
        run = FederatedRun.create(cfg, split, torch.device("cpu"))
        for _ in range(4):
            run.step()
        return run

    eager, fused = run_of(False), run_of(True)
    want_pass = "native" if adam_pass.native() is not None else "compiled"
    assert default_pass(fused.rule, fused.limits.fused).mode == want_pass
    torch.testing.assert_close(fused.server.theta, eager.server.theta, rtol=1e-5, atol=1e-7)
    assert torch.equal(eager.records["reason"], fused.records["reason"])
    monkeypatch.setattr(server_mod, "default_pass", lambda rule, fused: DefaultPass(rule, False))
    eager, fused = run_of(False), run_of(True)
    for run, mode in ((eager, "eager"), (fused, "compiled")):
        assert rule_check(run.rule, run.limits.fused).mode == mode
    monkeypatch.setattr(adam_check, "native", native)  # the C check, where there is a compiler
    c_loop = run_of(False)
    if native() is not None:
        assert rule_check(c_loop.rule, c_loop.limits.fused).mode == "native"
    for other in (fused, c_loop):
        assert torch.equal(eager.server.theta, other.server.theta)
        for k in eager.server.state:
            assert torch.equal(eager.server.state[k], other.server.state[k])
        assert torch.equal(eager.records["reason"], other.records["reason"])


@needs_cc
def test_the_c_check_refuses_an_overflowing_step_as_the_eager_check_does():
    """A step size so large that ``eta_t m / sqrt(v + eps)`` overflows float64: the error and its
    tolerance are both infinite, eager's ratio is NaN (broken), and so is the C loop's verdict."""
    rule = make_rule("adam", eta=1e300)
    theta = torch.zeros(3, 4)
    tables = {"theta": theta, **rule.init_state(theta)}
    rows = torch.arange(3)
    # g = 1e10 from zero moments: m = (1 - b1) g, v = (1 - b2) g^2; theta unmoved, the implied step inf
    up = {"theta": theta.clone(), "m": torch.full((3, 4), 1e9), "v": torch.full((3, 4), 1e17)}
    want = row_checks(rule, tables, rows, up, 1, 3.4e38, True)
    got = RuleCheck(rule, fused=False)(tables, rows, up, 1, 3.4e38, True)
    assert bool(want[1].all())
    assert all(torch.equal(g, w) for g, w in zip(got[:3], want[:3], strict=True))


def test_the_c_check_applies_only_to_inputs_it_can_read():
    """Exactly Adam, tables and uploads of one shape each, d > 0, integer row ids [K] on the CPU."""
    rule = make_rule("adam")
    tables, rows, up, _ = problem(rule, 0)
    assert adam_check.applies(rule, tables, rows, up) == (adam_check.native() is not None)
    short = {**tables, "m": tables["m"][:-1]}
    assert not adam_check.applies(rule, short, rows, up)
    assert not adam_check.applies(rule, tables, rows > 3, up)  # a mask is not row ids
    assert not adam_check.applies(rule, tables, rows[:, None], up)
    assert not adam_check.applies(rule, tables, rows.double(), up)
    empty = {k: x[:, :0] for k, x in tables.items()}
    assert not adam_check.applies(rule, empty, rows, {k: x[:, :0] for k, x in up.items()})

    class Custom(type(rule)):
        pass

    assert not adam_check.applies(Custom(), tables, rows, up)


needs_cc = pytest.mark.skipif(adam_pass.native() is None, reason="no C compiler for the C default pass")


@needs_compiler
@needs_cc
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_c_default_pass_is_the_compiled_kernel_bit_for_bit(dtype, stream, monkeypatch):
    """fedrec.optim.adam_pass: theta, m and v equal inductor's kernel's bit for bit, round after round
    (the step size an input), on rows near the step, moments at +0 and -0, subnormal and huge moments,
    row counts that are no multiple of a vector or of the streamed chunk and a non-contiguous table;
    written with plain and with streaming stores; mode ``native``."""
    monkeypatch.setattr(adam_pass, "STREAM_BYTES", 0 if stream else 1 << 62)
    rule = make_rule("adam")
    c_pass, kernel = DefaultPass(rule, fused=True), DefaultPass(rule, fused=True, native=False)
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    for seed, (n_rows, d) in enumerate([(37, 8), (5, 67), (300, 64), (1001, 5)]):
        gen = torch.Generator().manual_seed(seed)
        theta = torch.randn(n_rows, d, generator=gen, dtype=torch.float64).to(dtype)
        tables = {"theta": theta, **rule.init_state(theta)}
        for t in range(1, 4):
            tables = rule.client_step(dict(tables), torch.randn(n_rows, d, generator=gen, dtype=dtype), t)
        tiny = torch.finfo(dtype).tiny
        tables["m"][0, :4] = torch.tensor([0.0, -0.0, tiny / 4, -1e30], dtype=dtype)
        tables["v"][0, :4] = torch.tensor([0.0, 0.0, tiny / 8, 1e30], dtype=dtype)
        tables["theta"][1] = 1e-3 * tables["m"][1]
        for t in range(4, 9):
            got, want = c_pass(tables, t), kernel(tables, t)
            assert (c_pass.mode, kernel.mode) == ("native", "compiled")
            for k in want:  # as bit patterns: -0 against +0 and NaN payloads count
                assert got[k].dtype == dtype and got[k].shape == want[k].shape
                assert torch.equal(got[k].contiguous().view(bits), want[k].contiguous().view(bits)), (k, t)
            assert all(got[k].data_ptr() != tables[k].data_ptr() for k in got)  # new tables
            tables = got
    wide = {k: x.t().contiguous().t() for k, x in tables.items()}  # column-major: the same values
    got, want = c_pass(wide, 9), kernel(tables, 9)
    assert all(torch.equal(got[k].contiguous().view(bits), want[k].contiguous().view(bits)) for k in want)


@needs_cc
def test_the_c_default_pass_only_takes_adam_itself_on_the_cpu():
    """A subclass of Adam (it may change the step), another rule, or tables of mixed dtypes or shapes
    keep the torch pass; ``native=False`` too."""
    from dataclasses import dataclass

    from fedrec.optim.adam import Adam

    @dataclass(frozen=True)
    class Louder(Adam):
        pass

    theta = torch.randn(6, 4)
    for rule in (Louder(eta=0.01), make_rule("momentum")):
        assert not adam_pass.applies(rule, {"theta": theta, **rule.init_state(theta)})
    rule = make_rule("adam")
    tables = {"theta": theta, **rule.init_state(theta)}
    assert adam_pass.applies(rule, tables)
    assert not adam_pass.applies(rule, {**tables, "m": tables["m"].double()})
    assert not adam_pass.applies(rule, {**tables, "v": tables["v"][:3]})
    assert not adam_pass.applies(rule, {**tables, "extra": theta})
    pass_ = DefaultPass(rule, fused=True, native=False)
    pass_(tables, 2)
    assert pass_.mode != "native"


def pass_then_scatter(rule, tables, t, idx, owner, w, X):
    """The two-step way the fused loop replaces: the C default pass, then the torch scatter per key."""
    out = DefaultPass(rule, fused=True)(tables, t)
    for k, D in out.items():
        D.index_add_(0, idx, (X[k] - D.index_select(0, idx)) * w[owner][:, None])
    return out


@needs_cc
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(1, 40),
    uploads=st.integers(0, 8),
    d=st.sampled_from([1, 3, 16, 64, 70]),
    specials=st.booleans(),
    double=st.booleans(),
    stream=st.booleans(),
    kept=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_the_pass_with_terms_is_the_pass_then_the_scatter_bit_for_bit(
    seed, n, uploads, d, specials, double, stream, kept
):
    """fedrec.optim.adam_pass.adam_pass_with_terms: rows listed by several uploads (their terms added in
    upload order, each from the default), rows listed by none, no uploads at all, NaN, infinities, -0
    and zero weights; float32 and float64; plain and streaming stores; only the kept owners' terms, the
    others' rows outside the table and their values NaN, unread; the inputs untouched; mode ``native``."""
    dtype = torch.float64 if double else torch.float32
    bits = torch.int64 if double else torch.int32
    rule = make_rule("adam")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, d, generator=gen, dtype=dtype)
    tables = rule.client_step(
        {"theta": theta, **rule.init_state(theta)}, torch.randn(n, d, generator=gen, dtype=dtype), 1
    )
    counts = torch.randint(0, n + 1, (uploads,), generator=gen)
    idx = (
        torch.cat([torch.randperm(n, generator=gen)[: int(c)] for c in counts])
        if uploads
        else torch.zeros(0, dtype=torch.int64)
    )
    owner = torch.repeat_interleave(torch.arange(uploads), counts)
    X = {
        k: torch.randn(idx.shape[0], d, generator=gen, dtype=dtype) * 10 ** float(j)
        for j, k in enumerate(tables)
    }
    w = torch.rand(uploads, generator=gen, dtype=dtype)
    w = w / w.sum()
    if specials and idx.numel():
        X["theta"][0, 0] = float("nan")
        X["m"][-1, -1] = float("inf")
        X["v"][0, -1] = -0.0
        w[0] = 0.0
    keep = None
    if kept and uploads:  # only these owners' terms count; the others' rows may lie outside, unread
        keep = torch.rand(uploads, generator=gen) < 0.5
        idx = torch.where(keep[owner], idx, torch.where(idx % 2 == 0, idx + 10**6, -1 - idx))
        X = {k: torch.where(keep[owner][:, None], x, float("nan")) for k, x in X.items()}
    before = {k: x.clone() for k, x in tables.items()}
    sel = slice(None) if keep is None else keep[owner]
    want = pass_then_scatter(rule, tables, 2, idx[sel], owner[sel], w, {k: x[sel] for k, x in X.items()})
    pass_ = DefaultPass(rule, fused=True)
    saved = adam_pass.STREAM_BYTES
    adam_pass.STREAM_BYTES = 0 if stream else 1 << 62  # streaming stores (rows of 8k floats) or plain
    try:
        got = pass_.with_terms(tables, 2, idx, owner, w, X, keep)
    finally:
        adam_pass.STREAM_BYTES = saved
    assert got is not None and pass_.mode == "native"
    for k in want:
        assert torch.equal(got[k].view(bits), want[k].view(bits)), k
        assert torch.equal(tables[k].view(bits), before[k].view(bits))


@needs_cc
def test_the_pass_with_terms_refuses_rows_outside_and_leaves_other_ways_alone():
    """A row or an owner outside raises before anything is written; shapes or dtypes that do not fit,
    another rule, or an unfused pass give None (the caller scatters after the pass)."""
    rule = make_rule("adam")
    theta = torch.randn(5, 4)
    tables = {"theta": theta, **rule.init_state(theta)}
    pass_ = DefaultPass(rule, fused=True)
    X = {k: torch.ones(3, 4) for k in tables}
    w = torch.tensor([0.5, 0.5])
    for idx, owner in (([0, 5, 1], [0, 0, 1]), ([0, -1, 1], [0, 0, 1]), ([0, 1, 2], [0, 0, 2])):
        with pytest.raises(IndexError):
            pass_.with_terms(tables, 2, torch.tensor(idx), torch.tensor(owner), w, X)
    ok = (torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]))
    assert pass_.with_terms(tables, 2, *ok, w.double(), X) is None
    assert pass_.with_terms(tables, 2, *ok, w, {**X, "m": X["m"].double()}) is None
    assert pass_.with_terms(tables, 2, *ok, w, {**X, "v": X["v"][:2]}) is None
    assert pass_.with_terms(tables, 2, *ok, w, {"theta": X["theta"]}) is None
    assert DefaultPass(rule, fused=False).with_terms(tables, 2, *ok, w, X) is None
    assert DefaultPass(rule, fused=True, native=False).with_terms(tables, 2, *ok, w, X) is None
    momentum = make_rule("momentum")
    assert DefaultPass(momentum, fused=True).with_terms(tables, 2, *ok, w, X) is None
    # called directly, tables that do not fit each other are refused too (nothing read past them)
    assert adam_pass.adam_pass_with_terms(rule, {**tables, "m": tables["m"].double()}, 0.1, *ok, w, X) is None
    assert adam_pass.adam_pass_with_terms(rule, {**tables, "v": tables["v"][:2]}, 0.1, *ok, w, X) is None


@needs_cc
@pytest.mark.parametrize("defense", ["none", "krum", "a-rfrs"])
def test_a_run_aggregating_in_the_fused_pass_is_the_run_that_scatters_after_it(monkeypatch, defense):
    """A compiled run's server folds the scatter into the C default pass (``DefaultPass.with_terms``,
    called by fedrec.federation.server); the run equals the one that passes and then scatters, bit for
    bit in every table and record, under gradient ascent and a defense that rejects some uploads."""
    from fedrec.config import Config
    from fedrec.data import split_per_user, synthetic
    from fedrec.federation.simulation import FederatedRun

    split = split_per_user(synthetic(80, 50, seed=2), seed=0)
    calls = []
    fold = DefaultPass.with_terms

    def counted(self, *args):
        out = fold(self, *args)
        calls.append(out is not None)
        return out

    def run_of() -> FederatedRun:
        cfg = Config()
        cfg.model.dim, cfg.federated.fraction, cfg.run.compile = 8, 0.3, True
        cfg.attack.name, cfg.attack.fraction, cfg.defense.name = "gradient-ascent", 0.3, defense
        run = FederatedRun.create(cfg, split, torch.device("cpu"))
        for _ in range(6):
            run.step()
        return run

    monkeypatch.setattr(DefaultPass, "with_terms", counted)
    folded = run_of()
    assert calls and all(calls)  # every round aggregated in the one loop
    monkeypatch.setattr(DefaultPass, "with_terms", lambda self, *args: None)
    two_steps = run_of()
    for k, x in {"theta": two_steps.server.theta, **two_steps.server.state}.items():
        y = folded.server.theta if k == "theta" else folded.server.state[k]
        assert torch.equal(x.view(torch.int32), y.view(torch.int32)), k
    for k, rec in two_steps.records.items():  # NaN where a slot has no score: equal as NaN
        torch.testing.assert_close(rec, folded.records[k], rtol=0, atol=0, equal_nan=True, msg=k)


@needs_cc
@pytest.mark.parametrize("seed", range(12))
def test_apply_decision_folds_the_accepted_uploads_as_selecting_them_would(seed):
    """fedrec.federation.server.apply_decision hands the pass the whole batch and the accepted mask; the
    state is the one of the accepted uploads selected first (``apply_decisions``) bit for bit, with
    rejected uploads whose rows lie outside the table, whose values are NaN and whose weights are not
    0, accepted ones of weight 0, float32 and float64."""
    import fedrec.federation.server as server_mod
    from fedrec.protocol import Decision, ServerState, UploadBatch

    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if seed % 2 else torch.float32
    rule = make_rule("adam")
    n_rows, d, n = 30, 8, 6
    theta = torch.randn(n_rows, d, generator=gen, dtype=dtype)
    tables = rule.client_step(
        {"theta": theta, **rule.init_state(theta)}, torch.randn(n_rows, d, generator=gen, dtype=dtype), 1
    )
    server = ServerState(tables["theta"], {"m": tables["m"], "v": tables["v"]}, 1)
    counts = torch.randint(0, 6, (n,), generator=gen)
    ptr = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    rows = torch.cat([torch.randperm(n_rows, generator=gen)[: int(c)].sort().values for c in counts])
    owner = torch.repeat_interleave(torch.arange(n), counts)
    accepted = torch.rand(n, generator=gen) < 0.6
    accepted[0] = True
    rows = torch.where(accepted[owner], rows, rows + 10**6)  # a rejected upload's rows: outside
    X = {k: torch.randn(rows.shape[0], d, generator=gen, dtype=dtype) for k in ("theta", "m", "v")}
    X = {k: torch.where(accepted[owner][:, None], x, float("nan")) for k, x in X.items()}
    X["v"] = X["v"].abs()
    weights = torch.rand(n, generator=gen, dtype=torch.float64)
    weights[1] = 0.0
    uploads = UploadBatch(torch.arange(n), ptr, rows, X["theta"], {"m": X["m"], "v": X["v"]}, counts + 1)
    decision = Decision(
        weights, accepted, torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.int64)
    )
    calls = []
    folded = server_mod._folded
    server_mod._folded = lambda *a, **k: (
        calls.append(k.get("keep", a[6] if len(a) > 6 else None)) or folded(*a, **k)
    )
    try:
        got = server_mod.apply_decision(server, uploads, decision, rule, 2, fused=True)
    finally:
        server_mod._folded = folded
    assert calls and calls[0] is accepted  # the whole batch went in, with the mask
    want = server_mod.apply_decisions(server, [(uploads, decision)], rule, 2, n_rows, fused=True)
    bits = torch.int64 if dtype == torch.float64 else torch.int32
    for k in ("theta", "m", "v"):
        a = got.theta if k == "theta" else got.state[k]
        b = want.theta if k == "theta" else want.state[k]
        assert torch.equal(a.view(bits), b.view(bits)), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(0, 50), t=st.integers(1, 500))
def test_the_theta_deltas_are_the_uploads_minus_the_c_pass_bit_for_bit(dtype, seed, K, t):
    """A defense's ``theta`` space on Adam's tables (``adam_theta_deltas``): each listed entry's upload
    minus the theta of the C default pass at its row, the pass's own operations, bit for bit; the tables
    are read, not written; not Adam, another dtype or a bad shape: None; a row outside: IndexError."""
    if adam_pass.native() is None:
        pytest.skip("no C compiler")
    gen = torch.Generator().manual_seed(seed)
    rule = make_rule("adam", eta=0.05)
    n, d = 40, 6
    tables = {
        "theta": torch.randn(n, d, generator=gen, dtype=dtype),
        "m": torch.randn(n, d, generator=gen, dtype=dtype) * 1e-2,
        "v": torch.rand(n, d, generator=gen, dtype=dtype) * 1e-4,
    }
    before = {k: x.clone() for k, x in tables.items()}
    idx = torch.randint(0, n, (K,), generator=gen)
    x = torch.randn(K, d, generator=gen, dtype=dtype)
    got = adam_pass.adam_theta_deltas(rule, tables, t, idx, x)
    D = adam_pass.adam_default_pass(rule, tables, rule.step_size(t))["theta"]
    assert torch.equal(got, x - D.index_select(0, idx))
    assert all(torch.equal(tables[k], before[k]) for k in tables)
    assert adam_pass.adam_theta_deltas(make_rule("sgd", eta=0.05), tables, t, idx, x) is None
    assert adam_pass.adam_theta_deltas(rule, tables, t, idx, x.to(torch.float16)) is None
    assert adam_pass.adam_theta_deltas(rule, tables, t, idx[:-1] if K else idx, x[:, :-1]) is None
    if K:
        bad = idx.clone()
        bad[-1] = n
        with pytest.raises(IndexError):
            adam_pass.adam_theta_deltas(rule, tables, t, bad, x)


def test_the_theta_space_is_the_torch_way_to_rounding():
    """The defenses' ``theta`` space from the C deltas equals the torch way (``default_rows`` over the
    gathered rows) to float32 rounding (the eager pass fuses its last multiply-add)."""
    from fedrec.defenses import spaces
    from fedrec.protocol import ServerState, UploadBatch

    gen = torch.Generator().manual_seed(3)
    rule = make_rule("adam", eta=0.01)
    n, d, K = 50, 8, 30
    server = ServerState(
        torch.randn(n, d, generator=gen),
        {"m": torch.randn(n, d, generator=gen) * 1e-2, "v": torch.rand(n, d, generator=gen) * 1e-4},
        t=4,
    )
    rows = torch.sort(torch.randperm(n, generator=gen)[:K]).values
    up = UploadBatch(
        client_ids=torch.tensor([0, 1]), ptr=torch.tensor([0, 12, K]), rows=rows,
        theta=torch.randn(K, d, generator=gen), state={"m": torch.zeros(K, d), "v": torch.zeros(K, d)},
        n_examples=torch.tensor([3, 4]),
    )  # fmt: skip
    got = spaces.space_vectors("theta", server, up, rule, 5).values
    prev = server.rows_at(rows)
    want = up.theta - rule.default_rows(prev, 5)["theta"]
    torch.testing.assert_close(
        got, want, rtol=0, atol=4 * torch.finfo(torch.float32).eps * want.abs().max().item()
    )
    assert not torch.equal(got, torch.zeros_like(got))
