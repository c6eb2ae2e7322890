"""FISM / MF scores and the BPR objective against literal per-user formulas (paper 000 Eq. 1 and 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.interactions import Interactions
from fedrec.models import (
    CSRTensors,
    TableLayout,
    bpr_objective,
    fism_scorer,
    gather_users,
    mf_scorer,
    sample_negatives,
    touched_rows,
)


def random_interactions(seed: int, n_users: int = 7, n_items: int = 12, max_items: int = 6) -> Interactions:
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        k = int(rng.integers(1, max_items + 1))
        users += [u] * k
        items += list(rng.choice(n_items, size=k, replace=False))
    return Interactions.from_pairs(np.array(users), np.array(items), n_users=n_users, n_items=n_items)


def literal_fism_score(P, Q, history: list[int], j: int, gamma: float) -> float:
    """Eq. (1) written out for one (user, item) pair."""
    others = [k for k in history if k != j]
    if not others:
        return 0.0
    u = sum(Q[k] for k in others) / len(others) ** gamma
    return float(P[j] @ u)


def literal_objective(model, theta, U, layout, inter, users, neg, gamma, lam) -> list[float]:
    """Eq. (7) per user with L2 on the user's touched rows, by explicit loops."""
    P = layout.view(theta, "P")
    Q = layout.view(theta, "Q") if model == "fism" else None
    losses, h = [], 0
    for b, u in enumerate(users):
        hist = [int(i) for i in inter.items_of(u)]
        loss, touched = 0.0, set()
        for j in hist:
            for k in neg[h].tolist():
                if model == "fism":
                    y_j = literal_fism_score(P, Q, hist, j, gamma)
                    y_k = literal_fism_score(P, Q, hist, k, gamma)
                else:
                    y_j, y_k = float(U[b] @ P[j]), float(U[b] @ P[k])
                loss += -math.log(1 / (1 + math.exp(-(y_j - y_k))))
                touched |= {int(layout.row("P", torch.tensor(j))), int(layout.row("P", torch.tensor(k)))}
            if model == "fism":
                touched.add(int(layout.row("Q", torch.tensor(j))))
            h += 1
        loss += lam * sum(float(theta[r] @ theta[r]) for r in touched)
        if model == "mf":
            loss += lam * float(U[b] @ U[b])
        losses.append(loss)
    return losses


@pytest.mark.parametrize("model", ["fism", "mf"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.sampled_from([0.5, 1.0]), n_neg=st.integers(1, 3))
def test_objective_matches_literal_eq7(model, seed, gamma, n_neg):
    inter = random_interactions(seed)
    layout = TableLayout.for_model(model, inter.n_items)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(layout.n_rows, 4, generator=g, dtype=torch.float64)
    U = torch.randn(inter.n_users, 4, generator=g, dtype=torch.float64)
    csr = CSRTensors.from_interactions(inter)
    users = torch.tensor([0, 2, 3, 6])
    batch = gather_users(csr, users)
    neg = sample_negatives(batch, inter.n_items, n_neg, g)
    got = bpr_objective(
        lambda o, r: theta[r], layout, batch, neg, gamma=gamma, lam=0.01,
        user_vectors=U[users] if model == "mf" else None,
    )  # fmt: skip
    want = literal_objective(model, theta, U[users], layout, inter, users.tolist(), neg, gamma, 0.01)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_gradient_lives_on_touched_rows_only():
    inter = random_interactions(3, n_items=30)
    layout = TableLayout.for_model("fism", inter.n_items)
    theta = torch.randn(layout.n_rows, 4, dtype=torch.float64, requires_grad=True)
    batch = gather_users(CSRTensors.from_interactions(inter), torch.tensor([1, 4]))
    neg = sample_negatives(batch, inter.n_items, 2, torch.Generator().manual_seed(0))
    bpr_objective(lambda o, r: theta[r], layout, batch, neg, gamma=1.0, lam=1e-3).sum().backward()
    _, rows = touched_rows(batch, neg, layout)
    nonzero = set(torch.nonzero(theta.grad.abs().sum(1)).flatten().tolist())
    assert nonzero <= set(rows.tolist())
    untouched = torch.ones(layout.n_rows, dtype=torch.bool)
    untouched[rows] = False
    assert untouched.any() and (theta.grad[untouched] == 0).all()


def test_touched_rows_are_per_user_unique_and_sorted():
    inter = random_interactions(5)
    layout = TableLayout.for_model("fism", inter.n_items)
    batch = gather_users(CSRTensors.from_interactions(inter), torch.arange(inter.n_users))
    neg = sample_negatives(batch, inter.n_items, 3, torch.Generator().manual_seed(1))
    owner, rows = touched_rows(batch, neg, layout)
    for b in range(inter.n_users):
        hist = set(inter.items_of(b).tolist())
        negs = set(neg[batch.owner == b].flatten().tolist())
        want = sorted(hist | negs) + sorted(i + inter.n_items for i in hist)
        assert rows[owner == b].tolist() == want


def test_gather_users_matches_csr_slices():
    inter = random_interactions(11, n_users=9)
    users = torch.tensor([8, 0, 5, 5])
    b = gather_users(CSRTensors.from_interactions(inter), users)
    for pos, u in enumerate(users.tolist()):
        assert b.items[b.ptr[pos] : b.ptr[pos + 1]].tolist() == inter.items_of(u).tolist()
        assert (b.owner[b.ptr[pos] : b.ptr[pos + 1]] == pos).all()


def test_negatives_avoid_positives_and_cover_the_rest():
    inter = random_interactions(2, n_users=3, n_items=10, max_items=8)
    batch = gather_users(CSRTensors.from_interactions(inter), torch.arange(3))
    neg = sample_negatives(batch, inter.n_items, 400, torch.Generator().manual_seed(0))
    for b in range(3):
        drawn = set(neg[batch.owner == b].flatten().tolist())
        assert drawn == set(range(10)) - set(inter.items_of(b).tolist())


def test_negatives_are_uniform_over_non_positives():
    inter = Interactions.from_pairs(np.array([0, 0]), np.array([1, 3]), n_users=1, n_items=6)
    batch = gather_users(CSRTensors.from_interactions(inter), torch.tensor([0]))
    neg = sample_negatives(batch, 6, 20_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(neg.flatten(), minlength=6).double() / neg.numel()
    assert freq[1] == 0 and freq[3] == 0
    np.testing.assert_allclose(freq[[0, 2, 4, 5]].numpy(), 0.25, atol=0.01)


def test_scorers_match_eq1_for_unseen_items():
    inter = random_interactions(9)
    layout = TableLayout.for_model("fism", inter.n_items)
    theta = torch.randn(layout.n_rows, 5, dtype=torch.float64)
    s = fism_scorer(theta, layout, CSRTensors.from_interactions(inter), gamma=1.0)(
        torch.arange(inter.n_users)
    )
    P, Q = layout.view(theta, "P"), layout.view(theta, "Q")
    for u in range(inter.n_users):
        hist = inter.items_of(u).tolist()
        for j in set(range(inter.n_items)) - set(hist):
            assert s[u, j].item() == pytest.approx(literal_fism_score(P, Q, hist, j, 1.0), rel=1e-9)
    U = torch.randn(inter.n_users, 5, dtype=torch.float64)
    torch.testing.assert_close(mf_scorer(P, U)(torch.tensor([2, 0])), U[[2, 0]] @ P.T)
