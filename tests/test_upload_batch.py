"""UploadBatch's segment operations on hand-built batches: ``select`` keeps whole uploads in order (also
ones listing no row, none at all, every one), and refuses what is not a bool mask of one entry per
upload; ``owner`` numbers every listed row."""

from __future__ import annotations

import pytest
import torch

from fedrec.protocol import UploadBatch


def batch() -> UploadBatch:
    """Three uploads listing 2, 0 and 3 rows."""
    rows = torch.tensor([1, 4, 0, 2, 3])
    theta = torch.arange(10.0).reshape(5, 2)
    return UploadBatch(
        client_ids=torch.tensor([7, 8, 9]), ptr=torch.tensor([0, 2, 2, 5]), rows=rows, theta=theta,
        state={"m": -theta}, n_examples=torch.tensor([5, 6, 7]),
    )  # fmt: skip


def test_owner_numbers_every_listed_row():
    assert batch().owner().tolist() == [0, 0, 2, 2, 2]


@pytest.mark.parametrize(
    ("keep", "ids", "rows", "ptr"),
    [
        ([True, True, False], [7, 8], [1, 4], [0, 2, 2]),
        ([False, True, True], [8, 9], [0, 2, 3], [0, 0, 3]),
        ([True, False, True], [7, 9], [1, 4, 0, 2, 3], [0, 2, 5]),
        ([False, False, False], [], [], [0]),
        ([True, True, True], [7, 8, 9], [1, 4, 0, 2, 3], [0, 2, 2, 5]),
    ],
)
def test_select_keeps_whole_uploads_in_order(keep, ids, rows, ptr):
    b = batch()
    got = b.select(torch.tensor(keep))
    assert got.client_ids.tolist() == ids and got.rows.tolist() == rows and got.ptr.tolist() == ptr
    assert got.theta.tolist() == [b.theta[b.rows.tolist().index(r)].tolist() for r in rows]
    assert torch.equal(got.state["m"], -got.theta)
    assert got.n_examples.tolist() == [{7: 5, 8: 6, 9: 7}[i] for i in ids]


@pytest.mark.parametrize(
    "keep", [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 2]), torch.tensor([True, False, True, False])]
)
def test_select_refuses_what_is_not_a_mask_of_the_uploads(keep):
    with pytest.raises(ValueError, match="bool mask of shape"):
        batch().select(keep)
