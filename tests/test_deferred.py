"""The server's default pass deferred (``run.deferred``, fedrec.federation.deferred): a row caught up
when read equals the row the dense pass would have stepped every round, for every optimizer rule; a
deferred run is the dense run (bit for bit where both compile the pass); rounds read no whole table;
the state before a round stays readable, older ones refuse; checkpoints resume exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.attacks import ATTACKS
from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.federation import deferred as D
from fedrec.federation import replay as R
from fedrec.federation.simulation import FederatedRun
from fedrec.optim import RULES, make_rule
from fedrec.optim.fused import compiler_available

needs_compiler = pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for torch.compile")


def _tables(rule, n: int, d: int, gen: torch.Generator, dtype=torch.float32) -> dict[str, torch.Tensor]:
    theta = torch.randn(n, d, generator=gen, dtype=dtype)
    tables = {"theta": theta}
    for k in rule.state_names:
        x = torch.randn(n, d, generator=gen, dtype=dtype) * 1e-3
        tables[k] = x * x if k in rule.nonnegative else x
    return tables


def _dense(rule, tables, clock, rounds):
    """The literal schedule: pass ``p`` (round ``rounds[p - 1]``) applied to every row with fewer than
    ``p`` passes, the whole table through ``rule.default_rows`` (the dense pass's definition)."""
    out = {k: x.clone() for k, x in tables.items()}
    for p, t in enumerate(rounds, start=1):
        step = rule.default_rows(out, t)
        take = (clock < p)[:, None]
        out = {k: torch.where(take, step[k], out[k]) for k, x in out.items()}
    return out


@pytest.mark.parametrize("name", list(RULES))
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), passes=st.integers(1, 40))
def test_a_caught_up_row_is_the_dense_pass_row_for_every_rule(name, seed, passes):
    """Rows at random pass counts, caught up in two reads (some rows twice, some rows never read before
    the whole table is): each equals the dense schedule. m, v and the other rules' states bit for bit;
    Adam's theta to its step's rounding (the replay kernel multiplies by a float32 step size where the
    eager pass fuses it)."""
    rule = make_rule(name, eta=0.05) if name != "adam" else make_rule("adam", eta=0.05)
    gen = torch.Generator().manual_seed(seed)
    tables = _tables(rule, 40, 5, gen)
    rounds = list(range(3, 3 + passes))
    clock = torch.randint(0, passes + 1, (40,), generator=gen)
    want = _dense(rule, tables, clock, rounds)
    store = D.DeferredStore({k: x.clone() for k, x in tables.items()}, rule)
    for t in rounds:
        store.log_pass(t)
    store.clock = clock.clone()
    store.catch_up(torch.randint(0, 40, (15,), generator=gen), target=max(1, passes // 2))
    store.catch_up(torch.randint(0, 40, (25,), generator=gen))
    store.catch_up(None)
    for k in rule.state_names:
        assert torch.equal(store.tables[k], want[k]), k
    if name == "adam":
        torch.testing.assert_close(store.tables["theta"], want["theta"], rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(store.tables["theta"], want["theta"])
    assert bool((store.clock == passes).all())


def _replay_path(native: bool, monkeypatch) -> None:
    """The C loop (skipped where no C compiler is found) or the torch fallback."""
    if native and R.native() is None:
        pytest.skip("no C compiler")
    if not native:
        monkeypatch.setattr(R, "native", lambda: None)


@pytest.mark.parametrize("native", [True, False])
def test_frozen_rows_and_their_long_tails_are_exact(native, monkeypatch):
    """Adam rows skipped for hundreds of passes: theta stops moving once its steps fall below a quarter
    of its float spacing (checked against the literal iteration), m and v iterate every pass (the C
    loop and the torch loop give the dense bits, subnormals and zeros included); a row of +0 moments is
    a fixed point, a row of -0 moments is replayed (theta = -0 would flip sign)."""
    _replay_path(native, monkeypatch)
    rule = make_rule("adam", eta=1e-3)
    gen = torch.Generator().manual_seed(3)
    n, d, passes = 30, 16, 700
    tables = _tables(rule, n, d, gen)
    tables["m"][:4] = 0.0  # fixed points
    tables["v"][:4] = 0.0
    tables["m"][4], tables["v"][4], tables["theta"][4] = -0.0, 0.0, -0.0  # replayed: -0 - (-0) = +0
    tables["m"][5] *= 1e-30  # subnormal territory within a few passes
    tables["theta"][6] = 1e-30  # a tiny theta: a fine float spacing, frozen late
    clock = torch.zeros(n, dtype=torch.int64)
    clock[20:] = torch.randint(0, passes, (n - 20,), generator=gen)
    rounds = list(range(1, passes + 1))
    want = _dense(rule, tables, clock, rounds)
    store = D.DeferredStore({k: x.clone() for k, x in tables.items()}, rule)
    for t in rounds:
        store.log_pass(t)
    store.clock = clock.clone()
    store.catch_up(None)
    assert torch.equal(store.tables["m"], want["m"]) and torch.equal(store.tables["v"], want["v"])
    torch.testing.assert_close(store.tables["theta"], want["theta"], rtol=1e-6, atol=0)
    assert torch.equal(store.tables["theta"][:4], tables["theta"][:4])
    assert torch.equal(store.tables["theta"][4].view(torch.int32), want["theta"][4].view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_c_replay_is_the_torch_replay(dtype, monkeypatch):
    """The same operations in the same order, frozen rows, subnormals and zeros included: m and v bit
    for bit (multiplications only), theta too in float64; in float32 theta to a few roundings, because
    eager torch's float32 square root is not always correctly rounded (sqrt(1.2066997e-07) gives
    0.0003473758, the correctly rounded value is 0.00034737584; the C loop and the compiled dense pass
    round it correctly, ``test_compiled_deferred_run_is_the_compiled_dense_run_bit_for_bit``)."""
    if R.native() is None:
        pytest.skip("no C compiler")
    rule = make_rule("adam", eta=1e-3)
    gen = torch.Generator().manual_seed(0)
    n, d = 60, 9
    theta = torch.randn(n, d, generator=gen, dtype=dtype)
    m = torch.randn(n, d, generator=gen, dtype=dtype) * torch.logspace(-40, -1, d, dtype=dtype)
    v = torch.rand(n, d, generator=gen, dtype=dtype) * 1e-6
    m[0], v[0] = 0.0, 0.0
    lag = torch.randint(0, 900, (n,), generator=gen)
    first = torch.randint(0, 100, (n,), generator=gen)
    eta = torch.tensor([rule.step_size(t) for t in range(1, 1001)], dtype=dtype)
    got = R.replay(theta, m, v, lag, first, eta, rule)
    monkeypatch.setattr(R, "native", lambda: None)
    want = R.replay(theta, m, v, lag, first, eta, rule)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    if dtype == torch.float64:
        assert torch.equal(got[0], want[0])
    else:
        torch.testing.assert_close(got[0], want[0], rtol=4e-7, atol=0)


SPLIT = None


def _split():
    global SPLIT
    if SPLIT is None:
        SPLIT = split_per_user(synthetic(120, 400, seed=1, mean_items=6), seed=0)
    return SPLIT


def _run(deferred: bool | None, compiled: bool, rounds: int, **keys) -> FederatedRun:
    cfg = Config()
    cfg.model.dim, cfg.federated.fraction, cfg.federated.rounds = 8, 0.05, 400
    cfg.run.compile, cfg.run.deferred = compiled, deferred
    for k, v in keys.items():
        cfg.set(k, v)
    run = FederatedRun.create(cfg, _split(), torch.device("cpu"))
    for _ in range(rounds):
        run.step()
    return run


CASES = {
    "none": {},
    "a-rfrs under alie": {"attack.name": "alie", "attack.fraction": 0.3, "defense.name": "a-rfrs"},
    "median under gradient ascent": {
        "attack.name": "gradient-ascent",
        "attack.fraction": 0.3,
        "defense.name": "grad-median",
    },
    "camouflage, krum": {"attack.name": "camouflage", "attack.fraction": 0.3, "defense.name": "krum"},
    "mf": {"model.name": "mf"},
    "momentum": {"train.optimizer": "momentum"},
    "rmsprop": {"train.optimizer": "rmsprop"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_deferred_run_is_the_dense_run(case):
    """The same rounds (every verdict equal), the tables equal to the eager pass's rounding."""
    dense, lazy = _run(False, False, 60, **CASES[case]), _run(True, False, 60, **CASES[case])
    assert torch.equal(dense.records["reason"], lazy.records["reason"])
    torch.testing.assert_close(lazy.server.theta, dense.server.theta, rtol=1e-5, atol=1e-6)
    for k in dense.server.state:
        torch.testing.assert_close(lazy.server.state[k], dense.server.state[k], rtol=1e-5, atol=1e-9)


@needs_compiler
@pytest.mark.parametrize(
    "case", ["none", "a-rfrs under alie", "camouflage, krum", "median under gradient ascent"]
)
def test_compiled_deferred_run_is_the_compiled_dense_run_bit_for_bit(case):
    """The compiled dense pass (DefaultPass) and the replay make the same IEEE operations in the same
    order; rows frozen and decayed on their tails give the same bits: 150 rounds of a 400-item catalog
    agree exactly, with the defenses' rejections (the C round write of the accepted uploads only, and
    a coordinate-wise aggregate's deltas) and the same verdicts."""
    dense, lazy = _run(False, True, 150, **CASES[case]), _run(True, True, 150, **CASES[case])
    store = lazy.server.deferred
    assert int((store.passes - store.clock).max()) > 2 * R.FREEZE_EVERY  # long lags were replayed
    assert torch.equal(dense.records["reason"], lazy.records["reason"])
    assert torch.equal(dense.server.theta, lazy.server.theta)
    for k in dense.server.state:
        assert torch.equal(dense.server.state[k], lazy.server.state[k])


@pytest.mark.parametrize("case", ["none", "a-rfrs under alie"])
def test_rounds_read_no_whole_table(case):
    """Only the rows a round lists are caught up: no round reads the whole table (an attack context
    does, by design: it reads ``ctx.server``)."""
    run = _run(True, False, 30, **{k: v for k, v in CASES[case].items() if not k.startswith("attack")})
    assert run.server.deferred.full_catch_ups == 0
    lag = run.server.deferred.passes - run.server.deferred.clock
    assert int((lag > 0).sum()) > 0  # rows were left behind
    run.server.theta  # noqa: B018 - a whole-table read catches every row up
    assert int(run.server.deferred.clock.min()) == run.server.deferred.passes


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])  # the C replay and the generic one
def test_the_state_before_a_round_stays_readable_and_older_ones_refuse(optimizer):
    run = _run(True, False, 5, **{"train.optimizer": optimizer})
    before = run.server
    want = before.clone()
    run.step()
    rows = torch.arange(run.server.n_rows)
    got = before.rows_at(rows)
    assert torch.equal(got["theta"], want.theta) and all(
        torch.equal(got[k], want.state[k]) for k in want.state
    )
    torch.testing.assert_close(before.theta, want.theta, rtol=0, atol=0)
    run.step()  # catches rows up past the state before the last round
    with pytest.raises(D.SupersededState):
        before.rows_at(rows)


def test_a_resumed_deferred_run_is_the_uninterrupted_one(tmp_path):
    """A checkpoint catches every row up; the uninterrupted run catches the same rows up later, with
    the same steps: the same bits."""
    straight = _run(True, False, 40)
    half = _run(True, False, 20)
    half.save(tmp_path)
    resumed = FederatedRun.create(half.cfg, _split(), torch.device("cpu"))
    resumed.load(tmp_path)
    for _ in range(20):
        resumed.step()
    assert torch.equal(straight.server.theta, resumed.server.theta)
    for k in straight.server.state:
        assert torch.equal(straight.server.state[k], resumed.server.state[k])


def test_fedrec_train_with_a_deferred_pass_is_the_same_run(tmp_path):
    """The command end to end (ML-100K, evaluation and checkpoints on schedule): the same metrics as
    the dense run, summary.json says the pass was deferred."""
    import json

    from typer.testing import CliRunner

    from fedrec.cli import app

    base = ["train", "--dataset", "ml100k", "--mode", "federated", "--rounds", "12", "--json"]
    base += ["--set", "model.dim=8", "--set", "federated.eval_every=6", "--set", "run.compile=false"]
    out = {}
    for mode in ("false", "true"):
        res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / mode), "--set", f"run.deferred={mode}"])
        assert res.exit_code == 0, res.output
        out[mode] = json.loads(res.stdout)
    assert out["true"]["default_pass"] == "deferred" and out["false"]["default_pass"] != "deferred"
    for k, v in out["false"]["metrics"]["precision"].items():
        assert out["true"]["metrics"]["precision"][k] == pytest.approx(v, abs=1e-3)


def test_a_what_if_round_from_a_deferred_state_is_refused_and_a_clone_steps():
    """A deferred round writes the run's tables in place: a second round from the same state (what the
    camouflage demo does for each defense) would step the run itself. It is refused with one message;
    the dense copy ``clone()`` takes what-if rounds, and the run goes on as if nothing happened."""
    from fedrec.experiments.camouflage_demo import inspect_round

    keys = {"attack.name": "camouflage", "attack.fraction": 0.3}
    run = _run(True, False, 3, **keys)
    old = run.server
    run.step()
    with pytest.raises(D.SupersededState):
        old.advanced(run.server.t + 1)
    # the demo's rounds for six defenses, on a deferred run and on a dense one: the same verdicts,
    # and both runs go on to the same model
    lazy, dense = _run(True, False, 3, **keys), _run(False, False, 3, **keys)
    assert inspect_round(lazy, 0) == inspect_round(dense, 0)
    for r in (lazy, dense):
        r.step()
        r.step()
    assert torch.equal(lazy.records["reason"], dense.records["reason"])
    torch.testing.assert_close(lazy.server.theta, dense.server.theta, rtol=1e-5, atol=1e-6)


def test_a_read_that_moves_rows_past_the_state_before_retires_it():
    """After a round, the current state's reads catch rows up past the previous state's pass count; the
    previous state then raises instead of serving those rows at the newer count."""
    run = _run(True, False, 5)
    before = run.server
    run.step()
    rows = torch.arange(run.server.n_rows)
    run.server.rows_at(rows)
    with pytest.raises(D.SupersededState):
        before.rows_at(rows)


def _literal_ieee(theta, m, v, eta, b1, b2, eps):
    """Adam's zero-gradient steps in numpy float32, every operation correctly rounded (numpy's float32
    square root is), pass by pass: the definition the frozen-row shortcut must reproduce bit for bit."""
    import numpy as np

    th, mm, vv = (np.asarray(x, dtype=np.float32).copy() for x in (theta, m, v))
    b1, b2, eps = np.float32(b1), np.float32(b2), np.float32(eps)
    for e in np.asarray(eta, dtype=np.float32):
        mm = mm * b1
        vv = vv * b2
        th = th - e * (mm / np.sqrt(vv + eps))
    return th, mm, vv


@pytest.mark.parametrize("native", [True, False])
def test_frozen_rows_are_the_literal_iteration_bit_for_bit(native, monkeypatch):
    """600 skipped passes for rows of every scale (tiny, huge, near-frozen, theta = 0, theta near the
    largest float with a step that overflows it): the replay, which stops theta at the freeze bound,
    equals every step done literally, bit for bit (the torch path rounds its square root less exactly,
    so it is held to the C loop's result through m, v only and theta to 1e-6)."""
    import numpy as np

    _replay_path(native, monkeypatch)
    rule = make_rule("adam", eta=1e-3)
    gen = torch.Generator().manual_seed(7)
    n, d, passes = 24, 8, 600
    theta = torch.randn(n, d, generator=gen) * torch.logspace(-30, 3, n)[:, None]
    m = torch.randn(n, d, generator=gen) * torch.logspace(-12, 0, n)[:, None]
    v = torch.rand(n, d, generator=gen) * torch.logspace(-10, -2, n)[:, None]
    theta[0] = 0.0
    big = np.float32(np.finfo(np.float32).max)
    theta[1], m[1], v[1] = float(big) - 30 * 2.0**104, -4e31, 0.0  # steps that overflow theta to inf
    eta = torch.tensor([rule.step_size(t) for t in range(1, passes + 1)])
    lag = torch.full((n,), passes)
    got = R.replay(theta, m, v, lag, torch.zeros(n, dtype=torch.int64), eta, rule)
    with np.errstate(over="ignore", invalid="ignore"):
        want = _literal_ieee(theta.numpy(), m.numpy(), v.numpy(), eta.numpy(), rule.b1, rule.b2, rule.eps)
    assert np.array_equal(got[1].numpy(), want[1]) and np.array_equal(got[2].numpy(), want[2])
    if native:
        assert np.array_equal(got[0].numpy(), want[0], equal_nan=True)
    else:
        np.testing.assert_allclose(got[0].numpy(), want[0], rtol=1e-6, atol=0)


class _Listing:
    """An attack that records whether some Byzantine upload listed every row of the table (a dense
    upload, which reads the whole table by construction) and otherwise is the attack it wraps."""

    def __init__(self, attack) -> None:
        self.attack, self.dense = attack, False

    def __getattr__(self, name):
        return getattr(self.attack, name)

    def __call__(self, ctx):
        up = self.attack(ctx)
        if up.n and int(up.counts().max()) >= ctx.n_rows:
            self.dense = True
        return up


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_attack_reads_rows_not_the_table_and_is_the_dense_run(attack):
    """Attacks read the global state through ``ctx.prev(rows)``, i.e. ``rows_at``: an attacked deferred
    round catches up the rows it reads and no others, unless the attack uploads every row (then it
    reads every row, by construction); and the deferred run is the dense run (same verdicts, tables to
    the eager pass's rounding) under every registered attack."""
    keys = {"attack.name": attack, "attack.fraction": 0.3, "defense.name": "a-rfrs"}
    dense = _run(False, False, 0, **keys)
    lazy = _run(True, False, 0, **keys)
    wrapped = _Listing(lazy.attack)
    object.__setattr__(lazy, "attack", wrapped)
    for _ in range(25):
        dense.step()
        lazy.step()
    assert torch.equal(dense.records["reason"], lazy.records["reason"])
    assert wrapped.dense or lazy.server.deferred.full_catch_ups == 0
    torch.testing.assert_close(lazy.server.theta, dense.server.theta, rtol=1e-5, atol=1e-6)
    for k in dense.server.state:
        torch.testing.assert_close(lazy.server.state[k], dense.server.state[k], rtol=1e-5, atol=1e-9)


def test_the_store_refuses_tables_written_behind_its_back():
    """The store's tables are written in place; a write by anything else (torch counts it) makes the
    next catch-up raise before a clock that no longer describes the rows could be trusted."""
    rule = make_rule("adam")
    store = D.DeferredStore(_tables(rule, 10, 4, torch.Generator().manual_seed(0)), rule)
    for t in range(1, 4):
        store.log_pass(t)
    store.catch_up(torch.tensor([1, 2]))  # the store's own writes are fine
    store.tables["m"][3].add_(1.0)
    assert store.written_by_others()
    with pytest.raises(D.ForeignWrite):
        store.catch_up(torch.tensor([3]))


def test_the_c_catch_up_refuses_an_index_outside_the_table():
    """A row id outside the table (an upload that got past nothing else) raises before the C loop
    writes anything: no write outside the tensors' memory."""
    if R.native() is None:
        pytest.skip("no C compiler")
    rule = make_rule("adam")
    tables = _tables(rule, 10, 4, torch.Generator().manual_seed(0))
    store = D.DeferredStore({k: x.clone() for k, x in tables.items()}, rule)
    store.log_pass(1)
    for bad in ([0, 10], [-1], [2**40]):
        with pytest.raises(IndexError):
            store.catch_up(torch.tensor(bad))
        assert all(torch.equal(store.tables[k], tables[k]) for k in tables)
        assert int(store.clock.max()) == 0


def test_a_deferred_state_dict_is_a_snapshot_and_a_loaded_run_owns_its_tables():
    """A deferred run writes its tables in place: its state dict must not change with the next round,
    and a run loaded from it must not share (and so corrupt) the first run's tables."""
    run = _run(True, False, 12)
    sd = run.state_dict()
    before = sd["theta"].clone()
    other = _run(True, False, 0)
    other.load_state_dict(sd)
    for _ in range(5):
        run.step()
        other.step()
    assert torch.equal(sd["theta"], before)
    assert torch.equal(run.server.theta, other.server.theta)


def test_catch_up_takes_any_shape_of_row_ids():
    """Row ids in a 2-D tensor are every id it holds (the torch path flattened them through unique)."""
    rule = make_rule("adam")
    tables = _tables(rule, 12, 4, torch.Generator().manual_seed(1))
    flat, grid = (D.DeferredStore({k: x.clone() for k, x in tables.items()}, rule) for _ in range(2))
    for store in (flat, grid):
        for t in range(1, 6):
            store.log_pass(t)
    ids = torch.tensor([[1, 5, 7], [2, 5, 11]])
    flat.catch_up(ids.flatten())
    grid.catch_up(ids)
    assert torch.equal(flat.clock, grid.clock) and int(grid.clock[11]) == 5
    assert all(torch.equal(flat.tables[k], grid.tables[k]) for k in tables)


def test_a_store_made_from_a_rounds_tables_keeps_ordinary_ones():
    """Tables made under the round's inference mode keep no write counter; the store copies them into
    ordinary tensors, so its foreign-write check still works."""
    rule = make_rule("adam")
    with torch.inference_mode():
        tables = _tables(rule, 10, 4, torch.Generator().manual_seed(0))
    assert tables["theta"].is_inference()
    store = D.DeferredStore(tables, rule)
    assert not any(x.is_inference() for x in store.tables.values())
    assert all(torch.equal(store.tables[k], tables[k]) for k in tables)
    store.check_own()
    store.tables["theta"].add_(1.0)
    with pytest.raises(D.ForeignWrite):
        store.check_own()


def _round_inputs(gen: torch.Generator, n: int, d: int, K: int, nw: int, dtype):
    rule = make_rule("adam", eta=0.05)
    tables = _tables(rule, n, d, gen, dtype)
    idx = torch.randint(0, n, (K,), generator=gen)  # repeats: a row listed by several uploads
    owner = torch.sort(torch.randint(0, nw, (K,), generator=gen)).values
    w = torch.rand(nw, generator=gen, dtype=dtype)
    X = {
        k: x.index_select(0, idx) + torch.randn(K, d, generator=gen, dtype=dtype) * 1e-2
        for k, x in tables.items()
    }
    X["v"] = X["v"].abs()
    return rule, tables, idx, owner, w, X


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), passes=st.integers(0, 30), K=st.integers(0, 60), masked=st.booleans())
def test_the_c_round_write_is_the_dense_pass_with_its_terms_bit_for_bit(dtype, seed, passes, K, masked):
    """A deferred round written by the C loop (``round_rows_native``: catch-up, the round's default,
    the kept uploads' terms, at the listed rows only), then every row caught up, equals the dense pass
    with the terms folded in (``adam_pass_with_terms``) over the caught-up tables, bit for bit; the
    values it hands back as the state before the round are the caught-up rows; its scratch is left
    all -1."""
    from fedrec.optim.adam_pass import adam_pass_with_terms

    gen = torch.Generator().manual_seed(seed)
    n, d, nw = 30, 7, 5
    rule, tables, idx, owner, w, X = _round_inputs(gen, n, d, K, nw, dtype)
    keep = torch.rand(nw, generator=gen) < 0.6 if masked else None
    store = D.DeferredStore({k: x.clone() for k, x in tables.items()}, rule)
    rounds = list(range(2, 2 + passes))
    for t in rounds:
        store.log_pass(t)
    store.clock.copy_(torch.randint(0, passes + 1, (n,), generator=gen))
    clock0 = store.clock.clone()
    t = 2 + passes
    # the dense way: every row caught up to the passes before the round, then the pass with the terms
    dense = D.DeferredStore({k: x.clone() for k, x in store.tables.items()}, rule)
    for p in rounds:
        dense.log_pass(p)
    dense.clock.copy_(clock0)
    dense.catch_up(None)
    before_all = {k: x.clone() for k, x in dense.tables.items()}
    want = adam_pass_with_terms(rule, dense.tables, rule.step_size(t), idx, owner, w, X, keep)
    assert store.write_terms(t, idx, owner, w, X, keep)
    rows, before = store.before[2], store.before[3]
    listed = idx if keep is None else idx[keep[owner]]
    assert torch.equal(torch.sort(rows).values, torch.unique(listed))
    for k in ("theta", "m", "v"):
        assert torch.equal(before[k], before_all[k].index_select(0, rows))
    assert bool((store._head == -1).all())
    store.catch_up(None)
    for k in ("theta", "m", "v"):
        assert torch.equal(store.tables[k], want[k]), k


def test_the_c_round_write_refuses_an_index_outside_and_writes_nothing():
    """A kept entry's row outside the table, or an owner outside the weights: IndexError, and the
    tables, the clocks, the log and the scratch are as they were; a refused upload's bad row is not read."""
    gen = torch.Generator().manual_seed(1)
    rule, tables, idx, owner, w, X = _round_inputs(gen, 20, 4, 12, 3, torch.float32)
    store = D.DeferredStore({k: x.clone() for k, x in tables.items()}, rule)
    for t in (1, 2, 3):
        store.log_pass(t)
    snapshot = ({k: x.clone() for k, x in store.tables.items()}, store.clock.clone(), store.passes)
    for bad_idx, bad_owner in ((idx.clone(), owner), (idx, owner.clone())):
        if bad_idx is not idx:
            bad_idx[5] = 20
        else:
            bad_owner[-1] = 3
        with pytest.raises(IndexError):
            store.write_terms(4, bad_idx, bad_owner, w, X)
        assert all(torch.equal(store.tables[k], snapshot[0][k]) for k in snapshot[0])
        assert torch.equal(store.clock, snapshot[1]) and store.passes == snapshot[2]
        assert bool((store._head == -1).all())
    owner = owner.clone()
    owner[4:6] = 1  # upload 1 lists two entries, whose rows lie outside the table; it is not kept
    bad_idx = idx.clone()
    bad_idx[owner == 1] = 10**6
    keep = torch.tensor([True, False, True])
    want = {k: x.clone() for k, x in store.tables.items()}
    assert store.write_terms(4, bad_idx, owner, w, X, keep)
    written = store.before[2]
    assert torch.equal(torch.sort(written).values, torch.unique(idx[owner != 1]))
    # the kept uploads alone, as the dense pass with their terms takes them
    from fedrec.optim.adam_pass import adam_pass_with_terms

    dense = D.DeferredStore(want, rule)
    for t in (1, 2, 3):
        dense.log_pass(t)
    dense.catch_up(None)
    full = adam_pass_with_terms(rule, dense.tables, rule.step_size(4), idx, owner, w, X, keep)
    store.catch_up(None)
    assert all(torch.equal(store.tables[k], full[k]) for k in full)


def test_the_c_round_write_leaves_uploads_that_alias_the_tables_to_the_gathering_way():
    """Uploads that are views of the store's own tables (a direct caller's) would be read after the loop
    wrote them: the C loop declines them (None), and the gathering way, which copies first, takes them."""
    gen = torch.Generator().manual_seed(2)
    rule, tables, _, owner, w, _ = _round_inputs(gen, 20, 4, 6, 2, torch.float32)
    store = D.DeferredStore({k: x.clone() for k, x in tables.items()}, rule)
    rows = torch.arange(3, 9)
    aliased = {k: x[3:9] for k, x in store.tables.items()}
    assert (
        R.round_rows_native(
            store.tables,
            store.clock,
            torch.full((20,), -1),
            0,
            store._eta,
            0.0,
            rule,
            0.01,
            rows,
            owner,
            w,
            aliased,
        )
        is None
    )
    assert not store.write_terms(1, rows, owner, w, aliased)


def test_a_deferred_round_reads_the_tables_in_place():
    """The client step and the rule check read a current deferred state's tables in place (their C
    loops gather the rows): ``tables_for`` lends the store's tables and the rows; a state a later round
    moved hands over gathered copies instead, with the same values."""
    cfg = Config()
    cfg.run.deferred, cfg.federated.rounds = True, 5
    data = synthetic(60, 80, seed=0, mean_items=6)
    run = FederatedRun.create(cfg, split_per_user(data, seed=0), torch.device("cpu"))
    run.step()
    old = run.server
    rows = torch.tensor([0, 3, 7])
    tables, at = old.tables_for(rows)
    assert tables["theta"].data_ptr() == old.deferred.tables["theta"].data_ptr() and torch.equal(at, rows)
    want = {k: x.index_select(0, rows).clone() for k, x in tables.items()}
    run.step()
    gathered, at = old.tables_for(rows)
    assert torch.equal(at, torch.arange(3))
    assert all(torch.equal(gathered[k], want[k]) for k in want)


@needs_compiler
def test_unset_defers_where_the_result_is_the_dense_passes_bit_for_bit(monkeypatch):
    """``run.deferred`` unset defers Adam's compiled pass on the CPU over tables of at least
    ``DEFER_BYTES``, and nothing else: not an eager pass (whose square root rounds differently), not
    another rule, not small tables; set, it is obeyed either way."""
    cases = [  # (run.compile, optimizer, run.deferred, DEFER_BYTES, deferred?)
        (True, "adam", None, 0, True),
        (True, "adam", None, 10**12, False),
        (False, "adam", None, 0, False),
        (True, "momentum", None, 0, False),
        (True, "adam", False, 0, False),
        (False, "momentum", True, 10**12, True),
    ]
    for compiled, optimizer, setting, size, want in cases:
        monkeypatch.setattr(D, "DEFER_BYTES", size)
        run = _run(setting, compiled, 0, **{"train.optimizer": optimizer})
        assert (run.server.deferred is not None) is want, (compiled, optimizer, setting, size)
    # the papers' tables: ML-100K's (3,364 rows) dense, Last.fm's (35,264 rows) deferred, at d = 64
    rule = make_rule("adam", eta=0.01)
    monkeypatch.undo()
    assert not D.auto_deferred(rule, True, 3364, 64, torch.device("cpu"))
    assert D.auto_deferred(rule, True, 35264, 64, torch.device("cpu"))
    assert not D.auto_deferred(rule, True, 35264, 64, torch.device("meta"))


@needs_compiler
def test_unset_goes_dense_after_a_round_reads_the_whole_table(monkeypatch):
    """An attack that uploads every row makes a deferred round catch every row up; with ``run.deferred``
    unset the run goes on with the dense pass from there, and ends on the dense run's tables bit for bit."""
    monkeypatch.setattr(D, "DEFER_BYTES", 0)
    keys = {"attack.name": "poison", "attack.params": {"kind": "inflate-dense"}, "attack.fraction": 0.3}
    auto = _run(None, True, 0, **keys)
    assert auto.server.deferred is not None
    dense = _run(False, True, 30, **keys)
    switched = False
    for _ in range(30):
        auto.step()
        if auto.server.deferred is None and not switched:  # the round that went dense: ordinary tensors
            switched = True
            assert not any(x.is_inference() for x in (auto.server.theta, *auto.server.state.values()))
    assert switched
    assert torch.equal(auto.server.theta, dense.server.theta)
    for k in dense.server.state:
        assert torch.equal(auto.server.state[k], dense.server.state[k])


def test_the_stores_own_tensors_stay_writable_outside_a_round():
    """The pass log grown and the write's scratch made during a round (inference mode) are ordinary
    tensors: the store goes on outside inference mode (a caller's own ``aggregate``) without an error."""
    rule = make_rule("adam", eta=0.05)
    gen = torch.Generator().manual_seed(0)
    store = D.DeferredStore(_tables(rule, 10, 3, gen), rule)
    rows, owner, w = torch.tensor([1, 4]), torch.tensor([0, 0]), torch.ones(1)
    X = {k: x.index_select(0, rows).clone() for k, x in store.tables.items()}
    with torch.inference_mode():
        for t in range(1, 20):  # past the log's first 16 entries: it grows
            store.log_pass(t)
        assert store.write_terms(20, rows, owner, w, X)
    assert not store._eta.is_inference() and not store._head.is_inference()
    store.log_pass(21)
    assert store.write_terms(22, rows, owner, w, X)
    assert store.passes == 22


def test_the_theta_space_of_a_deferred_state_is_the_dense_ones():
    """A defense's ``theta`` space read from a deferred state (its tables lent in place while current, the
    rows gathered once a later round moved it) equals the same space read from the dense state."""
    from fedrec.defenses.spaces import space_vectors

    dense, lazy = _run(False, True, 20), _run(True, True, 20)
    captured = {}
    lazy.on_round = lambda run, out: captured.setdefault("up", out.uploads)
    lazy.step()
    dense.step()
    up, t = captured["up"], lazy.server.t
    state_before = lazy.server  # current: lends its tables
    want = space_vectors("theta", dense.server, up, dense.rule, t + 1).values
    assert torch.equal(space_vectors("theta", state_before, up, lazy.rule, t + 1).values, want)
    lazy.step()  # now the state before the round: rows gathered (or refused when two rounds old)
    assert torch.equal(space_vectors("theta", state_before, up, lazy.rule, t + 1).values, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [9, 64, 70, 130])
def test_the_blocked_replay_is_the_row_by_row_replay_bit_for_bit(dtype, d, monkeypatch):
    """The C replay steps a row's columns in blocks held in registers, each block freezing on its own,
    and the frozen tails from registers; checks for frozen rows never placed (``FREEZE_EVERY`` past
    every lag) leave every row on the plain row-by-row loop with no freezing. The two give the same bits
    for theta, m and v: rows that freeze and decay for hundreds of steps, zero and subnormal moments,
    widths of one block, several, and a padded last one."""
    if R.native() is None:
        pytest.skip("no C compiler")
    rule = make_rule("adam", eta=1e-3)
    gen = torch.Generator().manual_seed(d)
    n = 50
    theta = torch.randn(n, d, generator=gen, dtype=dtype)
    m = torch.randn(n, d, generator=gen, dtype=dtype) * torch.logspace(-40, -1, d, dtype=dtype)
    v = torch.rand(n, d, generator=gen, dtype=dtype) * 1e-6
    m[0], v[0] = 0.0, 0.0
    m[1, : d // 2] = 0.0
    lag = torch.randint(0, 1200, (n,), generator=gen)
    lag[2:5] = torch.tensor([15, 16, 17])
    first = torch.randint(0, 100, (n,), generator=gen)
    eta = torch.tensor([rule.step_size(t) for t in range(1, 1301)], dtype=dtype)
    blocked = R.replay(theta, m, v, lag, first, eta, rule)
    monkeypatch.setattr(R, "FREEZE_EVERY", 10**9)
    plain = R.replay(theta, m, v, lag, first, eta, rule)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    for a, b in zip(blocked, plain, strict=True):
        assert torch.equal(a.view(bits), b.view(bits))
