"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017), and RESAM's Krum* /
Multi-Krum*_q (El Mhamdi, Guerraoui, Rouault, ICLR 2021, Appendix C); ALGORITHMS.md sections 4.2-4.3.

Scores use squared Euclidean distances (ANCHORS.md section 7.3) from the sparse Gram matrix. The
neighbour count is pinned (ANCHORS.md section 7.2): ``krum_scores`` sums the ``n - f - 2`` nearest
*other* vectors (the paper's Krum; also Flower, FedML, the ``krum`` package), ``krum_star_scores`` the
``n - f - 1`` nearest (RESAM's Krum*; ByzFL's Krum and Multi-Krum rank on the mean of these, which
selects the same vectors). Selection keeps the m lowest scores, ties broken towards the lower client
index, so a run is reproducible. These are selectors: the round is then aggregated over the accepted
clients (DESIGN.md section 5), which for ``m = 1`` is Krum and for ``m > 1`` Multi-Krum.
"""

from __future__ import annotations

import math

import torch

from fedrec.defenses.base import RuleResult, RuleSpec, register_rule
from fedrec.defenses.itemwise import item_krum
from fedrec.defenses.vectors import ClientVectors, Selection, distance_fn, lp_of, select_lowest, sq_distances

Tensor = torch.Tensor


def _neighbour_scores(d2: Tensor, k: int) -> Tensor:
    """Per row, the sum of the k smallest squared distances to the other vectors (self excluded)."""
    others = d2.to(torch.float64).clone()
    others.fill_diagonal_(float("inf"))
    return torch.topk(others, k, dim=1, largest=False, sorted=False).values.sum(1)


def _check_d2(d2: Tensor, f: int) -> int:
    if d2.ndim != 2 or d2.shape[0] != d2.shape[1]:
        raise ValueError(f"d2 must be a square [n, n] matrix, got shape {tuple(d2.shape)}")
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    return d2.shape[0]


def krum_scores(d2: Tensor, f: int) -> Tensor:
    """Krum scores ``s_i = sum_{j in N(i)} |x_i - x_j|^2``, ``N(i)`` the ``n - f - 2`` vectors nearest
    to ``x_i`` other than itself (Blanchard et al. 2017, ALGORITHMS.md section 4.2).

    Args:
        d2: ``[n, n]`` squared distances (``sq_distances``).
        f: assumed number of Byzantine clients.

    Returns:
        ``[n]`` float64 scores, lower is more central.

    Raises:
        ValueError: if ``n - f - 2 < 1`` (no neighbour to score on). The paper's guarantee needs
            ``n >= 2f + 3``; between that and ``n - f - 2 >= 1`` the rule still runs (the caller warns,
            DESIGN.md section 6).
    """
    n = _check_d2(d2, f)
    k = n - f - 2
    if k < 1:
        raise ValueError(
            f"Krum needs n - f - 2 >= 1 neighbours (n >= f + 3), got n={n}, f={f}; "
            f"its guarantee needs n >= 2f + 3 = {2 * f + 3}"
        )
    return _neighbour_scores(d2, k)


def krum_star_scores(d2: Tensor, f: int) -> Tensor:
    """RESAM's Krum* scores: the sum of the squared distances to the ``n - f - 1`` nearest other vectors
    (RESAM Appendix C; ALGORITHMS.md section 4.3). Krum* discards the f farthest vectors instead of
    Krum's f + 1 (RESAM footnote 5) and is (f, lambda)-resilient averaging for f < n/2 with
    ``lambda = 1 + sqrt((n - f) / (n - 2f))``.

    Raises:
        ValueError: if ``n - f - 1 < 1``.
    """
    n = _check_d2(d2, f)
    k = n - f - 1
    if k < 1:
        raise ValueError(f"Krum* needs n - f - 1 >= 1 neighbours (n >= f + 2), got n={n}, f={f}")
    return _neighbour_scores(d2, k)


def multi_krum(v: ClientVectors, f: int, m: int, *, block_rows: int | None = None) -> Selection:
    """Multi-Krum: accept the ``m`` clients with the lowest Krum scores (``krum_scores``, ``n - f - 2``
    neighbours), ties towards the lower index. Averaging the accepted vectors gives
    ``MultiKrum_m(x) = (1/m) sum_{i in M} x_i`` (Blanchard et al. 2017). paper 000's A-RFRS uses
    ``m = n - f`` on reconstructed gradients.

    Raises:
        ValueError: if ``n - f - 2 < 1`` or ``m`` is not in ``[1, n]``.
    """
    scores = krum_scores(sq_distances(v, block_rows), f)
    return Selection(
        accepted=select_lowest(scores, m),
        scores=scores,
        info={"rule": "multi_krum", "f": f, "m": m, "neighbours": v.n - f - 2},
    )


def outlier_keep(scores: Tensor, f: int, c: float) -> Tensor:
    """``[n]`` bool: Multi-Krum with an adaptive ``m`` in ``[n - f, n]``: of the ``f`` worst scores,
    reject only those above ``c`` times the median score (the lower median, ``torch.median``).

    Fixed ``m = n - f`` rejects ``f`` uploads every round, so in a round that sampled ``b < f``
    Byzantine clients at least ``f - b`` honest ones go too: a false-rejection floor of about
    ``(f - b) / (n - b)`` that no score can lower. With ``f < n / 2`` the median is the score of an
    honest-majority position, and an upload is dropped only when it is both among the ``f`` least
    central and ``c`` times less central than that. Not paper 000's rule (which keeps ``n - f``):
    a fedrec variant for the false-rejection side of detection."""
    if not c >= 1:
        raise ValueError(f"c must be >= 1 (a score above c x the median is an outlier), got {c}")
    n = scores.shape[0]
    if not 0 <= f < n:
        raise ValueError(f"f must be in [0, n) = [0, {n}), got {f}")
    return select_lowest(scores, n - f) | (scores <= c * scores.median())


def multi_krum_outliers(
    v: ClientVectors, f: int, c: float, *, distance: str = "l2", block_rows: int | None = None
) -> Selection:
    """Multi-Krum on Krum scores (``n - f - 2`` neighbours) keeping ``outlier_keep(scores, f, c)``.

    ``distance``: ``"l2"`` (squared Euclidean, Blanchard et al.), ``"linf"`` (squared Chebyshev: the
    ``p = inf`` generalised Krum of MixTailor, ALGORITHMS.md section 4.4), which scores a client by its
    most extreme coordinate instead of its norm, or any ``"l<p>"`` (MixTailor eq. 3, ``p >= 1``)."""
    scores = krum_scores(distance_fn(distance)(v, block_rows), f)
    return Selection(
        accepted=outlier_keep(scores, f, c),
        scores=scores,
        info={"rule": "multi_krum_outliers", "f": f, "c": c, "distance": distance, "neighbours": v.n - f - 2},
    )


def krum(v: ClientVectors, f: int, *, block_rows: int | None = None) -> Selection:
    """Krum: accept the single client with the lowest Krum score (``multi_krum`` with ``m = 1``)."""
    sel = multi_krum(v, f, 1, block_rows=block_rows)
    return Selection(sel.accepted, sel.scores, {**sel.info, "rule": "krum"})


def multi_krum_star(v: ClientVectors, f: int, q: int, *, block_rows: int | None = None) -> Selection:
    """RESAM's Multi-Krum*_q: accept the ``q`` clients with the lowest Krum* scores
    (``krum_star_scores``, ``n - f - 1`` neighbours), ties towards the lower index. For ``q <= n - f``
    and f < n/2 it is (f, lambda)-resilient averaging with
    ``lambda = (1 + sqrt((n - f) / (n - 2f))) * min(1, (n - q) / (n - f))`` (RESAM Proposition 6).
    ByzFL's ``MultiKrum(f)`` is ``q = n - f``; its ``Krum(f)`` is ``q = 1``.

    Raises:
        ValueError: if ``n - f - 1 < 1`` or ``q`` is not in ``[1, n]``.
    """
    scores = krum_star_scores(sq_distances(v, block_rows), f)
    return Selection(
        accepted=select_lowest(scores, q),
        scores=scores,
        info={"rule": "multi_krum_star", "f": f, "m": q, "neighbours": v.n - f - 1},
    )


def krum_star(v: ClientVectors, f: int, *, block_rows: int | None = None) -> Selection:
    """RESAM's Krum*: ``multi_krum_star`` with ``q = 1``."""
    sel = multi_krum_star(v, f, 1, block_rows=block_rows)
    return Selection(sel.accepted, sel.scores, {**sel.info, "rule": "krum_star"})


# -- registration: one signature (v, f, **params) -> RuleResult, and the literal dense form -----------


def _literal_scores(x: Tensor, f: int, neighbours: int, distance: str = "l2") -> list[float]:
    """Per vector, the sum of its ``neighbours`` smallest squared distances to the others, written out."""
    X = x.reshape(x.shape[0], -1).to(torch.float64)
    n = X.shape[0]

    p = lp_of(distance)

    def dist(a: Tensor) -> float:  # the squared l_p norm of a difference, written out
        if p == 2:
            return float((a**2).sum())
        if p == float("inf"):
            return float(a.abs().max()) ** 2
        return float((a.abs() ** p).sum()) ** (2.0 / p)

    out = []
    for i in range(n):
        d = sorted(dist(X[i] - X[j]) for j in range(n) if j != i)
        out.append(sum(d[:neighbours]))
    return out


def _literal_keep(scores: list[float], m: int) -> Tensor:
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[order[:m]] = True
    return keep


def _m(m: int | None, n: int, f: int) -> int:
    return n - f if m is None else int(m)


def _fast_multi_krum(v: ClientVectors, f: int, *, m: int | None = None, distance: str = "l2") -> RuleResult:
    scores = krum_scores(distance_fn(distance)(v), f)
    keep = _m(m, v.n, f)
    return RuleResult(scores=scores, accepted=select_lowest(scores, keep), info={"m": keep})


def _literal_multi_krum(x: Tensor, f: int, *, m: int | None = None, distance: str = "l2") -> RuleResult:
    n = x.shape[0]
    scores = _literal_scores(x, f, n - f - 2, distance)
    return RuleResult(
        scores=torch.tensor(scores, dtype=torch.float64), accepted=_literal_keep(scores, _m(m, n, f))
    )


def _fast_krum(v: ClientVectors, f: int, *, distance: str = "l2") -> RuleResult:
    return _fast_multi_krum(v, f, m=1, distance=distance)


def _literal_krum(x: Tensor, f: int, *, distance: str = "l2") -> RuleResult:
    return _literal_multi_krum(x, f, m=1, distance=distance)


def _fast_outliers(v: ClientVectors, f: int, *, c: float = 2.0, distance: str = "l2") -> RuleResult:
    sel = multi_krum_outliers(v, f, c, distance=distance)
    return RuleResult(scores=sel.scores, accepted=sel.accepted)


def _literal_outliers(x: Tensor, f: int, *, c: float = 2.0, distance: str = "l2") -> RuleResult:
    import statistics

    n = x.shape[0]
    scores = _literal_scores(x, f, n - f - 2, distance)
    keep = _literal_keep(scores, n - f)
    med = statistics.median_low(scores)  # torch.median: the lower middle value
    keep |= torch.tensor([s <= c * med for s in scores])
    return RuleResult(scores=torch.tensor(scores, dtype=torch.float64), accepted=keep)


def _fast_multi_krum_star(v: ClientVectors, f: int, *, q: int | None = None) -> RuleResult:
    scores = krum_star_scores(sq_distances(v), f)
    keep = _m(q, v.n, f)
    return RuleResult(scores=scores, accepted=select_lowest(scores, keep), info={"q": keep})


def _literal_multi_krum_star(x: Tensor, f: int, *, q: int | None = None) -> RuleResult:
    n = x.shape[0]
    scores = _literal_scores(x, f, n - f - 1)
    return RuleResult(
        scores=torch.tensor(scores, dtype=torch.float64), accepted=_literal_keep(scores, _m(q, n, f))
    )


def _fast_krum_star(v: ClientVectors, f: int) -> RuleResult:
    return _fast_multi_krum_star(v, f, q=1)


def _literal_krum_star(x: Tensor, f: int) -> RuleResult:
    return _literal_multi_krum_star(x, f, q=1)


# item scope (``fedrec.defenses.itemwise``): the same rule per row over the row's listers


def _item_multi_krum(v: ClientVectors, f: int, *, m: int | None = None, distance: str = "l2"):
    return item_krum(v, f, offset=3, m=m, distance=distance)


def _item_krum(v: ClientVectors, f: int, *, distance: str = "l2"):
    return item_krum(v, f, offset=3, m=1, distance=distance)


def _item_multi_krum_star(v: ClientVectors, f: int, *, q: int | None = None):
    return item_krum(v, f, offset=2, m=q)


def _item_krum_star(v: ClientVectors, f: int):
    return item_krum(v, f, offset=2, m=1)


def _star_lambda(n: int, f: int, q: int) -> float:
    """RESAM Proposition 6: ``(1 + sqrt((n - f) / (n - 2f))) * min(1, (n - q) / (n - f))``."""
    return (1 + math.sqrt((n - f) / (n - 2 * f))) * min(1.0, (n - q) / (n - f))


for _spec in (
    RuleSpec(
        "multi-krum",
        "select",
        _fast_multi_krum,
        _literal_multi_krum,
        item=_item_multi_krum,
        min_n=lambda f: f + 3,
        description="Multi-Krum: keep the m (default n - f) lowest Krum scores (n - f - 2 neighbours)",
    ),
    RuleSpec(
        "krum",
        "select",
        _fast_krum,
        _literal_krum,
        item=_item_krum,
        min_n=lambda f: f + 3,
        description="Krum: Multi-Krum of one",
    ),
    RuleSpec(
        "multi-krum-outliers",
        "select",
        _fast_outliers,
        _literal_outliers,
        min_n=lambda f: f + 3,
        description="Multi-Krum keeping n - f plus every score within c x the median score",
    ),
    RuleSpec(
        "multi-krum-star",
        "select",
        _fast_multi_krum_star,
        _literal_multi_krum_star,
        item=_item_multi_krum_star,
        min_n=lambda f: f + 2,
        lam=lambda n, f, D: _star_lambda(n, f, n - f),
        description="RESAM's Multi-Krum*_q (q = n - f; n - f - 1 neighbours)",
    ),
    RuleSpec(
        "krum-star",
        "select",
        _fast_krum_star,
        _literal_krum_star,
        item=_item_krum_star,
        min_n=lambda f: f + 2,
        lam=lambda n, f, D: _star_lambda(n, f, 1),
        description="RESAM's Krum*: Multi-Krum*_1",
    ),
):
    register_rule(_spec)
