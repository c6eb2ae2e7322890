"""Item-wise selection (issue 11, Build item 3): Krum / Multi-Krum / Krum* per row over the row's
listers; hand cases, the per-row f and the keep-all fallback, and a property test against a literal
per-row loop for every registered rule with an item form."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.defenses import DEFENSES, RULES, ClientVectors, Defense
from fedrec.defenses.itemwise import item_krum, item_mean, row_f
from fedrec.federation.reference import literal_row
from fedrec.federation.simulation import FederatedRun

ITEM_RULES = [name for name, spec in RULES.items() if spec.item is not None]


def _sparse(entries: dict[int, dict[int, list[float]]], n: int, n_rows: int, d: int) -> ClientVectors:
    """Client -> {row: [d values]} as sparse vectors (a listed zero stays listed)."""
    x = torch.zeros(n, n_rows, d, dtype=torch.float64)
    listed = torch.zeros(n, n_rows, dtype=torch.bool)
    for i, by_row in entries.items():
        for r, val in by_row.items():
            x[i, r], listed[i, r] = torch.tensor(val, dtype=torch.float64), True
    client, row = listed.nonzero(as_tuple=True)
    ptr = torch.zeros(n + 1, dtype=torch.int64)
    ptr[1:] = listed.sum(1).cumsum(0)
    return ClientVectors(ptr=ptr, rows=row, values=x[client, row], n_rows=n_rows)


def _by_row(rows: torch.Tensor, values: torch.Tensor) -> dict[int, list[float]]:
    return {int(r): values[p].to(torch.float64).tolist() for p, r in enumerate(rows)}


def test_item_krum_by_hand():
    """Row 0: 6 listers, 2 of them far (f = 2 -> f_0 = 2, 6 - 2 - 2 = 2 neighbours); row 1: 3 listers
    (f_1 = 0, one neighbour); row 2: 2 listers (too few for Krum: the mean); row 3: 1 lister."""
    v = _sparse(
        {
            0: {0: [1.0, 0.0], 1: [0.0, 0.0], 2: [4.0, 4.0]},
            1: {0: [1.0, 1.0], 1: [1.0, 0.0], 2: [0.0, 2.0]},
            2: {0: [2.0, 1.0], 1: [9.0, 9.0]},
            3: {0: [1.5, 0.5], 3: [7.0, -7.0]},
            4: {0: [50.0, 50.0]},
            5: {0: [-60.0, 40.0]},
        },
        n=6, n_rows=4, d=2,
    )  # fmt: skip
    rows, krum = item_krum(v, 2, m=1)
    got = _by_row(rows, krum)
    # row 0, 2 neighbours each: (1,0): 1 + 0.5 = 1.5; (1,1): 0.5 + 1 = 1.5; (2,1): 0.5 + 1 = 1.5;
    # (1.5,0.5): 0.5 + 0.5 = 1.0 -> the fourth client wins
    assert got[0] == [1.5, 0.5]
    # row 1: (0,0), (1,0), (9,9): nearest-other distances 1, 1, 145 -> the lower index, (0, 0)
    assert got[1] == [0.0, 0.0]
    assert got[2] == [2.0, 3.0] and got[3] == [7.0, -7.0]  # the mean of the listers
    # Multi-Krum keeps c_r - f_r: row 0 the four central rows, row 1 all 3 (f_1 = 0)
    got = _by_row(*item_krum(v, 2))
    assert got[0] == pytest.approx([5.5 / 4, 2.5 / 4])
    assert got[1] == pytest.approx([10 / 3, 3.0])
    # an explicit m is capped at c_r: m = 5 keeps 5 of row 0's 6 and all of row 1's 3
    got = _by_row(*item_krum(v, 2, m=5))
    assert got[0] == pytest.approx([(5.5 + 50) / 5, (2.5 + 50) / 5])
    with pytest.raises(ValueError):
        item_krum(v, -1)
    with pytest.raises(ValueError):
        item_krum(v, 1, m=0)


def test_per_row_f_and_the_keep_all_rows():
    counts = torch.tensor([1, 2, 3, 4, 5, 6, 7, 20])
    # Krum (min_n = f + 3): f_r = min(f, (c - 1) // 2, c - 3); negative: keep all listers
    assert row_f(counts, 3, 3).tolist() == [-2, -1, 0, 1, 2, 2, 3, 3]
    # Krum* (min_n = f + 2)
    assert row_f(counts, 3, 2).tolist() == [-1, 0, 1, 1, 2, 2, 3, 3]
    # the literal per-row form agrees: c = 2 under Krum is the mean, c = 3 runs with f_r = 0
    spec = RULES["krum"]
    two = [torch.tensor([0.0, 0.0]), torch.tensor([4.0, 2.0])]
    assert literal_row(spec, two, 5, {}).tolist() == [2.0, 1.0]
    three = [torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([10.0])]
    assert literal_row(spec, three, 5, {}).tolist() == [0.0]


def test_item_mean_is_the_mean_of_the_listers_not_of_all_clients():
    v = _sparse({0: {0: [3.0]}, 1: {0: [5.0], 1: [2.0]}, 2: {}}, n=3, n_rows=2, d=1)
    rows, mean = item_mean(v)
    assert rows.tolist() == [0, 1] and mean.flatten().tolist() == [4.0, 2.0]


@st.composite
def sparse_problems(draw):
    n, n_rows, d = draw(st.integers(1, 9)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    listed = draw(st.lists(st.booleans(), min_size=n * n_rows, max_size=n * n_rows))
    # small halves make ties in Krum scores (exact in float64): the lower client must win both ways
    vals = draw(st.lists(st.integers(-4, 4), min_size=n * n_rows * d, max_size=n * n_rows * d))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    mask = torch.tensor(listed).reshape(n, n_rows)
    x = torch.tensor(vals, dtype=dtype).reshape(n, n_rows, d) / 2
    client, row = mask.nonzero(as_tuple=True)
    ptr = torch.zeros(n + 1, dtype=torch.int64)
    ptr[1:] = mask.sum(1).cumsum(0)
    v = ClientVectors(ptr=ptr, rows=row, values=x[client, row], n_rows=n_rows)
    return v, draw(st.integers(0, 4)), draw(st.sampled_from([None, 1, 2, 3]))


def _literal_loop(v: ClientVectors, rule: str, f: int, params: dict) -> dict[int, list[float]]:
    """The literal per-item loop: a Python loop over the rows, the rule's literal form on each."""
    listers: dict[int, list[torch.Tensor]] = {}
    for i in range(v.n):
        for e in range(int(v.ptr[i]), int(v.ptr[i + 1])):
            listers.setdefault(int(v.rows[e]), []).append(v.values[e].to(torch.float64))
    return {r: literal_row(RULES[rule], vals, f, params).tolist() for r, vals in sorted(listers.items())}


def _params(rule: str, m: int | None) -> dict:
    takes = RULES[rule].params
    return {k: m for k in ("m", "q") if k in takes and m is not None}


@settings(max_examples=250, deadline=None)
@given(sparse_problems())
def test_every_item_rule_equals_a_literal_per_row_loop(problem):
    v, f, m = problem
    for rule in ITEM_RULES:
        params = _params(rule, m)
        rows, values = RULES[rule].item(v, f, **params)
        want = _literal_loop(v, rule, f, params)
        assert rows.tolist() == list(want), rule
        assert values.dtype == v.values.dtype
        tol = 1e-6 if v.values.dtype == torch.float32 else 1e-12
        for r, got in _by_row(rows, values).items():
            assert got == pytest.approx(want[r], rel=tol, abs=tol), (rule, r)


@pytest.mark.parametrize("distance", ["l1", "l3", "linf"])
@pytest.mark.parametrize("seed", range(4))
def test_item_krum_with_lp_distances_equals_the_literal_loop(distance, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 8, 3, generator=gen, dtype=torch.float64)
    x[torch.rand(12, 8, generator=gen) < 0.4] = 0.0  # sparse: rows of 1 to 12 listers
    v = ClientVectors.from_dense(x)
    for rule, params in (("krum", {"distance": distance}), ("multi-krum", {"distance": distance, "m": 3})):
        rows, values = RULES[rule].item(v, 2, **params)
        want = _literal_loop(v, rule, 2, params)
        assert rows.tolist() == list(want)
        for r, got in _by_row(rows, values).items():
            assert got == pytest.approx(want[r], rel=1e-12, abs=1e-12)


def test_presets_and_the_flat_sparsity_record():
    for name in ("grad-item-krum", "grad-item-multi-krum", "grad-item-mean"):
        d = DEFENSES[name]
        assert d.scope == "item" and d.space == "gradient" and not d.coordinatewise
    assert DEFENSES["item-median"].coordinatewise
    # a flat selector with a per-row form is not a flat coordinate-wise rule (no sparsity warning)
    assert not DEFENSES["a-rfrs"].coordinatewise
    with pytest.raises(ValueError, match="scope"):
        Defense("bad", rule="geomed", scope="item")  # no per-row form


def _sparse_run(defense: str, attack: str = "none") -> FederatedRun:
    cfg = Config()
    cfg.model.dim = 4
    cfg.federated.fraction, cfg.federated.rounds = 0.2, 3
    cfg.attack.name, cfg.attack.fraction = attack, 0.2
    cfg.defense.name = defense
    split = split_per_user(synthetic(60, 80, mean_items=8, seed=0), seed=0)
    return FederatedRun.create(cfg, split, torch.device("cpu"))


def test_item_krum_run_moves_theta_and_records_no_flat_sparsity():
    run = _sparse_run("grad-item-krum", "gradient-ascent")
    before = run.server.theta.clone()
    for _ in range(3):
        run.step()
    assert not torch.equal(run.server.theta, before)
    assert run.sparsity.summary() is None
