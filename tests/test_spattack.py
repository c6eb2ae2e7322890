"""Spattack-O / Spattack-L (issue 11, Build item 3; ANCHORS.md 4.7): the benign sum cancelled on the
chosen rows (by hand, and as a zero aggregated gradient under the item-wise mean), popularity-sampled
rows, fixed or fresh Gaussian rows, and rule-consistent uploads in a simulated run."""

from __future__ import annotations

import pytest
import torch
from test_attacks_papers import make_ctx

from fedrec.attacks import SpattackL, SpattackO, make_attack, popular_rows
from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.federation.simulation import FederatedRun
from fedrec.optim import make_rule

f64 = torch.float64
# honest c0 lists rows {0, 2}, c1 {2, 5}, c2 {0}: benign sums S_0 = 1 + 4, S_2 = 3 + 5, S_5 = 2
HONEST_ROWS = [[0, 2], [2, 5], [0]]
HONEST_G = torch.tensor([[1.0], [3.0], [5.0], [2.0], [4.0]], dtype=f64)


def _ctx(byz_rows=([1], [3, 4]), rule: str = "sgd", popularity: torch.Tensor | None = None, seed: int = 0):
    ctx = make_ctx(make_rule(rule), list(byz_rows), HONEST_ROWS, d=1, honest_g=HONEST_G, seed=seed)
    ctx.row_popularity = popularity
    return ctx


def test_spattack_o_dense_cancels_the_benign_sum_by_hand():
    ptr, rows, g = SpattackO().craft(_ctx())
    # both Byzantine clients list the honest union {0, 2, 5} and send -S_r / 2
    assert ptr.tolist() == [0, 3, 6] and rows.tolist() == [0, 2, 5, 0, 2, 5]
    assert g.flatten().tolist() == [-2.5, -4.0, -1.0, -2.5, -4.0, -1.0]
    total = torch.zeros(9, dtype=f64).index_add_(0, rows, g[:, 0])
    total.index_add_(0, torch.tensor([0, 2, 2, 5, 0]), HONEST_G[:, 0])
    assert total.abs().max() == 0.0  # the per-row sum over all uploads: exactly 0


def test_spattack_o_popular_scales_by_the_clients_that_chose_each_row():
    pop = torch.tensor([5.0, 0.0, 3.0, 0.0, 0.0, 1.0, 2.0, 0.0, 7.0], dtype=f64)
    ctx = _ctx(byz_rows=([1], [3, 4], [6, 7, 8]), popularity=pop)
    ptr, rows, g = SpattackO(items="popular", n_items=2).craft(ctx)
    assert ptr.tolist() == [0, 2, 4, 6]
    benign = {0: 5.0, 2: 8.0, 5: 2.0}
    for i in range(3):
        mine = rows[ptr[i] : ptr[i + 1]].tolist()
        assert mine == sorted(set(mine)) and all(pop[r] > 0 for r in mine)
    chose = {r: rows.tolist().count(r) for r in set(rows.tolist())}
    for r, val in zip(rows.tolist(), g[:, 0].tolist(), strict=True):
        assert val == pytest.approx(-benign.get(r, 0.0) / chose[r])
    # n_items = None: as many rows as each client lists honestly (1, 2, 3)
    ptr, _, _ = SpattackO(items="popular").craft(ctx)
    assert ptr.diff().tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="row_popularity"):
        SpattackO(items="popular").craft(_ctx())


def test_popular_rows_follow_the_popularity_without_replacement():
    pop = torch.tensor([1.0, 0.0, 3.0, 6.0], dtype=f64)
    gen = torch.Generator().manual_seed(0)
    ptr, rows = popular_rows(pop, torch.ones(20000, dtype=torch.int64), gen)
    freq = torch.bincount(rows, minlength=4).to(f64) / 20000
    assert torch.allclose(freq, pop / pop.sum(), atol=0.015) and freq[1] == 0
    # k larger than the rows of nonzero popularity: capped, every client lists all three once
    ptr, rows = popular_rows(pop, torch.tensor([5, 3]), gen)
    assert ptr.tolist() == [0, 3, 6] and rows.tolist() == [0, 2, 3, 0, 2, 3]


def test_spattack_l_fixed_rows_are_the_same_for_every_attacker_and_round():
    ctx = _ctx()
    ptr, rows, g = SpattackL(sigma=2.0).craft(ctx)
    assert ptr.tolist() == [0, 9, 18] and rows.tolist() == list(range(9)) * 2  # dense: the whole table
    fixed = torch.randn(9, 1, generator=torch.Generator().manual_seed(0), dtype=f64)
    assert torch.equal(g[:9], 2.0 * fixed) and torch.equal(g[9:], 2.0 * fixed)
    assert torch.equal(SpattackL(sigma=2.0).craft(_ctx(seed=5))[2], g)  # another round, same rows
    assert not torch.equal(SpattackL(sigma=2.0, seed=1).craft(ctx)[2], g)
    fresh = SpattackL(fresh=True).craft(ctx)[2]
    assert not torch.equal(fresh[:9], fresh[9:])
    for bad in ({"sigma": 0.0}, {"items": "all"}, {"n_items": 0}, {"seed": -1}, {"fresh": 1}):
        with pytest.raises(ValueError):
            make_attack("spattack-l", **bad)


def _run(attack: str, defense: str, params: dict | None = None, optimizer: str = "adam") -> FederatedRun:
    cfg = Config()
    cfg.model.dim = 4
    cfg.train.optimizer, cfg.train.lr = optimizer, 0.05
    cfg.federated.fraction, cfg.federated.rounds = 0.5, 4
    cfg.attack.name, cfg.attack.fraction, cfg.attack.params = attack, 0.3, params or {}
    cfg.defense.name = defense
    cfg.defense.max_weight_share = 1.0
    split = split_per_user(synthetic(40, 30, mean_items=6, seed=1), seed=1)
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    run.server.theta = run.server.theta.double()
    run.server.state = {k: v.double() for k, v in run.server.state.items()}
    return run


@pytest.mark.parametrize("params", [{}, {"items": "popular", "n_items": 200}])
def test_spattack_o_under_the_item_mean_freezes_its_rows_at_the_default(params):
    """Under ``grad-item-mean`` the aggregated gradient of every row the attack lists is 0 (the honest
    sum and the attack's cancel), so those rows take the zero-gradient step: the default. Dense: every
    row an honest client lists."""
    run = _run("spattack-o", "grad-item-mean", params)
    run.step()
    seen = {}
    run.on_round = lambda _r, out: seen.update(out=out)
    prev = {"theta": run.server.theta, **run.server.state}
    default = run.rule.default_rows(prev, run.server.t + 1)
    run.step()
    up, dec = seen["out"].uploads, seen["out"].decision
    byz = run.byzantine[up.client_ids]
    assert bool(byz.any()) and bool((dec.reasons == 0).all())  # rule-consistent: all accepted
    owner = torch.repeat_interleave(torch.arange(up.n), up.ptr.diff())
    attacked = torch.unique(up.rows[byz[owner]])
    honest = torch.unique(up.rows[~byz[owner]])
    assert attacked.numel() > 0
    theta = run.server.theta
    torch.testing.assert_close(theta[attacked], default["theta"][attacked], rtol=1e-9, atol=1e-9)
    # rows only honest clients list do move (popular sampling leaves some out)
    only_honest = honest[~torch.isin(honest, attacked)]
    if only_honest.numel():
        assert not torch.allclose(theta[only_honest], default["theta"][only_honest])


def test_spattack_runs_with_popularity_from_the_training_data():
    run = _run("spattack-l", "grad-item-median", {"items": "popular", "n_items": 5})
    pop = run.row_popularity
    n_items = run.layout.n_items
    assert pop.shape == (2 * n_items,) and torch.equal(pop[:n_items], pop[n_items:])  # FISM: P and Q
    assert int(pop[:n_items].sum()) == run.train.indices.shape[0]
    for _ in range(2):
        run.step()
    assert torch.isfinite(run.server.theta).all()
