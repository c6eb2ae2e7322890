"""MixTailor's pool (paper 004, section 5; ALGORITHMS.md 6.4): its description and a dense model of every
member, below both the defenses and the attacks (DESIGN.md section 11: ``defenses`` and ``attacks`` are
one layer and import neither each other; this module imports only torch).

``fedrec.defenses.mixtailor`` builds its pool from ``CLASSES`` x ``PS`` and runs the registered sparse
rules; the adaptive attack (``fedrec.attacks.adaptive``, paper 004 Appendix A.4) knows the pool, as the
paper's adversary does, and evaluates it with the dense models here on the round's vectors. The models
are the members' mathematics on dense ``[E, n, D]`` batches (E candidate attacks at once), one vote per
vector; tests check them against the registered rules:

- ``cw-median``: the coordinate-wise median (even n: the mean of the two middle values);
- ``krum``: MixTailor eq. (3), the vector of least sum of squared l_p distances to its ``n - f - 2``
  nearest others (ties: the lower index);
- ``geomed``: the geometric median by smoothed Weiszfeld (``nu``, a fixed number of steps from the mean:
  the attacker's approximation of RFA's solver);
- ``bulyan``: ``n - 2f`` rounds of l_p Krum over the remaining vectors, then per coordinate the mean of
  the ``n - 4f`` selected values closest to their median (El Mhamdi et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor

CLASSES: tuple[str, ...] = ("cw-median", "krum", "geomed", "bulyan")
"""The paper's four classes: comed, Krum, geometric median, Bulyan."""
PS: tuple[float, ...] = tuple(float(p) for p in range(1, 17))
"""The l_p norms, p = 1..16 (paper 004 section 5)."""
USES_P: dict[str, bool] = {"cw-median": False, "krum": True, "geomed": False, "bulyan": True}
"""Whether the class takes an l_p distance (the others' 16 members are copies)."""
MIN_N: dict[str, Callable[[int], int]] = {
    "cw-median": lambda f: 1,
    "krum": lambda f: f + 3,
    "geomed": lambda f: 1,
    "bulyan": lambda f: 4 * f + 3,
}
"""The fewest vectors each class runs on for a given f (fewer: it leaves the pool that round)."""


def sq_lp(X: Tensor, p: float) -> Tensor:
    """``[E, n, n]`` squared l_p distances between the rows of ``X [E, n, D]`` (float64)."""
    if p == 2:
        return torch.cdist(X, X, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    return torch.cdist(X, X, p=p).pow(2)


def _median(X: Tensor) -> Tensor:
    n = X.shape[1]
    s = torch.sort(X, dim=1).values
    return 0.5 * (s[:, (n - 1) // 2] + s[:, n // 2])


def comed(X: Tensor) -> Tensor:
    """``[E, D]`` coordinate-wise median over the n vectors of each batch."""
    return _median(X)


def _krum_scores(d2: Tensor, k: int, taken: Tensor | None = None) -> Tensor:
    others = d2.clone()
    others.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    if taken is not None:
        others = torch.where(taken[:, None, :], float("inf"), others)
    if k < 1:
        return torch.zeros(d2.shape[:2], dtype=d2.dtype, device=d2.device)
    return torch.topk(others, k, dim=2, largest=False).values.sum(2)


def krum(X: Tensor, f: int, p: float) -> Tensor:
    """``[E, D]`` l_p Krum: the vector of least score on ``n - f - 2`` neighbours (MixTailor eq. 3)."""
    scores = _krum_scores(sq_lp(X, p), X.shape[1] - f - 2)
    best = torch.argmin(scores, dim=1)  # the first minimum: the lower index
    return X[torch.arange(X.shape[0], device=X.device), best]


def geomed(X: Tensor, *, nu: float = 1e-6, steps: int = 100) -> Tensor:
    """``[E, D]`` smoothed Weiszfeld (``beta_i = 1 / max(nu, |z - x_i|)``, ``z = sum beta_i x_i / sum
    beta_i``) from the mean, ``steps`` steps."""
    z = X.mean(1)
    for _ in range(steps):
        beta = 1.0 / torch.linalg.vector_norm(X - z[:, None], dim=2).clamp_min(nu)
        z = (beta[:, :, None] * X).sum(1) / beta.sum(1, keepdim=True)
    return z


def bulyan(X: Tensor, f: int, p: float) -> Tensor:
    """``[E, D]`` Bulyan: ``n - 2f`` rounds of l_p Krum over the remaining vectors, then per coordinate
    the mean of the ``n - 4f`` selected values closest to their median."""
    E, n, _ = X.shape
    d2 = sq_lp(X, p)
    taken = torch.zeros(E, n, dtype=torch.bool, device=X.device)
    for r in range(n - 2 * f):
        scores = torch.where(taken, float("inf"), _krum_scores(d2, max(0, n - r - f - 2), taken))
        taken = taken | torch.nn.functional.one_hot(torch.argmin(scores, dim=1), n).bool()
    theta, beta = n - 2 * f, n - 4 * f
    chosen = torch.sort((~taken).to(torch.int8), dim=1, stable=True).indices[:, :theta]  # ascending index
    S = X.gather(1, chosen[:, :, None].expand(-1, -1, X.shape[2]))
    closest = torch.sort((S - _median(S)[:, None]).abs(), dim=1, stable=True).indices[:, :beta]
    return S.gather(1, closest).mean(1)


def member(rule: str, p: float, X: Tensor, f: int) -> Tensor:
    """The dense model of pool member ``(rule, p)`` on ``X [E, n, D]``: ``[E, D]``."""
    if rule == "cw-median":
        return comed(X)
    if rule == "krum":
        return krum(X, f, p)
    if rule == "geomed":
        return geomed(X)
    if rule == "bulyan":
        return bulyan(X, f, p)
    raise ValueError(f"no dense model of pool class {rule!r}; known: {', '.join(CLASSES)}")


def distinct_members(classes, ps, n: int, f: int) -> list[tuple[str, float, int]]:
    """``(rule, p, copies)``: the members that run on n vectors with this f, the copies of a class
    without p merged (each keeps its weight ``copies`` in the uniform draw)."""
    out = []
    for c in classes:
        if n < MIN_N[c](f):
            continue
        out += [(c, float(p), 1) for p in ps] if USES_P[c] else [(c, 2.0, len(ps))]
    return out
