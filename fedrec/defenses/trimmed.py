"""Trimming rules: paper 000's Trmean baseline read literally (a selector on client norms), and the
coordinate-wise median, trimmed mean and mean-around-median (robust aggregators); ALGORITHMS.md
sections 4.5-4.7.

The coordinate-wise rules work over the union of listed rows in dense blocks (``dense_blocks``), where a
client that does not list a row contributes 0 there. That is exact, not an approximation: the vectors
are deltas from the common default (or reconstructed gradients), and an unlisted row's delta is 0. They
sort in the values' dtype (exact), average in float64 and return ``(rows [M], values [M, d])`` over the
union in the values' dtype; rows outside it are 0 for every client, so every rule here returns 0 there
too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fedrec.defenses.base import RuleResult, RuleSpec, dense_rows, nan_scores, register_rule
from fedrec.defenses.itemwise import item_mean
from fedrec.defenses.vectors import ClientVectors, Selection, dense_blocks, sq_norms

Tensor = torch.Tensor


def norm_trim(v: ClientVectors, f: int, *, trim: int | None = None) -> Selection:
    """Trmean as paper 000 describes its baseline: "Trmean removes model parameters with large norms or
    small norms" (Appendix G). Clients are ranked by the Euclidean norm of their vector; the ``trim``
    with the largest and the ``trim`` with the smallest norms are rejected and the rest accepted (the
    round is then averaged over them, DESIGN.md section 5).

    Choices:
        - ``trim`` defaults to ``f`` per side. The cited reference ([41], Xie, Koyejo and Gupta 2019)
          parameterises its trimmed mean by the number ``b`` of values cut from each side and needs
          ``b >= q`` (the number of Byzantine inputs) for its guarantee; cutting ``f`` per side removes
          all f Byzantine clients whenever each of them sits at one end of the norm ranking, which
          ``f // 2`` per side does not. The reference's Trmean is coordinate-wise (``trimmed_mean``
          here); this norm-based selector is the literal reading of paper 000's one-line summary.
        - ``n - 2 * trim < 1`` raises ValueError (nobody would be left; ALGORITHMS.md section 11: no
          silent fallback). Pass a smaller ``trim`` explicitly to run such a round anyway; paper 000's
          settings (at most 40 % Byzantine clients) keep ``n - 2f >= 0.2 n``.
        - Ties: clients are ordered by (norm, index), so among equal norms the lower index counts as
          smaller: it is cut first at the small end and kept first at the large end.

    Returns:
        ``Selection`` with ``scores`` = the norms (float64).
    """
    n = v.n
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    trim = f if trim is None else trim
    if trim < 0:
        raise ValueError(f"trim must be >= 0, got {trim}")
    if n - 2 * trim < 1:
        raise ValueError(
            f"norm_trim cuts {trim} clients from each end, which leaves none of n={n} "
            f"(needs n >= 2 * trim + 1 = {2 * trim + 1}); pass a smaller trim"
        )
    norms = sq_norms(v).sqrt()
    order = torch.sort(norms, stable=True).indices
    accepted = torch.zeros(n, dtype=torch.bool, device=norms.device)
    accepted[order[trim : n - trim]] = True
    return Selection(accepted=accepted, scores=norms, info={"rule": "norm_trim", "f": f, "trim": trim})


def _coordinatewise(
    v: ClientVectors, block_rows: int | None, reduce: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Apply ``reduce(cols [B, d, n]) -> [B, d]`` block by block over the union of rows, where
    ``cols[b, k]`` holds the n clients' values at coordinate k of row b (values' dtype, contiguous in
    the client axis, so sorting along it is fast); the result is cast back to the values' dtype."""
    rows, out = [], []
    for blk_rows, blk in dense_blocks(v, block_rows):
        rows.append(blk_rows)
        out.append(reduce(blk.permute(1, 2, 0).contiguous()).to(v.values.dtype))
    if not rows:
        return v.rows.new_zeros(0), v.values.new_zeros(0, v.d)
    return torch.cat(rows), torch.cat(out)


def _median_sorted(s: Tensor) -> Tensor:
    """Median along the last axis of values sorted along it, in float64; the mean of the two middle
    values for even n."""
    n = s.shape[-1]
    if n % 2:
        return s[..., n // 2].to(torch.float64)
    return 0.5 * (s[..., n // 2 - 1].to(torch.float64) + s[..., n // 2].to(torch.float64))


def coordinate_median(v: ClientVectors, *, block_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """Coordinate-wise median (CWMed; Yin, Chen, Ramchandran, Bartlett, ICML 2018; ALGORITHMS.md section
    4.5): ``[CWMed(x)]_k = median_i [x_i]_k``. For even n the mean of the two middle values (NumPy's
    convention, ALGORITHMS.md section 11; ``torch.median`` would return the lower one). (f, lambda)-
    resilient averaging for f < n/2 with ``lambda = n / (2 (n - f)) * min(2 sqrt(n - f), sqrt(D))``,
    ``D = n_rows * d`` the vector dimension (RESAM Proposition 8).

    Returns:
        ``(rows [M], values [M, d])`` over the union of listed rows.
    """
    if v.n < 1:
        raise ValueError("coordinate_median needs at least one client")
    return _coordinatewise(v, block_rows, lambda cols: _median_sorted(torch.sort(cols, dim=-1).values))


def trimmed_mean(v: ClientVectors, f: int, *, block_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """Coordinate-wise trimmed mean (CWTM; Yin et al. 2018; RESAM Appendix C; ALGORITHMS.md section 4.6):
    per coordinate k, sort the n values and average the middle ``n - 2f``,
    ``[CWTM(x)]_k = 1/(n - 2f) sum_{j=f+1}^{n-f} [x_{tau_k(j)}]_k``. Exactly f per side (not a rounded
    fraction as Flower's FedTrimmedAvg). (f, lambda)-resilient averaging for f < n/2 with
    ``lambda = f / (n - f) * min(2 sqrt(n - f), sqrt(D))``, ``D = n_rows * d`` (RESAM Proposition 4;
    tight).

    Raises:
        ValueError: if ``f < 0`` or ``n - 2f < 1``.
    """
    n = v.n
    if f < 0 or n - 2 * f < 1:
        raise ValueError(f"trimmed_mean drops f={f} values per side and needs n - 2f >= 1, got n={n}")
    return _coordinatewise(
        v,
        block_rows,
        lambda cols: torch.sort(cols, dim=-1).values[..., f : n - f].to(torch.float64).sum(-1) / (n - 2 * f),
    )


def meamed(v: ClientVectors, f: int, *, block_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """Mean around median (MeaMed; Xie, Koyejo, Gupta 2018; RESAM Appendix C.4; ALGORITHMS.md section
    4.7): per coordinate, the mean of the ``n - f`` values closest to the coordinate median (even n:
    the mean of the two middle values). Ties in closeness go to the lower client index (stable sort).
    (f, lambda)-resilient averaging for f < n/2 with ``lambda = 2f / (n - f) * min(2 sqrt(n - f),
    sqrt(D))``, ``D = n_rows * d`` (RESAM Proposition 5).

    Raises:
        ValueError: if ``f < 0`` or ``n - f < 1``.
    """
    n = v.n
    if f < 0 or n - f < 1:
        raise ValueError(f"meamed keeps n - f values and needs n - f >= 1, got n={n}, f={f}")

    def reduce(cols: Tensor) -> Tensor:
        cols = cols.to(torch.float64)
        med = _median_sorted(torch.sort(cols, dim=-1).values)
        closest = torch.sort((cols - med[..., None]).abs(), dim=-1, stable=True).indices[..., : n - f]
        return cols.gather(-1, closest).sum(-1) / (n - f)

    return _coordinatewise(v, block_rows, reduce)


# -- item scope: per row, over the clients that listed it (DESIGN.md section 6, Spattack's sparse
# aggregation) -------------------------------------------------------------------------------------


PADDED_WASTE = 12  # item_median sorts a padded [M, d, max c_r] block while M max c_r <= 12 K


def _row_sorted(v: ClientVectors) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Every listed row's values sorted contiguously, per column, with no loop over rows or clients.

    A per-column argsort of the values, then a stable argsort by row, leaves the K entries of every
    column grouped by row (rows ascending) and sorted by value within each row. Returns ``(rows [M],
    counts [M], starts [M], segment [K], sorted [K, d])``: the listed rows, how many clients list each
    (c_r), where its run begins in ``sorted``, and the row position of every sorted entry."""
    # sorted along the last axis of the [d, K] transpose: contiguous, ~25 % faster than along dim 0
    by_value = torch.sort(v.values.T.contiguous(), dim=1, stable=True).indices  # [d, K]
    by_row = torch.sort(v.rows[by_value], dim=1, stable=True).indices  # stable: keeps the value order
    order = by_value.gather(1, by_row).T
    return *_row_groups(torch.sort(v.rows).values), v.values.gather(0, order)


def _row_groups(grouped: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row ids in ascending order -> ``(rows [M], counts [M], starts [M], segment [K])``: the listed
    rows, how many entries each has (c_r), where its run begins, and the row position of every entry."""
    rows, counts = torch.unique_consecutive(grouped, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    segment = torch.repeat_interleave(
        torch.arange(rows.shape[0], device=grouped.device), counts, output_size=grouped.shape[0]
    )
    return rows, counts, starts, segment


def _row_padded(v: ClientVectors, order: Tensor, groups: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """Every listed row's values sorted per coordinate in a padded block ``[M, d, C]``, ``C = max c_r``:
    row r's c_r values first in ascending order (NaN last, as ``torch.sort`` orders them), then NaN
    padding. ``order`` is a stable argsort of the row ids and ``groups`` its ``_row_groups``. A sort of
    length C per row and coordinate, against two sorts of length K per coordinate in ``_row_sorted``: the
    same order statistics, so a median picked from either is the same number. Costs ``M C d`` memory:
    callers take it where that is a small multiple of ``K d``."""
    rows, counts, starts, segment = groups
    rank = torch.arange(order.shape[0], device=v.device) - starts[segment]
    padded = torch.full(
        (rows.shape[0], v.d, int(counts.max())), float("nan"), dtype=v.values.dtype, device=v.device
    )
    padded[segment, :, rank] = v.values[order]
    return torch.sort(padded, dim=-1).values


def item_median(v: ClientVectors, *, padded: bool | None = None) -> tuple[Tensor, Tensor]:
    """Item-wise coordinate median: per listed row r and coordinate k, the median over the c_r clients
    that list r, ``[IMed(x)]_{r,k} = median_{i : r in rows_i} [x_i]_{r,k}`` (even c_r: the mean of the
    two middle values, as ``coordinate_median``). Unlike the flat rule, unlisted rows do not vote with
    their zeros: on sparse uploads, where no row is listed by half of the clients, the flat median is 0
    everywhere and this one is not. Rows nobody lists are left out (the caller keeps the default).

    Example::

        >>> x = torch.tensor([[[1.0], [0.0]], [[3.0], [0.0]], [[0.0], [5.0]]])  # 3 clients, 2 rows
        >>> rows, med = item_median(ClientVectors.from_dense(x))  # row 0: median(1, 3); row 1: 5
        >>> rows.tolist(), med.flatten().tolist()
        ([0, 1], [2.0, 5.0])

    ``padded``: sort each row's values in a block padded to the most listers of a row (``_row_padded``,
    ~10x faster at a round's sizes) or over all K entries at once (``_row_sorted``); None takes the
    padded block while it holds at most ``PADDED_WASTE`` times the K entries. Both pick the same values.

    Returns:
        ``(rows [M], values [M, d])`` over the listed rows, in the values' dtype (computed in float64).
    """
    if v.rows.shape[0] == 0:
        return v.rows.new_zeros(0), v.values.new_zeros(0, v.d)
    order = torch.sort(v.rows, stable=True).indices
    groups = _row_groups(v.rows[order])
    rows, counts = groups[:2]
    if padded is None:
        padded = int(counts.max()) * rows.shape[0] <= PADDED_WASTE * v.rows.shape[0]
    if padded:
        s = _row_padded(v, order, groups)
        lo = s.gather(2, ((counts - 1) // 2)[:, None, None].expand(-1, v.d, 1)).squeeze(2)
        hi = s.gather(2, (counts // 2)[:, None, None].expand(-1, v.d, 1)).squeeze(2)
        return rows, (0.5 * (lo.to(torch.float64) + hi.to(torch.float64))).to(v.values.dtype)
    rows, counts, starts, _, s = _row_sorted(v)
    lo, hi = starts + (counts - 1) // 2, starts + counts // 2  # the same position for odd c_r
    med = 0.5 * (s[lo].to(torch.float64) + s[hi].to(torch.float64))
    return rows, med.to(v.values.dtype)


def item_trimmed_mean(v: ClientVectors, f: int) -> tuple[Tensor, Tensor]:
    """Item-wise coordinate trimmed mean: per listed row r, sort the c_r listers' values per coordinate,
    drop ``t_r = min(f, (c_r - 1) // 2)`` from each side and average the middle ``c_r - 2 t_r``,

        ``[ITM(x)]_{r,k} = 1/(c_r - 2 t_r) sum_{j = t_r + 1}^{c_r - t_r} [x_{tau_{r,k}(j)}]_{r,k}``.

    The per-row trim is capped so that at least one value (c_r odd) or two (c_r even) remain: a row
    listed by fewer than 2f + 1 clients is still aggregated, down to its median (``t_r = (c_r - 1)//2``).
    Unlisted rows are left out (the caller keeps the default), so the listers' zeros-by-absence of the
    flat ``trimmed_mean`` never enter.

    Example::

        >>> x = torch.tensor([[[1.0]], [[2.0]], [[9.0]], [[4.0]]])  # 4 clients list row 0
        >>> rows, tm = item_trimmed_mean(ClientVectors.from_dense(x), f=1)  # t_0 = 1: mean(2, 4)
        >>> rows.tolist(), tm.flatten().tolist()
        ([0], [3.0])

    Raises:
        ValueError: if ``f < 0``.
    """
    if f < 0:
        raise ValueError(f"item_trimmed_mean drops f values per side and needs f >= 0, got f={f}")
    if v.rows.shape[0] == 0:
        return v.rows.new_zeros(0), v.values.new_zeros(0, v.d)
    rows, counts, starts, segment, s = _row_sorted(v)
    trim = torch.clamp((counts - 1) // 2, max=f)
    rank = torch.arange(s.shape[0], device=v.device) - starts[segment]  # position within its row
    keep = (rank >= trim[segment]) & (rank < (counts - trim)[segment])
    kept = torch.where(keep[:, None], s.to(torch.float64), 0.0)
    total = torch.zeros(rows.shape[0], v.d, dtype=torch.float64, device=v.device).index_add_(0, segment, kept)
    return rows, (total / (counts - 2 * trim)[:, None]).to(v.values.dtype)


# -- registration --------------------------------------------------------------------------------------


def _dense(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _fast_mean(v: ClientVectors, f: int) -> RuleResult:
    return RuleResult(
        scores=nan_scores(v.n, v.device), accepted=torch.ones(v.n, dtype=torch.bool, device=v.device)
    )


def _literal_mean(x: Tensor, f: int) -> RuleResult:
    return RuleResult(scores=nan_scores(x.shape[0]), accepted=torch.ones(x.shape[0], dtype=torch.bool))


def _fast_norm_trim(v: ClientVectors, f: int, *, trim: int | None = None) -> RuleResult:
    sel = norm_trim(v, f, trim=trim)
    return RuleResult(scores=sel.scores, accepted=sel.accepted)


def _literal_norm_trim(x: Tensor, f: int, *, trim: int | None = None) -> RuleResult:
    X = _dense(x)
    n, trim = X.shape[0], f if trim is None else trim
    norms = [float(X[i].norm()) for i in range(n)]
    order = sorted(range(n), key=lambda i: (norms[i], i))
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[trim : n - trim]] = True
    return RuleResult(scores=torch.tensor(norms, dtype=torch.float64), accepted=keep)


def _fast_median(v: ClientVectors, f: int) -> RuleResult:
    return RuleResult(scores=nan_scores(v.n, v.device), aggregate=coordinate_median(v))


def _literal_median(x: Tensor, f: int) -> RuleResult:
    return RuleResult(scores=nan_scores(x.shape[0]), aggregate=dense_rows(x, _dense(x).quantile(0.5, dim=0)))


def _fast_trmean(v: ClientVectors, f: int) -> RuleResult:
    return RuleResult(scores=nan_scores(v.n, v.device), aggregate=trimmed_mean(v, f))


def _literal_trmean(x: Tensor, f: int) -> RuleResult:
    X = _dense(x)
    agg = X.sort(0).values[f : X.shape[0] - f].mean(0)
    return RuleResult(scores=nan_scores(x.shape[0]), aggregate=dense_rows(x, agg))


def _fast_meamed(v: ClientVectors, f: int) -> RuleResult:
    return RuleResult(scores=nan_scores(v.n, v.device), aggregate=meamed(v, f))


def _literal_meamed(x: Tensor, f: int) -> RuleResult:
    """Per coordinate: the mean of the n - f values closest to the median (ties: lower index)."""
    X = _dense(x)
    n, D = X.shape
    agg = torch.zeros(D, dtype=torch.float64)
    for k in range(D):
        col = [float(c) for c in X[:, k]]
        s = sorted(col)
        med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        closest = sorted(range(n), key=lambda i: (abs(col[i] - med), i))[: n - f]
        agg[k] = sum(col[i] for i in closest) / (n - f)
    return RuleResult(scores=nan_scores(n), aggregate=dense_rows(x, agg))


def _item_median(v: ClientVectors, f: int) -> tuple[Tensor, Tensor]:
    return item_median(v)


def _item_mean(v: ClientVectors, f: int) -> tuple[Tensor, Tensor]:
    return item_mean(v)


def _delta(n: int, f: int, D: int) -> float:
    """RESAM's ``min(2 sqrt(n - f), sqrt(D))`` (Table 1)."""
    return min(2 * math.sqrt(n - f), math.sqrt(D))


for _spec in (
    RuleSpec(
        "mean",
        "select",
        _fast_mean,
        _literal_mean,
        item=_item_mean,
        reads_values=False,
        description="no filtering: the n_i-weighted mean of every valid upload (Algorithm 1, Option I)",
    ),
    RuleSpec(
        "norm-trim",
        "select",
        _fast_norm_trim,
        _literal_norm_trim,
        min_n=lambda f: 2 * f + 1,
        description="paper 000's Trmean: drop the f largest- and f smallest-norm uploads",
    ),
    RuleSpec(
        "cw-median",
        "aggregate",
        _fast_median,
        _literal_median,
        item=_item_median,
        lam=lambda n, f, D: n / (2 * (n - f)) * _delta(n, f, D),
        description="coordinate-wise median (even n: mean of the two middle values)",
    ),
    RuleSpec(
        "cw-trmean",
        "aggregate",
        _fast_trmean,
        _literal_trmean,
        item=item_trimmed_mean,
        min_n=lambda f: 2 * f + 1,
        lam=lambda n, f, D: f / (n - f) * _delta(n, f, D),
        description="coordinate-wise trimmed mean, f per side",
    ),
    RuleSpec(
        "meamed",
        "aggregate",
        _fast_meamed,
        _literal_meamed,
        min_n=lambda f: f + 1,
        lam=lambda n, f, D: 2 * f / (n - f) * _delta(n, f, D),
        description="mean around median: per coordinate the n - f values closest to the median",
    ),
):
    register_rule(_spec)
