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

from collections.abc import Callable

import torch

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
