"""Gradient ascent (paper 000 Section 5, after Blanchard et al. / Yin et al.): rule-consistent."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, finite_positive, register

Tensor = torch.Tensor


@register
@dataclass(frozen=True)
class GradientAscent(GradientAttack):
    """Each Byzantine client computes its honest gradient ``g`` on its own data and touched rows, then
    steps the optimizer rule with the crafted gradient::

        g~ = -scale * g                        (scale = 1: paper 000 Section 5)

    "The Byzantine clients firstly use their own data to compute the gradient g normally, but use -g to
    calculate m~, v~ and theta~ and send them back to the server" (paper 000 Section 5). With
    ``scale > 1`` it is the reverse attack with scaling (ALGORITHMS.md 7.2). The upload passes the rule
    verifier; the server reconstructs ``-scale * g``. Works for every optimizer rule.
    """

    name = "gradient-ascent"
    omniscient = False
    rule_consistent = True

    scale: float = 1.0

    def __post_init__(self) -> None:
        finite_positive(self, "scale")

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        g = -ctx.g if self.scale == 1.0 else -self.scale * ctx.g
        return ctx.ptr, ctx.rows, g
