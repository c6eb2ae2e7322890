"""The closed-form BPR gradient (fedrec.models.gradients) equals autograd of the objective's
definition (``bpr_objective``) on random batches: FISM and MF, any gamma, lambda, number of
negatives, label-flipped pairs, users with one item."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.models import TableLayout, UserBatch, bpr_objective, touched_rows
from fedrec.models.gradients import bpr_row_gradients


def random_batch(gen: torch.Generator, n_items: int, B: int) -> UserBatch:
    counts = torch.randint(1, min(6, n_items - 1) + 1, (B,), generator=gen)
    counts[0] = 1  # a one-item user: its positive has an empty history (score 0)
    items = [torch.randperm(n_items, generator=gen)[: int(c)].sort().values for c in counts]
    ptr = torch.zeros(B + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    owner = torch.repeat_interleave(torch.arange(B), counts)
    return UserBatch(users=torch.arange(B) * 3, ptr=ptr, items=torch.cat(items), owner=owner)


def negatives(gen: torch.Generator, batch: UserBatch, n_items: int, n_neg: int) -> torch.Tensor:
    out = torch.empty(batch.items.shape[0], n_neg, dtype=torch.int64)
    for h in range(batch.items.shape[0]):  # a literal loop: not a positive of the same user
        b = int(batch.owner[h])
        own = set(batch.items[batch.ptr[b] : batch.ptr[b + 1]].tolist())
        pool = [i for i in range(n_items) if i not in own]
        out[h] = torch.tensor(pool)[torch.randint(len(pool), (n_neg,), generator=gen)]
    return out


@settings(max_examples=40, deadline=None)
@given(
    model=st.sampled_from(["fism", "mf"]),
    gamma=st.sampled_from([0.0, 0.5, 1.0]),
    lam=st.sampled_from([0.0, 1e-2]),
    n_neg=st.integers(1, 3),
    flip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_closed_form_gradient_equals_autograd(model, gamma, lam, n_neg, flip, seed):
    gen = torch.Generator().manual_seed(seed)
    n_items, B, d = 9, 4, 5
    layout = TableLayout.for_model(model, n_items)
    batch = random_batch(gen, n_items, B)
    neg = negatives(gen, batch, n_items, n_neg)
    theta = torch.randn(layout.n_rows, d, generator=gen)
    owner, rows = touched_rows(batch, neg, layout)
    keys = owner * layout.n_rows + rows
    W = theta[rows].clone().requires_grad_(True)
    u = torch.randn(B, d, generator=gen).requires_grad_(True) if model == "mf" else None

    def lookup(o, r):
        return W[torch.searchsorted(keys, o * layout.n_rows + r)]

    loss = bpr_objective(lookup, layout, batch, neg, gamma=gamma, lam=lam, user_vectors=u, flip=flip)
    want = torch.autograd.grad(loss.sum(), [W] if u is None else [W, u])
    gW, g_user, got_loss = bpr_row_gradients(
        W.detach(), keys, layout, batch, neg, gamma=gamma, lam=lam,
        user_vectors=None if u is None else u.detach(), flip=flip,
    )  # fmt: skip
    torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gW, want[0], rtol=1e-5, atol=1e-5)
    if model == "mf":
        torch.testing.assert_close(g_user, want[1], rtol=1e-5, atol=1e-5)
    else:
        assert g_user is None
