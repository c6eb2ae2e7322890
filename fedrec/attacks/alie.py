"""A Little Is Enough (ALIE / LIE / "little"; Baruch et al. 2019; ALGORITHMS.md 7.8): omniscient,
rule-consistent."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, register
from fedrec.attacks.honest import check_stats, mean_std, observed, own, same_for_all

Tensor = torch.Tensor


def baruch_z(n: int, f: int) -> float:
    """Baruch et al.'s ``z_max``: ``s = floor(n/2 + 1) - f`` and ``z = Phi^{-1}((n - s) / n)``, ``Phi`` the
    standard normal CDF (ALGORITHMS.md 7.8, "Baruch form"; e.g. ``n = 50, f = 10 -> 0.4677``,
    ``n = 50, f = 24 -> 1.7507``).

    The formula assumes an honest majority (``s >= 1``); with ``f >= floor(n/2 + 1)`` it would give
    ``Phi^{-1}(1) = inf``, so ``s`` is clamped to 1 there (``z = Phi^{-1}((n - 1) / n)``).

    >>> round(baruch_z(50, 24), 4), round(baruch_z(30, 6), 4)
    (1.7507, 0.4307)
    """
    if n < 1 or not 0 <= f <= n:
        raise ValueError(f"baruch_z needs n >= 1 and 0 <= f <= n, got n={n}, f={f}")
    s = max(math.floor(n / 2 + 1) - f, 1)
    return NormalDist().inv_cdf((n - s) / n) if n > s else 0.0


def alie_vector(X: Tensor, z: float, ddof: int = 0) -> Tensor:
    """``mu - z * sigma`` coordinate-wise over the clients (dim 0) of ``X``."""
    mu, sigma = mean_std(X, ddof)
    return mu - z * sigma


def round_z(z: float | None, h: int, b: int) -> float:
    """The given ``z``, or Baruch et al.'s ``z_max`` for the round's ``n = h + b`` clients, ``f = b``."""
    return baruch_z(h + b, b) if z is None else float(z)


def check_z(obj: Any) -> None:
    z = obj.z
    if z is not None and (isinstance(z, bool) or not isinstance(z, int | float) or not math.isfinite(z)):
        raise ValueError(f"{type(obj).__name__}: z must be None or a finite number, got {z!r}")


@register
@dataclass(frozen=True)
class ALIE(GradientAttack):
    """Every Byzantine client sends, per coordinate of the union of the honest clients' rows::

        g~_j = mu_j - z * sigma_j

    with ``mu``, ``sigma`` the mean and standard deviation of the round's honest gradients as dense
    vectors over that union (``fedrec.attacks.honest``: an unlisted row is a 0; unweighted). SignGuard
    eq. (1); RESAM's "little" with ``zeta = z`` (RESAM's literal double negation, ``mu + sigma``, is
    ``z = -1``).

    ``z``: ``None`` (default) is Baruch et al.'s ``z_max`` for the round (``baruch_z(n, f)``, ``n`` the
    round's honest + Byzantine clients, ``f`` its Byzantine ones); or a fixed value: RESAM 1.0,
    SignGuard's experiments 0.3 (its code 1.0). SignGuard's own eq. (2) is *not* Baruch's form (see
    ALGORITHMS.md 7.8's table).

    ``ddof``: 0 (default) the population std ``1/h``, as SignGuard's Appendix A writes it (and the only
    one defined for a single honest client); 1 the sample std of SignGuard's code. ``stats``: the
    population of the statistics, ``"honest"`` (default) or ``"all"`` (with the Byzantine clients' own
    gradients, SignGuard's code). All three are ALGORITHMS.md 7.8's free choices.

    Every Byzantine client sends the same vector and lists the whole union. Edge cases: no honest client
    this round (``stats = "honest"``): each Byzantine client sends its own honest gradient; one honest
    client: ``sigma = 0`` and the vector is its gradient.

    >>> import torch
    >>> from fedrec.attacks.honest import dense_over_union
    >>> _, X = dense_over_union(torch.tensor([0, 2, 3]), torch.tensor([0, 1, 0]),
    ...                         torch.tensor([[1.0], [2.0], [3.0]]))
    >>> alie_vector(X, z=1.0).flatten().tolist()   # mu = [2, 1], sigma = [1, 1]
    [1.0, 0.0]
    """

    name = "alie"
    omniscient = True
    rule_consistent = True

    z: float | None = None
    ddof: int = 0
    stats: str = "honest"

    def __post_init__(self) -> None:
        check_z(self)
        check_stats(self)

    def vector(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor, int] | None:
        """``(union, g_alie [U, d] float64, X, h)``, or None when there is nothing to observe."""
        union, X, h = observed(ctx, self.stats)
        if X.shape[0] == 0:
            return None
        return union, alie_vector(X, round_z(self.z, h, ctx.b), self.ddof), X, h

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        got = self.vector(ctx)
        if got is None:
            return own(ctx)
        union, vec, _, _ = got
        return same_for_all(ctx, union, vec)
