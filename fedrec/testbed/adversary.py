"""The Byzantine workers' messages in the testbed: the registered attacks, fed the dense context.

The context (``fedrec.attacks.AttackContext``) sees the ``[ROWS, d]`` table of ``server.table``:
``g`` holds the Byzantine workers' own honest messages (their momentum vectors), ``honest_*`` the honest
workers' messages (omniscient attacks only), ``server`` the current parameters (state ``{}``), ``rule``
SGD with the server's learning rate (only for the context's validation and for attacks without
``craft``), ``generator`` the attacker's own generator. Label flipping (an attack class with
``needs_flipped = True``) also gets ``flipped_g``: the Byzantine workers' momentum on labels
``l -> 9 - l``.

An attack with ``craft(ctx) -> (ptr, rows, g)`` gives its crafted vectors directly; one without it
(e.g. ``gradient-ascent``) returns uploads, from which the vector is read back through the SGD rule
(``g = (theta - theta_up) / eta``, exact up to one float64 rounding).
"""

from __future__ import annotations

import torch

import fedrec.attacks  # noqa: F401  (registers the attacks)
from fedrec.attacks.base import AttackContext, make_attack
from fedrec.optim import make_rule
from fedrec.protocol import ServerState
from fedrec.testbed.config import NO_ATTACK
from fedrec.testbed.server import ROWS, table

Tensor = torch.Tensor


def _flat(msgs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``msgs [k, P]`` as ``(ptr [k + 1], rows [k ROWS], g [k ROWS, d])``: every worker lists every row."""
    k = msgs.shape[0]
    ptr = torch.arange(k + 1, dtype=torch.int64) * ROWS
    rows = torch.arange(ROWS, dtype=torch.int64).repeat(k)
    return ptr, rows, table(msgs).reshape(k * ROWS, -1)


class Adversary:
    """The attack named ``name`` (or ``none``: Byzantine workers send their honest messages)."""

    def __init__(self, name: str, params: dict, lr: float) -> None:
        self.name = name
        self.attack = None if name == NO_ATTACK else make_attack(name, **params)
        if name == NO_ATTACK and params:
            raise ValueError(f"attack 'none' takes no parameters, got {', '.join(sorted(params))}")
        self.omniscient = bool(self.attack is not None and self.attack.omniscient)
        self.needs_flipped = bool(self.attack is not None and self.attack.needs_flipped)
        self.rule = make_rule("sgd", eta=lr)

    def context(
        self,
        theta: Tensor,
        t: int,
        byz_ids: Tensor,
        own: Tensor,
        honest_ids: Tensor,
        honest: Tensor,
        n_examples: int,
        generator: torch.Generator,
        flipped: Tensor | None = None,
    ) -> AttackContext:
        """The attack's view of step ``t``: ``own [b, P]`` the Byzantine workers' honest messages,
        ``honest [h, P]`` the honest workers' ones, ``flipped [b, P]`` their label-flipped messages."""
        ptr, rows, g = _flat(own)
        kw = {}
        if self.omniscient:
            h_ptr, h_rows, h_g = _flat(honest)
            kw = dict(
                honest_client_ids=honest_ids,
                honest_n_examples=torch.full((honest_ids.shape[0],), n_examples, dtype=torch.int64),
                honest_ptr=h_ptr,
                honest_rows=h_rows,
                honest_g=h_g,
            )
        if flipped is not None:
            kw["flipped_g"] = _flat(flipped)[2]
        return AttackContext(
            server=ServerState(table(theta).clone(), {}, t),
            t=t,
            rule=self.rule,
            client_ids=byz_ids,
            n_examples=torch.full((byz_ids.shape[0],), n_examples, dtype=torch.int64),
            ptr=ptr,
            rows=rows,
            g=g,
            generator=generator,
            **kw,
        )

    def messages(self, ctx: AttackContext) -> Tensor:
        """The Byzantine workers' messages ``[b, P]`` (dense; rows an attack leaves out are 0)."""
        b = ctx.b
        if self.attack is None:
            return ctx.g.reshape(b, -1).clone()
        craft = getattr(self.attack, "craft", None)
        if craft is not None:
            ptr, rows, g = craft(ctx)
        else:
            up = self.attack(ctx)
            ptr, rows = up.ptr, up.rows
            g = self.rule.reconstruct(ctx.prev(rows), {"theta": up.theta}, ctx.t)
        out = g.new_zeros(b, ROWS, g.shape[1])
        owner = torch.repeat_interleave(torch.arange(b), ptr.diff(), output_size=rows.shape[0])
        out[owner, rows] = g
        return out.reshape(b, -1)
