"""The adaptive attack on MixTailor (paper 004, Appendix A.4, problem P3; ALGORITHMS.md 7.13): it knows
the pool and optimises the tailored ``-eps * mean`` attack against all of its members at once;
omniscient, rule-consistent.

Layering (DESIGN.md section 11). Attacks and defenses are one layer and import neither each other; the
attack does not call the server's rules. The pool's description (``CLASSES``, ``PS``, which classes take
an l_p distance, each class's ``min_n``) and a dense model of each member live in ``fedrec.mixpool``,
below both: ``fedrec.defenses.mixtailor`` builds its pool from the same description, and the attack
evaluates its objective with the dense models, as an adversary who knows the pool's definition (not the
server's code, nor its per-round draw) would. ``tests/test_adaptive.py`` checks the models against the
registered rules, and that nothing under ``fedrec/attacks`` imports ``fedrec.defenses``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec import mixpool
from fedrec.attacks.base import AttackContext, GradientAttack, register
from fedrec.attacks.honest import observed, own, same_for_all

Tensor = torch.Tensor

OBJECTIVES = ("max", "mean")
MAX_CANDIDATES = 64  # eps_grid and ps: four times the defaults
EPS_GRID: tuple[float, ...] = tuple(round(10 ** (k / 4), 6) for k in range(-8, 9))
"""0.01 to 100, four values a decade: spans Xie et al.'s eps = 0.1 (against Krum) and 10 (the median)."""


def pool_inner(V: Tensor, eps: Tensor, b: int, f: int, classes, ps) -> tuple[Tensor, Tensor] | None:
    """``(inner [M, E], copies [M])``: for each distinct member m that runs on ``n = h + b`` vectors and
    each candidate ``eps_e``, ``v_m(eps_e)^T mu`` (``mu`` the honest mean, ``v_m`` the member's aggregate
    of the honest ``V [h, D]`` and ``b`` copies of ``-eps_e mu``), and how many pool members it stands for;
    None where no member runs on this round (the round's Byzantine count, f by default, varies)."""
    h = V.shape[0]
    mu = V.mean(0)
    X = torch.cat([V.expand(eps.shape[0], h, V.shape[1]), (-eps[:, None, None] * mu).expand(-1, b, -1)], 1)
    members = mixpool.distinct_members(classes, ps, h + b, f)
    if not members:
        return None
    inner = torch.stack([mixpool.member(c, p, X, f) @ mu for c, p, _ in members])
    return inner, torch.tensor([k for _, _, k in members], dtype=inner.dtype, device=inner.device)


def reduce_pool(inner: Tensor, copies: Tensor, objective: str) -> Tensor:
    """``[E]``: the worst case over the members (``"max"``, P3) or the expectation under the uniform
    draw (``"mean"``, copies counted)."""
    if objective == "max":
        return inner.max(0).values
    return (copies[:, None] * inner).sum(0) / copies.sum()


def pool_objective(V: Tensor, eps: Tensor, b: int, f: int, classes, ps, objective: str) -> Tensor:
    """``[E]``: ``reduce_pool`` of ``pool_inner`` (ValueError where no member runs on the round)."""
    pooled = pool_inner(V, eps, b, f, classes, ps)
    if pooled is None:
        raise ValueError(f"mixtailor-adaptive: no pool member runs on n={V.shape[0] + b} with f={f}")
    return reduce_pool(*pooled, objective)


def lexicographic_argmin(primary: Tensor, secondary: Tensor) -> Tensor:
    """The first index minimising ``primary``, ties (within ``1e-12`` relative) broken by ``secondary``."""
    best = primary.min()
    tied = primary <= best + 1e-12 * best.abs()
    return torch.argmin(torch.where(tied, secondary, float("inf")))


@register
@dataclass(frozen=True)
class MixTailorAdaptive(GradientAttack):
    """Every Byzantine client sends, on the union of the honest clients' rows::

        g~ = -eps* mu,   eps* = argmin_{eps in grid} max_m v_m(eps)^T mu,
        v_m(eps) = AGG_m(-eps mu, ..., -eps mu, V_1, ..., V_h)

    paper 004's P3 (``min_{lambda, xi} xi`` s.t. ``v_m(lambda)^T sum_i V_i / n <= xi`` for every member m,
    with ``lambda sum_i V_i = eps mu`` up to the factor h): the eps whose worst member (over the pool it
    knows, ``classes`` x ``ps``) moves least along the honest mean; a negative optimum is a guaranteed
    successful attack (Definition 2). ``objective = "mean"`` minimises the expectation over the uniform
    draw instead (what Proposition 1 bounds). Ties (a robust member that no eps moves often sets the
    worst case) go to the eps of least expectation (``"max"``) or least worst case (``"mean"``), then to
    the first of ``eps_grid``. ``mu`` and ``V`` are the round's honest gradients dense over
    their union (an unlisted row a 0, unweighted, as ``ipm``); ``f`` is the f the attacker assumes the
    server uses (None: the number of Byzantine clients of the round). No honest client this round: the Byzantine clients' own gradients.

    Cost: ``len(eps_grid)`` candidates batched through each distinct member (the 16 copies of comed and
    of the geometric median are one), O(members x E x n^2 D) per round: fine for the testbed's and the
    contract's rounds, heavy for a whole recommender table (pass fewer ``ps`` or a shorter grid).

    >>> from fedrec.attacks import make_attack
    >>> make_attack("mixtailor-adaptive", objective="mean").objective
    'mean'
    """

    name = "mixtailor-adaptive"
    omniscient = True
    rule_consistent = True

    eps_grid: tuple[float, ...] = EPS_GRID
    objective: str = "max"
    f: int | None = None
    classes: tuple[str, ...] = mixpool.CLASSES
    ps: tuple[float, ...] = mixpool.PS

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"MixTailorAdaptive: objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        grid = tuple(self.eps_grid)
        if not grid or not all(isinstance(e, int | float) and 0 < e < float("inf") for e in grid):
            raise ValueError(f"MixTailorAdaptive: eps_grid must be finite numbers > 0, got {self.eps_grid!r}")
        # a round holds [eps, n, D] float64 copies and runs every member per p: 20,000 eps asked for 73 GB,
        # 2,000 p hung the first round
        for name, values in (("eps_grid", grid), ("ps", tuple(self.ps))):
            if len(values) > MAX_CANDIDATES:
                raise ValueError(
                    f"MixTailorAdaptive: {name} holds {len(values)} values, at most {MAX_CANDIDATES}"
                )
        if self.f is not None and (isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0):
            raise ValueError(f"MixTailorAdaptive: f must be None or an int >= 0, got {self.f!r}")
        unknown = [c for c in self.classes if c not in mixpool.CLASSES]
        if not self.classes or unknown:
            raise ValueError(
                f"MixTailorAdaptive: classes must be among {', '.join(mixpool.CLASSES)}, got {self.classes!r}"
            )
        if not self.ps or not all(float(p) >= 1 for p in self.ps):
            raise ValueError(f"MixTailorAdaptive: ps must be l_p norms p >= 1, got {self.ps!r}")

    def choose(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """``(union, mu [U, d], eps* (0-d), objective [E])``, or None with nothing to observe."""
        union, X, h = observed(ctx)
        if h == 0:
            return None
        V = X.reshape(h, -1)
        eps = torch.tensor(self.eps_grid, dtype=torch.float64, device=V.device)
        f = ctx.b if self.f is None else self.f
        pooled = pool_inner(V, eps, ctx.b, f, self.classes, self.ps)
        if pooled is None:  # a round no member of the pool runs on: nothing to tailor to (it ended the run)
            return None
        inner, copies = pooled
        obj = reduce_pool(inner, copies, self.objective)
        other = reduce_pool(inner, copies, OBJECTIVES[self.objective == "max"])  # the tie-break
        return union, X.mean(0), eps[lexicographic_argmin(obj, other)], obj

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        got = self.choose(ctx)
        if got is None:
            return own(ctx)
        union, mu, eps, _ = got
        return same_for_all(ctx, union, -eps * mu)
