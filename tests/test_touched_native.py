"""``touched_rows``' C loop (fedrec.models.touched_native) gives the torch way's ``(owner, row)`` pairs
element for element, on both of its paths (bitmap and sort-and-merge), for FISM, MF and a layout with
Q below P, with negatives that repeat and that hit positives; inputs it cannot read go to torch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.models import UserBatch
from fedrec.models.bpr import touched_rows, touched_rows_torch
from fedrec.models.layout import TableLayout
from fedrec.models.touched_native import PATHS, native, touched_rows_native

pytestmark = pytest.mark.skipif(native() is None, reason="no C compiler for the touched rows' loop")


def batch_of(gen: torch.Generator, B: int, n_items: int, max_items: int) -> UserBatch:
    counts = torch.randint(0, max_items + 1, (B,), generator=gen).clamp(max=n_items)
    items = [torch.randperm(n_items, generator=gen)[: int(c)].sort().values for c in counts]
    ptr = torch.zeros(B + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    owner = torch.repeat_interleave(torch.arange(B), counts)
    flat = torch.cat(items) if items else torch.zeros(0, dtype=torch.int64)
    return UserBatch(users=torch.arange(B), ptr=ptr, items=flat, owner=owner)


LAYOUTS = {
    "fism": lambda n: TableLayout.for_model("fism", n),
    "mf": lambda n: TableLayout.for_model("mf", n),
    "q-below-p": lambda n: TableLayout("fism", n, {"Q": (0, n), "P": (n, 2 * n)}),
}


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    B=st.integers(0, 7),
    n_items=st.sampled_from([1, 2, 5, 40, 300, 3000]),
    max_items=st.sampled_from([0, 1, 3, 30, 400]),
    n_neg=st.integers(0, 4),
    layout=st.sampled_from(sorted(LAYOUTS)),
)
def test_the_c_loop_gives_the_torch_pairs(seed, B, n_items, max_items, n_neg, layout):
    gen = torch.Generator().manual_seed(seed)
    batch = batch_of(gen, B, n_items, max_items)
    lay = LAYOUTS[layout](n_items)
    # any item, positives of the user included, and few distinct ones so that draws repeat
    pool = max(1, min(n_items, int(torch.randint(1, 8, (1,), generator=gen))) if seed % 2 else n_items)
    neg = torch.randint(pool, (batch.items.shape[0], n_neg), generator=gen)
    want = touched_rows_torch(batch, neg, lay)
    for path in PATHS:  # each user the cheaper way, and every user each way
        got = touched_rows_native(batch.ptr, batch.items, neg, lay, path)
        assert got is not None
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), path
    assert all(torch.equal(g, w) for g, w in zip(touched_rows(batch, neg, lay), want, strict=True))


def test_both_paths_run_on_one_batch():
    """A user with many rows against a small table takes the bitmap, one with few the sort: a batch of
    both, against torch (the bitmap is left zero for the next user, so their rows do not mix)."""
    gen = torch.Generator().manual_seed(3)
    lay = TableLayout.for_model("fism", 2000)
    heavy = torch.randperm(2000, generator=gen)[:900].sort().values
    light = torch.tensor([5, 1999])
    items = torch.cat([heavy, light, heavy[:200]])
    counts = torch.tensor([900, 2, 200])
    ptr = torch.tensor([0, 900, 902, 1102])
    batch = UserBatch(torch.arange(3), ptr, items, torch.repeat_interleave(torch.arange(3), counts))
    neg = torch.randint(2000, (items.shape[0], 2), generator=gen)
    neg[900:902] = torch.tensor([[7, 5], [7, 1999]])  # the light user's: a repeat and its own positives
    got, want = touched_rows_native(ptr, items, neg, lay), touched_rows_torch(batch, neg, lay)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    light_rows = got[1][got[0] == 1].tolist()
    assert light_rows == [5, 7, 1999, 2005, 3999]  # by hand: P rows 5, 7, 1999; Q rows 2000 + 5, 2000 + 1999


def test_inputs_the_loop_cannot_read_go_to_torch():
    lay = TableLayout.for_model("fism", 10)
    batch = UserBatch(
        torch.arange(1), torch.tensor([0, 2]), torch.tensor([1, 4]), torch.zeros(2, dtype=torch.int64)
    )
    ptr, items, ok = batch.ptr, batch.items, torch.tensor([[3], [5]])
    assert touched_rows_native(ptr, items, torch.tensor([[3], [20]]), lay) is None  # row 20 of 20
    assert touched_rows_native(ptr, items, torch.tensor([[3], [-1]]), lay) is None
    assert touched_rows_native(torch.tensor([0, 3]), items, ok, lay) is None  # ptr past H
    assert touched_rows_native(ptr, items, ok.to(torch.int32), lay) is None
    assert touched_rows_native(torch.tensor([1, 2]), items, ok, lay) is None  # ptr starts above 0
    down = torch.tensor([4, 1])  # a user's items not ascending: the merge would read them as sorted
    assert touched_rows_native(ptr, down, ok, lay) is None
    got = touched_rows(UserBatch(batch.users, ptr, down, batch.owner), ok, lay)
    assert got[1].tolist() == [1, 3, 4, 5, 11, 14]  # torch's answer
    below = TableLayout("fism", 10, {"P": (10, 20), "Q": (-5, 5)})
    assert touched_rows_native(ptr, items, ok, below) is None  # a Q range below 0 goes to torch
    nc = torch.tensor([[3, 0], [5, 0]])[:, :1]  # a non-contiguous negatives' view
    assert all(
        torch.equal(g, w)
        for g, w in zip(
            touched_rows_native(ptr, items, nc, lay), touched_rows_torch(batch, ok, lay), strict=True
        )
    )
    owner, rows = touched_rows(batch, ok, lay)
    assert owner.tolist() == [0, 0, 0, 0, 0, 0] and rows.tolist() == [1, 3, 4, 5, 11, 14]  # by hand
