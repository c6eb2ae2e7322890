"""The client objective of paper 000: BPR (Eq. 7) on FISM (Eq. 1) or MF scores, plus L2 on touched rows."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedrec.models.batch import UserBatch
from fedrec.models.bpr import bpr_loss_per_user, l2_per_user, touched_rows
from fedrec.models.fism import fism_pair_scores
from fedrec.models.layout import TableLayout
from fedrec.models.mf import mf_pair_scores

# lookup(owner, rows) -> the [len(rows), d] vectors that user ``owner`` sees at stacked-table ``rows``.
# Centrally every user sees the same table (``theta[rows]``); in a federated round each client has its
# own copy of its touched rows, so the engine looks them up per (client, row).
RowLookup = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bpr_objective(
    lookup: RowLookup,
    layout: TableLayout,
    batch: UserBatch,
    neg: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    user_vectors: torch.Tensor | None = None,
    flip: bool = False,
) -> torch.Tensor:
    """Per-user loss ``[B]``: Eq. (7) summed over each user's positives x negatives, plus
    ``lam * ||rows||^2`` over the user's touched rows (and its private vector for MF).

    ``flip``: every pair inverted, ``-log sigmoid(y_ik - y_ij)`` (the label-flip attack's loss); the L2
    term unchanged."""
    B = batch.size
    n_neg = neg.shape[1]
    owner_neg = batch.owner.repeat_interleave(n_neg)
    p_pos = lookup(batch.owner, layout.row("P", batch.items))
    p_neg = lookup(owner_neg, layout.row("P", neg.reshape(-1))).reshape(*neg.shape, -1)
    if layout.model == "fism":
        q_hist = lookup(batch.owner, layout.row("Q", batch.items))
        y_pos, y_neg = fism_pair_scores(p_pos, q_hist, p_neg, batch.owner, B, gamma)
    else:
        if user_vectors is None:
            raise ValueError("MF needs the batch's user vectors")
        y_pos, y_neg = mf_pair_scores(user_vectors, p_pos, p_neg, batch.owner)
    if flip:  # (-y_ij) - (-y_ik) = y_ik - y_ij
        y_pos, y_neg = -y_pos, -y_neg
    loss = bpr_loss_per_user(y_pos, y_neg, batch.owner, B)
    if lam:
        owner, rows = touched_rows(batch, neg, layout)
        loss = loss + lam * l2_per_user(lookup(owner, rows), owner, B)
        if user_vectors is not None:
            loss = loss + lam * (user_vectors * user_vectors).sum(-1)
    return loss
