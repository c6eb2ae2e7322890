"""The server side of a round, in one place (DESIGN.md sections 5, 6 and 11).

``server_round`` is the only way a round's uploads reach the global state: the simulation, the
camouflage demo and the tests call it (and the Flower adapter will)::

    batch, codes = receive(messages)           # types, layouts, shapes: malformed -> placeholder
    admitted, codes, refused = admit(...)      # one upload per sampled client
    codes = validate(...)                      # values: finite, rows, n_examples
    codes, grads = check_rule(...)             # state domain, rule verifier, gradient bound
    n_eff = effective_examples(...)            # what a claimed n_i can weigh; weight share
    decision = defense.decide(...)             # the robust rule over the valid uploads
    state = apply_decision(...)                # exact sparse aggregation (or the old state)

Nothing a client sends can raise here: every message either fills its client's slot, with a reason
code when it is rejected, or is counted in ``refused``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedrec.config import WEIGHTINGS
from fedrec.federation.server import apply_decision
from fedrec.federation.validate import (
    admit,
    check_rule,
    effective_examples,
    receive,
    validate,
    weight_share,
    why_missing,
)
from fedrec.protocol import Decision, ServerState, Upload, UploadBatch


@dataclass(frozen=True)
class ServerLimits:
    """What the server accepts (``defense.*`` config keys; DESIGN.md section 6).

    ``max_grad`` bounds every coordinate of a reconstructed gradient: honest BPR gradients of
    FISM / MF stay below ~10 on the paper's datasets (docs/RESULTS.md, Reliability), so 1e4 never
    rejects an honest client while keeping squares and Gram sums far from float32 overflow."""

    n_rows: int
    d: int
    max_examples: int
    max_weight_share: float = 0.9
    max_grad: float = 1e4
    verify: bool = True
    weighting: str = "clipped"
    weight_clip: float = 20.0
    fused: bool = False  # the rule check as one compiled kernel (run.compile; fedrec.optim.fused)

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"defense.weighting={self.weighting!r}: expected one of {', '.join(WEIGHTINGS)}")

    @classmethod
    def from_config(
        cls, defense_cfg, n_rows: int, d: int, max_examples: int, fused: bool = False
    ) -> ServerLimits:
        c = defense_cfg
        return cls(
            n_rows=n_rows, d=d, max_examples=max_examples, max_weight_share=c.max_weight_share,
            max_grad=c.max_grad, verify=c.verify, weighting=c.weighting, weight_clip=c.weight_clip,
            fused=fused,
        )  # fmt: skip


def rule_generator(seed: int, t: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The server's generator for round ``t``: a function of ``(defense.seed, t)`` only, so a resumed run
    draws what an uninterrupted one would, and no attack context ever holds it."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + t) % (2**63 - 1))


@dataclass
class RoundOutcome:
    """A round as the server saw it, one slot per sampled client (in ``sampled`` order)."""

    state: ServerState
    decision: Decision  # weights, accepted, scores, reasons per slot
    uploads: UploadBatch  # the admitted uploads, ``n_examples`` as weighted (placeholders where rejected)
    claimed: torch.Tensor  # int64 [n]: n_examples as the uploads claimed them
    refused: torch.Tensor  # int64 [len(REASONS)]: uploads that filled no slot, by reason
    # the gradient each upload implies, aligned with ``uploads.rows``; rows of slots ``checked`` false
    # (rejected before the rule check, or missing) are zero; None when no slot was checked
    grads: torch.Tensor | None = None
    checked: torch.Tensor | None = None  # bool [n]


def server_round(
    server: ServerState,
    messages: Sequence[Upload | UploadBatch] | UploadBatch,
    *,
    sampled: torch.Tensor,
    rule,
    defense,
    t: int,
    f: int,
    limits: ServerLimits,
    seed: int = 0,
    absent: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> RoundOutcome:
    """Round ``t`` on the server: from whatever the sampled clients (``sampled``: sorted unique ids on
    the server's device) sent, to the new global state and the per-client verdict. ``seed``
    (``defense.seed``) seeds the rules that draw random numbers, anew every round (``rule_generator``).
    ``absent``: ``(client ids, reason codes)`` saying why a sampled client's upload did not come (a
    transport's view: no reply, an error reply); it replaces ``missing`` for those slots only."""
    admitted, codes, refused = admitted_uploads(server, messages, sampled, rule, limits, absent)
    checked = codes == 0
    codes, grads = check_rule(
        server, admitted, rule, t, codes, max_grad=limits.max_grad, verify=limits.verify or defense.verify,
        fused=limits.fused,
    )  # fmt: skip
    admitted, claimed, decision = decide(server, admitted, codes, grads, rule, defense, t, f, limits, seed)
    state = apply_decision(server, admitted, decision, rule, t, limits.fused)
    return RoundOutcome(
        state=state, decision=decision, uploads=admitted, claimed=claimed, refused=refused, grads=grads,
        checked=checked,
    )  # fmt: skip


def admitted_uploads(
    server: ServerState,
    messages: Sequence[Upload | UploadBatch] | UploadBatch,
    sampled: torch.Tensor,
    rule,
    limits: ServerLimits,
    absent: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[UploadBatch, torch.Tensor, torch.Tensor]:
    """The first stages of a round (receive, admit, validate): one upload per sampled slot, its reason
    code so far, and the count of refused uploads by reason."""
    device, dtype = server.device, server.dtype
    batch, codes = receive(messages, limits.d, rule.state_names, device, dtype)
    admitted, codes, refused = admit(batch, codes, sampled)
    if absent is not None:
        codes = why_missing(codes, sampled, *absent)
    codes = validate(
        admitted, n_rows=limits.n_rows, max_examples=limits.max_examples, max_weight_share=None, codes=codes
    )
    return admitted, codes, refused


def decide(
    server: ServerState, admitted: UploadBatch, codes: torch.Tensor, grads: torch.Tensor | None, rule,
    defense, t: int, f: int, limits: ServerLimits, seed: int,
) -> tuple[UploadBatch, torch.Tensor, Decision]:  # fmt: skip
    """What the checked uploads weigh (``effective_examples``, ``weight_share``) and the defense's
    decision on them. Returns the uploads with ``n_examples`` as weighted, the claims, the decision."""
    claimed = admitted.n_examples
    admitted = dataclasses.replace(
        admitted, n_examples=effective_examples(claimed, codes == 0, limits.weighting, limits.weight_clip)
    )
    codes = weight_share(codes, admitted.n_examples, limits.max_weight_share)
    rng = rule_generator(seed, t, server.device) if defense.spec.needs_rng else None
    return admitted, claimed, defense.decide(server, admitted, rule, t, codes, f, rng, grads=grads)
