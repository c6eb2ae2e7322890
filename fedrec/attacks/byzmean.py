"""ByzMean (SignGuard eq. 8; ALGORITHMS.md 7.9): omniscient, rule-consistent; the Byzantine clients send
two different vectors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.alie import ALIE
from fedrec.attacks.base import AttackContext, register
from fedrec.attacks.honest import own, per_client

Tensor = torch.Tensor


@register
@dataclass(frozen=True)
class ByzMean(ALIE):
    """Split the round's ``m = b`` Byzantine clients into the first ``m1 = floor(m / 2)`` (in
    ``ctx.client_ids`` order) and the other ``m2 = m - m1``; with ``n = h + m`` the round's clients::

        g_m1 = the ALIE vector (SignGuard's default; ``z``, ``ddof``, ``stats`` as for ``alie``)
        g_m2 = ((n - m1) g_m1 - sum_{i honest} g_i) / m2

    so that the unweighted mean of all ``n`` uploads' gradients (honest and Byzantine, dense over the
    union of the honest rows, an unlisted row a 0) is exactly ``g_m1`` (SignGuard eq. 8, as ALGORITHMS.md
    7.9 says to implement it, not the code's variant that sums over all n honest gradients). ``m = 1``
    gives ``m1 = 0``: the single client sends ``n g_m1 - sum_honest``. No honest client this round
    (``stats = "honest"``): each Byzantine client sends its own honest gradient.

    The server aggregates weighted means over the clients that list a row (and defenses do not take a
    plain mean); the identity holds for the plain unweighted mean, the attack's design target.
    """

    name = "byzmean"  # ALIE's parameters (z, ddof, stats) and its vector for the first m1 clients

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        got = self.vector(ctx)
        if got is None:
            return own(ctx)
        union, g_m1, X, h = got
        m = ctx.b
        m1 = m // 2
        n = h + m
        g_m2 = ((n - m1) * g_m1 - X[:h].sum(0)) / (m - m1)
        G = torch.cat([g_m1.expand(m1, *g_m1.shape), g_m2.expand(m - m1, *g_m2.shape)])
        return per_client(ctx, union, G)
