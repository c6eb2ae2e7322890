"""Random Gaussian gradients (ALGORITHMS.md 7.4): rule-consistent, independent of the data."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, finite_positive, register

Tensor = torch.Tensor


@register
@dataclass(frozen=True)
class Gaussian(GradientAttack):
    """Each Byzantine client sends a gradient drawn from ``N(0, sigma^2 I)`` on its own rows::

        g~ = sigma * xi,   xi ~ N(0, I) from the attacker's generator (``ctx.generator``) only

    independent of the data and of the honest gradients. ``sigma = 0.5`` (default): SignGuard's
    "Random" attack (its code draws ``0.5 * randn``); BRVR's "Gaussian" is ``N(0, 10^4)``, ``sigma =
    100``. Unlike ``noise`` (which perturbs the uploaded parameters and breaks the rule), the upload is
    an honest optimizer step with ``g~``: the rule verifier accepts it.
    """

    name = "gaussian"
    omniscient = False
    rule_consistent = True

    sigma: float = 0.5

    def __post_init__(self) -> None:
        finite_positive(self, "sigma")

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        gen = ctx.generator
        xi = torch.randn(ctx.g.shape, generator=gen, dtype=ctx.g.dtype, device=gen.device)
        return ctx.ptr, ctx.rows, self.sigma * xi.to(ctx.g.device)
