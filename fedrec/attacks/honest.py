"""What an omniscient attack computes from the round's gradients (ALGORITHMS.md 7.6-7.10, 7.15).

The statistics of ALIE, IPM, ByzMean and Min-Max / Min-Sum are taken over the gradients as dense
vectors over the *union* of the rows the observed clients list: an unlisted row is a 0 in that client's
vector (the value the server reconstructs for it: a zero gradient). Means are unweighted (one vote per
client, as in the papers: ``n_examples`` plays no part). Every observed client counts, so ``mean`` is
``(1/h) sum_i g_i`` over the ``h`` clients, not over the clients that list the row.

``stats`` chooses the population (ALGORITHMS.md 7.8 pitfalls): ``"honest"`` (default) the honest
clients of the round only (``ctx.honest_*``: what an omniscient attacker sees); ``"all"`` the honest
clients and the Byzantine clients' own honest gradients (``ctx.g``): SignGuard's code computes its
statistics over all n clients' honest gradients.

The standard deviation takes ``ddof`` (0: the population form ``1/h``, SignGuard Appendix A; 1: the
sample form ``1/(h-1)``, SignGuard's code); with fewer than ``ddof + 1`` clients it is 0.

The crafted vectors are returned flat like ``ctx.rows``: every Byzantine client lists the whole union
(sorted), with its own ``n_examples``.
"""

from __future__ import annotations

from typing import Any

import torch

from fedrec.attacks.base import AttackContext

Tensor = torch.Tensor

STATS = ("honest", "all")
DDOF = (0, 1)


def check_stats(obj: Any) -> None:
    """``stats`` in ``STATS`` and ``ddof`` in ``DDOF`` (a field-validation helper for the attacks)."""
    stats, ddof = obj.stats, obj.ddof
    if stats not in STATS:
        raise ValueError(f"{type(obj).__name__}: stats must be one of {', '.join(STATS)}, got {stats!r}")
    if isinstance(ddof, bool) or ddof not in DDOF:
        raise ValueError(f"{type(obj).__name__}: ddof must be 0 or 1, got {ddof!r}")


def dense_over_union(ptr: Tensor, rows: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """``(union [U], X [n, U, d])``: client ``i``'s gradient ``g[ptr[i]:ptr[i+1]]`` at
    ``rows[ptr[i]:ptr[i+1]]`` scattered into the sorted union of all listed rows, 0 where it lists
    nothing; ``X`` is float64 (the statistics are computed in float64)."""
    n = ptr.shape[0] - 1
    union, where = torch.unique(rows, sorted=True, return_inverse=True)
    owner = torch.repeat_interleave(
        torch.arange(n, device=rows.device), ptr.diff(), output_size=rows.shape[0]
    )
    X = torch.zeros(n, union.shape[0], g.shape[1], dtype=torch.float64, device=g.device)
    X[owner, where] = g.to(torch.float64)
    return union, X


def observed(ctx: AttackContext, stats: str = "honest") -> tuple[Tensor, Tensor, int]:
    """``(union, X [n_obs, U, d], h)``: the observed gradients dense over their union, the first ``h``
    rows of ``X`` the honest clients (``stats = "all"`` appends the Byzantine clients' own)."""
    if ctx.honest_g is None or ctx.honest_ptr is None or ctx.honest_rows is None:
        raise ValueError("an omniscient attack needs ctx.honest_ptr, honest_rows and honest_g")
    h = int(ctx.honest_ptr.shape[0] - 1)
    ptr, rows, g = ctx.honest_ptr, ctx.honest_rows, ctx.honest_g
    if stats == "all":
        ptr = torch.cat([ptr, ptr[-1] + ctx.ptr[1:]])
        rows = torch.cat([rows, ctx.rows])
        g = torch.cat([g.to(ctx.g.dtype), ctx.g])
    union, X = dense_over_union(ptr, rows, g)
    return union, X, h


def mean_std(X: Tensor, ddof: int = 0) -> tuple[Tensor, Tensor]:
    """Coordinate-wise mean and standard deviation over the clients (dim 0) of ``X [n, ...]``; the std is
    0 when ``n <= ddof`` (one client: no spread)."""
    mu = X.mean(0)
    if X.shape[0] <= ddof:
        return mu, torch.zeros_like(mu)
    # two passes, element-wise over contiguous client slices: torch.var's strided reduction over dim 0
    # was 12 ms of a 19-client Last.fm round
    dev = X - mu
    return mu, (dev.mul_(dev).sum(0) / (X.shape[0] - ddof)).sqrt_()


def same_for_all(ctx: AttackContext, union: Tensor, vec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every Byzantine client lists ``union`` with the same gradient ``vec [U, d]`` (in ``ctx.g``'s dtype)."""
    return per_client(ctx, union, vec.unsqueeze(0).expand(ctx.b, *vec.shape))


def per_client(ctx: AttackContext, union: Tensor, G: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Byzantine client ``i`` lists ``union`` with gradient ``G[i] [U, d]`` (in ``ctx.g``'s dtype)."""
    b, U = ctx.b, union.shape[0]
    ptr = torch.arange(b + 1, dtype=torch.int64, device=union.device) * U
    g = G.reshape(b * U, G.shape[-1]).to(ctx.g.dtype)
    return ptr, union.repeat(b), g


def own(ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
    """The fallback when there is nothing to observe (no honest client this round): the Byzantine
    clients' own honest gradients, unchanged."""
    return ctx.ptr, ctx.rows, ctx.g
