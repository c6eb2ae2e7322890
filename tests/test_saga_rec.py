"""Local mini-batches and SAGA at the recommender's clients (paper 003; fedrec.federation.saga): the fast
batched client round equals the literal per-sample loop (reference.reference_local_client) for every
optimizer rule and both models; the SAGA message is unbiased over the local batches and exact once the
table is current; batches are keyed per client; SAGA runs resume exactly; bad settings are refused."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import ConfigError, load_config
from fedrec.data import split_per_user, synthetic
from fedrec.federation.clients import client_gradients, client_round
from fedrec.federation.reference import densify, reference_local_client
from fedrec.federation.saga import (
    LocalSamples,
    SagaTable,
    entry_positions,
    fixed_negatives_key,
    local_samples,
)
from fedrec.federation.server import aggregate, aggregation_weights
from fedrec.federation.simulation import FederatedRun
from fedrec.models import CSRTensors, TableLayout, gather_users, round_key, sample_negatives_keyed
from fedrec.optim import RULES, make_rule
from fedrec.protocol import ServerState

f64 = torch.float64


def _problem(seed: int, model: str, n_users: int = 8, n_items: int = 25, d: int = 3):
    inter = synthetic(n_users, n_items, d=3, mean_items=5, seed=seed)
    layout = TableLayout.for_model(model, n_items)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(layout.n_rows, d, generator=g, dtype=f64)
    U = torch.randn(n_users, d, generator=g, dtype=f64) if model == "mf" else None
    return inter, layout, theta, U, g


@pytest.mark.parametrize("saga", [False, True], ids=["minibatch", "saga"])
@pytest.mark.parametrize("model", ["fism", "mf"])
@pytest.mark.parametrize("rule_name", sorted(RULES))
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000), n_neg=st.integers(1, 2), b=st.integers(1, 4))
def test_local_rounds_equal_the_literal_per_sample_loop(rule_name, model, saga, seed, n_neg, b):
    inter, layout, theta, U, g = _problem(seed, model)
    csr = CSRTensors.from_interactions(inter)
    rule = make_rule(rule_name, eta=0.05)
    server = ServerState(theta, rule.init_state(theta), 0)
    table = SagaTable.create(csr, layout, theta.shape[1], n_neg, f64, "cpu") if saga else None
    ref_tables: dict[int, dict] = {c: {} for c in range(inter.n_users)}
    for t in range(1, 5):
        clients = torch.randperm(inter.n_users, generator=g)[:5].sort().values
        clients = clients[csr.counts()[clients] > 0]
        u = None if U is None else U[clients]
        cr = client_round(
            server, rule, layout, csr, clients, t, g, negatives=n_neg, gamma=1.0, lam=1e-2, user_vectors=u,
            local_batch=b, batch_key=round_key(seed, t), saga=table, seed=seed,
        )  # fmt: skip
        ptr = cr.batch.ptr
        if saga:  # each positive keeps its negatives: the fixed draw, the same every round
            fixed = sample_negatives_keyed(cr.batch, inter.n_items, n_neg, fixed_negatives_key(seed))
            assert torch.equal(cr.neg, fixed)
        for i, c in enumerate(clients.tolist()):
            lo, hi = int(ptr[i]), int(ptr[i + 1])
            chosen = torch.nonzero(cr.local.chosen[lo:hi]).flatten().tolist()
            assert len(chosen) == min(b, hi - lo)
            msg, gu = reference_local_client(
                server, rule, layout, csr, c, cr.neg[lo:hi], t, chosen, ref_tables[c] if saga else None,
                gamma=1.0, lam=1e-2, user_vector=None if U is None else U[c],
            )  # fmt: skip
            fast = densify(server, rule, cr.uploads, i, t)
            for k in msg:
                torch.testing.assert_close(fast[k], msg[k], rtol=1e-9, atol=1e-11)
            if gu is not None:
                torch.testing.assert_close(cr.grads.g_user[i], gu, rtol=1e-9, atol=1e-11)
        w = aggregation_weights(cr.uploads.n_examples, torch.ones(cr.uploads.n, dtype=torch.bool))
        server = aggregate(server, cr.uploads, w, rule, t)


def _dense(grads, n_clients: int, n_rows: int, d: int) -> torch.Tensor:
    out = torch.zeros(n_clients, n_rows, d, dtype=f64)
    out[grads.owner, grads.rows] = grads.g
    return out


@pytest.mark.parametrize("model", ["fism", "mf"])
def test_saga_is_unbiased_over_the_local_batches_and_exact_once_current(model):
    """Every batch of b of the J samples, enumerated: the SAGA message averages to the full gradient at
    any theta (E_I v = f'), as the plain J/b-scaled batch does; with the table refreshed at the current
    theta every batch gives f' itself (zero variance), and near it SAGA varies less than the plain batch."""
    inter, layout, theta, U, g = _problem(3, model, n_users=1, n_items=12)
    csr = CSRTensors.from_interactions(inter)
    batch = gather_users(csr, torch.zeros(1, dtype=torch.int64))
    J, b = batch.items.shape[0], 2
    assert J >= 4
    neg = sample_negatives_keyed(batch, inter.n_items, 2, 7)
    kw = {"gamma": 1.0, "user_vectors": U}
    everything = local_samples(csr, batch, None, 0)
    table = SagaTable.create(csr, layout, theta.shape[1], 2, f64, "cpu")
    client_gradients(
        theta, layout, batch, neg, lam=1e-2, local=everything, saga=table, **kw
    )  # filled at theta
    assert bool(table.filled.all())
    entries = entry_positions(csr, batch)

    def messages(at: torch.Tensor, saga: bool, lam: float) -> torch.Tensor:
        out = []
        for subset in itertools.combinations(range(J), b):
            chosen = torch.zeros(J, dtype=torch.bool)
            chosen[list(subset)] = True
            local = LocalSamples(entries, chosen, torch.where(chosen, J / b, 0.0).to(f64))
            copy = SagaTable({k: v.clone() for k, v in table.shares.items()}, table.filled.clone())
            res = client_gradients(
                at, layout, batch, neg, lam=lam, local=local, saga=copy if saga else None, **kw
            )
            out.append(_dense(res, 1, layout.n_rows, theta.shape[1]))
        return torch.stack(out)

    def full(at: torch.Tensor, lam: float) -> torch.Tensor:
        res = client_gradients(at, layout, batch, neg, lam=lam, local=everything, **kw)
        return _dense(res, 1, layout.n_rows, theta.shape[1])

    at_theta = messages(theta, True, 1e-2)
    torch.testing.assert_close(at_theta, full(theta, 1e-2).expand_as(at_theta), rtol=1e-9, atol=1e-12)
    moved = theta + 0.05 * torch.randn(theta.shape, generator=g, dtype=f64)
    saga_v = messages(moved, True, 1e-2)
    torch.testing.assert_close(saga_v.mean(0), full(moved, 1e-2), rtol=1e-9, atol=1e-12)
    # the plain batch's L2 term covers the rows it lists, which vary with the batch: compare the BPR part
    saga_0, plain_0, full_0 = messages(moved, True, 0.0), messages(moved, False, 0.0), full(moved, 0.0)
    torch.testing.assert_close(plain_0.mean(0), full_0, rtol=1e-9, atol=1e-12)
    spread = lambda v: float(((v - full_0) ** 2).sum(dim=(1, 2, 3)).mean())  # noqa: E731
    assert spread(saga_0) < 0.1 * spread(plain_0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 6))
def test_local_batches_are_keyed_per_client_and_take_min_b_j(seed, b):
    inter = synthetic(20, 15, d=3, mean_items=6, seed=seed)
    csr = CSRTensors.from_interactions(inter)
    users = torch.arange(inter.n_users)
    whole_batch = gather_users(csr, users)
    whole = local_samples(csr, whole_batch, b, round_key(seed, 2))
    counts = whole_batch.counts()
    picked = torch.zeros(inter.n_users, dtype=torch.int64).index_add(
        0, whole_batch.owner, whole.chosen.long()
    )
    assert torch.equal(picked, counts.clamp(max=b))
    expect = torch.where(whole.chosen, (counts / counts.clamp(max=b).clamp(min=1))[whole_batch.owner], 0.0)
    torch.testing.assert_close(whole.weight, expect.to(f64))
    part_users = users[seed % 2 :: 3]
    part = local_samples(csr, gather_users(csr, part_users), b, round_key(seed, 2))
    assert torch.equal(part.chosen, whole.chosen[torch.isin(users[whole_batch.owner], part_users)])


def test_local_batches_are_uniform_over_the_positives():
    inter = synthetic(1, 30, d=2, mean_items=10, seed=1)
    csr = CSRTensors.from_interactions(inter)
    batch = gather_users(csr, torch.zeros(1, dtype=torch.int64))
    J, b, draws = batch.items.shape[0], 3, 3000
    hits = sum(local_samples(csr, batch, b, round_key(5, t)).chosen.long() for t in range(draws))
    expected = draws * b / J
    chi2 = float(((hits - expected) ** 2 / expected).sum())
    assert chi2 < 3 * J  # J - 1 degrees of freedom: a fixed or skewed pick is far above this


def _cfg(tmp_path, model: str):
    cfg = load_config(
        None,
        [f"model.name={model}", "model.dim=4", "train.mode=federated", "federated.fraction=0.1",
         "federated.rounds=24", "federated.eval_every=8", "federated.checkpoint_every=6",
         "federated.variance_reduction=saga", "federated.local_batch=2", "train.lr=0.05",
         f"run.out_dir={tmp_path}", "run.device=cpu"],
    )  # fmt: skip
    return cfg


@pytest.mark.parametrize("model", ["fism", "mf"])
def test_saga_run_resumes_to_the_same_model_and_table(tmp_path, model):
    split = split_per_user(synthetic(60, 40, seed=1), seed=0)
    cfg = _cfg(tmp_path, model)
    straight = FederatedRun.create(cfg, split, torch.device("cpu"))
    straight.run()
    assert bool(straight.saga.filled.any())

    class Killed(Exception):
        pass

    def kill_at_15(ev):
        if ev["t"] == 15:
            raise Killed

    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    with pytest.raises(Killed):
        FederatedRun.create(cfg, split, torch.device("cpu")).run(
            run_dir, progress=kill_at_15, progress_every=1
        )
    resumed = FederatedRun.create(cfg, split, torch.device("cpu"))
    resumed.load(run_dir)
    assert resumed.server.t == 12
    resumed.run(run_dir)
    assert torch.equal(resumed.server.theta, straight.server.theta)
    for k, v in straight.saga.shares.items():
        assert torch.equal(resumed.saga.shares[k], v)
    assert torch.equal(resumed.saga.filled, straight.saga.filled)
    assert resumed.rounds_frame().equals(straight.rounds_frame())


def test_fixed_negatives_alone_keep_each_positives_negatives_and_no_table(tmp_path):
    """``federated.fixed_negatives`` without SAGA (its control): the same negatives every round, as
    SAGA draws them, and no table; inspecting a SAGA run's client round leaves its table untouched."""
    split = split_per_user(synthetic(60, 40, seed=1), seed=0)
    cfg = _cfg(tmp_path, "fism")
    cfg.federated.variance_reduction, cfg.federated.fixed_negatives = "none", True
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    assert run.saga is None
    clients = torch.arange(6)
    first, later = run.client_round(clients, 1), run.client_round(clients, 7)
    assert torch.equal(first.neg, later.neg)
    assert not torch.equal(first.local.chosen, later.local.chosen)  # the batches still change
    cfg.federated.variance_reduction = "saga"
    saga_run = FederatedRun.create(cfg, split, torch.device("cpu"))
    assert torch.equal(saga_run.client_round(clients, 1).neg, first.neg)
    assert not bool(saga_run.saga.filled.any())  # looked at, not changed


def test_saga_changes_the_run_and_plain_runs_are_unchanged(tmp_path):
    """SAGA and local batches join the run identity; left at their defaults, the round is the one of
    before (a run without them has no table and draws its negatives from the shared stream)."""
    split = split_per_user(synthetic(60, 40, seed=1), seed=0)
    cfg = _cfg(tmp_path, "fism")
    plain = load_config(None, ["model.dim=4", "train.mode=federated", "federated.fraction=0.1",
                               "federated.rounds=5", "train.lr=0.05", "run.device=cpu"])  # fmt: skip
    run = FederatedRun.create(plain, split, torch.device("cpu"))
    assert run.saga is None and run.state_dict()["saga"] is None
    cfg.federated.rounds = 5
    saga_run = FederatedRun.create(cfg, split, torch.device("cpu"))
    run.run()
    saga_run.run()
    assert not torch.equal(run.server.theta, saga_run.server.theta)


@pytest.mark.parametrize(
    ("override", "key"),
    [("federated.variance_reduction=svrg", "federated.variance_reduction"),
     ("federated.local_batch=0", "federated.local_batch"),
     ("federated.local_batch=2.5", "federated.local_batch")],
)  # fmt: skip
def test_bad_local_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["train.mode=federated", override])


def test_flower_refuses_saga():
    from fedrec.flower.server_app import check_flower_config

    cfg = load_config(None, ["train.mode=federated", "federated.variance_reduction=saga",
                             "federated.client_rng=per-client"])  # fmt: skip
    with pytest.raises(ConfigError, match="variance_reduction"):
        check_flower_config(cfg)
