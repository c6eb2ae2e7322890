"""Additive noise on the uploaded parameters (paper 000 Section 5, after Li et al. 2020): rule-BREAKING."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import AttackBase, AttackContext, finite_positive, register, upload_from_gradient
from fedrec.protocol import UploadBatch


@register
@dataclass(frozen=True)
class AdditiveNoise(AttackBase):
    """The honest upload with Gaussian noise on the parameters of every listed row::

        theta~ = theta(g) + sigma * xi,   xi ~ N(0, I) from the attacker's generator
        m~, v~ (the rule's state) = the honest values

    "Byzantine clients add Gaussian noise to their model parameters" (paper 000 Section 5, its ref.
    [21], Li et al. 2020, "Learning to detect malicious clients for robust federated learning").

    Default ``sigma = 0.5``: the standard deviation of SignGuard's Noise attack (ALGORITHMS.md 7.5),
    half the scale of the parameters themselves (theta^0 ~ N(0, 1), paper 000 Section 2) and some 500
    times Adam's largest per-round step (about eta = 1e-3). The state stays honest, so the server's
    reconstructed gradient is the honest one, while Eq. (5)-(6) (``theta = theta_bar - eta_t m /
    sqrt(v + eps)``) no longer holds: the rule verifier flags every noised row (its tolerance is a few
    float32 roundings of theta). Works for every optimizer rule.
    """

    name = "noise"
    omniscient = False
    rule_consistent = False

    sigma: float = 0.5

    def __post_init__(self) -> None:
        finite_positive(self, "sigma")

    def __call__(self, ctx: AttackContext) -> UploadBatch:
        self.check(ctx)
        up = upload_from_gradient(ctx, ctx.rows, ctx.ptr, ctx.g)
        gen = ctx.generator
        xi = torch.randn(up.theta.shape, generator=gen, dtype=up.theta.dtype, device=gen.device)
        up.theta = up.theta + self.sigma * xi.to(up.theta.device)
        return up
