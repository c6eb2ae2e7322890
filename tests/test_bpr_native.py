"""The BPR gradient's C loop (fedrec.models.bpr_native) against torch's closed form and float64 autograd
of the objective's definition: FISM and MF, any gamma, lambda, number of negatives, label-flipped
pairs, users with one item or none, widths around the loop's 16-lane blocks; a client's gradient
does not depend on the rest of its batch; rows or items the keys do not hold are refused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.models import TableLayout, UserBatch, bpr_objective, touched_rows
from fedrec.models.bpr_native import bpr_row_gradients_native, native
from fedrec.models.gradients import assemble_row_gradients, sample_terms, with_l2

pytestmark = pytest.mark.skipif(native() is None, reason="no C compiler for the BPR gradient loop")


def problem(seed: int, model: str, B: int, n_neg: int, d: int, n_items: int = 11):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 6, (B,), generator=gen)
    counts[0] = 1  # a one-item user (its positive's history is empty)
    if B > 2:
        counts[2] = 0  # a user without items (lists no row)
    items = [torch.randperm(n_items, generator=gen)[: int(c)].sort().values for c in counts]
    ptr = torch.zeros(B + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    owner = torch.repeat_interleave(torch.arange(B), counts)
    batch = UserBatch(users=torch.arange(B) * 2, ptr=ptr, items=torch.cat(items), owner=owner)
    neg = torch.empty(batch.items.shape[0], n_neg, dtype=torch.int64)
    for h in range(neg.shape[0]):  # not a positive of the same user
        own = set(items[int(owner[h])].tolist())
        pool = torch.tensor([i for i in range(n_items) if i not in own])
        neg[h] = pool[torch.randint(len(pool), (n_neg,), generator=gen)]
    layout = TableLayout.for_model(model, n_items)
    theta = torch.randn(layout.n_rows, d, generator=gen, dtype=torch.float64)
    U = torch.randn(B, d, generator=gen, dtype=torch.float64) if model == "mf" else None
    return layout, batch, neg, theta, U


def torch_way(W, keys, layout, batch, neg, gamma, lam, U, flip):
    terms = sample_terms(W, keys, layout, batch, neg, gamma=gamma, user_vectors=U, flip=flip)
    g, g_user = assemble_row_gradients(terms, W, batch.size, lam=lam, user_vectors=U)
    return g, g_user, with_l2(terms.client_loss(batch.size), W, keys, layout, lam, U)


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(["fism", "mf"]),
    gamma=st.sampled_from([0.0, 0.5, 1.0]),
    lam=st.sampled_from([0.0, 1e-2]),
    n_neg=st.integers(1, 3),
    d=st.sampled_from([1, 5, 16, 17, 33, 64]),
    B=st.integers(1, 5),
    flip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_c_gradient_is_the_closed_form_and_autograd(model, gamma, lam, n_neg, d, B, flip, seed):
    layout, batch, neg, theta, U = problem(seed, model, B, n_neg, d)
    owner, rows = touched_rows(batch, neg, layout)
    keys = owner * layout.n_rows + rows
    W64 = theta[rows].clone().requires_grad_(True)
    u64 = None if U is None else U.clone().requires_grad_(True)

    def lookup(o, r):
        return W64[torch.searchsorted(keys, o * layout.n_rows + r)]

    loss64 = bpr_objective(lookup, layout, batch, neg, gamma=gamma, lam=lam, user_vectors=u64, flip=flip)
    want = torch.autograd.grad(loss64.sum(), [W64] if u64 is None else [W64, u64])
    W, U32 = W64.detach().float(), None if U is None else U.float()
    got = bpr_row_gradients_native(
        W, keys, layout, batch, neg, gamma=gamma, lam=lam, user_vectors=U32, flip=flip
    )
    assert got is not None
    g, g_user, loss = got
    ref = torch_way(W, keys, layout, batch, neg, gamma, lam, U32, flip)
    # float32 inputs: both ways within float32 rounding of float64 autograd at the same inputs
    tol = {"rtol": 2e-5, "atol": 2e-5}
    torch.testing.assert_close(g.double(), want[0], **tol)
    torch.testing.assert_close(g, ref[0], **tol)
    torch.testing.assert_close(loss.double(), loss64.detach(), **tol)
    torch.testing.assert_close(loss, ref[2], **tol)
    if model == "mf":
        torch.testing.assert_close(g_user.double(), want[1], **tol)
        torch.testing.assert_close(g_user, ref[1], **tol)
    else:
        assert g_user is None


@pytest.mark.parametrize("model", ["fism", "mf"])
def test_a_clients_gradient_does_not_depend_on_its_batch(model):
    """Bit for bit: each client alone gives the rows and loss it gets inside the batch (a stack of runs,
    fedrec.federation.stacked, and a Flower SuperNode's batch rely on it)."""
    layout, batch, neg, theta, U = problem(3, model, 5, 2, 37)
    theta, U = theta.float(), None if U is None else U.float()
    owner, rows = touched_rows(batch, neg, layout)
    keys = owner * layout.n_rows + rows
    g, g_user, loss = bpr_row_gradients_native(
        theta[rows], keys, layout, batch, neg, gamma=0.5, lam=0.01, user_vectors=U
    )
    for b in range(batch.size):
        lo, hi = int(batch.ptr[b]), int(batch.ptr[b + 1])
        one = UserBatch(
            batch.users[b : b + 1], batch.ptr[b : b + 2] - lo, batch.items[lo:hi], batch.owner[lo:hi] * 0
        )
        o1, r1 = touched_rows(one, neg[lo:hi], layout)
        u1 = None if U is None else U[b : b + 1]
        g1, gu1, l1 = bpr_row_gradients_native(
            theta[r1], o1 * layout.n_rows + r1, layout, one, neg[lo:hi], gamma=0.5, lam=0.01, user_vectors=u1
        )
        mine = owner == b
        assert torch.equal(g1, g[mine]) and torch.equal(l1, loss[b : b + 1])
        if U is not None:
            assert torch.equal(gu1, g_user[b : b + 1])


def test_rows_or_items_the_keys_do_not_hold_are_refused():
    layout, batch, neg, theta, _ = problem(1, "fism", 4, 1, 8)
    theta = theta.float()
    owner, rows = touched_rows(batch, neg, layout)
    keys = owner * layout.n_rows + rows
    W = theta[rows]
    kw = {"gamma": 0.5, "lam": 0.0}
    with pytest.raises(ValueError, match="not in the batch's keys"):  # a row missing from the keys
        bpr_row_gradients_native(W[1:], keys[1:], layout, batch, neg, **kw)
    bad = neg.clone()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="not in the batch's keys"):
        bpr_row_gradients_native(W, keys, layout, batch, bad, **kw)
    bad[0, 0] = layout.n_items
    with pytest.raises(ValueError, match="not in the batch's keys"):
        bpr_row_gradients_native(W, keys, layout, batch, bad, **kw)
    # a ptr that does not cover the batch's entries is not read past them: the torch way runs (None)
    for ptr in (torch.tensor([0, 1000]), batch.ptr + 1, batch.ptr.flip(0)):
        broken = UserBatch(batch.users[: ptr.shape[0] - 1], ptr, batch.items, batch.owner)
        assert bpr_row_gradients_native(W, keys, layout, broken, neg, **kw) is None
    # where the loop does not apply, the torch way runs (None): float64, a user-vector-less MF batch
    assert bpr_row_gradients_native(W.double(), keys, layout, batch, neg, **kw) is None
    mf = TableLayout.for_model("mf", layout.n_items)
    assert bpr_row_gradients_native(W, keys, mf, batch, neg, **kw) is None
