"""The fast federated round against the literal dense reference (paper 000 Algorithms 1-2), for every
optimizer rule and both models, over several rounds; and resumption of a killed run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.federation.clients import PrivateState, client_gradients, honest_uploads, private_step
from fedrec.federation.reference import densify, reference_round
from fedrec.federation.server import aggregate, aggregation_weights
from fedrec.federation.simulation import FederatedRun
from fedrec.models import (
    CSRTensors,
    TableLayout,
    gather_users,
    round_key,
    sample_negatives,
    sample_negatives_keyed,
)
from fedrec.models.batch import mix64, mix64_int
from fedrec.optim import make_rule
from fedrec.protocol import ServerState

RULES = {
    "adam": {"eta": 0.05},
    "sgd": {"eta": 0.05},
    "momentum": {"eta": 0.05},
    "adagrad": {"eta": 0.05},
    "rmsprop": {"eta": 0.05},
}


def _problem(seed: int, model: str, n_users: int = 12, n_items: int = 30, d: int = 4):
    inter = synthetic(n_users, n_items, d=3, mean_items=5, seed=seed)
    layout = TableLayout.for_model(model, n_items)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(layout.n_rows, d, generator=g, dtype=torch.float64)
    U = torch.randn(n_users, d, generator=g, dtype=torch.float64) if model == "mf" else None
    return inter, layout, theta, U, g


@pytest.mark.parametrize("model", ["fism", "mf"])
@pytest.mark.parametrize("rule_name", list(RULES))
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), n_neg=st.integers(1, 2))
def test_fast_rounds_equal_reference(rule_name, model, seed, n_neg):
    inter, layout, theta, U, g = _problem(seed, model)
    rule = make_rule(rule_name, **RULES[rule_name])
    csr = CSRTensors.from_interactions(inter)
    fast = ServerState(theta, rule.init_state(theta), 0)
    ref = fast.clone()
    priv = None
    if U is not None:
        priv = PrivateState(U.clone(), rule.init_state(U), torch.zeros(inter.n_users, dtype=torch.int64))
        ref_priv = PrivateState(U.clone(), rule.init_state(U), torch.zeros(inter.n_users, dtype=torch.int64))
    for t in range(1, 5):
        clients = torch.randperm(inter.n_users, generator=g)[:5].sort().values
        batch = gather_users(csr, clients)
        neg = sample_negatives(batch, inter.n_items, n_neg, g)
        u = None if priv is None else priv.u[clients]
        grads = client_gradients(fast.theta, layout, batch, neg, gamma=1.0, lam=1e-2, user_vectors=u)
        uploads = honest_uploads(fast, rule, grads, batch, t)
        if priv is not None:
            private_step(priv, rule, clients, grads.g_user)
        w = aggregation_weights(uploads.n_examples, torch.ones(uploads.n, dtype=torch.bool))
        fast = aggregate(fast, uploads, w, rule, t)

        negs = [neg[batch.ptr[i] : batch.ptr[i + 1]] for i in range(len(clients))]
        ref_u = None if priv is None else ref_priv.u[clients]
        ref, ref_grads_u = reference_round(
            ref, rule, layout, csr, clients.tolist(), negs, t, gamma=1.0, lam=1e-2, user_vectors=ref_u
        )
        if priv is not None:
            private_step(ref_priv, rule, clients, torch.stack(ref_grads_u))
            torch.testing.assert_close(priv.u, ref_priv.u, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(fast.theta, ref.theta, rtol=1e-9, atol=1e-11)
        for k in rule.state_names:
            torch.testing.assert_close(fast.state[k], ref.state[k], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("rule_name", list(RULES))
def test_aggregate_equals_weighted_mean_of_dense_messages(rule_name):
    """Section 5's identity for arbitrary (not honest) uploads, arbitrary accepted set and weights."""
    inter, layout, theta, _, g = _problem(3, "fism")
    rule = make_rule(rule_name, **RULES[rule_name])
    server = ServerState(
        theta, {k: torch.rand(theta.shape, generator=g, dtype=theta.dtype) for k in rule.state_names}, 6
    )
    batch = gather_users(CSRTensors.from_interactions(inter), torch.arange(6))
    neg = sample_negatives(batch, inter.n_items, 1, g)
    uploads = honest_uploads(
        server, rule, client_gradients(theta, layout, batch, neg, gamma=1.0, lam=0.0), batch, 7
    )
    uploads.theta = uploads.theta + torch.randn(uploads.theta.shape, generator=g, dtype=theta.dtype)
    accepted = torch.tensor([True, False, True, True, False, True])
    w = aggregation_weights(uploads.n_examples, accepted)
    new = aggregate(server, uploads, w, rule, 7)
    dense = [densify(server, rule, uploads, i, 7) for i in range(6)]
    for key in ("theta", *rule.state_names):
        want = sum(w[i] * dense[i][key] for i in range(6))
        got = new.theta if key == "theta" else new.state[key]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert server.theta.data_ptr() != new.theta.data_ptr()


def test_weights_are_n_examples_over_accepted_total():
    w = aggregation_weights(torch.tensor([10, 30, 60]), torch.tensor([True, True, False]))
    np.testing.assert_allclose(w.numpy(), [0.25, 0.75, 0.0])


def _cfg(tmp_path, model="fism", optimizer="adam") -> Config:
    cfg = Config()
    cfg.model.name, cfg.model.dim = model, 8
    cfg.train.optimizer, cfg.train.lr = optimizer, 0.01
    cfg.federated.fraction, cfg.federated.rounds = 0.1, 30
    cfg.federated.eval_every, cfg.federated.checkpoint_every = 10, 5
    cfg.run.out_dir, cfg.run.device = str(tmp_path), "cpu"
    return cfg


@pytest.mark.parametrize("model", ["fism", "mf"])
def test_resume_reaches_the_same_final_model(tmp_path, model):
    split = split_per_user(synthetic(60, 40, seed=1), seed=0)
    cfg = _cfg(tmp_path, model)
    straight = FederatedRun.create(cfg, split, torch.device("cpu"))
    straight.run()

    killed = FederatedRun.create(cfg, split, torch.device("cpu"))
    run_dir = tmp_path / "killed"
    run_dir.mkdir()

    class Killed(Exception):
        pass

    def kill_at_17(ev):
        if ev["t"] == 17:
            raise Killed

    with pytest.raises(Killed):
        killed.run(run_dir, progress=kill_at_17, progress_every=1)
    resumed = FederatedRun.create(cfg, split, torch.device("cpu"))
    resumed.load(run_dir)
    assert resumed.server.t == 15
    resumed.run(run_dir)
    assert torch.equal(resumed.server.theta, straight.server.theta)
    for k in straight.server.state:
        assert torch.equal(resumed.server.state[k], straight.server.state[k])
    if model == "mf":
        assert torch.equal(resumed.private.u, straight.private.u)
    assert resumed.metric_rows == straight.metric_rows
    assert resumed.rounds_frame().equals(straight.rounds_frame())


def test_a_round_past_the_runs_length_is_refused_before_anything_moves(tmp_path):
    """A notebook that calls ``step()`` once too often gets one clear error, and the run stays at its
    last round with its record intact (the round record is sized for ``federated.rounds``)."""
    split = split_per_user(synthetic(60, 40, seed=1), seed=0)
    cfg = _cfg(tmp_path, "fism")
    cfg.federated.rounds = 3
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    run.run()
    theta, frame = run.server.theta.clone(), run.rounds_frame()
    with pytest.raises(RuntimeError, match=r"round 4 is past the run.s 3 rounds"):
        run.step()
    assert run.server.t == 3 and torch.equal(run.server.theta, theta)
    assert run.rounds_frame().equals(frame)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n_neg=st.integers(1, 3))
def test_keyed_negatives_do_not_depend_on_the_rest_of_the_batch(seed, n_neg):
    """federated.client_rng = per-client: a user's negatives are a function of (key, user) only, so a
    process holding some of the round's users (a Flower SuperNode) draws what the whole batch would;
    and they are uniform non-positives like the shared stream's."""
    inter = synthetic(20, 15, d=3, mean_items=6, seed=seed)
    csr = CSRTensors.from_interactions(inter)
    users = torch.arange(inter.n_users)
    key = round_key(seed, 3)
    whole = sample_negatives_keyed(gather_users(csr, users), inter.n_items, n_neg, key)
    part_users = users[seed % 2 :: 3]
    part = sample_negatives_keyed(gather_users(csr, part_users), inter.n_items, n_neg, key)
    owner = gather_users(csr, users).owner
    assert torch.equal(part, whole[torch.isin(users[owner], part_users)])
    pos = set(zip(users[owner].tolist(), gather_users(csr, users).items.tolist(), strict=True))
    assert not any((int(u), int(j)) in pos for u, row in zip(users[owner], whole, strict=True) for j in row)
    assert int(whole.min()) >= 0 and int(whole.max()) < inter.n_items
    other = sample_negatives_keyed(gather_users(csr, users), inter.n_items, n_neg, round_key(seed, 4))
    assert not torch.equal(other, whole)  # a new round, new draws


@settings(max_examples=200, deadline=None)
@given(x=st.integers(-(2**63), 2**63 - 1))
def test_the_round_key_mixes_as_the_int64_tensor_mix64(x):
    """``mix64_int`` (Python integers, the round key's) against ``mix64`` on an int64 tensor; SplitMix64's
    finaliser of 0 by hand."""
    assert mix64_int(x) == int(mix64(torch.tensor([x], dtype=torch.int64))[0])
    assert mix64_int(0) == -2152535657050944081  # 0xE220A8397B1DCDAF, SplitMix64's first output of seed 0


def test_every_seed_the_config_allows_has_round_keys():
    """A seed near the config's bound (2^62) once overflowed the int64 tensor the key was built in."""
    seed = 2**62 - 1
    keys = {round_key(seed + k, t) for k in (0, 2, 3, 4, 5) for t in range(3)}
    assert len(keys) == 15 and all(-(2**63) <= k < 2**63 for k in keys)
    assert round_key(7, 11) == int(mix64(torch.tensor([7 * 1_000_003 + 11], dtype=torch.int64))[0])


def test_keyed_negatives_are_uniform_over_non_positives():
    inter = synthetic(1, 10, d=2, mean_items=3, seed=0)
    csr = CSRTensors.from_interactions(inter)
    batch = gather_users(csr, torch.zeros(1, dtype=torch.int64))
    draws = torch.cat([sample_negatives_keyed(batch, 10, 500, round_key(0, t)).flatten() for t in range(40)])
    counts = torch.bincount(draws, minlength=10).double()
    free = counts[counts > 0]
    assert free.shape[0] == 10 - batch.items.shape[0]
    assert float((free / free.mean() - 1).abs().max()) < 0.1  # 20,000 draws over <= 9 items
