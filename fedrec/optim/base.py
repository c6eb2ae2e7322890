"""What every optimizer rule offers (DESIGN.md section 4), and the float bookkeeping they share.

A rule is a frozen dataclass of hyper-parameters whose methods are pure functions over row tensors
``[..., d]`` (any leading shape, usually ``[k, d]``: the k rows a client lists). ``prev`` holds the
global values at those rows: key ``"theta"`` plus the rule's ``state_names``; an upload ``up`` holds the
same keys. ``t`` is the round number (a Python int, 1 for the first round, the same for every row).

Verification tolerances
-----------------------
``verify`` returns, per row, ``max_j |lhs_j - rhs_j| / tol_j`` over the rule's remaining equations and
the row's coordinates, so ``<= 1`` means consistent. The server evaluates every right-hand side in
float64 from the exact float32 operands it holds (``prev``) and receives (``up``); the only error left
is the client's own rounding. In the standard model every floating-point operation of the client
returns ``op(x)(1 + delta)`` with ``|delta| <= u`` (``u = 2^-24`` for float32, half the machine epsilon
of the coarser of the prev / upload dtypes), plus an absolute ``tiny`` (the smallest normal number:
this also covers flush-to-zero hardware) wherever a result underflows; the Python-float constants
(``b1``, ``1 - b1``, ``eta_t``, ``eps``, ...) are rounded to the tensor dtype on the way in (one more
``u`` each). Each rule's docstring counts these roundings term by term to get an element-wise bound
``tol`` on ``|lhs - rhs|`` for an honest client, then multiplies it by ``SLACK`` (second-order terms,
float64 evaluation error and an honest client that orders its operations differently, e.g. with
fused multiply-adds). An upload whose error exceeds the bound is rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch

Tensor = torch.Tensor
Rows = dict[str, Tensor]

SLACK = 2.0
"""Multiplies every first-order rounding bound (see the module docstring)."""


@runtime_checkable
class Rule(Protocol):
    """An optimizer rule: the client step, the zero-gradient rows, gradient reconstruction and the
    consistency check of an upload. All methods are pure (inputs are never modified, outputs never
    alias inputs) and work on any leading shape, on any device, without host synchronisation."""

    name: ClassVar[str]
    state_names: ClassVar[tuple[str, ...]]
    nonnegative: ClassVar[tuple[str, ...]]

    @property
    def keys(self) -> tuple[str, ...]:
        """``("theta", *state_names)``: the keys of ``prev`` and of an upload."""
        ...

    def init_state(self, theta: Tensor) -> Rows:
        """The state before round 1 (zeros like ``theta``), without ``"theta"``."""
        ...

    def client_step(self, prev: Rows, g: Tensor, t: int) -> Rows:
        """One step of the rule from the global values ``prev`` with gradient ``g`` (cast to the dtype
        of ``prev["theta"]``): the honest upload, same keys as ``prev``."""
        ...

    def default_rows(self, prev: Rows, t: int) -> Rows:
        """``client_step(prev, 0, t)``, bit for bit: the value of every row an upload does not list."""
        ...

    def reconstruct(self, prev: Rows, up: Rows, t: int) -> Tensor:
        """The gradient that upload ``up`` implies, in the dtype of ``up["theta"]``."""
        ...

    def verify(self, prev: Rows, up: Rows, t: int) -> Tensor:
        """Per row (leading shape of ``up["theta"]``) the largest normalised violation of the rule's
        remaining equations; ``<= 1`` is consistent, ``inf`` marks non-finite uploads."""
        ...

    def reconstruct_and_verify(self, prev: Rows, up: Rows, t: int) -> tuple[Tensor, Tensor]:
        """``(reconstruct(...), verify(...))`` sharing one pass over the rows."""
        ...


@dataclass(frozen=True)
class RuleBase:
    """Shared plumbing of the concrete rules; ``eta`` is the learning rate of every rule."""

    name: ClassVar[str] = ""
    state_names: ClassVar[tuple[str, ...]] = ()
    # states no honest client can hold below zero (sums of squares): checked in validation
    nonnegative: ClassVar[tuple[str, ...]] = ()

    eta: float = 1e-3

    def __post_init__(self) -> None:
        positive(self, "eta")

    @property
    def keys(self) -> tuple[str, ...]:
        return ("theta", *self.state_names)

    def init_state(self, theta: Tensor) -> Rows:
        return {k: torch.zeros_like(theta) for k in self.state_names}

    def reconstruct_and_verify(self, prev: Rows, up: Rows, t: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def verify(self, prev: Rows, up: Rows, t: int) -> Tensor:
        return self.reconstruct_and_verify(prev, up, t)[1]


# ----------------------------------------------------------------------------- hyper-parameter checks


def positive(rule: object, field: str) -> None:
    value = getattr(rule, field)
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{type(rule).__name__}: {field} must be a finite number > 0, got {value!r}")


def unit_interval(rule: object, field: str) -> None:
    """``0 <= value < 1`` (a decay rate)."""
    value = getattr(rule, field)
    if not (isinstance(value, int | float) and 0 <= value < 1):
        raise ValueError(f"{type(rule).__name__}: {field} must lie in [0, 1), got {value!r}")


def check_round(t: int | Tensor) -> None:
    """``t`` is the round number, a Python int >= 1. A tensor ``t`` (broadcastable to the rows, e.g.
    ``[B, 1]``) gives every row its own step count: MF's private user vectors, whose clients step only
    in the rounds they are sampled in. It is not checked (no host synchronisation)."""
    if isinstance(t, Tensor):
        return
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"the round number t must be a Python int >= 1, got {t!r}")


# ----------------------------------------------------------------------------- float bookkeeping


def cast_grad(g: Tensor, theta: Tensor) -> Tensor:
    """``g`` in the dtype and on the device of ``theta`` (the upload's precision is the state's)."""
    return g.to(device=theta.device, dtype=theta.dtype)


def unit_roundoff(*ts: Tensor) -> float:
    """Half the machine epsilon of the coarsest dtype among ``ts`` (``2^-24`` for float32)."""
    return max(torch.finfo(x.dtype).eps for x in ts) / 2


def tiny(*ts: Tensor) -> float:
    """The smallest normal number of the coarsest dtype among ``ts`` (the absolute underflow error)."""
    return max(torch.finfo(x.dtype).tiny for x in ts)


def f64(x: Tensor) -> Tensor:
    return x.to(torch.float64)


def finite_rows(x: Tensor) -> Tensor:
    """``isfinite(x).all(-1)``: the largest magnitude of a row is below inf (NaN compares false).
    On the CPU ~10x faster than the boolean reduction."""
    return x.abs().amax(dim=-1) < torch.inf


def violation(checks: list[tuple[Tensor, Tensor]], uploaded: list[Tensor]) -> Tensor:
    """``max |err| / (SLACK * tol)`` over the checks and the last dimension; ``inf`` for rows where an
    uploaded tensor is not finite. ``checks`` are ``(err, tol)`` pairs of float64 tensors, ``tol > 0``.
    With no checks the violation is 0 for finite rows."""
    finite = torch.ones(uploaded[0].shape[:-1], dtype=torch.bool, device=uploaded[0].device)
    for x in uploaded:
        finite = finite & finite_rows(x)
    worst = torch.zeros(finite.shape, dtype=torch.float64, device=finite.device)
    for err, tol in checks:
        worst = torch.maximum(worst, (err.abs() / (SLACK * tol)).amax(dim=-1))
    # NaN (e.g. a square root of a forged negative moment) counts as an infinite violation.
    worst = torch.where(torch.isnan(worst), torch.inf, worst)
    return torch.where(finite, worst, torch.inf)
