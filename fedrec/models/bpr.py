"""BPR ranking loss, paper 000 Eq. (7), over a batch of users."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedrec.models.batch import UserBatch
from fedrec.models.layout import TableLayout
from fedrec.models.touched_native import touched_rows_native


def bpr_loss_per_user(y_pos: torch.Tensor, y_neg: torch.Tensor, owner: torch.Tensor, n_users: int):
    """``-sum_j sum_k log sigmoid(y_ij - y_ik)`` for each user of the batch: ``[B]``."""
    pair = -F.logsigmoid(y_pos[:, None] - y_neg).sum(1)
    return torch.zeros(n_users, dtype=pair.dtype, device=pair.device).index_add(0, owner, pair)


def touched_rows(
    batch: UserBatch, neg: torch.Tensor, layout: TableLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of the stacked table each user's loss touches, as sorted unique ``(owner, row)`` pairs.

    FISM: the P rows of its positives and negatives and the Q rows of its history; MF: P rows only.
    These are exactly the rows a client lists in its upload (DESIGN.md section 3). On the CPU one C
    loop finds them (fedrec.models.touched_native), the same pairs.
    """
    native = touched_rows_native(batch.ptr, batch.items, neg, layout)
    return native if native is not None else touched_rows_torch(batch, neg, layout)


def touched_rows_torch(
    batch: UserBatch, neg: torch.Tensor, layout: TableLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """``touched_rows`` as torch operations (any device): one ``unique`` over the round's keys."""
    n_neg = neg.shape[1]
    rows = [layout.row("P", batch.items), layout.row("P", neg.reshape(-1))]
    owners = [batch.owner, batch.owner.repeat_interleave(n_neg)]
    if "Q" in layout.ranges:
        rows.append(layout.row("Q", batch.items))
        owners.append(batch.owner)
    key = torch.unique(torch.cat(owners) * layout.n_rows + torch.cat(rows))
    return key // layout.n_rows, key % layout.n_rows


def l2_per_user(theta_rows: torch.Tensor, owner: torch.Tensor, n_users: int) -> torch.Tensor:
    """Squared norm of each user's touched rows (the lambda term of Eq. 7 as DESIGN.md section 8 reads it)."""
    sq = (theta_rows * theta_rows).sum(-1)
    return torch.zeros(n_users, dtype=sq.dtype, device=sq.device).index_add(0, owner, sq)
