"""FISM, paper 000 Eq. (1): ``y_ij = p_j . |S+ \\ {j}|^-gamma * sum_{k in S+ \\ {j}} q_k``."""

from __future__ import annotations

import torch

from fedrec.models.batch import CSRTensors, gather_users
from fedrec.models.layout import TableLayout


def fism_pair_scores(
    p_pos: torch.Tensor,
    q_hist: torch.Tensor,
    p_neg: torch.Tensor,
    owner: torch.Tensor,
    n_users: int,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of every positive and its negatives, Eq. (1).

    ``p_pos[h]``/``q_hist[h]``: the P and Q rows of positive ``h`` (every training item is both a
    positive and part of the history); ``p_neg[h, s]``: P rows of its negatives. The target item is
    left out of its own history: the positive's user vector is ``(S - q_j) / (n - 1)^gamma`` where
    ``S`` sums the user's Q rows; a negative ``k`` is not in ``S+``, so it sees ``S / n^gamma``.
    A user with one item has an empty history for that item and scores 0.
    """
    d = q_hist.shape[-1]
    S = torch.zeros(n_users, d, dtype=q_hist.dtype, device=q_hist.device).index_add(0, owner, q_hist)
    n = torch.bincount(owner, minlength=n_users).to(q_hist.dtype)
    c_pos = torch.where(n > 1, (n - 1).clamp(min=1) ** -gamma, torch.zeros_like(n))
    c_neg = n.clamp(min=1) ** -gamma
    u_pos = (S[owner] - q_hist) * c_pos[owner, None]
    y_pos = (p_pos * u_pos).sum(-1)
    u_neg = S[owner] * c_neg[owner, None]
    y_neg = torch.einsum("hsd,hd->hs", p_neg, u_neg)
    return y_pos, y_neg


def fism_user_vectors(Q: torch.Tensor, csr: CSRTensors, users: torch.Tensor, gamma: float) -> torch.Tensor:
    """``|S+|^-gamma * sum_{k in S+} q_k`` for each user: the user vector for unseen items."""
    batch = gather_users(csr, users)
    S = torch.zeros(users.shape[0], Q.shape[1], dtype=Q.dtype, device=Q.device)
    S.index_add_(0, batch.owner, Q[batch.items])
    return S * batch.counts().clamp(min=1).to(Q.dtype)[:, None] ** -gamma


def fism_scorer(theta: torch.Tensor, layout: TableLayout, train: CSRTensors, gamma: float):
    """Full-ranking scorer: ``users -> [B, n_items]`` (training items are masked by the evaluator)."""
    P, Q = layout.view(theta, "P"), layout.view(theta, "Q")

    @torch.no_grad()
    def score(users: torch.Tensor) -> torch.Tensor:
        return fism_user_vectors(Q, train, users, gamma) @ P.T

    return score
