"""Centered clipping (CC; Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021), as RESAM states it (El Mhamdi, Guerraoui, Rouault, ICLR 2021, Appendix C.8);
ALGORITHMS.md section 4.11. With a clipping parameter ``c_tau >= 0`` and a start ``v_0``, for
``l = 1..L``:

    v_l = v_{l-1} + (1/n) sum_i (x_i - v_{l-1}) min(1, c_tau / |x_i - v_{l-1}|),     CC(x) = v_L.

Registered as the aggregator ``cc`` (``kind="aggregate"``). Not (f, lambda)-resilient averaging: RESAM
quotes ``lambda = 20 sqrt(10) f / n`` for f < n/9.7 only with c_tau and L tuned from sigma and a bound on
``E|x_H - v_0|^2``, and treats CC as not resilient (Appendix C.8), so ``lam`` is None. CC does not use f.

Choices:
    - ``v_0 = 0``. RESAM lets v_0 be arbitrary and Karimireddy et al. start at the previous aggregate,
      which makes the rule stateful (state to reset between runs and to checkpoint). Starting at 0 keeps
      the rule a deterministic function of the round's vectors and the server stateless; it is also
      ByzFL's default (``CenteredClipping(m=None)``, whose constructor rejects any other start, ANCHORS.md
      section 4.1). In delta and gradient space 0 is "no change", the natural centre.
    - Defaults ``tau = 100.0`` and ``iters = 1`` are ByzFL's (``CenteredClipping(L=1, tau=100.0)``);
      RESAM gives no values for its CC runs. Karimireddy et al. tune tau to the gradient noise: with
      deltas of a few hundred rows tau should be set per dataset (``defense.params``).
    - ``|x_i - v| = 0`` counts as unclipped (factor 1, the term is 0 anyway), so ``tau = 0`` is defined
      (the output stays at v_0) and ``tau = inf`` is plain averaging for ``iters = 1`` (ALGORITHMS.md
      section 4.11, testable).

Sparse form. ``v_l`` is a combination of ``v_0 = 0`` and the x_i, so it is 0 outside the union U of
listed rows and is held as ``[M, d]`` over U. The distances need full vectors; with ``L_i`` the rows
client i lists,

    |x_i - v|^2 = sum_{r in L_i} |x_i[r] - v[r]|^2 + (|v|^2 - sum_{r in L_i} |v[r]|^2),

the first term exact on the listed entries, the second (v's mass off the client's rows) a difference
of float64 sums clamped at 0: its rounding error is about ``eps |v|^2``, so a distance near 0 is off by up
to about ``sqrt(eps) |v| = 1.5e-8 |v|`` (a clip factor changes only for a distance that close to tau).
The update is ``v <- (1 - sum_i c_i / n) v + (1/n) sum_i c_i x_i`` with ``c_i`` the clip factors, a
scatter-add over the listed entries. One iteration costs ``O(K d + M d)``, no dense ``[n, M, d]`` block
and no host synchronisation beyond sizing the union.
"""

from __future__ import annotations

import torch

from fedrec.defenses.base import RuleResult, RuleSpec, dense_rows, register_rule
from fedrec.defenses.vectors import ClientVectors

Tensor = torch.Tensor

TAU = 100.0
"""Default clipping radius c_tau (ByzFL's ``CenteredClipping`` default)."""

ITERS = 1
"""Default number of iterations L (ByzFL's default; Karimireddy et al. use L = 1 in their experiments)."""

MAX_ITERS = 1000
"""Each iteration is a pass over every upload; past this a round (and config validation, which runs the
rule once) would stop being a round."""


def _check(tau: float, iters: int) -> None:
    if not (isinstance(tau, int | float) and tau >= 0):  # nan fails too
        raise ValueError(f"tau (c_tau) must be a number >= 0 (inf allowed), got {tau!r}")
    if not (isinstance(iters, int) and not isinstance(iters, bool) and 1 <= iters <= MAX_ITERS):
        raise ValueError(f"iters (L) must be an integer in [1, {MAX_ITERS}], got {iters!r}")


def _clip_factors(dist: Tensor, tau: float) -> Tensor:
    """``min(1, tau / dist)``, 1 where ``dist <= tau`` (including dist = 0, and every dist for inf)."""
    return torch.where(dist > tau, tau / dist, torch.ones_like(dist))


def centered_clipping(v: ClientVectors, f: int, *, tau: float = TAU, iters: int = ITERS) -> RuleResult:
    """CC(x) = v_L from v_0 = 0 (module doc), over the union of listed rows, in float64.

    Args:
        v: the n client vectors.
        f: unused (CC does not depend on f); kept for the common rule signature.
        tau: the clipping radius c_tau >= 0 (``inf``: no clipping).
        iters: the number of iterations L >= 1.

    Returns:
        ``RuleResult`` with ``aggregate = (rows [M], values [M, d])`` over the union of listed rows in
        the values' dtype (0 elsewhere), ``scores[i] = |x_i - v_{L-1}|`` (the distance clipped in the
        last iteration) and ``info`` with ``rule``, ``tau``, ``iters`` and ``clipped`` (``[n]`` bool,
        ``scores > tau``).

    Example::

        >>> x = torch.tensor([[[0.0]], [[1.0]], [[5.0]], [[100.0]]])  # 4 clients, 1 row, d = 1
        >>> rows, cc = centered_clipping(ClientVectors.from_dense(x), f=1, tau=2.0).aggregate
        >>> rows.tolist(), cc.flatten().tolist()  # v_1 = (0 + 1 + 2 + 2) / 4: 5 and 100 clipped to 2
        ([0], [1.25])
    """
    _check(tau, iters)
    n = v.n
    union = v.union_rows()
    pos = torch.searchsorted(union, v.rows)
    owner = v.owner()
    x = v.values.to(torch.float64)
    c_sum = torch.zeros(union.shape[0], v.d, dtype=torch.float64, device=v.device)
    center = torch.zeros_like(c_sum)
    dist = torch.zeros(n, dtype=torch.float64, device=v.device)
    for _ in range(iters):
        at = center[pos]  # [K, d] v at each listed entry
        listed = torch.zeros_like(dist).index_add_(0, owner, (x - at).pow(2).sum(1))
        v_listed = torch.zeros_like(dist).index_add_(0, owner, at.pow(2).sum(1))
        dist = (listed + (center.pow(2).sum() - v_listed).clamp_min(0.0)).sqrt()
        c = _clip_factors(dist, tau)
        c_sum = torch.zeros_like(center).index_add_(0, pos, x * c[owner][:, None])
        center = center * (1.0 - c.sum() / n) + c_sum / n
    return RuleResult(
        scores=dist,
        aggregate=(union, center.to(v.values.dtype)),
        info={"rule": "cc", "tau": tau, "iters": iters, "clipped": dist > tau},
    )


def centered_clipping_literal(x: Tensor, f: int, *, tau: float = TAU, iters: int = ITERS) -> RuleResult:
    """The update written out on dense ``x [n, n_rows, d]`` with Python loops, from v_0 = 0."""
    _check(tau, iters)
    n = x.shape[0]
    flat = x.reshape(n, -1).to(torch.float64)
    center = torch.zeros(flat.shape[1], dtype=torch.float64)
    dist = [0.0] * n
    for _ in range(iters):
        step = torch.zeros_like(center)
        for i in range(n):
            diff = flat[i] - center
            dist[i] = float(torch.linalg.vector_norm(diff))
            factor = tau / dist[i] if dist[i] > tau else 1.0
            step += diff * factor
        center = center + step / n
    scores = torch.tensor(dist, dtype=torch.float64)
    return RuleResult(
        scores=scores,
        aggregate=dense_rows(x, center),
        info={"rule": "cc", "tau": tau, "iters": iters, "clipped": scores > tau},
    )


SPEC = register_rule(
    RuleSpec(
        name="cc",
        kind="aggregate",
        fast=centered_clipping,
        literal=centered_clipping_literal,
        description="centered clipping from v_0 = 0: L steps clipping each x_i - v at radius tau (RESAM C.8)",
    )
)
