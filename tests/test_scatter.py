"""The aggregation's scatter as one C loop (fedrec.federation.scatter): bit for bit the torch expression
it replaces, ``D.index_add_(0, idx, (X - D.index_select(0, idx)) * w[owner][:, None])``, with rows
listed by several uploads, signed zeros, infinities and NaN; indices outside the table refused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.federation import scatter as S

pytestmark = pytest.mark.skipif(S.native() is None, reason="no C compiler for the C scatter")


def torch_way(D, idx, owner, w, X):
    D.index_add_(0, idx, (X - D.index_select(0, idx)) * w[owner][:, None])


@given(
    seed=st.integers(0, 10**6),
    n=st.integers(1, 40),
    uploads=st.integers(1, 8),
    d=st.sampled_from([1, 3, 16, 64, 70]),
    specials=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_the_c_scatter_is_the_torch_scatter_bit_for_bit(seed, n, uploads, d, specials):
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(n, d, generator=gen) * 10 ** torch.randint(-30, 30, (n, 1), generator=gen).float()
    counts = torch.randint(0, n + 1, (uploads,), generator=gen)
    idx = torch.cat([torch.randperm(n, generator=gen)[: int(c)].sort().values for c in counts])
    owner = torch.repeat_interleave(torch.arange(uploads), counts)
    X = torch.randn(idx.shape[0], d, generator=gen)
    w = torch.rand(uploads, generator=gen)
    w = w / w.sum()
    if specials and idx.numel():
        X[0, 0] = float("nan")
        X[-1, -1] = float("inf")
        D[idx[0], -1] = -0.0
        w[0] = 0.0
    want = D.clone()
    torch_way(want, idx, owner, w, X)
    got = D.clone()
    assert S.scatter_terms(got, idx, owner, w, X)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_rows_or_owners_outside_raise_and_other_dtypes_fall_back():
    D = torch.zeros(5, 4)
    X = torch.ones(3, 4)
    w = torch.tensor([0.5, 0.5])
    for idx, owner in (([0, 5, 1], [0, 0, 1]), ([0, -1, 1], [0, 0, 1]), ([0, 1, 2], [0, 0, 2])):
        with pytest.raises(IndexError):
            S.scatter_terms(D, torch.tensor(idx), torch.tensor(owner), w, X)
        assert torch.equal(D, torch.zeros(5, 4))  # nothing written
    assert not S.scatter_terms(
        D.double(), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]), w.double(), X.double()
    )
