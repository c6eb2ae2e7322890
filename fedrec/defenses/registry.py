"""Defenses as ``(space, rule, scope)`` (DESIGN.md section 6), by config name, and the decision they
take on a round's uploads.

Selectors (Krum, Multi-Krum, norm trimming, the rule verifier) accept a subset and the round is the
n_i-weighted mean over it (paper 000 Algorithm 1, Option II). RFA reweights the uploads by the final
Weiszfeld weights of their geometric median (a convex combination, applied to theta and every moment
alike, so the global state stays one weighted mean of uploads). Coordinate-wise rules (median,
trimmed mean) produce the new global values themselves: per uploaded quantity in parameter space, or
as a robust gradient the server steps with in gradient space.

Scope (DESIGN.md section 6): ``item`` runs a coordinate-wise rule per row over the clients that listed
that row; ``flat`` over all clients, where an unlisted row counts as a zero delta. Honest uploads
list a few hundred of ~35k rows, so on Last.fm / Citeulike no row is listed by half of a round's
clients and the flat median is exactly the default: the model does not learn (issue 16). The item-wise
presets (``item-median``, ``item-trmean``, ``grad-item-median``, ``grad-item-trmean``) are the
coordinate-wise rules to use; the flat ones stay under their old names and record how sparse the
rounds were (``Decision.info["rows_below_half"]``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from fedrec.defenses.geomed import geometric_median
from fedrec.defenses.krum import multi_krum, multi_krum_outliers
from fedrec.defenses.spaces import SPACES, delta_vectors, rows_of, space_vectors
from fedrec.defenses.trimmed import (
    coordinate_median,
    item_median,
    item_trimmed_mean,
    norm_trim,
    trimmed_mean,
)
from fedrec.defenses.vectors import ClientVectors
from fedrec.protocol import REASONS, Decision, ServerState, UploadBatch

log = logging.getLogger(__name__)
CODE = {name: i for i, name in enumerate(REASONS)}
RULE_KINDS = ("none", "krum", "multi-krum", "rfa", "norm-trim", "cw-median", "cw-trimmed-mean")
COORDINATEWISE = ("cw-median", "cw-trimmed-mean")
SCOPES = ("flat", "item")


@dataclass(frozen=True)
class Defense:
    """A defense: which ``space`` it looks at, which ``rule`` decides, over which ``scope`` (``flat``: the
    whole table as one vector; ``item``: per row over the clients that listed it, coordinate-wise rules
    only) and whether the optimizer-rule verifier (paper 000 footnote 2) runs first (verify, then
    filter)."""

    name: str
    space: str = "gradient"
    rule: str = "none"
    verify: bool = False
    keep: str = "n-f"  # multi-krum: how many to keep ("n-f", "outliers" (params["c"]) or an int)
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    scope: str = "flat"

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"defense {self.name}: space {self.space!r} not in {SPACES}")
        if self.rule not in RULE_KINDS:
            raise ValueError(f"defense {self.name}: rule {self.rule!r} not in {RULE_KINDS}")
        if self.scope not in SCOPES:
            raise ValueError(f"defense {self.name}: scope {self.scope!r} not in {SCOPES}")
        if self.scope == "item" and self.rule not in COORDINATEWISE:
            raise ValueError(
                f"defense {self.name}: scope 'item' needs a coordinate-wise rule {COORDINATEWISE}"
            )

    def decide(
        self,
        server: ServerState,
        uploads: UploadBatch,
        opt_rule,
        t: int,
        codes: torch.Tensor,
        f: int,
    ) -> Decision:
        """The verdict on ``uploads`` (reason ``codes`` from validation, which also ran the rule
        verifier when ``verify`` is set: ``fedrec.federation.pipeline.server_round``; ``f`` the assumed
        number of Byzantine uploads this round)."""
        n = uploads.n
        device = uploads.rows.device
        codes = codes.clone()
        keep = codes == 0
        sub = uploads.select(keep)
        scores = torch.full((n,), float("nan"), dtype=torch.float64, device=device)
        weights_sub = sub.n_examples.to(torch.float64)
        accepted_sub = torch.ones(sub.n, dtype=torch.bool, device=device)
        aggregate = None
        info: dict[str, Any] = {}
        if self.rule in ("krum", "multi-krum", "norm-trim") and sub.n > 0:
            too_few = sub.n - 2 * f < 1 if self.rule == "norm-trim" else sub.n - f - 2 < 1
            if too_few:
                accepted_sub = torch.zeros_like(accepted_sub)
                codes[keep] = CODE["too-few-uploads"]
            else:
                v = space_vectors(self.space, server, sub, opt_rule, t)
                if self.rule == "norm-trim":
                    sel = norm_trim(v, f)
                elif self.rule == "multi-krum" and self.keep == "outliers":
                    sel = multi_krum_outliers(
                        v, f, self.params.get("c", 2.0), distance=self.params.get("distance", "l2")
                    )
                else:
                    m = 1 if self.rule == "krum" else (sub.n - f if self.keep == "n-f" else int(self.keep))
                    sel = multi_krum(v, f, m)
                accepted_sub = sel.accepted
                scores[keep] = sel.scores
        elif self.rule == "rfa" and sub.n > 0:
            v = space_vectors(self.space, server, sub, opt_rule, t)
            beta, info = geometric_median(v, weights_sub, **self.params)
            weights_sub = beta
        elif self.rule in COORDINATEWISE and sub.n > 0:
            aggregate = self._coordinatewise(server, sub, opt_rule, t, f)
            if self.scope == "flat":
                info["rows_below_half"] = rows_below_half(sub)
        accepted = torch.zeros(n, dtype=torch.bool, device=device)
        accepted[keep] = accepted_sub
        codes = torch.where(keep & ~accepted & (codes == 0), torch.full_like(codes, CODE["filtered"]), codes)
        w = torch.zeros(n, dtype=torch.float64, device=device)
        w[keep] = torch.where(accepted_sub, weights_sub, torch.zeros_like(weights_sub))
        w = w / w.sum().clamp(min=1e-300)
        return Decision(
            weights=w, accepted=accepted, scores=scores, reasons=codes, aggregate=aggregate, info=info
        )

    def _coordinatewise(self, server, sub: UploadBatch, opt_rule, t: int, f: int):
        def robust(v: ClientVectors):
            if self.scope == "item":
                return item_median(v) if self.rule == "cw-median" else item_trimmed_mean(v, f)
            return coordinate_median(v) if self.rule == "cw-median" else trimmed_mean(v, f)

        if self.space == "gradient":
            # robust gradient, then one server-side step of the optimizer rule from the global state
            rows, g = robust(space_vectors("gradient", server, sub, opt_rule, t))
            prev = rows_of(server, rows)
            new, default = opt_rule.client_step(prev, g, t), opt_rule.default_rows(prev, t)
            return {k: (rows, new[k] - default[k]) for k in opt_rule.keys}
        return {k: robust(delta_vectors(k, server, sub, opt_rule, t)) for k in opt_rule.keys}


def rows_below_half(uploads: UploadBatch) -> torch.Tensor:
    """The share (0-d float64 tensor, no host sync) of the listed rows that fewer than half of the
    uploads list: where a flat coordinate-wise median is forced to the default by absent clients."""
    _, counts = torch.unique(uploads.rows, return_counts=True)
    if counts.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=uploads.rows.device)
    return (2 * counts < uploads.n).to(torch.float64).mean()


DEFENSES: dict[str, Defense] = {
    d.name: d
    for d in [
        Defense("none", rule="none", description="no filtering (A-FRS, Algorithm 1 Option I)"),
        # coordinate-wise rules per row over the clients that listed it: the ones to use on sparse uploads
        Defense("item-median", space="theta", rule="cw-median", scope="item",
                description="item-wise coordinate median of every uploaded quantity, per row over its listers"),
        Defense("item-trmean", space="theta", rule="cw-trimmed-mean", scope="item",
                description="item-wise coordinate trimmed mean, min(f, (c_r - 1) // 2) per side of each row"),
        Defense("grad-item-median", space="gradient", rule="cw-median", scope="item",
                description="item-wise coordinate median of reconstructed gradients, then a server-side step"),
        Defense("grad-item-trmean", space="gradient", rule="cw-trimmed-mean", scope="item",
                description="item-wise coordinate trimmed mean of reconstructed gradients, then a server-side step"),
        Defense("a-rfrs", space="gradient", rule="multi-krum",
                description="A-RFRS: Multi-Krum on reconstructed gradients, keeps n - f (paper 000)"),
        Defense("a-rfrs-outliers", space="gradient", rule="multi-krum", keep="outliers", params={"c": 2.0},
                description="A-RFRS rejecting, of the f worst Krum scores, only those > c x the median score"),
        Defense("a-rfrs-linf", space="gradient", rule="multi-krum", keep="outliers",
                params={"c": 5.0, "distance": "linf"},
                description="a-rfrs-outliers on squared l-infinity distances (MixTailor's p = inf Krum), c = 5"),
        Defense("grad-krum", space="gradient", rule="krum", description="Krum (one client) on reconstructed gradients"),
        Defense("verify+a-rfrs", space="gradient", rule="multi-krum", verify=True,
                description="the optimizer-rule verifier, then A-RFRS"),
        Defense("krum", space="theta", rule="multi-krum",
                description="paper 000's Krum baseline: Multi-Krum on parameters, keeps n - f"),
        Defense("theta-krum", space="theta", rule="krum",
                description="Krum (one client) on parameters: what Flower's Krum does"),
        Defense("rfa", space="theta", rule="rfa", params={"nu": 1e-6, "tol": 1e-6, "max_iter": 100},
                description="RFA: geometric median (smoothed Weiszfeld) of the parameters"),
        Defense("trmean", space="theta", rule="norm-trim",
                description="paper 000's Trmean: drops the f largest- and f smallest-norm parameter uploads"),
        Defense("cw-median", space="theta", rule="cw-median",
                description="flat coordinate-wise median of every uploaded quantity (absent = 0: degenerate on sparse uploads)"),
        Defense("cw-trmean", space="theta", rule="cw-trimmed-mean",
                description="flat coordinate-wise trimmed mean (f per side) of every uploaded quantity (absent = 0)"),
        Defense("grad-median", space="gradient", rule="cw-median",
                description="flat coordinate-wise median of reconstructed gradients (absent = 0), then a server-side step"),
        Defense("momentum-krum", space="momentum", rule="multi-krum",
                description="Multi-Krum on the first moment (RESAM's space), keeps n - f"),
        Defense("verify", rule="none", verify=True, description="the optimizer-rule verifier alone"),
    ]
}  # fmt: skip


def make_defense(name: str) -> Defense:
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    return DEFENSES[name]


def assumed_f(n: int, fraction: float, f: int | None = None) -> int:
    """f per round = ceil(assumed Byzantine fraction * n) unless set (DESIGN.md section 6)."""
    return int(f) if f is not None else math.ceil(fraction * n - 1e-9)
