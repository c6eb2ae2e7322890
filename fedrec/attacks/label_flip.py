"""Label-flipping, fedrec's BPR analogue (ALGORITHMS.md 7.3): rule-consistent data poisoning."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, register

Tensor = torch.Tensor


@register
@dataclass(frozen=True)
class LabelFlip(GradientAttack):
    """Each Byzantine client trains on inverted preferences: every BPR pair of paper 000 Eq. (7),
    ``-log sigmoid(y_ij - y_ik)`` (positive ``j``, sampled negative ``k``), becomes
    ``-log sigmoid(y_ik - y_ij)``: it prefers its sampled negatives over its positives. The L2 term, the
    rows it touches and its samples are unchanged; it uploads the honest optimizer step with that
    gradient (``ctx.flipped_g``).

    RESAM and SignGuard flip class labels (``l -> C - 1 - l``); neither defines the ranking analogue, so
    this is fedrec's own definition (ALGORITHMS.md 7.3 note). The simulation fills ``ctx.flipped_g`` for
    attacks with ``needs_flipped`` (``client_gradients(..., flip=True)`` on the Byzantine clients'
    batch, with the same negatives as their honest gradient). MF: the private user vector is not
    stepped (as for every Byzantine client).
    """

    name = "label-flip"
    omniscient = False
    rule_consistent = True
    needs_flipped = True

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        if ctx.flipped_g is None:
            raise ValueError("label-flip needs ctx.flipped_g (the gradients on flipped BPR pairs)")
        return ctx.ptr, ctx.rows, ctx.flipped_g
