"""Item-wise selection (DESIGN.md section 6, ``scope: item``): a selecting rule run per row over the
clients that listed that row, Spattack's sparse aggregation (ANCHORS.md section 4.7) without its
per-item Python loop.

What a per-row selection aggregates. For a listed row r with c_r listers (one vote each, the ``n_i``
weights play no part, as in the item-wise median and Spattack's item-wise rules), the rule runs on the
c_r row vectors ``x_{i,r} in R^d`` and the row's value is the plain mean of the rows it keeps::

    [ISel(x)]_r = 1/|K_r| sum_{i in K_r} x_{i,r},   K_r = the rule's kept set among r's listers.

Krum / Multi-Krum (Blanchard et al. 2017; ALGORITHMS.md 4.2, MixTailor eq. 3 for the l_p distance):
``s_{i,r} = sum_{j in N_r(i)} |x_{i,r} - x_{j,r}|^2`` over the ``c_r - f_r - 2`` nearest other listers
(RESAM's Krum* / Multi-Krum*_q, ALGORITHMS.md 4.3: ``c_r - f_r - 1``), and ``K_r`` the ``m_r`` lowest
scores, ties towards the lower client index (as the flat rules). ``m_r = c_r - f_r`` by default, an
explicit ``m`` (or ``q``) is capped at ``c_r``.

The per-row f. A row with few listers cannot take the round's f: honest clients list a few hundred of
~35k rows, so most rows have one or two listers. Per row the rule runs with the largest

    ``f_r <= min(f, (c_r - 1) // 2)``  with  ``c_r >= min_n(f_r)``

(an honest majority among the row's listers, as ``item_trimmed_mean``'s cap, and enough listers for the
rule: Krum needs ``c_r >= f_r + 3``). Rows with fewer listers than the rule needs even at ``f_r = 0``
(Krum: ``c_r <= 2``; Krum*: ``c_r = 1``) keep all their listers: their value is the mean of the listers.
Dropping them instead would freeze every long-tail item (most rows of a round) at the default; with
one or two listers no rule can tell an honest row from a Byzantine one anyway, and the item-wise median
and trimmed mean give the same mean there (Spattack's item-wise Krum also falls back to all listers).
Rows nobody lists are left out (the caller keeps the default).

Vectorised: the entries are grouped by row (a stable sort keeps the client order within a row), and
rows are bucketed by ``c_r`` into powers of two; each bucket is one padded batch ``[R_b, C, d]`` with
its per-row Gram matrices ``[R_b, C, C]`` (l2) or ``torch.cdist`` (other l_p), so the padding at most
quadruples the ``sum_r c_r^2`` distance work. The Python loop runs over the buckets (at most
``log2(max c_r) + 1``), never over rows or clients; the host reads only sizes (bucket membership).
"""

from __future__ import annotations

import torch

from fedrec.defenses.vectors import ClientVectors, lp_of

Tensor = torch.Tensor


def row_groups(v: ClientVectors) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The entries grouped by row: ``(rows [M], counts [M], order [K], segment [K], rank [K])`` with
    ``order`` the entries sorted by row (stable: by client within a row), ``segment`` the row position
    of each sorted entry and ``rank`` its position among the row's listers (client order)."""
    sorted_rows, order = torch.sort(v.rows, stable=True)
    rows, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    segment = torch.repeat_interleave(
        torch.arange(rows.shape[0], device=v.device), counts, output_size=v.rows.shape[0]
    )
    rank = torch.arange(v.rows.shape[0], device=v.device) - starts[segment]
    return rows, counts, order, segment, rank


def row_f(counts: Tensor, f: int, offset: int) -> Tensor:
    """``f_r`` per row for a rule with ``min_n(f) = f + offset``: the largest ``f_r <= min(f, (c_r - 1)
    // 2)`` with ``c_r >= f_r + offset``; negative where even ``f_r = 0`` is too many (keep all)."""
    return torch.minimum(torch.clamp((counts - 1) // 2, max=f), counts - offset)


def _sq_row_distances(x: Tensor, p: float) -> Tensor:
    """``[R, C, C]`` squared l_p distances between the padded rows ``x [R, C, d]`` (float64)."""
    if p == 2:  # the Gram identity, as the flat rules (``sq_distances_from_gram``)
        g = x @ x.transpose(1, 2)
        sq = g.diagonal(dim1=1, dim2=2)
        d2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * g).clamp_min(0.0)
        return 0.5 * (d2 + d2.transpose(1, 2))
    return torch.cdist(x, x, p=p).pow(2)


def item_krum(
    v: ClientVectors, f: int, *, offset: int = 3, m: int | None = None, distance: str = "l2"
) -> tuple[Tensor, Tensor]:
    """Item-wise (Multi-)Krum: per listed row, the mean of the ``m_r`` listers of lowest Krum score
    (see the module docstring). ``offset`` is the rule's ``min_n(f) - f``: 3 for Krum (``c_r - f_r - 2``
    neighbours), 2 for RESAM's Krum* (``c_r - f_r - 1``). ``m``: None for ``c_r - f_r``, else
    ``min(m, c_r)`` (1: Krum). ``distance``: ``"l2"``, ``"linf"`` or ``"l<p>"`` (MixTailor eq. 3).

    Example::

        >>> x = torch.tensor([[[1.0], [5.0]], [[2.0], [0.0]], [[3.0], [7.0]], [[40.0], [0.0]]])
        >>> v = ClientVectors.from_dense(x)  # row 0: 4 listers, f_0 = 1; row 1: 2 listers, the mean
        >>> item_krum(v, f=1, m=1)[1].flatten().tolist()  # Krum: scores 1, 1, 1, 37^2; lowest index
        [1.0, 6.0]
        >>> item_krum(v, f=1)[1].flatten().tolist()  # Multi-Krum: m_0 = 4 - 1, mean(1, 2, 3)
        [2.0, 6.0]

    Returns:
        ``(rows [M], values [M, d])`` over the listed rows, in the values' dtype (computed in float64).

    Raises:
        ValueError: if ``f < 0``, ``m < 1`` or the distance is unknown.
    """
    if f < 0:
        raise ValueError(f"item-wise Krum needs f >= 0, got f={f}")
    if m is not None and int(m) < 1:
        raise ValueError(f"item-wise Multi-Krum keeps m >= 1 listers per row, got m={m}")
    p = lp_of(distance) if distance != "l2" else 2.0
    if v.rows.shape[0] == 0:
        return v.rows.new_zeros(0), v.values.new_zeros(0, v.d)
    rows, counts, order, segment, rank = row_groups(v)
    fr = row_f(counts, f, offset)
    keep_all = fr < 0
    fr = fr.clamp_min(0)
    k = torch.where(keep_all, 0, counts - fr - (offset - 1))  # neighbours scored on
    m_r = torch.where(keep_all, counts, counts - fr if m is None else counts.clamp_max(int(m)))
    values = v.values[order].to(torch.float64)
    out = torch.zeros(rows.shape[0], v.d, dtype=torch.float64, device=v.device)
    # bucket b holds the rows with 2^(b-1) < c_r <= 2^b: padded to C = 2^b listers
    bucket = torch.ceil(torch.log2(counts.to(torch.float64))).to(torch.int64)
    for b in torch.unique(bucket).tolist():  # sizes only: at most log2(max c_r) + 1 buckets
        C = 1 << b
        in_b = bucket == b
        members = in_b.nonzero(as_tuple=True)[0]  # [R]
        local = torch.cumsum(in_b, 0) - 1  # a row's position inside its bucket
        entries = in_b[segment].nonzero(as_tuple=True)[0]
        x = torch.zeros(members.shape[0], C, v.d, dtype=torch.float64, device=v.device)
        x[local[segment[entries]], rank[entries]] = values[entries]
        cnt, kb, mb = counts[members], k[members], m_r[members]
        pos = torch.arange(C, device=v.device)
        real = pos[None, :] < cnt[:, None]  # [R, C]: a lister, not padding
        d2 = _sq_row_distances(x, p)
        others = real[:, None, :] & (pos[:, None] != pos[None, :])[None]  # [R, C, C]
        d2 = torch.where(others, d2, float("inf"))
        nearest = torch.sort(d2, dim=2).values
        scores = torch.where(pos[None, None, :] < kb[:, None, None], nearest, 0.0).sum(2)
        scores = torch.where(real, scores, float("inf"))
        by_score = torch.sort(scores, dim=1, stable=True).indices  # ties: the lower client
        kept = torch.zeros_like(real).scatter_(1, by_score, pos[None, :].expand_as(real) < mb[:, None])
        total = (x * kept[:, :, None]).sum(1)
        out[members] = total / mb[:, None].to(torch.float64)
    return rows, out.to(v.values.dtype)


def item_mean(v: ClientVectors) -> tuple[Tensor, Tensor]:
    """Item-wise mean (no filtering): per listed row, the plain mean of its listers' rows,
    ``[IMean(x)]_r = 1/c_r sum_{i : r in rows_i} x_{i,r}`` (Spattack's item-wise ``Mean``; the flat
    ``mean`` weighs by n_i and counts an unlisted row as the default instead)."""
    if v.rows.shape[0] == 0:
        return v.rows.new_zeros(0), v.values.new_zeros(0, v.d)
    rows, counts, order, segment, _ = row_groups(v)
    total = torch.zeros(rows.shape[0], v.d, dtype=torch.float64, device=v.device)
    total.index_add_(0, segment, v.values[order].to(torch.float64))
    return rows, (total / counts[:, None]).to(v.values.dtype)
