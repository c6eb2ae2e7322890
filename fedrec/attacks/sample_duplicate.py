"""BRVR's sample-duplicating attack (paper 003, section 6; ALGORITHMS.md 7.12): the Byzantine clients
copy one honest client's message; omniscient, rule-consistent."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import AttackContext, GradientAttack, register
from fedrec.attacks.honest import own

Tensor = torch.Tensor

CHOICES = ("first", "random")


@register
@dataclass(frozen=True)
class SampleDuplicate(GradientAttack):
    """Every Byzantine client sends a copy of one honest client's gradient, on that client's rows::

        g~ = g_c,   c = the chosen honest client of the round

    BRVR: "the Byzantine workers collude, choose one regular worker, and send a copy of its message at
    every step", which "amounts to duplicating the data samples of the chosen regular worker": on
    label-sorted shards that worker's classes are over-weighted and the Byzantine workers' own vanish
    (non-iid only; on iid data it is nearly harmless). ``choose = "first"`` (default) copies the honest
    client with the lowest id of the round (with fixed workers, as in the testbed, the same one every
    step, as in the paper); ``"random"`` draws one per round from the attacker's generator. Each upload
    is one honest step of the client's optimizer rule with ``g~`` (its own ``n_examples``), so a round
    holds b + 1 identical gradients. No honest client this round: the Byzantine clients' own gradients.

    >>> from fedrec.attacks import make_attack
    >>> make_attack("sample-duplicate")
    SampleDuplicate(choose='first')
    """

    name = "sample-duplicate"
    omniscient = True
    rule_consistent = True

    choose: str = "first"

    def __post_init__(self) -> None:
        if self.choose not in CHOICES:
            raise ValueError(
                f"SampleDuplicate: choose must be one of {', '.join(CHOICES)}, got {self.choose!r}"
            )

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        ids, ptr_h = ctx.honest_client_ids, ctx.honest_ptr
        if ids is None or ptr_h is None or ctx.honest_rows is None or ctx.honest_g is None:
            raise ValueError("sample-duplicate is omniscient: the context must carry the honest gradients")
        h = ids.shape[0]
        if h == 0:
            return own(ctx)
        if self.choose == "first":
            c = torch.argmin(ids)
        else:
            gen = ctx.generator
            c = torch.randint(h, (), generator=gen, device=gen.device).to(ids.device)
        lo, hi = ptr_h[c], ptr_h[c + 1]
        entries = torch.arange(ctx.honest_rows.shape[0], device=ptr_h.device)
        mine = (entries >= lo) & (entries < hi)
        rows, g = ctx.honest_rows[mine], ctx.honest_g[mine].to(ctx.g.dtype)
        b, k = ctx.b, rows.shape[0]
        ptr = torch.arange(b + 1, dtype=torch.int64, device=rows.device) * k
        return ptr, rows.repeat(b), g.repeat(b, 1)
