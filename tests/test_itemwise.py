"""Item-wise coordinate-wise rules (issue 16): on sparse uploads the flat median of deltas is the
default (absent clients vote 0), the item-wise one aggregates over each row's listers; hand cases, a
property test against a literal per-row loop, and the flat rules' sparsity warning in a run."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.defenses import DEFENSES, ClientVectors, Defense, coordinate_median, trimmed_mean
from fedrec.defenses.trimmed import item_median, item_trimmed_mean
from fedrec.federation.simulation import FederatedRun


def _sparse(entries: dict[int, dict[int, float]], n: int, n_rows: int) -> ClientVectors:
    """Client -> {row: value} (d = 1) as sparse vectors."""
    x = torch.zeros(n, n_rows, 1, dtype=torch.float64)
    listed = torch.zeros(n, n_rows, dtype=torch.bool)
    for i, by_row in entries.items():
        for r, val in by_row.items():
            x[i, r, 0], listed[i, r] = val, True
    client, row = listed.nonzero(as_tuple=True)
    ptr = torch.zeros(n + 1, dtype=torch.int64)
    ptr[1:] = listed.sum(1).cumsum(0)
    return ClientVectors(ptr=ptr, rows=row, values=x[client, row], n_rows=n_rows)


def _dense_result(rows: torch.Tensor, values: torch.Tensor, n_rows: int) -> list[float]:
    out = torch.zeros(n_rows, dtype=torch.float64)
    out[rows] = values[:, 0].to(torch.float64)
    return out.tolist()


# 5 clients, 4 rows, every row listed by at most 2 of them: the flat median sees >= 3 zeros everywhere
HAND = {0: {0: 1.0, 1: 2.0}, 1: {0: 3.0}, 2: {2: -4.0}, 3: {2: -2.0}, 4: {3: 6.0}}


def test_flat_median_of_sparse_deltas_is_the_default_and_item_median_is_not():
    v = _sparse(HAND, n=5, n_rows=4)
    assert _dense_result(*coordinate_median(v), 4) == [0.0, 0.0, 0.0, 0.0]  # delta 0: the default
    # flat trimmed mean, f = 1: the middle 3 of 5, e.g. row 0 (0, 0, 0, 1, 3) -> 1/3: shrunk towards 0
    assert _dense_result(*trimmed_mean(v, 1), 4) == pytest.approx([1 / 3, 0.0, -2 / 3, 0.0])
    # by hand: row 0 median(1, 3) = 2; row 1 median(2) = 2; row 2 median(-4, -2) = -3; row 3 = 6
    assert _dense_result(*item_median(v), 4) == [2.0, 2.0, -3.0, 6.0]
    # c_r <= 2, so t_r = min(1, (c_r - 1) // 2) = 0: the plain mean of the listers
    assert _dense_result(*item_trimmed_mean(v, 1), 4) == [2.0, 2.0, -3.0, 6.0]


def test_item_trimmed_mean_caps_the_trim_per_row():
    # 9 clients, row 0 listed by 4 (1, 2, 9, 4), row 1 by 1 (7)
    v = _sparse({0: {0: 1.0}, 1: {0: 2.0}, 2: {0: 9.0}, 3: {0: 4.0}, 8: {1: 7.0}}, n=9, n_rows=2)
    assert _dense_result(*coordinate_median(v), 2) == [0.0, 0.0]
    # t_0 = min(f, 1) = 1: mean(2, 4) = 3 for every f >= 1; t_1 = 0: 7
    for f in (1, 2, 3):
        assert _dense_result(*item_trimmed_mean(v, f), 2) == [3.0, 7.0]
    assert _dense_result(*item_trimmed_mean(v, 0), 2) == [4.0, 7.0]  # no trim: mean(1, 2, 9, 4)
    assert _dense_result(*item_median(v), 2) == [3.0, 7.0]
    with pytest.raises(ValueError):
        item_trimmed_mean(v, -1)


def _literal(v: ClientVectors, rule: str, f: int) -> dict[int, list[float]]:
    """Per row, per coordinate, over the clients listing the row: Python lists and sorted()."""
    listers: dict[int, list[list[float]]] = {}
    for i in range(v.n):
        for e in range(int(v.ptr[i]), int(v.ptr[i + 1])):
            listers.setdefault(int(v.rows[e]), []).append(v.values[e].to(torch.float64).tolist())
    out = {}
    for r, vals in listers.items():
        c, res = len(vals), []
        for k in range(v.d):
            s = sorted(x[k] for x in vals)
            if rule == "median":
                res.append(0.5 * (s[(c - 1) // 2] + s[c // 2]))
            else:
                t = min(f, (c - 1) // 2)
                res.append(sum(s[t : c - t]) / (c - 2 * t))
        out[r] = res
    return out


@st.composite
def sparse_problems(draw):
    n, n_rows, d = draw(st.integers(1, 8)), draw(st.integers(1, 7)), draw(st.integers(1, 3))
    listed = draw(st.lists(st.booleans(), min_size=n * n_rows, max_size=n * n_rows))
    # small integers make ties, halves make even-count medians non-trivial
    vals = draw(st.lists(st.integers(-4, 4), min_size=n * n_rows * d, max_size=n * n_rows * d))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    mask = torch.tensor(listed).reshape(n, n_rows)
    x = torch.tensor(vals, dtype=dtype).reshape(n, n_rows, d) / 2
    client, row = mask.nonzero(as_tuple=True)
    ptr = torch.zeros(n + 1, dtype=torch.int64)
    ptr[1:] = mask.sum(1).cumsum(0)
    v = ClientVectors(ptr=ptr, rows=row, values=x[client, row], n_rows=n_rows)  # listed zeros stay listed
    return v, draw(st.integers(0, 4))


@settings(max_examples=300, deadline=None)
@given(sparse_problems())
def test_item_rules_equal_a_literal_per_row_loop(problem):
    v, f = problem
    for rule, fn in (("median", item_median), ("trmean", lambda w: item_trimmed_mean(w, f))):
        rows, values = fn(v)
        expected = _literal(v, rule, f)
        assert rows.tolist() == sorted(expected)
        assert values.dtype == v.values.dtype
        got = {int(r): values[p].to(torch.float64).tolist() for p, r in enumerate(rows)}
        for r, want in expected.items():
            assert got[r] == pytest.approx(want, rel=1e-6 if v.values.dtype == torch.float32 else 1e-12)


@settings(max_examples=300, deadline=None)
@given(sparse_problems(), st.lists(st.sampled_from([float("nan"), float("inf"), -float("inf")]), max_size=3),
       st.randoms(use_true_random=False))  # fmt: skip
def test_item_median_padded_and_sorted_ways_pick_the_same_numbers(problem, odd, rnd):
    """The padded block (a sort per row) and the all-entries sort give bit-identical medians, with NaN
    and infinite values among the listed ones (NaN sorts last in both)."""
    v, _ = problem
    values = v.values.clone()
    for x in odd:
        if values.numel():
            values.view(-1)[rnd.randrange(values.numel())] = x
    v = ClientVectors(ptr=v.ptr, rows=v.rows, values=values, n_rows=v.n_rows)
    rows_p, med_p = item_median(v, padded=True)
    rows_s, med_s = item_median(v, padded=False)
    assert torch.equal(rows_p, rows_s) and med_p.dtype == med_s.dtype
    torch.testing.assert_close(med_p, med_s, rtol=0, atol=0, equal_nan=True)
    auto = item_median(v)[1]
    torch.testing.assert_close(auto, med_s, rtol=0, atol=0, equal_nan=True)


def test_registry_scopes():
    assert DEFENSES["item-median"].scope == "item" and DEFENSES["cw-median"].scope == "flat"
    assert DEFENSES["grad-item-median"].space == "gradient"
    # only rules with a per-row form run item-wise
    assert all(d.scope == "flat" for d in DEFENSES.values() if d.spec.item is None)
    with pytest.raises(ValueError, match="scope"):
        Defense("bad", rule="geomed", scope="item")
    with pytest.raises(ValueError, match="scope"):
        Defense("bad", rule="cw-median", scope="rows")


def _sparse_run(defense: str) -> FederatedRun:
    cfg = Config()
    cfg.model.dim = 4
    cfg.federated.fraction, cfg.federated.rounds = 0.05, 3
    cfg.defense.name = defense
    split = split_per_user(synthetic(200, 2000, mean_items=5, seed=0), seed=0)
    return FederatedRun.create(cfg, split, torch.device("cpu"))


def test_flat_median_run_keeps_the_default_and_warns_once(caplog):
    """A whole round: with 10 clients listing ~10 of 4000 rows each, the flat median leaves theta at
    the default (a zero-gradient step), the item-wise median moves it; the flat run warns once and
    measures the share of rows below half."""
    flat, item = _sparse_run("cw-median"), _sparse_run("item-median")
    for run in (flat, item):
        run.step()  # past round 1
    default = flat.rule.default_rows({"theta": flat.server.theta, **flat.server.state}, flat.server.t + 1)
    with caplog.at_level(logging.WARNING, logger="fedrec.federation.sparsity"):
        flat.step()
        flat.step()
    assert torch.equal(flat.server.theta, default["theta"])
    warnings = [r for r in caplog.records if "flat coordinate-wise" in r.getMessage()]
    assert len(warnings) == 1
    s = flat.sparsity.summary()
    assert s["rounds_observed"] == 3 and s["warned"] and s["rows_below_half_mean"] > 0.5
    before = item.rule.default_rows({"theta": item.server.theta, **item.server.state}, item.server.t + 1)
    item.step()
    assert not torch.equal(item.server.theta, before["theta"])
    assert item.sparsity.summary() is None
