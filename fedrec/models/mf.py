"""Matrix factorisation: ``y_ij = u_i . p_j`` (the FMF baseline of paper 000, Ammad-ud-din et al.)."""

from __future__ import annotations

import torch


def mf_pair_scores(
    u: torch.Tensor, p_pos: torch.Tensor, p_neg: torch.Tensor, owner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of every positive (``p_pos[h]``) and its negatives (``p_neg[h, s]``); ``u[b]`` per user."""
    u_h = u[owner]
    return (p_pos * u_h).sum(-1), torch.einsum("hsd,hd->hs", p_neg, u_h)


def mf_scorer(P: torch.Tensor, U: torch.Tensor):
    """Full-ranking scorer ``users -> U[users] @ P.T`` from the item table ``P`` and the user table ``U``;
    the tables are copied once to the device of the queried users when it differs."""
    cache = {U.device: (U, P)}

    @torch.no_grad()
    def score(users: torch.Tensor) -> torch.Tensor:
        if users.device not in cache:
            cache[users.device] = (U.to(users.device), P.to(users.device))
        u, p = cache[users.device]
        return u[users] @ p.T

    return score
