"""Inner-product manipulation / "empire" / tailored ``-eps * mean`` (Xie et al. 2019; ALGORITHMS.md 7.6):
omniscient, rule-consistent."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, finite_positive, register
from fedrec.attacks.honest import observed, own, same_for_all

Tensor = torch.Tensor


@register
@dataclass(frozen=True)
class IPM(GradientAttack):
    """Every Byzantine client sends, on the union of the honest clients' rows::

        g~ = -eps * mean_i g_i

    the mean of the round's honest gradients as dense vectors over that union (an unlisted row is a 0;
    unweighted). ``eps = 0.1`` (default): RESAM's empire with ``zeta = 1.1`` ("corresponding to eps = 0.1
    in the notation of the original paper") and MixTailor's small eps (Figs. 1, 3, 5); MixTailor also
    uses 0.2 and 10 (the large eps that corrupts the median), SignGuard's code 1.

    What is attacked is the reconstructed gradient: the upload is one honest step of the client's
    optimizer rule with ``g~`` (for Adam the forged moments follow from it). No honest client this
    round: each Byzantine client sends its own honest gradient.

    >>> import torch
    >>> from fedrec.attacks.honest import dense_over_union
    >>> _, X = dense_over_union(torch.tensor([0, 1, 2]), torch.tensor([0, 0]), torch.tensor([[1.0], [3.0]]))
    >>> (-0.1 * X.mean(0)).flatten().tolist()
    [-0.2]
    """

    name = "ipm"
    omniscient = True
    rule_consistent = True

    eps: float = 0.1

    def __post_init__(self) -> None:
        finite_positive(self, "eps")

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        union, X, _ = observed(ctx)
        if X.shape[0] == 0:
            return own(ctx)
        return same_for_all(ctx, union, -self.eps * X.mean(0))
