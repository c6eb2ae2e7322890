"""Geometric median by the smoothed Weiszfeld algorithm: RFA (Pillutla, Kakade, Harchaoui, "Robust
Aggregation for Federated Learning", 2019 / IEEE TSP 2022), paper 000's RFA baseline; ALGORITHMS.md
section 4.9.

``GM(x) = argmin_z F(z)``, ``F(z) = sum_i alpha_i |z - x_i|`` (``alpha = w / sum(w)``), has no closed
form. The smoothed Weiszfeld step of RFA is

    beta_i <- alpha_i / max(nu, |z - x_i|),   beta <- beta / sum(beta),   z <- sum_i beta_i x_i,

a majorise-minimise step on the smoothed objective ``sum_i alpha_i h_nu(|z - x_i|)`` with
``h_nu(r) = r`` for ``r >= nu`` and ``r^2 / (2 nu) + nu / 2`` below, which therefore never increases;
``0 <= h_nu(r) - r <= nu / 2``, so the smoothed minimiser is within ``nu / 2`` of ``min F``.

Start and stopping test. RFA starts at the weighted mean and stops when the objective decreases by less
than ``tol`` times its value. Both are dominated by far outliers, i.e. by a scaled attack: with 3 of 7
inputs at 1e12 and 4 identical honest ones, that setup stops 3e6 away from the honest input after 100
steps (the iterates approach it by a factor f / (n - f) per step, and the relative objective change is
tiny long before). Here instead:

- the start is the medoid ``x_k`` (the input of least objective: ``F(x_k) <= 2 min F``, and inside the
  honest cluster whenever that is tight), moved off it by Vardi and Zhang's step (PNAS 2000; the exact
  Weiszfeld step at a data point): with ``eta`` the weight at ``x_k`` (inputs within ``nu`` of it) and
  ``R = sum_{|x_i - x_k| > nu} alpha_i (x_i - x_k) / |x_i - x_k|``, ``x_k`` is optimal if
  ``|R| <= eta``, else ``z_0 = x_k + (|R| - eta) / (sum_i alpha_i / |x_i - x_k|) * R / |R|``;
- the test is on the step: stop when ``|z_{t+1} - z_t| <= tol * s`` with ``s`` the alpha-weighted median
  of the distances from the medoid (a robust spread of the inputs, insensitive to f < n/2 outliers), or
  when the step is below the rounding floor of the Gram representation (below).

The defaults ``nu = 1e-6, tol = 1e-6, max_iter = 100`` follow the RFA reference code; ByzFL's default
of three iterations with ``nu = 0.1`` is far from converged on hard inputs (ANCHORS.md section 7.5).

Every iterate is a convex combination ``z = sum_j beta_j x_j`` of the inputs, so the solver works in the
span of the inputs with the ``n x n`` Gram matrix ``G`` and never materialises z:

    |z - x_i|^2 = beta^T G beta - 2 (G beta)_i + G_ii.

The identity is exact (it expands ``|sum_j beta_j x_j - x_i|^2``). In float64 a squared distance carries
a rounding error of about ``1e-16 * max_i G_ii``, i.e. a relative error of about
``1e-8 * |x| / |z - x_i|`` in the distance: negligible for deltas and gradients (centred at the common
default by construction), worth knowing for inputs that share a large common offset. One step costs
``O(n^2)`` after the ``O(n^2 K d)`` Gram matrix; the median itself is ``weighted_sum(v, beta)`` and lies
in the convex hull of the inputs (RESAM Lemma 8) by construction. On the CPU the steps run as one C
loop (fedrec.defenses.weiszfeld_native: the same steps to float64 round-off); elsewhere the stopping
test reads one scalar per iteration from the device, the only host synchronisation in the loop.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedrec.defenses.base import RuleResult, RuleSpec, register_rule
from fedrec.defenses.vectors import ClientVectors, gram, sq_distances_from_gram
from fedrec.defenses.weiszfeld_native import weiszfeld_steps

MAX_ITER = 100_000  # Weiszfeld steps on the n x n Gram matrix: ~10 us each

Tensor = torch.Tensor

_EPS64 = torch.finfo(torch.float64).eps
_TINY64 = torch.finfo(torch.float64).tiny


def _smoothed(r: Tensor, nu: float) -> Tensor:
    """``h_nu(r)``: ``r`` where ``r >= nu``, ``r^2 / (2 nu) + nu / 2`` below (continuous, C^1)."""
    return torch.where(r >= nu, r, r * r / (2.0 * nu) + nu / 2.0)


def _weighted_median(values: Tensor, alpha: Tensor) -> Tensor:
    """The lower alpha-weighted median of ``values`` (alpha sums to 1)."""
    v, order = torch.sort(values)
    below = torch.cumsum(alpha[order], 0) < 0.5 * (1.0 - 1e-12)
    return v[below.sum().clamp_max(values.shape[0] - 1)]


def weiszfeld_gram(
    g: Tensor,
    weights: Tensor | None = None,
    *,
    nu: float = 1e-6,
    tol: float = 1e-6,
    max_iter: int = 100,
) -> tuple[Tensor, dict[str, Any]]:
    """Smoothed Weiszfeld on the Gram matrix ``g [n, n]`` of the inputs (see the module docstring).

    Returns ``(beta [n] float64, info)`` with the median ``z = sum_i beta_i x_i``; see
    ``geometric_median`` for ``info``."""
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] < 1:
        raise ValueError(f"g must be a non-empty square [n, n] matrix, got shape {tuple(g.shape)}")
    if not nu > 0:
        raise ValueError(f"nu must be > 0, got {nu}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if not 0 <= max_iter <= MAX_ITER:  # tol = 0 never stops early: a bound keeps a round a round
        raise ValueError(f"max_iter must be in [0, {MAX_ITER}], got {max_iter}")
    n = g.shape[0]
    g = g.to(torch.float64)
    if weights is None:
        alpha = torch.full((n,), 1.0 / n, dtype=torch.float64, device=g.device)
    else:
        if weights.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
        w = weights.to(device=g.device, dtype=torch.float64)
        alpha = w / w.sum()
    diag = g.diagonal()
    root = diag.clamp_min(0.0).sqrt()

    # start: the medoid, moved off it by Vardi and Zhang's step unless it is optimal
    dist = sq_distances_from_gram(g).sqrt()
    k = torch.argmin(dist @ alpha)  # ties: the lowest index
    dk = dist[k]
    # a distance below the Gram identity's rounding floor (~8e-8 |x|) cannot be told from 0: such an
    # input coincides with the medoid (BLAS may round <x_i, x_i> and <x_i, x_j> of equal inputs apart)
    floor = (16.0 * _EPS64 * (diag.clamp_min(0.0) + diag[k].clamp_min(0.0))).sqrt()
    near = dk <= floor.clamp_min(nu)
    eta = (alpha * near).sum()
    pull = torch.where(near, 0.0, alpha / dk.clamp_min(nu))
    onehot_k = (torch.arange(n, device=g.device) == k).to(torch.float64)
    c = pull - pull.sum() * onehot_k  # R = sum_j c_j x_j
    r_norm = (c @ g @ c).clamp_min(0.0).sqrt()
    move = (r_norm - eta).clamp_min(0.0) / pull.sum().clamp_min(_TINY64)
    beta = onehot_k + move / r_norm.clamp_min(_TINY64) * c
    scale = _weighted_median(dk, alpha)

    r = _distances(g, diag, beta)
    converged = False
    iterations = 0
    if bool(r_norm <= eta):
        # Vardi and Zhang's test: the medoid itself is the geometric median (e.g. a majority of equal
        # inputs); smoothed steps would only move off it by ~nu, so keep it exactly
        # (its copies within nu share its weight as their alpha shares: exact for equal inputs)
        max_iter, converged = 0, True
        beta = alpha * near / eta
        r = _distances(g, diag, beta)
    if max_iter > 0:
        thresh, floor_c = float((tol * scale) ** 2), 64.0 * _EPS64 * (n + 1)
        args = (g, alpha, diag, root, beta, r, nu, thresh, floor_c, max_iter)
        steps = weiszfeld_steps(*args)  # one C loop; the torch loop where it does not apply
        beta, r, iterations, converged = steps if steps is not None else _steps_torch(*args)
    info: dict[str, Any] = {
        "iterations": iterations,
        "converged": converged,
        "objective": alpha @ r,
        "smoothed_objective": alpha @ _smoothed(r, nu),
        "gap_bound": _gap_bound(g, alpha, beta, r, nu),
        "medoid": k,
    }
    return beta, info


def _distances(g: Tensor, diag: Tensor, beta: Tensor) -> Tensor:
    """``|z - x_i|`` for ``z = sum_j beta_j x_j`` from the Gram matrix (the module docstring)."""
    gb = g @ beta
    return (beta @ gb - 2.0 * gb + diag).clamp_min(0.0).sqrt()


def _steps_torch(
    g: Tensor, alpha: Tensor, diag: Tensor, root: Tensor, beta: Tensor, r: Tensor, nu: float, thresh: float,
    floor_c: float, max_iter: int,
) -> tuple[Tensor, Tensor, int, bool]:  # fmt: skip
    """Up to ``max_iter`` smoothed Weiszfeld steps from ``beta``, ``r``, stopping when the step is at most
    ``thresh = (tol s)^2`` plus the Gram floor ``floor_c (|delta| . root)^2`` (``floor_c = 64 eps
    (n + 1)``): the new ``beta``, ``r``, the steps taken and whether the test was met
    (fedrec.defenses.weiszfeld_native is the same loop in C)."""
    iterations, converged = 0, False
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        step = alpha / r.clamp_min(nu)
        new_beta = step / step.sum()
        delta = new_beta - beta
        step2 = (delta @ g @ delta).clamp_min(0.0)
        floor2 = floor_c * (delta.abs() @ root) ** 2
        beta = new_beta
        r = _distances(g, diag, beta)
        if bool(step2 <= thresh + floor2):
            converged = True
            break
    return beta, r, iterations, converged


def _gap_bound(g: Tensor, alpha: Tensor, beta: Tensor, r: Tensor, nu: float) -> Tensor:
    """A certified bound ``F(z) - min F >= 0`` for ``F(y) = sum_i alpha_i |y - x_i|`` at
    ``z = sum_j beta_j x_j`` with ``r_i = |z - x_i|``, from a feasible point of the dual
    ``max { -sum_i alpha_i <u_i, x_i> : |u_i| <= 1, sum_i alpha_i u_i = 0 }`` (each feasible u gives
    ``F(y) >= sum_i alpha_i <u_i, y - x_i> = sum_i alpha_i <u_i, z - x_i>`` for every y).

    Take ``e_i = (z - x_i) / max(nu, r_i)`` (``|e_i| <= 1``), ``s = sum_i alpha_i e_i`` (the smoothed
    gradient, 0 at a Weiszfeld fixed point) and ``u_i = (e_i - s) / (1 + |s|)``: then
    ``min F >= (sum_i alpha_i r_i^2 / max(nu, r_i) - <s, z - xbar>) / (1 + |s|)`` with
    ``xbar = sum_i alpha_i x_i``. In coefficients ``s = sum_j c_j x_j`` with
    ``c = (sum_i alpha_i w_i) beta - alpha * w``, ``w_i = 1 / max(nu, r_i)``, so every term is a quadratic
    form in the Gram matrix. At the fixed point the bound is at most ``nu / 4``."""
    w = 1.0 / r.clamp_min(nu)
    c = (alpha * w).sum() * beta - alpha * w
    gc = g @ c
    s_norm = (c @ gc).clamp_min(0.0).sqrt()
    lower = ((alpha * r * r * w).sum() - gc @ (beta - alpha)) / (1.0 + s_norm)
    return (alpha @ r - lower).clamp_min(0.0)


def geometric_median(
    v: ClientVectors,
    weights: Tensor | None = None,
    *,
    nu: float = 1e-6,
    tol: float = 1e-6,
    max_iter: int = 100,
    block_rows: int | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Approximate geometric median of the client vectors (RFA), as convex weights.

    Args:
        v: the client vectors.
        weights: ``[n]`` non-negative client weights, not all 0 (default: uniform); normalised to
            ``alpha = w / sum(w)``.
        nu: smoothing, the smallest distance a Weiszfeld weight divides by (> 0).
        tol: stop when a step moves z by at most ``tol`` times the robust spread ``s`` (>= 0).
        max_iter: the most Weiszfeld steps after the start (0 returns the start).
        block_rows: rows per dense block of the Gram matrix (``gram``).

    Returns:
        ``beta [n]`` float64, the final Weiszfeld weights ``beta_i ∝ alpha_i / max(nu, |z' - x_i|)``
        at the previous iterate z' (a convex combination: the median is ``z = sum_i beta_i x_i``,
        get it with ``weighted_sum(v, beta)``), and ``info``: ``iterations`` (int, steps taken),
        ``converged`` (bool, the step test was met within ``max_iter``), ``objective`` (0-dim float64,
        ``sum_i alpha_i |z - x_i|``), ``smoothed_objective`` (what the steps decrease), ``gap_bound``
        (0-dim float64, a certified upper bound on ``objective - min_y sum_i alpha_i |y - x_i|`` from a
        dual feasible point: how far from optimal the median is, whatever the stopping test did) and
        ``medoid`` (0-dim int64, the input the solver started from).
    """
    return weiszfeld_gram(gram(v, block_rows), weights, nu=nu, tol=tol, max_iter=max_iter)


# -- registration --------------------------------------------------------------------------------------


def _fast_geomed(
    v: ClientVectors, f: int, *, weights: Tensor | None = None, nu: float = 1e-6, tol: float = 1e-6,
    max_iter: int = 100,
) -> RuleResult:  # fmt: skip
    beta, info = geometric_median(v, weights, nu=nu, tol=tol, max_iter=max_iter)
    return RuleResult(scores=beta, weights=beta, info=info)


def _literal_geomed(
    x: Tensor, f: int, *, weights: Tensor | None = None, nu: float = 1e-6, tol: float = 1e-6,
    max_iter: int = 100,
) -> RuleResult:  # fmt: skip
    """RFA's smoothed Weiszfeld written out: start at the weighted mean, ``max_iter`` steps (no early stop:
    the fast rule's stopping test only ends it closer to the fixed point)."""
    X = x.reshape(x.shape[0], -1).to(torch.float64)
    w = torch.ones(X.shape[0], dtype=torch.float64) if weights is None else weights.to(torch.float64).cpu()
    alpha = w / w.sum()
    beta = alpha.clone()
    for _ in range(max_iter):
        z = (beta[:, None] * X).sum(0)
        beta = alpha / ((X - z) ** 2).sum(1).sqrt().clamp(min=nu)
        beta = beta / beta.sum()
    return RuleResult(scores=beta, weights=beta)


register_rule(
    RuleSpec(
        "geomed", "weight", _fast_geomed, _literal_geomed, uses_weights=True,
        lam=lambda n, f, D: 1 + (n - f) / math.sqrt((n - 2 * f) * n),
        description="geometric median (RFA's smoothed Weiszfeld) as convex weights of the uploads",
    )
)  # fmt: skip
