"""Spattack (Zhang et al., "Rethinking Byzantine Robustness in Federated Recommendation from Sparse
Aggregation Perspective", AAAI 2025; ANCHORS.md section 4.7): Spattack-O (omniscient, cancels the benign
sum on chosen rows) and Spattack-L (limited knowledge, Gaussian rows); both rule-consistent.

Which rows. ``items = "dense"``: Spattack-O lists every row some honest client of the round lists (the
rows where the benign sum is not structurally 0), Spattack-L every row of the table. ``items =
"popular"``: each Byzantine client draws ``n_items`` distinct rows with probability proportional to the
row's popularity (``ctx.row_popularity``: its item's number of training interactions, which Spattack's
code counts from the data files), without replacement, by the Gumbel-top-k trick (``log pop_r + G_r``,
``G_r`` standard Gumbel, the k largest: the same law as k sequential draws without replacement).
``n_items = None`` draws as many rows as the client lists honestly, so upload sizes look honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, finite_positive, register
from fedrec.attacks.honest import own

Tensor = torch.Tensor

ITEMS = ("dense", "popular")


def popular_rows(pop: Tensor, k: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(ptr [b + 1], rows [sum k])``: client ``i`` draws ``k_i`` distinct rows with probability
    proportional to ``pop [n_rows]`` (rows of popularity 0 never; ``k_i`` capped at their number),
    without replacement (Gumbel-top-k), listed in ascending order. Draws ``b x n_rows`` uniforms from
    ``gen``."""
    b, n_rows = k.shape[0], pop.shape[0]
    k = k.clamp(max=int((pop > 0).sum()))  # sizes the output: one host read
    u = torch.rand(b, n_rows, generator=gen, device=gen.device, dtype=torch.float64).to(pop.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
    keys = torch.where(pop > 0, pop.to(torch.float64).log() + gumbel, float("-inf"))
    top = torch.sort(keys, dim=1, descending=True, stable=True).indices
    take = torch.arange(n_rows, device=pop.device)[None, :] < k[:, None]
    rows = torch.sort(torch.where(take, top, n_rows), dim=1).values[take]  # ascending within a client
    ptr = torch.zeros(b + 1, dtype=torch.int64, device=pop.device)
    torch.cumsum(k, 0, out=ptr[1:])
    return ptr, rows


@dataclass(frozen=True)
class _Spattack(GradientAttack):
    items: str = "dense"
    n_items: int | None = None

    def __post_init__(self) -> None:
        if self.items not in ITEMS:
            raise ValueError(
                f"{type(self).__name__}: items must be one of {', '.join(ITEMS)}, got {self.items!r}"
            )
        n = self.n_items
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"{type(self).__name__}: n_items must be None or an int >= 1, got {n!r}")

    @property
    def needs_popularity(self) -> bool:  # type: ignore[override]
        return self.items == "popular"

    def sampled(self, ctx: AttackContext) -> tuple[Tensor, Tensor]:
        """``(ptr, rows)`` drawn by popularity (``items = "popular"``)."""
        if ctx.row_popularity is None:
            raise ValueError(f"attack {self.name!r} with items='popular' needs ctx.row_popularity")
        counts = ctx.ptr.diff() if self.n_items is None else torch.full_like(ctx.ptr[1:], self.n_items)
        return popular_rows(ctx.row_popularity, counts, ctx.generator)


@register
@dataclass(frozen=True)
class SpattackO(_Spattack):
    """Spattack-O: with ``S_r = sum_{h : r in rows_h} g_{h,r}`` the benign sum on row r (unweighted,
    over the round's honest clients that list r), each of the ``b_r`` Byzantine clients that list r
    sends::

        g~_{i,r} = -S_r / b_r,   so that   S_r + sum_{i byz, r in rows_i} g~_{i,r} = 0

    (Spattack's ``-scale * benign_sum``, ``scale = 1 / #malicious`` dense, ``1 / #malicious that sampled
    the item`` otherwise). Under an item-wise mean of the row's listers (``grad-item-mean``, Spattack's
    ``Mean``) the aggregated gradient of every chosen row is 0 and those rows stop learning. Under
    fedrec's flat rules the server weighs uploads by (clipped) n_i and divides by all uploads, so the
    cancellation is only approximate there. No honest client this round: the Byzantine clients' own
    gradients.

    >>> from fedrec.attacks import make_attack
    >>> make_attack("spattack-o", items="popular", n_items=50)
    SpattackO(items='popular', n_items=50)
    """

    name = "spattack-o"
    omniscient = True
    rule_consistent = True

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        if ctx.honest_ptr is None or ctx.honest_rows is None or ctx.honest_g is None:
            raise ValueError("spattack-o is omniscient: the context must carry the honest gradients")
        if ctx.honest_ptr.shape[0] == 1:
            return own(ctx)
        n_rows, device = ctx.n_rows, ctx.rows.device
        benign = torch.zeros(n_rows, ctx.g.shape[1], dtype=torch.float64, device=device)
        benign.index_add_(0, ctx.honest_rows, ctx.honest_g.to(torch.float64))
        if self.items == "dense":
            union = torch.unique(ctx.honest_rows, sorted=True)
            ptr = torch.arange(ctx.b + 1, dtype=torch.int64, device=device) * union.shape[0]
            rows = union.repeat(ctx.b)
        else:
            ptr, rows = self.sampled(ctx)
        listers = torch.zeros(n_rows, dtype=torch.float64, device=device).index_add_(
            0, rows, torch.ones(rows.shape[0], dtype=torch.float64, device=device)
        )
        g = -benign[rows] / listers[rows][:, None]
        return ptr, rows, g.to(ctx.g.dtype)


@register
@dataclass(frozen=True)
class SpattackL(_Spattack):
    """Spattack-L: each Byzantine client sends Gaussian rows on its chosen rows, no knowledge of the
    honest clients::

        g~_{i,r} = sigma * E_r,   E [n_rows, d] ~ N(0, 1)

    ``fresh = False`` (default): ``E`` is one fixed matrix, drawn from a CPU generator seeded with
    ``seed`` (Spattack's code reseeds with 0 for every attacker), so every attacker sends the same rows
    every round, whatever the device. ``fresh = True``: independent draws per client, row and round
    from the attacker's generator (``ctx.generator``).

    >>> from fedrec.attacks import make_attack
    >>> make_attack("spattack-l")
    SpattackL(items='dense', n_items=None, sigma=1.0, fresh=False, seed=0)
    """

    name = "spattack-l"
    omniscient = False
    rule_consistent = True

    sigma: float = 1.0
    fresh: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        finite_positive(self, "sigma")
        if not isinstance(self.fresh, bool):
            raise ValueError(f"SpattackL: fresh must be a bool, got {self.fresh!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"SpattackL: seed must be an int >= 0, got {self.seed!r}")

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        n_rows, d, device = ctx.n_rows, ctx.g.shape[1], ctx.rows.device
        if self.items == "dense":
            ptr = torch.arange(ctx.b + 1, dtype=torch.int64, device=device) * n_rows
            rows = torch.arange(n_rows, device=device).repeat(ctx.b)
        else:
            ptr, rows = self.sampled(ctx)
        if self.fresh:
            gen = ctx.generator
            noise = torch.randn(rows.shape[0], d, generator=gen, device=gen.device, dtype=torch.float64)
            g = noise.to(device)
        else:
            fixed = torch.randn(
                n_rows, d, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64
            )
            g = fixed.to(device)[rows]
        return ptr, rows, (self.sigma * g).to(ctx.g.dtype)
