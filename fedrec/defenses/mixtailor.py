"""MixTailor (Ramezani-Kebrya, Modoranu, Alistarh, Hanna, "MixTailor: Mixed Gradient Aggregation for
Robust Learning Against Tailored Attacks", paper 004, section 3, eq. 2; ALGORITHMS.md sections 6.4, 8.2):
every round, after the uploads are in, the server draws one rule uniformly from a pool of deterministic
robust rules and aggregates with it::

    U = AGG_m(G_1, ..., G_n),   m ~ Uniform{1..M}  (drawn from the server's generator, after receipt)

so an attack tailored to one rule meets it only a 1/M share of the rounds (Proposition 1: the mixture
stays resilient when ``M / q > 1 + lambda L / min beta``, q the rules the attack breaks).

The pool (``classes`` x ``ps``). The paper's experiments use "4 classes" (comed, Krum, the geometric
median of Pillutla et al., Bulyan) and "for each class, we generate 16 aggregators, each with a
randomly generated l^p norm from one to 16": M = 64. Here member ``(c, p)`` is the registered rule
``c`` with ``distance = "l<p>"`` where the rule takes a distance (Krum: MixTailor eq. 3, squared l_p
distances over the ``n - f - 2`` nearest; Bulyan: its Krum selection), and the rule itself where it
does not (the coordinate median and the Euclidean geometric median have no p: the paper does not say
what p means for them, ALGORITHMS.md 6.4, so their 16 members are copies, which keeps each class's
share at 1/4 as in the paper). ``ps`` defaults to the integers 1..16 (the paper's range; one p per
member instead of 16 random draws, so the pool is fixed and every norm appears once).

Members that cannot run a round leave the pool for that round, with a logged note (once per (rule, n,
f)): Bulyan where ``n < 4f + 3`` (paper: "Bulyan was removed when f = 4" of n = 12), Krum where
``n < f + 3``. The draw is uniform over the members that remain.

Randomness and the record. The draw is ``randint(M)`` on ``rng``, the server's generator of the round
(``fedrec.federation.pipeline.rule_generator(defense.seed, t)``): a function of the server seed and the
round only, created after the uploads are received and never part of an attack context, so no attack
can read it (paper 004 footnote 2). Reading the drawn index back to pick the member is the rule's one
host synchronisation. ``info["drawn"]`` (0-d int64, an index into ``pool(classes, ps)``) is recorded
per round (``rounds`` records ``drawn``).

``nu``, ``tol``, ``max_iter`` go to the members that take them (the geometric median's solver).

Aggregation: a selecting member gives the (``weights``-weighted, i.e. n_i) mean of the clients it
accepts, a weighting member (geometric median) its convex combination, an aggregating member its vector
(so MixTailor is an ``aggregate`` rule); ``accepted`` is the member's when it selects.

Example::

    >>> import torch
    >>> from fedrec.defenses.vectors import ClientVectors
    >>> x = torch.randn(12, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> res = _fast_mixtailor(ClientVectors.from_dense(x, all_rows=True), 2, rng=torch.Generator().manual_seed(4))
    >>> pool(CLASSES, PS)[int(res.info["drawn"])]
    ('bulyan', 11.0)
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from fedrec import mixpool
from fedrec.defenses.base import RULES, RuleResult, RuleSpec, dense_rows, register_rule
from fedrec.defenses.mda import MAX_SUBSETS
from fedrec.defenses.vectors import ClientVectors, weighted_sum

Tensor = torch.Tensor
log = logging.getLogger(__name__)

# the pool's description lives below the defenses and the attacks (the adaptive attack knows it)
CLASSES, PS = mixpool.CLASSES, mixpool.PS


def pool(classes: Sequence[str], ps: Sequence[float]) -> list[tuple[str, float]]:
    """Every member ``(rule, p)`` of the pool, class by class: ``M = len(classes) * len(ps)``."""
    if not classes or not ps:
        raise ValueError("MixTailor needs at least one class and one p")
    for c in classes:
        if c == "mixtailor" or c not in RULES:
            raise ValueError(f"MixTailor class {c!r}: expected a registered rule other than mixtailor")
    for p in ps:
        if not float(p) >= 1:
            raise ValueError(f"MixTailor p={p!r}: an l_p norm needs p >= 1")
    return [(c, float(p)) for c in classes for p in ps]


def member_params(rule: str, p: float, solver: dict[str, Any] | None = None) -> dict[str, Any]:
    """The member's parameters: ``distance = "l<p>"`` where the rule takes a distance, and the
    geometric-median solver settings ``solver`` (``nu``, ``tol``, ``max_iter``) where it takes them."""
    takes = RULES[rule].params
    out = {k: val for k, val in (solver or {}).items() if k in takes}
    if "distance" in takes:
        out["distance"] = f"l{int(p)}" if float(p).is_integer() else f"l{p}"
    return out


@functools.lru_cache(maxsize=64)
def _note_left_out(rule: str, n: int, f: int, why: str) -> None:
    log.info("MixTailor: %s leaves the pool for rounds of n=%d, f=%d (%s)", rule, n, f, why)


def _why_not(rule: str, n: int, f: int) -> str | None:
    """Why ``rule`` cannot run on n vectors with this f, or None: fewer than its ``min_n(f)``, or (MDA)
    more (n - f)-subsets than it enumerates. A member that cannot leaves the pool for such rounds; MDA's
    bound was met only when the round's draw picked it, raising mid-run."""
    need = RULES[rule].min_n(f)
    if n < need:
        return f"it needs n >= {need}"
    if rule == "mda" and math.comb(n, f) > MAX_SUBSETS:
        return f"C(n, f) = {math.comb(n, f)} subsets exceed its {MAX_SUBSETS}"
    return None


def active(classes: Sequence[str], ps: Sequence[float], n: int, f: int) -> list[int]:
    """The indices into ``pool(classes, ps)`` of the members that run on n vectors with this f."""
    members = pool(classes, ps)
    keep = []
    for i, (rule, _) in enumerate(members):
        why = _why_not(rule, n, f)
        if why is None:
            keep.append(i)
        else:
            _note_left_out(rule, n, f, why)
    if not keep:
        raise ValueError(f"MixTailor: no rule of the pool runs on n={n} with f={f}")
    return keep


def draw(rng: torch.Generator | None, classes: Sequence[str], ps: Sequence[float], n: int, f: int) -> int:
    """The member of this round: uniform over the active members, one ``randint`` on ``rng``."""
    if rng is None:
        raise ValueError("MixTailor draws its rule from the server's generator: rng must be given")
    keep = active(classes, ps, n, f)
    j = int(torch.randint(len(keep), (1,), generator=rng, device=rng.device))
    return keep[j]


def _fast_mixtailor(
    v: ClientVectors, f: int, *, rng: torch.Generator | None = None, weights: Tensor | None = None,
    classes: Sequence[str] = CLASSES, ps: Sequence[float] = PS, nu: float = 1e-6, tol: float = 1e-6,
    max_iter: int = 100,
) -> RuleResult:  # fmt: skip
    m = draw(rng, classes, ps, v.n, f)
    rule, p = pool(classes, ps)[m]
    spec = RULES[rule]
    extra = {"weights": weights} if spec.uses_weights else {}
    solver = {"nu": nu, "tol": tol, "max_iter": max_iter}
    res = spec(v, f, rng=rng, **extra, **member_params(rule, p, solver))
    w = torch.ones(v.n, dtype=torch.float64, device=v.device) if weights is None else weights.to(v.device)
    if res.aggregate is not None:
        agg = res.aggregate
    elif res.weights is not None:
        agg = weighted_sum(v, res.weights)
    else:
        keep = w * res.accepted.to(w.dtype)
        agg = weighted_sum(v, keep / keep.sum())
    info = {"drawn": torch.tensor(m, dtype=torch.int64, device=v.device)}
    return RuleResult(scores=res.scores, accepted=res.accepted, aggregate=agg, info=info)


def _literal_mixtailor(
    x: Tensor, f: int, *, rng: torch.Generator | None = None, weights: Tensor | None = None,
    classes: Sequence[str] = CLASSES, ps: Sequence[float] = PS, nu: float = 1e-6, tol: float = 1e-6,
    max_iter: int = 100,
) -> RuleResult:  # fmt: skip
    """The same draw, then the member's literal form, its result turned into a vector written out."""
    n = x.shape[0]
    m = draw(rng, classes, ps, n, f)
    rule, p = pool(classes, ps)[m]
    spec = RULES[rule]
    extra = {"weights": weights} if spec.uses_weights else {}
    solver = {"nu": nu, "tol": tol, "max_iter": max_iter}
    res = spec.run_literal(x, f, rng=rng, **extra, **member_params(rule, p, solver))
    X = x.reshape(n, -1).to(torch.float64)
    w = [1.0] * n if weights is None else [float(c) for c in weights]
    if res.aggregate is not None:
        agg = res.aggregate
    elif res.weights is not None:
        agg = dense_rows(x, sum(float(res.weights[i]) * X[i] for i in range(n)))
    else:
        kept = [i for i in range(n) if bool(res.accepted[i])]
        total = sum(w[i] for i in kept)
        agg = dense_rows(x, sum((w[i] / total) * X[i] for i in kept))
    return RuleResult(scores=res.scores, accepted=res.accepted, aggregate=agg, info={"drawn": m})


register_rule(
    RuleSpec(
        "mixtailor", "aggregate", _fast_mixtailor, _literal_mixtailor,
        needs_rng=True, uses_weights=True,
        description="MixTailor: a rule drawn uniformly per round (server generator) from comed/Krum/GM/Bulyan x l_p",
    )
)  # fmt: skip
