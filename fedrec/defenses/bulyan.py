"""Bulyan (El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018), with the generalised l_p Krum of MixTailor eq. (3) in its selection phase;
ALGORITHMS.md sections 4.4 and 4.10. A member of MixTailor's pool (paper 004, section 5).

Selection: ``theta = n - 2f`` rounds of Krum over the vectors not yet selected, each moving the winner
into ``Sel`` (round r scores the ``n - r`` remaining vectors on their ``max(0, n - r - f - 2)`` nearest
remaining neighbours, squared l_p distances). Aggregation: per coordinate k, the mean of the
``beta = theta - 2f`` values of ``Sel`` closest to their coordinate median (even ``theta``: the mean of
the two middle values), i.e. MeaMed over ``Sel`` with ``2f`` dropped::

    Sel = Krum-iterate(x, f, theta = n - 2f);   [Bulyan(x)]_k = 1/beta sum_{i in C_k} [x_i]_k,
    C_k = the beta members of Sel whose k-th coordinate is closest to median_{j in Sel} [x_j]_k.

Needs ``n >= 4f + 3`` (the original's condition; MixTailor prints ``n > 4f + 3``, ALGORITHMS.md section
10). Ties (equal Krum scores; equal closeness) go to the lower client index. For ``f <= 1`` the last
selection rounds have no neighbour to score on (every score 0): the lowest remaining index is picked,
which cannot change the result for ``f = 0`` (``beta = n``: the mean) and picks one of the last two
for ``f = 1``.

The selection loop runs ``n - 2f`` times over the ``[n, n]`` distance matrix (computed once); each pass
is a few ``n x n`` tensor ops, no host synchronisation. The aggregation reuses ``meamed`` over the
selected clients' sparse vectors.

Example::

    >>> import torch
    >>> from fedrec.defenses.vectors import ClientVectors
    >>> x = torch.tensor([[[0.0]], [[1.0]], [[2.0]], [[3.0]], [[4.0]], [[5.0]], [[100.0]]])  # n=7, f=1
    >>> res = _fast_bulyan(ClientVectors.from_dense(x, all_rows=True), 1)
    >>> res.accepted.tolist(), res.aggregate[1].flatten().tolist()  # Sel = 5 central values, mean of 3
    ([True, True, True, True, True, False, False], [2.0])
"""

from __future__ import annotations

import torch

from fedrec.defenses.base import RuleResult, RuleSpec, dense_rows, register_rule
from fedrec.defenses.krum import _literal_scores
from fedrec.defenses.trimmed import meamed
from fedrec.defenses.vectors import ClientVectors, distance_fn

Tensor = torch.Tensor


def _check(n: int, f: int) -> None:
    if f < 0 or n < 4 * f + 3:
        raise ValueError(f"Bulyan needs n >= 4f + 3, got n={n}, f={f}")


def bulyan_select(d2: Tensor, f: int) -> Tensor:
    """``[n]`` bool: the ``n - 2f`` vectors Bulyan's iterated Krum selects, from squared distances
    ``d2 [n, n]`` (ties towards the lower index)."""
    n = d2.shape[0]
    _check(n, f)
    idx = torch.arange(n, device=d2.device)
    sel = torch.zeros(n, dtype=torch.bool, device=d2.device)
    base = d2.to(torch.float64).clone()
    base.fill_diagonal_(float("inf"))
    for r in range(n - 2 * f):
        k = max(0, n - r - f - 2)
        cols = torch.where(sel[None, :], float("inf"), base)  # the remaining neighbours only
        scores = torch.topk(cols, k, dim=1, largest=False).values.sum(1) if k else torch.zeros_like(base[0])
        scores = torch.where(sel, float("inf"), scores)
        winner = torch.sort(scores, stable=True).indices[0]
        sel = sel | (idx == winner)
    return sel


def _subset(v: ClientVectors, keep: Tensor) -> ClientVectors:
    """The clients ``keep [n] bool`` of ``v``, in index order."""
    entries = keep[v.owner()]
    ptr = torch.zeros(int(keep.sum()) + 1, dtype=torch.int64, device=v.device)
    torch.cumsum(v.counts()[keep], 0, out=ptr[1:])
    return ClientVectors(ptr=ptr, rows=v.rows[entries], values=v.values[entries], n_rows=v.n_rows)


def _fast_bulyan(v: ClientVectors, f: int, *, distance: str = "l2") -> RuleResult:
    _check(v.n, f)
    d2 = distance_fn(distance)(v)
    sel = bulyan_select(d2, f)
    agg = meamed(_subset(v, sel), 2 * f)
    scores = sel.to(torch.float64)
    return RuleResult(scores=scores, accepted=sel, aggregate=agg, info={"selected": sel})


def _literal_bulyan(x: Tensor, f: int, *, distance: str = "l2") -> RuleResult:
    """Bulyan written out: Krum over the remaining vectors, one at a time, then per coordinate the mean
    of the ``n - 4f`` selected values closest to their median."""
    n = x.shape[0]
    _check(n, f)
    X = x.reshape(n, -1).to(torch.float64)
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        k = max(0, len(remaining) - f - 2)
        sub = X[remaining]
        scores = _literal_scores(sub, f, k, distance) if k else [0.0] * len(remaining)
        best = min(range(len(remaining)), key=lambda i: (scores[i], remaining[i]))
        chosen.append(remaining.pop(best))
    chosen.sort()
    theta, beta = len(chosen), len(chosen) - 2 * f
    agg = torch.zeros(X.shape[1], dtype=torch.float64)
    for c in range(X.shape[1]):
        col = [float(X[i, c]) for i in chosen]
        s = sorted(col)
        med = s[theta // 2] if theta % 2 else 0.5 * (s[theta // 2 - 1] + s[theta // 2])
        closest = sorted(range(theta), key=lambda j: (abs(col[j] - med), j))[:beta]
        agg[c] = sum(col[j] for j in closest) / beta
    sel = torch.zeros(n, dtype=torch.bool)
    sel[chosen] = True
    return RuleResult(scores=sel.to(torch.float64), accepted=sel, aggregate=dense_rows(x, agg))


register_rule(
    RuleSpec(
        "bulyan",
        "aggregate",
        _fast_bulyan,
        _literal_bulyan,
        min_n=lambda f: 4 * f + 3,
        description="Bulyan: n - 2f rounds of (l_p) Krum, then per coordinate MeaMed over them, 2f dropped",
    )
)
