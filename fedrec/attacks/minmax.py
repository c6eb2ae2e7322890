"""Min-Max and Min-Sum (Shejwalkar & Houmansadr 2021, as SignGuard eq. 19-21 states them; ALGORITHMS.md
7.10): omniscient, rule-consistent."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, finite_positive, register
from fedrec.attacks.honest import check_stats, mean_std, observed, own, same_for_all

Tensor = torch.Tensor

PERTURBATIONS = ("std", "unit", "sign")
KINDS = ("min-max", "min-sum")
MAX_DOUBLINGS = 64


def perturbation(X: Tensor, kind: str = "std", ddof: int = 0) -> Tensor:
    """``grad_p`` of eq. (19) over the clients (dim 0) of ``X``: ``-std`` (SignGuard's default, the
    "inverse standard deviation"), ``-mean / |mean|`` (``"unit"``, 0 if the mean is 0) or
    ``-sign(mean)`` (``"sign"``), Shejwalkar & Houmansadr's three choices."""
    mu, sigma = mean_std(X, ddof)
    if kind == "std":
        return -sigma
    if kind == "unit":
        norm = torch.linalg.vector_norm(mu)
        return -mu / norm if norm > 0 else torch.zeros_like(mu)
    if kind == "sign":
        return -torch.sign(mu)
    raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {kind!r}")


def largest_gamma(
    X: Tensor, mu: Tensor, p: Tensor, kind: str, gamma_init: float = 10.0, steps: int = 40
) -> tuple[float, float]:
    """``(gamma, gamma_fail)``: the largest ``gamma >= 0`` found with ``g~ = mu + gamma p`` inside the
    spread of the clients ``X [n, ...]`` (float64), and the smallest value found outside it.

    * ``min-max`` (eq. 20): ``max_i |g~ - g_i| <= max_{i,j} |g_i - g_j|``;
    * ``min-sum`` (eq. 21): ``sum_i |g~ - g_i|^2 <= max_i sum_j |g_i - g_j|^2`` (squared on both sides
      as eq. 21 writes it; SignGuard's code uses unsquared sums).

    Both left sides are convex in ``gamma`` and hold at ``gamma = 0`` (the mean is inside the spread),
    so the feasible set is an interval ``[0, gamma*]`` and bisection finds its end: start at
    ``gamma_init`` (Shejwalkar & Houmansadr's code starts at 10), double while feasible (at most 64
    times), then ``steps`` bisections of the bracket. Tolerance: ``gamma_fail - gamma`` is the bracket
    width times ``2^-steps`` (``gamma_init 2^-steps`` if ``gamma_init`` is infeasible, else ``gamma
    2^-steps`` or less): about ``1e-11`` relative for the default 40 steps. ``gamma_fail = inf`` when
    the constraint never binds (``p = 0``: one client, or all equal); ``gamma`` is then ``gamma_init``
    (any value gives the same vector).

    Vectorised: ``|g~ - g_i|^2 = a_i + 2 gamma b_i + gamma^2 c`` with ``a_i = |mu - g_i|^2``,
    ``b_i = <mu - g_i, p>``, ``c = |p|^2``, and the pairwise distances from the Gram matrix; the only
    Python loop is over the search steps.
    """
    Xf = X.reshape(X.shape[0], -1).to(torch.float64)
    mu, p = mu.reshape(-1).to(torch.float64), p.reshape(-1).to(torch.float64)
    sq = (Xf * Xf).sum(1)
    D2 = (sq[:, None] + sq[None, :] - 2 * Xf @ Xf.T).clamp_(min=0)
    diff = mu[None, :] - Xf
    a, b, c = (diff * diff).sum(1), diff @ p, float(p @ p)
    if kind == "min-max":
        bound = float(D2.max())

        def feasible(gamma: float) -> bool:
            return float((a + 2 * gamma * b + gamma * gamma * c).max()) <= bound
    elif kind == "min-sum":
        bound = float(D2.sum(1).max())
        A, B = float(a.sum()), float(b.sum())

        def feasible(gamma: float) -> bool:
            return A + 2 * gamma * B + gamma * gamma * c * Xf.shape[0] <= bound
    else:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if c == 0.0:
        return float(gamma_init), math.inf
    lo, hi = 0.0, float(gamma_init)
    for _ in range(MAX_DOUBLINGS):
        if not feasible(hi):
            break
        lo, hi = hi, 2 * hi
    else:
        return lo, math.inf
    for _ in range(steps):
        mid = (lo + hi) / 2
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


@dataclass(frozen=True)
class _SpreadAttack(GradientAttack):
    """Every Byzantine client sends, on the union of the honest rows (Min-Max and Min-Sum alike)::

        g~ = mu + gamma * grad_p              (eq. 19)

    ``mu`` the mean of the round's honest gradients (dense over the union, an unlisted row a 0,
    unweighted), ``grad_p`` the ``perturbation`` (``"std"``: ``-std``, SignGuard's default; ``"unit"``:
    ``-mu / |mu|``; ``"sign"``: ``-sign(mu)``), ``gamma`` the largest value keeping ``g~`` inside the
    honest spread (``largest_gamma``: ``gamma_init`` 10 as Shejwalkar & Houmansadr's code, ``steps``
    bisections). ``ddof`` and ``stats`` as for ``alie`` (SignGuard's code: ``stats = "all"``, the
    distances too). "All malicious gradients keep the same." No honest client this round: each
    Byzantine client sends its own honest gradient; one honest client: ``g~`` is its gradient.
    """

    kind: ClassVar[str] = ""
    omniscient = True
    rule_consistent = True

    perturbation: str = "std"
    gamma_init: float = 10.0
    steps: int = 40
    ddof: int = 0
    stats: str = "honest"

    def __post_init__(self) -> None:
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(
                f"{type(self).__name__}: perturbation must be one of {', '.join(PERTURBATIONS)}, "
                f"got {self.perturbation!r}"
            )
        finite_positive(self, "gamma_init")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 0 <= self.steps <= 200:
            raise ValueError(f"{type(self).__name__}: steps must be an int in [0, 200], got {self.steps!r}")
        check_stats(self)

    def search(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor, float, float] | None:
        """``(union, g~ [U, d] float64, X, gamma, gamma_fail)``, or None when there is nothing to observe."""
        union, X, _ = observed(ctx, self.stats)
        if X.shape[0] == 0:
            return None
        mu = X.mean(0)
        p = perturbation(X, self.perturbation, self.ddof)
        gamma, fail = largest_gamma(X, mu, p, self.kind, self.gamma_init, self.steps)
        return union, mu + gamma * p, X, gamma, fail

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        got = self.search(ctx)
        if got is None:
            return own(ctx)
        return same_for_all(ctx, got[0], got[1])


@register
@dataclass(frozen=True)
class MinMax(_SpreadAttack):
    __doc__ = (
        "Min-Max (eq. 20): the largest gamma with ``max_i |g~ - g_i| <= max_{i,j} |g_i - g_j|``.\n\n    "
        + (_SpreadAttack.__doc__ or "")
    )
    name = "min-max"
    kind = "min-max"


@register
@dataclass(frozen=True)
class MinSum(_SpreadAttack):
    __doc__ = (
        "Min-Sum (eq. 21): the largest gamma with ``sum_i |g~ - g_i|^2 <= max_i sum_j |g_i - g_j|^2``.\n\n    "
        + (_SpreadAttack.__doc__ or "")
    )
    name = "min-sum"
    kind = "min-sum"
