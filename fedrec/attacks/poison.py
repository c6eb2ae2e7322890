"""Values no honest client can send, in well-formed uploads: what the server's validation must reject.

Each kind starts from the client's rule-consistent upload (its honest gradient, or ``-g`` for the
``inflate-*`` kinds) and edits it so that every type and shape check still passes (issue 9 of the
project lists them as seen on ML-100K): they break the optimizer rule, leave its domain, or claim a
weight the upload cannot back. A server that aggregated any of them turned its state NaN/Inf or
rejected every later honest upload; ``fedrec.federation.validate.check_rule`` and ``validate`` reject
each with a reason (``state-domain``, ``rule-verify``, ``magnitude``, ``n-examples-absurd``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import (
    AttackBase,
    AttackContext,
    dense_upload_from_gradient,
    register,
    upload_from_gradient,
)
from fedrec.protocol import UploadBatch

KINDS = (
    "v-negative",  # Adam's v (or AdaGrad / RMSProp's r) below zero
    "m-max-v-zero",  # first moment 3.4e38, second moment 0
    "theta-1e30",  # honest moments, parameters 1e30
    "theta-max",  # honest moments, parameters +-3.4e38
    "m-1e30-consistent-theta",  # m = 1e30 with the theta Eq. (5)-(6) give for it (v honest)
    "inflate-rows",  # gradient ascent claiming as many positives as it lists rows
    "inflate-catalog",  # gradient ascent claiming as many positives as the table has rows (>= the catalog)
    "inflate-dense",  # gradient ascent listing every row (zero gradient off its own), claiming n_rows / 2
)


@register
@dataclass(frozen=True)
class Poison(AttackBase):
    """One of ``KINDS`` (see the module docstring); rule-BREAKING except ``inflate-*``."""

    name = "poison"
    omniscient = False
    rule_consistent = False

    kind: str = "theta-1e30"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"poison: kind {self.kind!r} not in {', '.join(KINDS)}")

    def __call__(self, ctx: AttackContext) -> UploadBatch:
        self.check(ctx)
        if self.kind == "inflate-dense":  # as many rows as it likes to back the claim: FISM's catalog
            g = torch.zeros(ctx.b * ctx.n_rows, ctx.g.shape[1], dtype=ctx.g.dtype, device=ctx.g.device)
            g[ctx.owner() * ctx.n_rows + ctx.rows] = -ctx.g
            up = dense_upload_from_gradient(ctx, g.reshape(ctx.b, ctx.n_rows, -1))
            up.n_examples = torch.full_like(up.n_examples, ctx.n_rows // 2)
            return up
        inflate = self.kind.startswith("inflate")
        up = upload_from_gradient(ctx, ctx.rows, ctx.ptr, -ctx.g if inflate else ctx.g)
        first = ctx.rule.state_names[:1]
        squares = ctx.rule.nonnegative
        if self.kind == "v-negative":
            up.state = {k: -v - 1.0 if k in squares else v for k, v in up.state.items()}
        elif self.kind == "m-max-v-zero":
            up.state = {
                k: torch.full_like(v, 3.4e38) if k in first else torch.zeros_like(v)
                for k, v in up.state.items()
            }
        elif self.kind == "theta-1e30":
            up.theta = torch.full_like(up.theta, 1e30)
        elif self.kind == "theta-max":
            sign = torch.where(ctx.rows % 2 == 0, 1.0, -1.0).to(up.theta)[:, None]
            up.theta = torch.full_like(up.theta, 3.4e38) * sign
        elif self.kind == "m-1e30-consistent-theta" and "m" in up.state and "v" in up.state:
            m = torch.full_like(up.state["m"], 1e30)
            up.state["m"] = m
            step = ctx.rule.step_size(ctx.t) * m / torch.sqrt(up.state["v"] + ctx.rule.eps)
            up.theta = ctx.prev(ctx.rows)["theta"] - step
        elif self.kind == "inflate-rows":
            up.n_examples = up.counts()
        elif self.kind == "inflate-catalog":
            up.n_examples = torch.full_like(up.n_examples, ctx.n_rows)
        return up
