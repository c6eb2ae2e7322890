"""``gather_users``' C loops (fedrec.models.gather_native) give the torch gather's ``ptr``, ``items`` and
``owner`` element for element (empty users, repeated users, an empty round); inputs they cannot read
go to torch, which says what is wrong."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.models.batch import CSRTensors, gather_users, gather_users_torch
from fedrec.models.gather_native import gather_users_native, native

pytestmark = pytest.mark.skipif(native() is None, reason="no C compiler for the gather's loops")


def csr_of(gen: torch.Generator, n_users: int, n_items: int) -> CSRTensors:
    counts = torch.randint(0, n_items + 1, (n_users,), generator=gen)
    indptr = torch.zeros(n_users + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=indptr[1:])
    rows = [torch.randperm(n_items, generator=gen)[: int(c)].sort().values for c in counts]
    return CSRTensors(indptr, torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64), n_items)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**16), n_users=st.integers(1, 12), n_items=st.integers(1, 30), B=st.integers(0, 15)
)
def test_the_c_gather_gives_the_torch_batch(seed, n_users, n_items, B):
    gen = torch.Generator().manual_seed(seed)
    csr = csr_of(gen, n_users, n_items)
    users = torch.randint(n_users, (B,), generator=gen)  # repeats allowed
    got, want = gather_users(csr, users), gather_users_torch(csr, users)
    assert gather_users_native(csr.indptr, csr.indices, users) is not None
    for name in ("users", "ptr", "items", "owner"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_a_hand_computed_gather():
    csr = CSRTensors(torch.tensor([0, 2, 2, 5]), torch.tensor([1, 4, 0, 2, 3]), 5)
    batch = gather_users(csr, torch.tensor([2, 1, 0]))
    assert batch.ptr.tolist() == [0, 3, 3, 5]
    assert batch.items.tolist() == [0, 2, 3, 1, 4]
    assert batch.owner.tolist() == [0, 0, 0, 2, 2]


def test_inputs_the_loops_cannot_read_go_to_torch():
    csr = CSRTensors(torch.tensor([0, 2, 2, 5]), torch.tensor([1, 4, 0, 2, 3]), 5)
    for users in (torch.tensor([3]), torch.tensor([-1]), torch.tensor([0], dtype=torch.int32)):
        assert gather_users_native(csr.indptr, csr.indices, users) is None
    broken = torch.tensor([0, 4, 2, 5])  # falls
    assert gather_users_native(broken, csr.indices, torch.tensor([1])) is None
    past = torch.tensor([0, 2, 2, 6])  # beyond the 5 entries
    assert gather_users_native(past, csr.indices, torch.tensor([2])) is None
    with pytest.raises(IndexError):
        gather_users(csr, torch.tensor([3]))  # torch's own error for a user outside the matrix
