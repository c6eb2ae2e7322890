"""The dense digits testbed (fedrec.testbed): batched per-worker gradients, worker momentum, the
loop against a literal per-worker reimplementation, accuracy and bit-for-bit reproducibility, shards,
Byzantine messages from the attacks' craft, and the ``fedrec testbed`` command."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedrec.attacks.base import ATTACKS
from fedrec.cli import app
from fedrec.defenses.base import RULES, RuleResult, RuleSpec, nan_scores, register_rule
from fedrec.testbed import Model, TestbedConfig, load_digits, make_shards, simulate
from fedrec.testbed.adversary import Adversary
from fedrec.testbed.run import generators

# ----------------------------------------------------------------------------- rules for the tests

RECORDED: list[torch.Tensor] = []


def _mean(v, f):
    return RuleResult(scores=nan_scores(v.n), weights=torch.full((v.n,), 1.0 / v.n, dtype=torch.float64))


def _record(v, f):
    """The mean, recording the dense messages it was given."""
    RECORDED.append(v.to_dense().reshape(v.n, -1).clone())
    return _mean(v, f)


def _first_half(v, f):
    """Accepts the first half of the workers (a selector, to exercise selection.parquet)."""
    acc = torch.zeros(v.n, dtype=torch.bool)
    acc[: max(1, v.n // 2)] = True
    return RuleResult(scores=nan_scores(v.n), accepted=acc)


# test-only rules, registered while this module's tests run (so no other test module sees them): the
# registered `mean` once the integrator's rules have landed, a local stand-in until then
MEAN = "mean" if "mean" in RULES else "tb-test-mean"
RECORD, HALF = "tb-test-record", "tb-test-first-half"
_LOCAL = {MEAN: ("weight", _mean), RECORD: ("weight", _record), HALF: ("select", _first_half)}


@pytest.fixture(autouse=True, scope="module")
def _test_rules():
    added = [name for name in _LOCAL if name not in RULES]
    for name in added:
        kind, fn = _LOCAL[name]
        register_rule(RuleSpec(name=name, kind=kind, fast=fn, literal=fn))
    yield
    for name in added:
        del RULES[name]


def recorded_run(**kw) -> tuple[list[torch.Tensor], object]:
    RECORDED.clear()
    res = simulate(TestbedConfig(rule=RECORD, **kw))
    return list(RECORDED), res


# ----------------------------------------------------------------------------- model and momentum


@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_batched_worker_gradients_equal_a_per_worker_autograd_loop(name):
    model = Model(name, hidden=16)
    gen = torch.Generator().manual_seed(3)
    theta = model.init(gen)
    n, b = 5, 7
    x = torch.randn(n, b, 64, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (n, b), generator=gen)
    g, loss = model.worker_grads(theta, x, y)
    assert g.shape == (n, model.n_params) and loss.shape == (n,)
    for i in range(n):  # the literal model: torch.nn.functional layers on worker i's batch alone
        th = theta.clone().requires_grad_(True)
        if name == "softmax":
            w, bias = th[:640].reshape(64, 10), th[640:]
            z = x[i] @ w + bias
        else:
            h = 16
            w1, b1 = th[: 64 * h].reshape(64, h), th[64 * h : 65 * h]
            w2, b2 = th[65 * h : 75 * h].reshape(h, 10), th[75 * h :]
            z = torch.relu(x[i] @ w1 + b1) @ w2 + b2
        li = torch.nn.functional.cross_entropy(z, y[i])
        (gi,) = torch.autograd.grad(li, th)
        torch.testing.assert_close(g[i], gi, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(loss[i], li.detach(), rtol=1e-12, atol=0)


def _literal_run(cfg: TestbedConfig, steps: int) -> list[torch.Tensor]:
    """The loop written out per worker and per step (Python loops, plain autograd): the messages."""
    gens = generators(cfg.seed)
    data = load_digits(int(torch.randint(0, 2**31 - 1, (1,), generator=gens["split"])))
    shards = make_shards(
        data.y_train, cfg.n, cfg.shards, int(torch.randint(0, 2**31 - 1, (1,), generator=gens["shards"]))
    )
    model = Model(cfg.model, cfg.hidden)
    theta = model.init(gens["init"])
    m = [torch.zeros_like(theta) for _ in range(cfg.n)]
    out = []
    for _ in range(steps):
        pick = torch.rand(cfg.n, shards.shape[1], generator=gens["batches"]).argsort(1)[:, : cfg.batch]
        msgs = []
        for i in range(cfg.n):
            idx = shards[i, pick[i]]
            th = theta.clone().requires_grad_(True)
            z = model.logits(th[None], data.x_train[idx][None])[0]
            (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, data.y_train[idx]), th)
            g = g + cfg.weight_decay * theta
            m[i] = cfg.momentum * m[i] + (1 - cfg.momentum) * g  # RESAM eq. (5), at the worker
            msgs.append(m[i])
        out.append(torch.stack(msgs))
        theta = theta - cfg.lr * torch.stack(msgs).mean(0)
    return out


@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_worker_momentum_and_the_loop_equal_the_literal_recursion(model):
    kw = dict(n=4, momentum=0.9, steps=6, batch=5, model=model, hidden=8, eval_every=6)
    msgs, _ = recorded_run(**kw)
    literal = _literal_run(TestbedConfig(rule=RECORD, **kw), 6)
    assert len(msgs) == 6
    for t, (a, b) in enumerate(zip(msgs, literal, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=f"step {t + 1}")


def test_momentum_zero_sends_the_gradient_and_one_step_is_scaled():
    # beta = 0.5 halves the first message against beta = 0 (m_1 = (1 - beta) g_1, same batches)
    kw = dict(n=3, steps=1, batch=4, eval_every=1)
    (m0,), _ = recorded_run(momentum=0.0, **kw)
    (m5,), _ = recorded_run(momentum=0.5, **kw)
    torch.testing.assert_close(m5, 0.5 * m0, rtol=1e-15, atol=0)


# ----------------------------------------------------------------------------- accuracy, reproducibility


def test_mean_without_attack_learns_digits_and_is_reproducible_bit_for_bit():
    cfg = TestbedConfig(rule=MEAN, seed=1)
    a, b = simulate(cfg), simulate(TestbedConfig(rule=MEAN, seed=1))
    assert a.metrics[-1]["accuracy"] > 0.9, a.metrics
    assert a.metrics[0]["accuracy"] < 0.3  # it learned: the random init is near chance
    assert torch.equal(a.theta, b.theta) and a.metrics == b.metrics
    c = simulate(TestbedConfig(rule=MEAN, seed=2, steps=20, eval_every=20))
    assert not torch.equal(c.theta, simulate(TestbedConfig(rule=MEAN, seed=1, steps=20)).theta)


def test_one_step_is_milliseconds():
    res = simulate(TestbedConfig(rule=MEAN, steps=200, eval_every=200))
    assert res.seconds / 200 < 0.02, res.seconds  # ~1 ms on one core; generous for shared machines


def test_sorted_shards_give_each_worker_few_labels_and_iid_many():
    y = load_digits(0).y_train
    for kind, check in (("sorted", lambda k: k <= 2), ("iid", lambda k: k >= 8)):
        shards = make_shards(y, 15, kind, seed=0)
        assert shards.shape == (15, y.shape[0] // 15)
        assert shards.reshape(-1).unique().numel() == shards.numel()  # disjoint
        labels = [y[s].unique().numel() for s in shards]
        assert all(check(k) for k in labels), (kind, labels)


def test_split_is_stratified_and_standardised():
    d = load_digits(0)
    assert d.x_train.shape[1] == 64 and d.x_train.shape[0] + d.x_test.shape[0] == 1797
    torch.testing.assert_close(d.x_train.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-12, rtol=0)
    assert d.y_test.bincount(minlength=10).min() >= 30


# ----------------------------------------------------------------------------- Byzantine messages


def _attack_for_test() -> tuple[str, float]:
    """sign-flip (message = -own message) once the attacks have landed, gradient ascent until then."""
    return ("sign-flip", 0.0) if "sign-flip" in ATTACKS else ("gradient-ascent", 1e-12)


def test_byzantine_message_is_the_attack_on_its_own_momentum():
    name, tol = _attack_for_test()
    kw = dict(n=5, f=2, momentum=0.5, steps=1, batch=4, eval_every=1)
    (clean,), _ = recorded_run(**kw)  # attack none: every worker's honest message
    (attacked,), res = recorded_run(attack=name, **kw)
    byz = res.byzantine
    assert byz.tolist() == [True, True, False, False, False]
    assert torch.equal(attacked[~byz], clean[~byz])
    torch.testing.assert_close(attacked[byz], -clean[byz], rtol=tol, atol=tol)


def test_byzantine_message_equals_craft_on_the_context():
    # the message the testbed sends is what the attack crafts on the context it builds
    name = "sign-flip" if "sign-flip" in ATTACKS else "gradient-ascent"
    adv = Adversary(name, {}, lr=0.5)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(650, generator=gen, dtype=torch.float64)
    own, honest = torch.randn(2, 650, dtype=torch.float64), torch.randn(3, 650, dtype=torch.float64)
    ctx = adv.context(theta, 3, torch.tensor([0, 1]), own, torch.tensor([2, 3, 4]), honest, 90, gen)
    msgs = adv.messages(ctx)
    if hasattr(adv.attack, "craft"):
        _, _, g = adv.attack.craft(ctx)
        assert torch.equal(msgs, g.reshape(2, -1))
    else:
        torch.testing.assert_close(msgs, -own, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif("label-flip" not in ATTACKS, reason="label-flip not registered yet")
def test_label_flip_sends_the_momentum_of_flipped_labels():
    kw = dict(n=4, f=1, momentum=0.0, steps=1, batch=4, eval_every=1)
    (msgs,), _ = recorded_run(attack="label-flip", **kw)
    cfg = TestbedConfig(rule=RECORD, **kw)
    gens = generators(cfg.seed)
    data = load_digits(int(torch.randint(0, 2**31 - 1, (1,), generator=gens["split"])))
    shards = make_shards(
        data.y_train, 4, "iid", int(torch.randint(0, 2**31 - 1, (1,), generator=gens["shards"]))
    )
    theta = Model().init(gens["init"])
    pick = torch.rand(4, shards.shape[1], generator=gens["batches"]).argsort(1)[:, :4]
    idx = shards[0, pick[0]]
    g, _ = Model().worker_grads(theta, data.x_train[idx][None], 9 - data.y_train[idx][None])
    torch.testing.assert_close(msgs[0], g[0] + cfg.weight_decay * theta)


def test_selection_is_recorded_for_selectors():
    res = simulate(TestbedConfig(rule=HALF, n=6, f=2, attack="gradient-ascent", steps=5, eval_every=5))
    assert res.accepted.shape == (5, 6)
    assert res.accepted[:, :3].all() and not res.accepted[:, 3:].any()


# ----------------------------------------------------------------------------- config and CLI


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(momentum=1.0), "momentum=1.0"),
        (dict(f=15), "f=15"),
        (dict(model="cnn"), "model='cnn'"),
        (dict(shards="dirichlet"), "shards='dirichlet'"),
        (dict(attack="gradient-ascent"), "needs f >= 1"),
        (dict(lr=-1), "lr=-1"),
    ],
)
def test_bad_config_is_one_clear_line(kw, needle):
    with pytest.raises(ValueError, match=r"^[^\n]*$") as e:
        TestbedConfig(**kw)
    assert needle in str(e.value)


runner = CliRunner()


def _strict(text: str):
    def bad(c):
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(text, parse_constant=bad)


def test_cli_writes_the_run_directory_and_strict_json(tmp_path):
    args = ["testbed", "--rule", HALF, "--attack", "gradient-ascent", "--byzantine", "2", "--workers", "6"]
    args += ["--steps", "30", "--momentum", "0.9", "--out", str(tmp_path), "--set", "eval_every=10", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = _strict(res.stdout)
    (run_dir,) = tmp_path.iterdir()
    assert summary["run_dir"] == str(run_dir)
    assert {p.name for p in run_dir.iterdir()} == {
        "config.yaml", "metrics.parquet", "selection.parquet", "summary.json"
    }  # fmt: skip
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert list(metrics.columns) == ["step", "accuracy", "loss"] and metrics["step"].tolist() == [
        0,
        10,
        20,
        30,
    ]
    sel = pd.read_parquet(run_dir / "selection.parquet")
    assert list(sel.columns) == ["step", "worker", "byzantine", "accepted"] and len(sel) == 30 * 6
    assert sel["byzantine"].sum() == 2 * 30
    assert summary["selection_rate_byzantine"] == 1.0 and summary["selection_rate_honest"] == 0.25
    assert _strict((run_dir / "summary.json").read_text())["final_accuracy"] == summary["final_accuracy"]
    assert "momentum: 0.9" in (run_dir / "config.yaml").read_text()


def test_cli_json_is_strict_when_training_diverges(tmp_path):
    args = ["testbed", "--rule", MEAN, "--steps", "5", "--out", str(tmp_path), "--set", "lr=1e300", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = _strict(res.stdout)
    assert summary["final_loss"] is None and summary["diverged"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--momentum", "1.5"], "momentum=1.5"),
        (["--rule", "no-such-rule"], "no-such-rule"),
        (["--attack", "no-such-attack", "--byzantine", "3"], "no-such-attack"),
        (["--model", "cnn"], "model='cnn'"),
        (["--set", "nope=1"], "unknown key 'nope'"),
        (["--set", "rule_params.bogus=1"], "bogus"),
        (["--byzantine", "15"], "f=15"),
        (["--set", "f=" + "[" * 20000 + "]" * 20000], "not valid YAML"),  # was a RecursionError traceback
    ],
)
def test_cli_bad_option_is_one_line_and_exit_2(args, needle, tmp_path):
    base = ["testbed", "--rule", MEAN, "--steps", "5", "--out", str(tmp_path)]
    res = runner.invoke(
        app, base + args if "--rule" not in args else ["testbed", *args, "--out", str(tmp_path)]
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert not any(tmp_path.iterdir())  # nothing written before the options were checked


# ----------------------------------------------------------------------------- the grid script


def _grid_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "testbed_grid.py"
    spec = importlib.util.spec_from_file_location("testbed_grid", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grid_cells_and_table(tmp_path):
    grid = _grid_module()
    cells = grid.cells("resam", 5, None)
    g = grid.GRIDS["resam"]  # the benchmark row, then every rule x attack, per beta and seed
    size = (1 + len(g["rules"]) * len(g["attacks"])) * len(g["betas"]) * 5
    assert len(cells) == size and len({c["name"] for c in cells}) == len(cells)
    (cc,) = {c["config"]["rule_params"]["tau"] for c in cells if c["name"].startswith("cc-tau0.5__")}
    assert cc == 0.5  # "cc:tau=0.5": a rule with parameters in the grid
    bench = [c for c in cells if "__benchmark__" in c["name"]]
    assert all(c["config"]["f"] == 0 and c["config"]["attack"] == "none" for c in bench)
    assert len(grid.cells("signguard", 5, ["krum/alie"])) == 5
    for seed, acc in ((1, 0.9), (2, 0.8)):  # two finished seeds of one cell
        run = tmp_path / "resam" / f"cw-median__alie__b0.99__s{seed}" / "testbed-x"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"final_accuracy": acc}))
    md = grid.table(tmp_path, "resam")
    (row,) = [ln for ln in md.splitlines() if ln.startswith("| cw-median |") and "85.0" in ln]
    assert "85.0 ± 7.1 (2)" in row


# ----------------------------------------------------------------------------- SAGA (paper 003)


def test_saga_table_update_equals_a_literal_per_sample_loop():
    from fedrec.testbed.saga import SagaTables, literal_saga_step

    gen = torch.Generator().manual_seed(0)
    n, J, P, b = 4, 9, 5, 3
    table0 = torch.randn(n, J, P, generator=gen, dtype=torch.float64)
    fast = SagaTables(table0)
    lit_table = [[table0[w, j].clone() for j in range(J)] for w in range(n)]
    lit_gbar = [sum(row) / J for row in lit_table]
    for _ in range(12):
        idx = torch.rand(n, J, generator=gen).argsort(1)[:, :b]
        grads = torch.randn(n, b, P, generator=gen, dtype=torch.float64)
        v = fast.step(idx, grads)
        want = literal_saga_step(
            lit_table, lit_gbar, idx.tolist(), [[grads[w, k] for k in range(b)] for w in range(n)]
        )
        torch.testing.assert_close(v, torch.stack(want), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            fast.table, torch.stack([torch.stack(r) for r in lit_table]), rtol=0, atol=0
        )
        # the incremental mean equals the recomputed table mean
        torch.testing.assert_close(fast.gbar, fast.table.mean(1), rtol=1e-12, atol=1e-12)


def test_saga_is_unbiased_and_exact_once_refreshed():
    """E_i[v] = f'_w(x) by enumerating the samples (batch 1), and after every sample has been refreshed
    at the same x, v = f'_w(x) with zero variance (ALGORITHMS.md 6.3)."""
    from fedrec.testbed.saga import SagaTables

    gen = torch.Generator().manual_seed(1)
    J, P = 6, 3
    g_now = torch.randn(J, P, generator=gen, dtype=torch.float64)  # per-sample gradients at x
    stale = torch.randn(1, J, P, generator=gen, dtype=torch.float64)
    full = g_now.mean(0)
    vs = []
    for i in range(J):
        t = SagaTables(stale)
        vs.append(t.step(torch.tensor([[i]]), g_now[i][None, None])[0])
    torch.testing.assert_close(torch.stack(vs).mean(0), full)
    t = SagaTables(stale)
    t.step(torch.arange(J)[None], g_now[None])  # every sample refreshed at x
    for i in range(J):
        torch.testing.assert_close(t.step(torch.tensor([[i]]), g_now[i][None, None])[0], full)


def test_saga_run_matches_a_literal_worker_loop_for_the_first_steps():
    """The testbed's SAGA estimator against a per-worker, per-sample literal: full table at x^0, then
    v = mean_batch(g_i(x) - table_i) + mean(table), refreshed at the batch (no momentum, no decay)."""
    cfg = TestbedConfig(n=3, rule=RECORD, steps=3, batch=4, estimator="saga", weight_decay=0.0, eval_every=3)
    RECORDED.clear()
    simulate(cfg)
    got = list(RECORDED)
    gens = generators(cfg.seed)
    data = load_digits(int(torch.randint(0, 2**31 - 1, (1,), generator=gens["split"])))
    shards = make_shards(
        data.y_train, cfg.n, cfg.shards, int(torch.randint(0, 2**31 - 1, (1,), generator=gens["shards"]))
    )
    model = Model(cfg.model, cfg.hidden)
    theta = model.init(gens["init"])

    def grad(th, j):
        th = th.clone().requires_grad_(True)
        z = model.logits(th[None], data.x_train[j][None, None])[0]
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, data.y_train[j][None]), th)
        return g

    table = [[grad(theta, int(j)) for j in shards[w]] for w in range(cfg.n)]
    for step in range(cfg.steps):
        pick = torch.rand(cfg.n, shards.shape[1], generator=gens["batches"]).argsort(1)[:, : cfg.batch]
        msgs = []
        for w in range(cfg.n):
            gbar = sum(table[w]) / len(table[w])
            new = {int(i): grad(theta, int(shards[w, i])) for i in pick[w]}
            msgs.append(sum(new[i] - table[w][i] for i in new) / cfg.batch + gbar)
            for i, g in new.items():
                table[w][i] = g
        torch.testing.assert_close(got[step], torch.stack(msgs), rtol=1e-9, atol=1e-12)
        theta = theta - cfg.lr * torch.stack(msgs).mean(0)


def test_a_pre_step_runs_in_the_testbed_and_bad_names_are_one_line():
    res = simulate(TestbedConfig(n=10, f=2, rule="geomed", pre="resample", rule_params={"s": 2}, steps=5,
                                 attack="sign-flip", estimator="saga", eval_every=5))  # fmt: skip
    assert torch.isfinite(res.theta).all()
    with pytest.raises(ValueError, match="pre='shuffle'"):
        TestbedConfig(pre="shuffle")
    with pytest.raises(ValueError, match="estimator='svrg'"):
        TestbedConfig(estimator="svrg")


def test_paper_003_and_004_grid_cells():
    grid = _grid_module()
    cells = grid.cells("brvr", 5, None)
    g = grid.GRIDS["brvr"]
    assert len(cells) == (1 + len(g["rules"]) * len(g["attacks"])) * 5
    (prop,) = [c["config"] for c in cells if c["name"] == "saga-rs-geomed__sample-duplicate__b0.0__s1"]
    assert prop["estimator"] == "saga" and prop["pre"] == "resample" and prop["rule_params"] == {"s": 2}
    assert prop["byzantine"] == "first" and prop["shards"] == "sorted" and prop["n"] == 30
    (flip,) = [c["config"] for c in cells if c["name"] == "sgd-geomed__sign-flip__b0.0__s2"]
    assert (
        flip["attack_params"] == {"c": -5.0} and flip["estimator"] == "sgd" and flip["byzantine"] == "random"
    )
    mt = {c["name"]: c["config"] for c in grid.cells("mixtailor", 1, None)}
    assert mt["mixtailor__ipm-eps10__b0.0__s1"]["attack_params"] == {"eps": 10.0}
    assert mt["mean__benchmark__b0.0__s1"]["f"] == 0
    for c in [*cells[:1], *grid.cells("mixtailor", 1, None)]:
        assert grid.missing(c["config"]) is None
        TestbedConfig(**c["config"])  # every cell is a valid config


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"model": "mlp", "hidden": 10**11}, "need ~"),  # was a 51 TB allocation traceback
        ({"model": "mlp", "hidden": 10**5, "estimator": "saga"}, "1865 vectors"),  # 1,797 samples + 68
        ({"steps": 2**70}, "2^62"),
        ({"seed": 2**70}, "2^62"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_up_front(kw, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        TestbedConfig(**kw)
    TestbedConfig(model="mlp", hidden=1000, estimator="saga")  # ~1 GB: fine
