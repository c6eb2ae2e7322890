"""Sign-flipping (ALGORITHMS.md 7.1): rule-consistent, needs only the client's own gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, finite, register

Tensor = torch.Tensor


@register
@dataclass(frozen=True)
class SignFlip(GradientAttack):
    """Each Byzantine client sends its own honest gradient times ``c`` on its own rows::

        g~ = c * g

    ``c = -1`` (default): RESAM (after Allen-Zhu et al. 2020) and SignGuard ("a special case of reverse
    gradient attack"); BRVR uses ``c = -5``. Any finite nonzero ``c`` (``c = -scale`` is
    ``gradient-ascent``'s reverse attack with scaling).

    >>> from fedrec.attacks import make_attack
    >>> make_attack("sign-flip", c=-5.0)
    SignFlip(c=-5.0)
    """

    name = "sign-flip"
    omniscient = False
    rule_consistent = True

    c: float = -1.0

    def __post_init__(self) -> None:
        finite(self, "c", nonzero=True)

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        return ctx.ptr, ctx.rows, self.c * ctx.g
