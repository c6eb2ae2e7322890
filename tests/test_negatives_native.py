"""The rejection rounds of ``sample_negatives`` as C loops (fedrec.models.negatives_native) give the torch
loop's negatives bit for bit and leave the generator where it leaves it (the same draws, in the same
order), on batches where most draws hit a positive; the loop's limit still raises."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedrec.models.batch as batch_mod
from fedrec.models import UserBatch, sample_negatives
from fedrec.models.negatives_native import native

pytestmark = pytest.mark.skipif(native() is None, reason="no C compiler for the negatives' loop")


def batch_of(seed: int, B: int, n_items: int, dense: float) -> UserBatch:
    gen = torch.Generator().manual_seed(seed)
    hi = max(1, min(n_items - 1, int(dense * n_items)))
    counts = torch.randint(0, hi + 1, (B,), generator=gen)
    items = [torch.randperm(n_items, generator=gen)[: int(c)].sort().values for c in counts]
    ptr = torch.zeros(B + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    owner = torch.repeat_interleave(torch.arange(B), counts)
    return UserBatch(users=torch.arange(B), ptr=ptr, items=torch.cat(items), owner=owner)


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    B=st.integers(1, 8),
    n_items=st.integers(2, 60),
    dense=st.sampled_from([0.1, 0.5, 0.9, 0.99, 1.0]),
    n_neg=st.integers(1, 4),
    rounds=st.sampled_from([1000, 0, 1, 3]),
)
def test_the_c_rounds_draw_what_the_torch_loop_draws(seed, B, n_items, dense, n_neg, rounds):
    """The same draws and generator state either way, all of them negatives. With few ``max_rounds``
    (users with nearly every item positive: "negative sampling did not finish" ended the run), what
    rejection leaves is drawn from the user's unseen items, the same in C and torch."""
    batch = batch_of(seed, B, n_items, dense)
    g_c, g_torch = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    got = sample_negatives(batch, n_items, n_neg, g_c, max_rounds=rounds)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(batch_mod, "redraw_positives", lambda *a: False)  # the torch loop
        want = sample_negatives(batch, n_items, n_neg, g_torch, max_rounds=rounds)
    assert torch.equal(got, want)
    assert torch.equal(g_c.get_state(), g_torch.get_state())
    assert bool(((got >= 0) & (got < n_items)).all())
    for h in range(batch.items.shape[0]):  # and they are negatives: not a positive of their user
        b = int(batch.owner[h])
        own = set(batch.items[batch.ptr[b] : batch.ptr[b + 1]].tolist())
        assert not own & set(got[h].tolist())


def test_draws_from_the_unseen_items_are_uniform():
    """One user holding 197 of 200 items: its three unseen items each about a third of 30,000 draws."""
    seen = torch.tensor(sorted(set(range(200)) - {3, 117, 199}))
    batch = UserBatch(
        users=torch.arange(1),
        ptr=torch.tensor([0, 197]),
        items=seen,
        owner=torch.zeros(197, dtype=torch.long),
    )
    got = sample_negatives(batch, 200, 150, torch.Generator().manual_seed(0), max_rounds=0)
    counts = torch.bincount(got.flatten(), minlength=200)
    assert set(torch.nonzero(counts).flatten().tolist()) == {3, 117, 199}
    for item in (3, 117, 199):  # 29,550 draws: 3 sigma of a binomial third is ~240
        assert abs(int(counts[item]) - 29_550 / 3) < 400


def test_a_batch_the_loop_cannot_read_keeps_the_torch_loop():
    """An empty ``ptr`` (no user) and a ``ptr`` that does not end at the entries are left to torch."""
    from fedrec.models.negatives_native import redraw_positives

    out = torch.zeros(3, 2, dtype=torch.int64)
    gen = torch.Generator().manual_seed(0)
    assert not redraw_positives(torch.zeros(0, dtype=torch.int64), torch.arange(3), out, 10, gen, 5)
    assert not redraw_positives(torch.tensor([0, 2]), torch.arange(3), out, 10, gen, 5)
    assert torch.equal(out, torch.zeros(3, 2, dtype=torch.int64))


def test_keyed_draws_the_round_limit_leaves_come_from_the_unseen_items():
    """The per-client (keyed) sampler raised the same way; its fallback is keyed too: a user's draws do
    not depend on who else is in the batch."""
    from fedrec.models.batch import sample_negatives_keyed

    batch = batch_of(5, 6, 50, 1.0)
    got = sample_negatives_keyed(batch, 50, 3, key=11, max_rounds=0)
    for h in range(batch.items.shape[0]):
        b = int(batch.owner[h])
        assert not set(batch.items[batch.ptr[b] : batch.ptr[b + 1]].tolist()) & set(got[h].tolist())
    again = sample_negatives_keyed(batch, 50, 3, key=11, max_rounds=0)
    assert torch.equal(got, again)
