"""MixTailor's random-eps attack (paper 004, Fig. 4a; ALGORITHMS.md 7.7): the tailored ``-eps * mean``
attack with eps drawn every round from {small, large}: omniscient, rule-consistent."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, finite_positive, register
from fedrec.attacks.honest import observed, own, same_for_all

Tensor = torch.Tensor


@register
@dataclass(frozen=True)
class RandomEps(GradientAttack):
    """Every Byzantine client sends, on the union of the honest clients' rows::

        g~ = -eps_t * mean_i g_i,   eps_t = small or large with probability 1/2 each, per round

    drawn from the attacker's generator (``ctx.generator``) only. MixTailor: "randomly drawn from the
    set of a small eps to corrupt Krum, a large one to corrupt comed", ``small = 0.1``, ``large = 10``;
    it is "not as effective as tailored attacks against any specific rule" because an effective attack
    must be applied consistently over consecutive iterations. The mean is ``ipm``'s (dense over the
    union, unweighted); no honest client this round: the Byzantine clients' own gradients.

    >>> from fedrec.attacks import make_attack
    >>> make_attack("random-eps", small=0.2)
    RandomEps(small=0.2, large=10.0)
    """

    name = "random-eps"
    omniscient = True
    rule_consistent = True

    small: float = 0.1
    large: float = 10.0

    def __post_init__(self) -> None:
        finite_positive(self, "small")
        finite_positive(self, "large")

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        gen = ctx.generator
        coin = torch.rand((), generator=gen, device=gen.device) < 0.5  # drawn every round, used or not
        union, X, _ = observed(ctx)
        if X.shape[0] == 0:
            return own(ctx)
        big, small = (torch.tensor(e, dtype=X.dtype, device=X.device) for e in (self.large, self.small))
        eps = torch.where(coin.to(X.device), big, small)  # no host read of the coin
        return same_for_all(ctx, union, -eps * X.mean(0))
