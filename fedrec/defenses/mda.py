"""Minimum diameter averaging (MDA; Rousseeuw 1985, El Mhamdi, Guerraoui, Rouault 2018), as RESAM states
it (El Mhamdi, Guerraoui, Rouault, ICLR 2021, Appendix C.2, eqs. (46)-(47)); ALGORITHMS.md section 4.8.

    S* in argmin_{S subset [n], |S| = n - f} max_{i, j in S} |x_i - x_j|          (46)
    MDA(x) = 1/(n - f) sum_{i in S*} x_i                                           (47)

Registered as the selector ``mda``: ``accepted`` is S*, and the server averages the accepted uploads
(DESIGN.md section 5), which is eq. (47). (f, lambda)-resilient averaging for f < n/2 with
``lambda = 2f / (n - f)`` (RESAM Proposition 3; order-optimal, the lower bound being f / (n - f)).

Exact enumeration over all ``C(n, n - f) = C(n, f)`` subsets (RESAM's cost ``O(C(n, f) + d n^2)``): the
pairwise squared distances come once from the sparse Gram matrix (``sq_distances``), the subsets are
enumerated in lexicographic order (``itertools.combinations``) once per (n, f) and kept with their pairs
(``_subsets``), and a subset's squared diameter is a gather of the distance matrix at its pairs and a
max, vectorized over chunks of subsets. Past
``max_subsets`` (default ``MAX_SUBSETS = 200_000``) subsets the rule raises ``ValueError`` instead of
running for minutes: MDA is exact or nothing (ALGORITHMS.md section 11: no silent fallback).

Ties between subsets of equal diameter go to the lexicographically smallest subset (the first in
``itertools.combinations`` order), ByzFL's ``MDA`` convention (it keeps the first strict minimum).
Diameters are compared as squared Gram-identity distances, so subsets whose diameters differ by float64
rounding of ``|x|^2`` may be ordered either way.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from fedrec.defenses.base import RuleResult, RuleSpec, register_rule
from fedrec.defenses.vectors import ClientVectors, sq_distances

Tensor = torch.Tensor

MAX_SUBSETS = 200_000
"""Default cap on ``C(n, f)``, the number of (n - f)-subsets MDA enumerates (about a second on a CPU)."""

GATHER_ELEMENTS = 1 << 22
"""Elements of one chunk's ``[chunk, k (k - 1) / 2]`` gather of the distance matrix (32 MiB in float64)."""


def _check(n: int, f: int, max_subsets: int) -> int:
    """Validate ``(n, f)`` and the subset count; return ``C(n, f)``."""
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    if n < 2 * f + 1:
        raise ValueError(f"MDA needs n >= 2f + 1 (f < n/2), got n={n}, f={f}")
    count = math.comb(n, f)
    if count > max_subsets:
        raise ValueError(
            f"MDA enumerates every subset of size n - f: C(n={n}, f={f}) = {count} subsets exceeds "
            f"max_subsets = {max_subsets}; lower f or raise max_subsets (the cost is exponential in f)"
        )
    return count


PAIRS_KEPT = 1 << 23
"""Largest ``C(n, f) * k (k - 1) / 2`` whose pair indices ``_subsets`` keeps (64 MiB of int64); past it
they are built chunk by chunk every call (the subsets themselves are at most ``max_subsets * n``)."""


@functools.lru_cache(maxsize=4)
def _subsets(n: int, k: int, device: str) -> tuple[Tensor, Tensor | None]:
    """The k-subsets of range(n) in lexicographic order, ``[C, k]`` int64, and, where they fit in
    ``PAIRS_KEPT``, each subset's pairs ``i < j`` as flat indices ``i * n + j`` into an ``[n, n]``
    matrix, ``[C, k (k - 1) / 2]``. The same every round with the same n and f, so they are built once
    (generating them in Python each round cost more than the rule's arithmetic; C(19, 8) = 75,582
    subsets at 40 % of Last.fm's 19 clients)."""
    flat = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), k)), dtype=np.int64)
    idx = torch.from_numpy(flat.reshape(-1, k)).to(device)
    if idx.shape[0] * (k * (k - 1) // 2) > PAIRS_KEPT:
        return idx, None
    return idx, _pairs(idx, n)


def _pairs(idx: Tensor, n: int) -> Tensor:
    """``[c, k (k - 1) / 2]`` flat indices ``i * n + j`` of the pairs ``i < j`` of each subset ``idx [c, k]``."""
    a, b = torch.triu_indices(idx.shape[1], idx.shape[1], offset=1, device=idx.device)
    return idx[:, a] * n + idx[:, b]


def mda(
    v: ClientVectors, f: int, *, max_subsets: int = MAX_SUBSETS, block_rows: int | None = None
) -> RuleResult:
    """MDA as a selector: accept S*, the (n - f)-subset of least diameter (eq. (46)); averaging the
    accepted vectors gives MDA(x) (eq. (47)).

    Args:
        v: the n client vectors.
        f: the assumed number of Byzantine clients, ``0 <= f < n / 2``.
        max_subsets: refuse when ``C(n, f)`` exceeds it (default ``MAX_SUBSETS = 200_000``; a
            fedrec choice, RESAM runs MDA only where enumeration is tractable).
        block_rows: dense block size for the Gram matrix (``gram``).

    Returns:
        ``RuleResult`` with ``accepted`` = S* (``[n]`` bool, exactly n - f True) and ``scores[i]`` the
        least diameter of an (n - f)-subset containing client i (so every accepted client scores the
        minimum diameter, and a client scoring above it belongs to no optimal subset). ``info`` holds
        ``rule``, ``f``, ``subsets`` (= C(n, f)) and ``diameter`` (a 0-d float64 tensor, diam(S*)).

    Example::

        >>> x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])[:, :, None]  # 4 clients, 1 row, d = 1
        >>> res = mda(ClientVectors.from_dense(x, all_rows=True), f=1)  # {0, 1, 2}: diameter 2
        >>> res.accepted.tolist(), res.scores.tolist()
        ([True, True, True, False], [2.0, 2.0, 2.0, 9.0])

    Raises:
        ValueError: if ``f < 0``, ``n < 2f + 1`` or ``C(n, f) > max_subsets``.
    """
    n = v.n
    count = _check(n, f, max_subsets)
    k = n - f
    d2 = sq_distances(v, block_rows)
    device = d2.device
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=device)
    best_d2, best_subset = inf, torch.arange(k, device=device)
    scores = torch.full((n,), float("inf"), dtype=torch.float64, device=device)
    subsets, kept = _subsets(n, k, str(device))
    chunk = max(1, GATHER_ELEMENTS // max(1, k * (k - 1) // 2))
    flat = d2.flatten()
    for lo in range(0, count, chunk):
        idx = subsets[lo : lo + chunk]  # [c, k]
        if k > 1:  # the largest squared distance over the subset's pairs
            pairs = kept[lo : lo + chunk] if kept is not None else _pairs(idx, n)
            diam2 = flat[pairs].amax(1)  # [c]
        else:  # one client: diameter 0
            diam2 = torch.zeros(idx.shape[0], dtype=torch.float64, device=device)
        pos = torch.argmin(diam2)[None]  # the first minimum: the lexicographically smallest subset
        low = diam2.index_select(0, pos)[0]
        better = low < best_d2  # strict: an earlier chunk wins ties
        best_d2 = torch.where(better, low, best_d2)
        best_subset = torch.where(better, idx.index_select(0, pos)[0], best_subset)
        scores.scatter_reduce_(0, idx.flatten(), diam2.repeat_interleave(k), reduce="amin")
    accepted = torch.zeros(n, dtype=torch.bool, device=device)
    accepted[best_subset] = True
    return RuleResult(
        scores=scores.sqrt(),
        accepted=accepted,
        info={"rule": "mda", "f": f, "subsets": count, "diameter": best_d2.sqrt()},
    )


def mda_literal(x: Tensor, f: int, *, max_subsets: int = MAX_SUBSETS) -> RuleResult:
    """Eq. (46) written out on dense ``x [n, n_rows, d]``: every (n - f)-subset in lexicographic order,
    its diameter from direct differences, the first strict minimum kept."""
    n = x.shape[0]
    count = _check(n, f, max_subsets)
    flat = x.reshape(n, -1).to(torch.float64)
    dist = [[float(torch.linalg.vector_norm(flat[i] - flat[j])) for j in range(n)] for i in range(n)]
    best, best_subset = math.inf, tuple(range(n - f))
    scores = [math.inf] * n
    for subset in itertools.combinations(range(n), n - f):
        diameter = max((dist[i][j] for i in subset for j in subset), default=0.0)
        if diameter < best:
            best, best_subset = diameter, subset
        for i in subset:
            scores[i] = min(scores[i], diameter)
    accepted = torch.zeros(n, dtype=torch.bool)
    accepted[list(best_subset)] = True
    return RuleResult(
        scores=torch.tensor(scores, dtype=torch.float64),
        accepted=accepted,
        info={"rule": "mda", "f": f, "subsets": count, "diameter": torch.tensor(best, dtype=torch.float64)},
    )


SPEC = register_rule(
    RuleSpec(
        name="mda",
        kind="select",
        fast=mda,
        literal=mda_literal,
        min_n=lambda f: 2 * f + 1,
        lam=lambda n, f, dim: 2 * f / (n - f),
        description="minimum diameter averaging: the (n - f)-subset of least diameter (RESAM eq. 46)",
    )
)
