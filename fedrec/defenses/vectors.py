"""Sparse client vectors as the defenses see them (DESIGN.md sections 5-6), and the algebra every rule
shares: norms, the Gram matrix, pairwise squared distances and weighted sums.

Client ``i`` holds a vector of the ``[n_rows, d]`` table that is nonzero only at the rows it lists
(``rows[ptr[i]:ptr[i + 1]]``, sorted and unique); every unlisted row is exactly 0. In theta and moment
space the vectors are deltas from the default rows (DESIGN.md section 5), in gradient space the
reconstructed gradients, so a 0 at an unlisted row is exact, not an approximation. Honest clients list
a few hundred of ~35k rows, an attacker may list all of them.

Nothing here densifies all clients over the whole table: the rules work over the union ``U`` of listed
rows, ``block_rows`` rows at a time (``X_blk [n, B, d]``, zeros where a client does not list a row), so
the peak extra memory is ``n * block_rows * d`` elements; the ways by pairs of listers add their pair
chunks (``BLOCK_ELEMENTS`` elements) and, for the l-infinity / l_p distances, an ``[n, M]`` map of who
lists each union row. There is no Python loop over clients and no host read of tensor values
(``.item()``, ``.tolist()``); the only host synchronisations are the ones that size outputs
(``torch.unique``, boolean indexing, the pair counts that cut chunks and choose a way), and everything
stays on the input's device.
Distances and inner products are computed in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from fedrec.defenses import gram_native

Tensor = torch.Tensor

BLOCK_ELEMENTS = 1 << 22
"""Default budget of a dense row block ``X_blk [n, B, d]`` in elements (32 MiB in float64)."""


@dataclass(frozen=True)
class ClientVectors:
    """n sparse vectors over an ``[n_rows, d]`` table, concatenated CSR-style (like ``UploadBatch``).

    Attributes:
        ptr: ``[n + 1]`` int64 offsets, ``ptr[0] = 0``, non-decreasing; client ``i`` owns entries
            ``ptr[i]:ptr[i + 1]``.
        rows: ``[K]`` int64 row ids, sorted and unique within each client, in ``[0, n_rows)``.
        values: ``[K, d]`` the client's values at those rows (float32 or float64).
        n_rows: number of rows of the table (unlisted rows are 0).

    Only shapes are checked on construction (no host synchronisation); ``check()`` validates the
    contents for tests and debugging.
    """

    ptr: Tensor
    rows: Tensor
    values: Tensor
    n_rows: int

    def __post_init__(self) -> None:
        if self.ptr.ndim != 1 or self.ptr.numel() < 1:
            raise ValueError(f"ptr must be 1-D with n + 1 >= 1 entries, got shape {tuple(self.ptr.shape)}")
        if self.rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {tuple(self.rows.shape)}")
        if self.values.ndim != 2 or self.values.shape[0] != self.rows.shape[0]:
            raise ValueError(
                f"values must be [K, d] with K = len(rows) = {self.rows.shape[0]}, "
                f"got {tuple(self.values.shape)}"
            )
        if self.n_rows < 0:
            raise ValueError(f"n_rows must be >= 0, got {self.n_rows}")

    @property
    def n(self) -> int:
        """Number of clients."""
        return self.ptr.shape[0] - 1

    @property
    def d(self) -> int:
        """Columns per row."""
        return self.values.shape[1]

    @property
    def device(self) -> torch.device:
        return self.values.device

    def counts(self) -> Tensor:
        """``[n]`` number of rows each client lists."""
        return self.ptr[1:] - self.ptr[:-1]

    def owner(self) -> Tensor:
        """``[K]`` the client index of every entry."""
        return torch.repeat_interleave(
            torch.arange(self.n, device=self.ptr.device), self.counts(), output_size=self.rows.shape[0]
        )

    def union_rows(self) -> Tensor:
        """``[M]`` sorted unique rows listed by at least one client."""
        return torch.unique(self.rows, sorted=True)

    @classmethod
    def from_dense(cls, x: Tensor, *, all_rows: bool = False) -> ClientVectors:
        """The sparse form of dense vectors ``x [n, n_rows, d]`` (for tests and small problems).

        By default a client lists exactly its rows with a nonzero entry; ``all_rows=True`` lists every
        row for every client (a dense upload: the same vectors, stored without sparsity)."""
        if x.ndim != 3:
            raise ValueError(f"x must be [n, n_rows, d], got shape {tuple(x.shape)}")
        n, n_rows, _ = x.shape
        listed = torch.ones(n, n_rows, dtype=torch.bool, device=x.device) if all_rows else (x != 0).any(-1)
        client, row = listed.nonzero(as_tuple=True)  # row-major: grouped by client, rows ascending
        ptr = torch.zeros(n + 1, dtype=torch.int64, device=x.device)
        ptr[1:] = listed.sum(1).cumsum(0)
        return cls(ptr=ptr, rows=row, values=x[client, row], n_rows=n_rows)

    def to_dense(self) -> Tensor:
        """``[n, n_rows, d]`` dense vectors (for tests and small problems)."""
        out = self.values.new_zeros(self.n, self.n_rows, self.d)
        out[self.owner(), self.rows] = self.values
        return out

    def check(self) -> None:
        """Validate the contents (host synchronisation; for tests and debugging). Raises ValueError."""
        if int(self.ptr[0]) != 0 or int(self.ptr[-1]) != self.rows.shape[0]:
            raise ValueError("ptr must start at 0 and end at len(rows)")
        if bool((self.counts() < 0).any()):
            raise ValueError("ptr must be non-decreasing")
        if self.rows.numel() and (int(self.rows.min()) < 0 or int(self.rows.max()) >= self.n_rows):
            raise ValueError(f"rows must lie in [0, {self.n_rows})")
        owner = self.owner()
        same = owner[1:] == owner[:-1]
        if bool((same & (self.rows[1:] <= self.rows[:-1])).any()):
            raise ValueError("rows must be sorted and unique within each client")


@dataclass(frozen=True)
class Selection:
    """What a selecting rule returns: who is accepted, the per-client score it ranked on, details.

    Attributes:
        accepted: ``[n]`` bool.
        scores: ``[n]`` float64, the rule's score of each client (nan where the rule gives none).
        info: rule name, parameters and anything else worth recording (tensors stay on the device).
    """

    accepted: Tensor
    scores: Tensor
    info: dict[str, Any] = field(default_factory=dict)


def _union_positions(v: ClientVectors) -> tuple[Tensor, Tensor]:
    """The union of listed rows ``[M]`` and the position in it of every entry ``[K]``."""
    union = v.union_rows()
    return union, torch.searchsorted(union, v.rows)


def default_block_rows(v: ClientVectors) -> int:
    """Rows per dense block so that ``X_blk [n, B, d]`` holds at most ``BLOCK_ELEMENTS`` elements."""
    return max(1, BLOCK_ELEMENTS // max(1, v.n * v.d))


def dense_blocks(
    v: ClientVectors, block_rows: int | None = None, dtype: torch.dtype | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Walk the union of listed rows in blocks: yields ``(rows [B], X_blk [n, B, d])`` where
    ``X_blk[i, b]`` is client i's value at ``rows[b]`` (0 where it does not list it), in ``dtype``
    (default: the values' dtype). ``B = block_rows`` except for the last block."""
    if block_rows is None:
        block_rows = default_block_rows(v)
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    dtype = v.values.dtype if dtype is None else dtype
    union, pos = _union_positions(v)
    owner = v.owner()
    for lo in range(0, union.shape[0], block_rows):
        hi = min(lo + block_rows, union.shape[0])
        sel = ((pos >= lo) & (pos < hi)).nonzero(as_tuple=True)[0]
        blk = torch.zeros(v.n, hi - lo, v.d, dtype=dtype, device=v.device)
        blk[owner[sel], pos[sel] - lo] = v.values[sel].to(dtype)
        yield union[lo:hi], blk


def sq_norms(v: ClientVectors) -> Tensor:
    """``[n]`` float64 squared Euclidean norms ``|x_i|^2`` (sum over the client's listed entries)."""
    row_sq = v.values.to(torch.float64).pow(2).sum(1)
    return torch.zeros(v.n, dtype=torch.float64, device=v.device).index_add_(0, v.owner(), row_sq)


def gram(v: ClientVectors, block_rows: int | None = None, method: str = "auto") -> Tensor:
    """``[n, n]`` float64 Gram matrix ``G_ij = <x_i, x_j>``.

    Only rows that both clients list contribute to ``<x_i, x_j>``. Two exact ways, equal up to float64
    summation order:

    * ``pairs``: for every row, the products of each pair of its listers' values, added to their cell
      of G: ``sum_r c_r^2 d`` multiplications (``c_r`` the listers of row r). Recommendation uploads
      are sparse (a Citeulike-t client lists ~50 of 52k rows), so this is what they cost.
    * ``blocks``: ``G += X_blk X_blk^T`` over dense blocks ``X_blk [n, B * d]`` of the union of listed
      rows: ``n^2 M d`` multiplications (M the union's size) at BLAS speed, for dense listings.

    ``auto`` takes ``pairs`` when ``8 sum_r c_r^2 < n^2 M``. ``block_rows``: the dense blocks' size. On the
    CPU the pairs way is one C pass (fedrec.defenses.gram_native; the torch way's matrix to float64
    round-off, ``_gram_pairs_torch``)."""
    if method not in ("auto", "pairs", "blocks"):
        raise ValueError(f"gram: method must be auto, pairs or blocks, got {method!r}")
    if v.rows.shape[0] == 0:
        return torch.zeros(v.n, v.n, dtype=torch.float64, device=v.device)
    if method != "blocks":  # the pairs way as one C pass where it applies (fedrec.defenses.gram_native)
        fast = gram_native.gram_pairs(v.rows, v.owner(), v.values, v.n, v.n_rows, auto=method == "auto")
        if fast is not None:
            return fast
    by_row = _by_row(v)
    if not _use_pairs(v, by_row, method, "gram", 8):
        g = torch.zeros(v.n, v.n, dtype=torch.float64, device=v.device)
        for _, blk in dense_blocks(v, block_rows, torch.float64):
            flat = blk.reshape(v.n, -1)
            g.addmm_(flat, flat.T)
        # BLAS need not round <x_i, x_j> and <x_j, x_i> alike (MKL's AVX-512 dgemm does not at some
        # shapes): the upper triangle, mirrored, so that the rules see one value per pair
        return g.triu() + g.triu(1).T
    return _gram_pairs_torch(v, by_row)


def _gram_pairs_torch(v: ClientVectors, by_row: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """``gram``'s pairs way in torch operations (any device; the C pass's matrix to round-off)."""
    g = torch.zeros(v.n, v.n, dtype=torch.float64, device=v.device)
    values, owner, counts = by_row
    flat = g.view(-1)
    for left, right in _row_pairs(counts, v.d):
        dots = (values.index_select(0, left) * values.index_select(0, right)).sum(1)
        flat.index_add_(0, owner[left] * v.n + owner[right], dots)
    return g


def _by_row(v: ClientVectors) -> tuple[Tensor, Tensor, Tensor]:
    """The entries sorted by row: ``values [K, d]`` (float64), ``owner [K]``, and ``counts [M]`` the
    entries (listers) of each listed row."""
    order = torch.argsort(v.rows, stable=True)
    _, counts = torch.unique_consecutive(v.rows[order], return_counts=True)
    return v.values[order].to(torch.float64), v.owner()[order], counts


def _use_pairs(
    v: ClientVectors, by_row: tuple[Tensor, Tensor, Tensor], method: str, name: str, factor: int
) -> bool:
    """Pairs of listers per row (``sum_r c_r^2`` pairs) or dense blocks (``n^2 M``): ``auto`` takes pairs
    when ``factor * sum_r c_r^2 < n^2 M``, i.e. when most rows are listed by few clients (honest
    uploads). ``factor`` is what a pair costs against a dense element: a Gram block is one BLAS matmul
    (8; measured slower than blocks from ~21 listers a row of 60 clients, where 16 would choose
    blocks), an l-infinity block ``cdist``'s max (8), an l_p block ``cdist``'s powers (2: at 7-10
    listers a row of 19 clients the l1.5 pairs way was 1.8-3.5x faster than blocks)."""
    if method not in ("auto", "pairs", "blocks"):
        raise ValueError(f"{name}: method must be auto, pairs or blocks, got {method!r}")
    counts = by_row[2]
    return method == "pairs" or (
        method == "auto" and factor * int((counts * counts).sum()) < v.n**2 * counts.shape[0]
    )


def _row_pairs(counts: Tensor, d: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Every ordered pair ``(left, right)`` of entries listed at the same row (itself included), for
    entries sorted by row with ``counts [M]`` entries a row; in chunks of at most ``BLOCK_ELEMENTS / d``
    pairs (at least one entry's pairs a chunk)."""
    device = counts.device
    starts = torch.cumsum(counts, 0) - counts
    seg = torch.repeat_interleave(torch.arange(counts.shape[0], device=device), counts)
    reps = counts[seg]  # partners of each entry
    ends = torch.cumsum(reps, 0)  # pairs before and including each entry
    budget = max(1, BLOCK_ELEMENTS // max(1, d))
    lo, K = 0, int(seg.shape[0])
    while lo < K:
        base = int(ends[lo - 1]) if lo else 0
        # the entries whose pairs fit the budget (at least one entry)
        hi = max(lo + 1, int(torch.searchsorted(ends, base + budget, right=True)))
        hi = min(hi, K)
        idx = torch.arange(lo, hi, device=device)
        left = torch.repeat_interleave(idx, reps[lo:hi])
        first = torch.repeat_interleave(ends[lo:hi] - reps[lo:hi] - base, reps[lo:hi])
        right = starts[seg[left]] + (torch.arange(left.shape[0], device=device) - first)
        yield left, right
        lo = hi


def _alone(v: ClientVectors, s: Tensor, reduce: str) -> Tensor:
    """``[n, n]`` float64: cell ``(i, j)`` reduces (``"sum"`` or ``"amax"``) ``s_k >= 0`` over client i's
    entries k at rows client j does not list: where only i lists a row, ``x_j`` is 0 there and
    ``|x_i - x_j| = |x_i|``. ``s [K]`` in entry order. A ``[n, M]`` map of who lists each union row
    answers "does j list it"; entries go ``BLOCK_ELEMENTS / n`` at a time."""
    n = v.n
    union, pos = _union_positions(v)
    owner = v.owner()
    listed = torch.zeros(n, union.shape[0], dtype=torch.bool, device=v.device)
    listed[owner, pos] = True
    out = torch.zeros(n * n, dtype=torch.float64, device=v.device)
    cols = torch.arange(n, device=v.device)
    step = max(1, BLOCK_ELEMENTS // max(1, n))
    for lo in range(0, s.shape[0], step):
        hi = min(lo + step, s.shape[0])
        miss = ~listed.index_select(1, pos[lo:hi]).T  # [B, n]: client j does not list entry k's row
        contrib = torch.where(miss, s[lo:hi, None], 0.0).reshape(-1)
        out.scatter_reduce_(0, (owner[lo:hi, None] * n + cols).reshape(-1), contrib, reduce=reduce)
    return out.view(n, n)


def _by_pairs(v: ClientVectors, by_row: tuple[Tensor, Tensor, Tensor], term, reduce: str) -> Tensor:
    """``[n, n]`` float64: cell ``(i, j)`` reduces (``"sum"`` or ``"amax"``) ``term(x_i[r] - x_j[r])``
    over every row r either client lists, ``term: [B, d] -> [B], >= 0``: the rows both list by pairs of
    listers (``_row_pairs``), the rows only one lists as ``term(x_i[r])`` (``_alone``)."""
    values, owner, counts = by_row
    out = torch.zeros(v.n * v.n, dtype=torch.float64, device=v.device)
    for left, right in _row_pairs(counts, v.d):
        gap = term(values.index_select(0, left) - values.index_select(0, right))
        out.scatter_reduce_(0, owner[left] * v.n + owner[right], gap, reduce=reduce)
    alone = _alone(v, term(v.values.to(torch.float64)), reduce)
    if reduce == "sum":
        return out.view(v.n, v.n) + (alone + alone.T)
    return torch.maximum(out.view(v.n, v.n), torch.maximum(alone, alone.T))


def sq_distances_from_gram(g: Tensor) -> Tensor:
    """``[n, n]`` squared distances ``|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>`` from a Gram matrix, clamped at 0
    (cancellation can make the identity slightly negative), symmetric, with an exact zero diagonal."""
    diag = g.diagonal()
    d2 = (diag[:, None] + diag[None, :] - 2.0 * g).clamp_min_(0.0)
    d2 = 0.5 * (d2 + d2.T)
    d2.fill_diagonal_(0.0)
    return d2


def sq_distances(v: ClientVectors, block_rows: int | None = None) -> Tensor:
    """``[n, n]`` float64 pairwise squared Euclidean distances ``|x_i - x_j|^2`` via the Gram identity
    ``|a|^2 + |b|^2 - 2 <a, b>`` (see ``gram``), clamped at 0, exact zero diagonal. The squared norms are
    the Gram diagonal, so the identity is evaluated from one consistently rounded matrix."""
    return sq_distances_from_gram(gram(v, block_rows))


def sq_linf_distances(v: ClientVectors, block_rows: int | None = None, method: str = "auto") -> Tensor:
    """``[n, n]`` float64 squared Chebyshev distances ``(max_k |x_i[k] - x_j[k]|)^2``: the ``p = inf``
    member of MixTailor's generalised Krum distances (ALGORITHMS.md section 4.4). Rows nobody lists are
    0 for everyone. Two ways, bit-identical on finite values (a maximum does not depend on its order;
    a NaN makes the pairs way NaN where ``cdist`` skips it; ``method`` as in ``gram``):

    * ``pairs``: the maximum of ``max_d |x_i[r] - x_j[r]|`` over the rows both list (pairs of listers
      per row), ``max_d |x_i[r]|`` over the rows only i lists and ``max_d |x_j[r]|`` over those only j
      lists (``_alone``): ``sum_r c_r^2 d + K n`` operations;
    * ``blocks``: ``torch.cdist(p=inf)`` over dense blocks of the union of listed rows: ``n^2 M d``."""
    d = torch.zeros(v.n, v.n, dtype=torch.float64, device=v.device)
    by_row = _by_row(v)  # nothing listed: no pair, no block, all zeros
    if _use_pairs(v, by_row, method, "sq_linf_distances", 8):
        d = _by_pairs(v, by_row, lambda x: x.abs().amax(1), "amax")
    else:
        for _, blk in dense_blocks(v, block_rows, torch.float64):
            flat = blk.reshape(v.n, -1)
            d = torch.maximum(d, torch.cdist(flat, flat, p=float("inf")))
    d.fill_diagonal_(0.0)
    return d.pow(2)


def sq_lp_distances(
    v: ClientVectors, p: float, block_rows: int | None = None, method: str = "auto"
) -> Tensor:
    """``[n, n]`` float64 squared l_p distances ``|x_i - x_j|_p^2 = (sum_k |x_i[k] - x_j[k]|^p)^(2/p)``
    for ``p >= 1``: MixTailor's generalised Krum distances (eq. 3; ALGORITHMS.md section 4.4). Rows
    nobody lists add 0. Two ways, equal up to float64 summation order (every term is ``>= 0``, so no
    cancellation; ``method`` as in ``gram``):

    * ``pairs``: ``sum_d |x_i[r] - x_j[r]|^p`` over the rows both list (pairs of listers per row), plus
      ``sum_d |x_i[r]|^p`` over the rows only i lists and the same for j (``_alone``);
    * ``blocks``: ``torch.cdist(p)^p`` summed over dense blocks of the union of listed rows."""
    if not p >= 1:
        raise ValueError(f"an l_p distance needs p >= 1, got {p}")
    acc = torch.zeros(v.n, v.n, dtype=torch.float64, device=v.device)
    by_row = _by_row(v)  # nothing listed: no pair, no block, all zeros
    if _use_pairs(v, by_row, method, "sq_lp_distances", 2):
        acc = _by_pairs(v, by_row, lambda x: x.abs().pow(p).sum(1), "sum")
    else:
        for _, blk in dense_blocks(v, block_rows, torch.float64):
            flat = blk.reshape(v.n, -1)
            acc += torch.cdist(flat, flat, p=p).pow(p)
    acc.fill_diagonal_(0.0)
    # torch's pow rounds a tensor's last partial SIMD vector on another path than the whole vectors, so
    # equal inputs at (i, j) and (j, i) can come out a bit apart: keep the upper triangle's for both
    upper = torch.triu(acc.pow(2.0 / p), 1)
    return upper + upper.T


DISTANCES = {"l2": sq_distances, "linf": sq_linf_distances}
"""Squared pairwise distances by name, for the distance-based rules (Krum, Multi-Krum); any other
``"l<p>"`` (``"l1"``, ``"l3"``, ``"l1.5"``) is the l_p distance of ``sq_lp_distances`` (``distance_fn``)."""


def lp_of(name: str) -> float:
    """The p of a distance name: ``"l2"`` -> 2, ``"linf"`` -> inf, ``"l3"`` -> 3 (p >= 1), else ValueError."""
    if name == "linf":
        return float("inf")
    try:
        p = float(name[1:]) if name.startswith("l") else float("nan")
    except ValueError:
        p = float("nan")
    if not p >= 1 or p == float("inf"):
        raise ValueError(f"distance {name!r}: expected 'l2', 'linf' or 'l<p>' with a finite p >= 1")
    return p


def distance_fn(name: str):
    """``(v, block_rows=None) -> [n, n]`` squared distances for a distance name (see ``DISTANCES``)."""
    if name in DISTANCES:
        return DISTANCES[name]
    p = lp_of(name)
    return lambda v, block_rows=None: sq_lp_distances(v, p, block_rows)


def weighted_sum(v: ClientVectors, w: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_i w_i x_i`` over the union of listed rows: ``(rows [M], values [M, d])``.

    Rows outside ``rows`` are 0 in the result (no client lists them). Accumulated in float64, returned
    in the values' dtype. ``w`` is ``[n]`` (any float dtype, any sign; a 0 drops the client)."""
    if w.shape != (v.n,):
        raise ValueError(f"w must have shape ({v.n},), got {tuple(w.shape)}")
    union, pos = _union_positions(v)
    contrib = v.values.to(torch.float64) * w.to(device=v.device, dtype=torch.float64)[v.owner()][:, None]
    out = torch.zeros(union.shape[0], v.d, dtype=torch.float64, device=v.device).index_add_(0, pos, contrib)
    return union, out.to(v.values.dtype)


def select_lowest(scores: Tensor, m: int) -> Tensor:
    """``[n]`` bool: the ``m`` lowest scores, ties broken towards the lower index (stable sort)."""
    n = scores.shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, n] = [1, {n}], got {m}")
    order = torch.sort(scores, stable=True).indices
    accepted = torch.zeros(n, dtype=torch.bool, device=scores.device)
    accepted[order[:m]] = True
    return accepted
