"""What every attack gets and returns (DESIGN.md section 7; reference/ALGORITHMS.md section 7.15).

An attack is a callable ``attack(ctx) -> UploadBatch``: from the round context (the global state, the
round number, the optimizer rule, each Byzantine client's own honest gradient on the rows it touches
and, only for omniscient attacks, the honest clients' gradients of the round) it returns the uploads
of the round's Byzantine clients, one per entry of ``ctx.client_ids`` and in that order.

* Rule-consistent attacks craft a gradient and pass it through the client's optimizer rule from the
  global state (``upload_from_gradient``): the upload is exactly what an honest client with that
  gradient would send, so the rule verifier cannot flag it (paper 000 Section 4.1, footnote 2).
* Rule-breaking attacks edit the upload itself (additive noise on the parameters): the verifier should
  flag them.

Attacks use only ``ctx.generator`` for randomness: the attacker's own seeded RNG, separate from the
server's and the honest clients' (a MixTailor and a reproducibility requirement, ALGORITHMS.md 7.15).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

import torch

from fedrec.optim import Rule, adam_step
from fedrec.protocol import ServerState, UploadBatch
from fedrec.registry import Registry, check_params

Tensor = torch.Tensor


@dataclass
class AttackContext:
    """The round as the Byzantine clients see it.

    ``client_ids [b]`` are the Byzantine clients sampled this round; client ``i`` touches
    ``rows[ptr[i]:ptr[i+1]]`` (sorted unique row ids of the stacked table) and ``g`` holds its OWN
    honest gradient there (``[K, d]``, flat like ``rows``): Byzantine clients keep their own data
    (paper 000's setting). The ``honest_*`` fields hold the same layout for the honest clients of the
    round and are filled only for attacks with ``omniscient = True``.
    """

    server: ServerState
    t: int
    rule: Rule
    client_ids: Tensor  # int64 [b]
    n_examples: Tensor  # int64 [b]
    ptr: Tensor  # int64 [b + 1]
    rows: Tensor  # int64 [K]
    g: Tensor  # [K, d]
    generator: torch.Generator
    honest_client_ids: Tensor | None = None  # int64 [h]
    honest_n_examples: Tensor | None = None  # int64 [h]
    honest_ptr: Tensor | None = None  # int64 [h + 1]
    honest_rows: Tensor | None = None  # int64 [K_h]
    honest_g: Tensor | None = None  # [K_h, d]
    # each Byzantine client's gradient of its loss with every BPR pair inverted (label-flip), same
    # layout as ``g``; filled only for attacks with ``needs_flipped = True``
    flipped_g: Tensor | None = None  # [K, d]
    # every row's public popularity (its item's number of training interactions), float [n_rows];
    # filled only for attacks with ``needs_popularity`` (Spattack's popularity-sampled rows)
    row_popularity: Tensor | None = None

    def __post_init__(self) -> None:
        b = self.client_ids.shape[0]
        if self.ptr.shape != (b + 1,) or self.n_examples.shape != (b,):
            raise ValueError(
                f"AttackContext: {b} clients need ptr of shape ({b + 1},) and n_examples of shape ({b},), "
                f"got {tuple(self.ptr.shape)} and {tuple(self.n_examples.shape)}"
            )
        if self.g.shape != (self.rows.shape[0], self.server.dim):
            raise ValueError(
                f"AttackContext: g has shape {tuple(self.g.shape)}, expected "
                f"({self.rows.shape[0]}, {self.server.dim}) (one row per listed row)"
            )
        if self.row_popularity is not None and self.row_popularity.shape != (self.n_rows,):
            raise ValueError(
                f"AttackContext: row_popularity has shape {tuple(self.row_popularity.shape)}, expected "
                f"({self.n_rows},)"
            )
        if self.flipped_g is not None and self.flipped_g.shape != self.g.shape:
            raise ValueError(
                f"AttackContext: flipped_g has shape {tuple(self.flipped_g.shape)}, expected that of g "
                f"{tuple(self.g.shape)}"
            )

    @property
    def b(self) -> int:
        """The number of Byzantine clients this round."""
        return int(self.client_ids.shape[0])

    @property
    def n_rows(self) -> int:
        return self.server.n_rows

    def owner(self) -> Tensor:
        """The Byzantine client (position in ``client_ids``) of every entry of ``rows``: ``[K]``."""
        return torch.repeat_interleave(
            torch.arange(self.b, device=self.rows.device), self.ptr.diff(), output_size=self.rows.shape[0]
        )

    def prev(self, rows: Tensor | slice) -> dict[str, Tensor]:
        """The global values (``"theta"`` and the rule's state) at ``rows``: a rule's ``prev``. Row ids
        (a 1-D integer tensor; a boolean mask is taken as the ids it marks) are read through
        ``server.rows_at`` (a deferred state catches up only those); a slice reads the whole tables."""
        if isinstance(rows, Tensor):
            if rows.dtype == torch.bool:
                rows = rows.nonzero().flatten()
            return self.server.rows_at(rows)
        return {
            "theta": self.server.theta[rows],
            **{k: self.server.state[k][rows] for k in self.rule.state_names},
        }


@runtime_checkable
class Attack(Protocol):
    """A Byzantine behaviour: ``attack(ctx)`` returns the uploads of ``ctx.client_ids``, in order.

    ``omniscient``: needs the honest clients' gradients of the round (``ctx.honest_*``).
    ``rule_consistent``: every upload is a client step of the optimizer rule (it passes ``verify``).
    """

    name: ClassVar[str]
    omniscient: ClassVar[bool]
    rule_consistent: ClassVar[bool]

    def __call__(self, ctx: AttackContext) -> UploadBatch: ...


@dataclass(frozen=True)
class AttackBase:
    """Shared plumbing: the class-level flags and the check that an attack got the data it needs.

    ``needs_flipped``: needs each Byzantine client's gradient on inverted BPR pairs (``ctx.flipped_g``,
    label-flip); the simulation computes it only for such attacks. ``needs_popularity``: needs
    ``ctx.row_popularity`` (Spattack's popularity-sampled rows)."""

    name: ClassVar[str] = ""
    omniscient: ClassVar[bool] = False
    rule_consistent: ClassVar[bool] = True
    needs_flipped: ClassVar[bool] = False
    needs_popularity: ClassVar[bool] = False
    optimizers: ClassVar[tuple[str, ...] | None] = None  # the optimizer rules it is defined for (None: any)

    def check(self, ctx: AttackContext) -> None:
        if self.omniscient and ctx.honest_g is None:
            raise ValueError(f"attack {self.name!r} is omniscient: the context must carry honest_g")
        if self.needs_flipped and ctx.flipped_g is None:
            raise ValueError(f"attack {self.name!r} needs the flipped-pair gradients: ctx.flipped_g")


@dataclass(frozen=True)
class GradientAttack(AttackBase):
    """A rule-consistent attack that crafts gradients: ``craft(ctx) -> (ptr [b+1], rows [K'], g [K', d])``
    (flat like ``ctx.rows``; client ``i`` lists ``rows[ptr[i]:ptr[i+1]]``, sorted unique) and uploads
    exactly what an honest client with that gradient would (``upload_from_gradient``).

    ``craft`` is pure: it reads only ``ctx`` and draws randomness from ``ctx.generator`` only, and it
    works for any sparsity, including every client listing every row (dense vectors)."""

    def craft(self, ctx: AttackContext) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def __call__(self, ctx: AttackContext) -> UploadBatch:
        self.check(ctx)
        ptr, rows, g = self.craft(ctx)
        return upload_from_gradient(ctx, rows, ptr, g)


# ----------------------------------------------------------------------------- uploads from gradients


def upload_from_gradient(ctx: AttackContext, rows: Tensor, ptr: Tensor, g: Tensor) -> UploadBatch:
    """The rule-consistent path: client ``i`` takes one step of ``ctx.rule`` from the global state at
    ``rows[ptr[i]:ptr[i+1]]`` with the (crafted) gradient ``g`` there (cast to the state's dtype), as
    an honest client would (paper 000 Algorithm 2; Eq. 2-6 for Adam). Adam's float32 step on the CPU
    is the clients' C loop (fedrec.optim.adam_step: the eager step's values bit for bit), reading the
    rows in place."""
    new = None
    if isinstance(rows, Tensor) and rows.dtype in (torch.int64, torch.int32) and rows.dim() == 1:
        tables, at = ctx.server.tables_for(rows)
        if adam_step.applies(ctx.rule, tables, at, g):
            new = adam_step.adam_client_step(ctx.rule, tables, at, g, ctx.t)
    if new is None:
        new = ctx.rule.client_step(ctx.prev(rows), g, ctx.t)
    return UploadBatch(
        client_ids=ctx.client_ids,
        ptr=ptr,
        rows=rows,
        theta=new["theta"],
        state={k: new[k] for k in ctx.rule.state_names},
        n_examples=ctx.n_examples,
    )


def dense_upload_from_gradient(ctx: AttackContext, g: Tensor) -> UploadBatch:
    """Like ``upload_from_gradient`` with every client listing every row of the table: ``g`` is
    ``[b, n_rows, d]``. The global state is broadcast, not copied, so the memory is that of the
    uploads themselves (``b n_rows d`` per uploaded tensor)."""
    b, n = ctx.b, ctx.n_rows
    if g.shape[:2] != (b, n):
        raise ValueError(f"dense gradient must have shape ({b}, {n}, d), got {tuple(g.shape)}")
    prev = {k: v.unsqueeze(0).expand(b, *v.shape) for k, v in ctx.prev(slice(None)).items()}
    new = ctx.rule.client_step(prev, g, ctx.t)
    device = ctx.server.device
    return UploadBatch(
        client_ids=ctx.client_ids,
        ptr=torch.arange(b + 1, dtype=torch.int64, device=device) * n,
        rows=torch.arange(n, dtype=torch.int64, device=device).repeat(b),
        # the last dimension named: a round without Byzantine clients has b = 0 rows to reshape
        theta=new["theta"].reshape(b * n, new["theta"].shape[-1]),
        state={k: new[k].reshape(b * n, new[k].shape[-1]) for k in ctx.rule.state_names},
        n_examples=ctx.n_examples,
    )


# ----------------------------------------------------------------------------- registry

ATTACKS: Registry[type[AttackBase]] = Registry("attack")
"""Every attack by name (filled by ``register`` when fedrec.attacks is imported)."""

A = TypeVar("A", bound=type[AttackBase])


def register(cls: A) -> A:
    """Class decorator: add an attack class to ``ATTACKS`` under its ``name``."""
    return ATTACKS.register(cls)


def make_attack(name: str, **params: object) -> Attack:
    """The attack called ``name`` (a key of ``ATTACKS``) with the given parameters (the rest default).

    Raises ``ValueError`` for an unknown name, an unknown parameter or an invalid value."""
    cls = ATTACKS.lookup(name)
    check_params(f"attack {name!r}", params, [f.name for f in dataclasses.fields(cls)])
    return cls(**params)  # type: ignore[arg-type]


def finite_positive(obj: object, field: str) -> None:
    value = getattr(obj, field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < float("inf")):
        raise ValueError(f"{type(obj).__name__}: {field} must be a finite number > 0, got {value!r}")


def finite(obj: object, field: str, *, nonzero: bool = False) -> None:
    value = getattr(obj, field)
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or (nonzero and value == 0):
        what = "a finite nonzero number" if nonzero else "a finite number"
        raise ValueError(f"{type(obj).__name__}: {field} must be {what}, got {value!r}")
