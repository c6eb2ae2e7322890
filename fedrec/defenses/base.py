"""The one signature every robust rule has, its result, and the registry of rules (DESIGN.md section 6).

A rule is registered once, with two implementations of the same mathematics:

- ``fast(v: ClientVectors, f: int, **params) -> RuleResult``: the sparse, vectorized rule the server
  runs (no Python loop over clients or rows, everything on ``v``'s device);
- ``literal(x: Tensor [n, n_rows, d] float64, f: int, **params) -> RuleResult``: the formula written
  out on dense vectors with Python loops, for ``fedrec.federation.reference`` and the tests. Its
  ``aggregate`` covers every row: ``(arange(n_rows), [n_rows, d])``.

What a rule returns decides how the server aggregates (``Defense.decide``):

- ``accepted`` only (a selector: Krum, Multi-Krum, MDA, CGE, norm trimming): the n_i-weighted mean of
  the accepted uploads (paper 000 Algorithm 1, Option II);
- ``weights`` (RFA): a convex combination of the uploads replacing the n_i weights;
- ``aggregate`` (coordinate-wise rules, centered clipping, SignGuard): the robust vector itself, over
  the rows it lists (rows it does not list are 0: the default). ``accepted`` may come along (SignGuard)
  for the round record.

Rules that need randomness (SignGuard's coordinate sample) take ``rng`` (a ``torch.Generator`` the
server derives from ``defense.seed`` and the round; attacks never see it). Rules that are
(f, lambda)-resilient averaging (RESAM Definition 2) register ``lam(n, f, D)`` from RESAM Table 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedrec.registry import Registry, check_params, keyword_params

Tensor = torch.Tensor


@dataclass(frozen=True)
class RuleResult:
    """What a rule says about n client vectors.

    Attributes:
        scores: ``[n]`` float64, the rule's score of each client (nan where it gives none).
        accepted: ``[n]`` bool, or None when the rule keeps everyone (aggregators, RFA).
        weights: ``[n]`` float64 convex weights replacing the n_i weights, or None.
        aggregate: ``(rows [M], values [M, d])`` the robust vector over the rows it lists, or None.
        info: rule name, parameters, diagnostics (tensors stay on the device).
    """

    scores: Tensor
    accepted: Tensor | None = None
    weights: Tensor | None = None
    aggregate: tuple[Tensor, Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)


KINDS = ("select", "weight", "aggregate")


@dataclass(frozen=True)
class RuleSpec:
    """A registered rule: its name, kind, both implementations and what it guarantees.

    Attributes:
        name: the registry key (``--set defense.rule`` is never needed: presets name rules).
        kind: ``select`` | ``weight`` | ``aggregate`` (what ``fast`` returns; see the module doc).
        fast: the sparse rule ``(v, f, **params) -> RuleResult``.
        literal: the dense literal rule ``(x [n, n_rows, d], f, **params) -> RuleResult``.
        min_n: the fewest vectors the rule runs on for a given f (fewer: ``too-few-uploads``).
        lam: RESAM Table 1's ``lambda(n, f, D)`` (D the vector dimension) for (f, lambda)-resilient
            averaging rules; None for rules that are not (CGE, CC, SignGuard, ...).
        item: optional per-row rule over the clients that listed each row, ``(v, f, **params) ->
            (rows, values)``: what ``scope: item`` runs (for a selector: per row the plain mean of the
            listers it keeps, with the per-row f of ``fedrec.defenses.itemwise``).
        needs_rng: the rule draws random numbers (from ``rng``).
        uses_weights: the rule takes the uploads' aggregation weights (``weights``: RFA's alpha_i = n_i).
        reads_values: False for a rule that looks only at how many vectors there are and where (the
            mean): the defense hands it zero-width values instead of computing them.
        description: one line for ``fedrec defenses``.
    """

    name: str
    kind: str
    fast: Callable[..., RuleResult]
    literal: Callable[..., RuleResult]
    min_n: Callable[[int], int] = lambda f: 1
    lam: Callable[[int, int, int], float] | None = None
    item: Callable[..., tuple[Tensor, Tensor]] | None = None
    needs_rng: bool = False
    uses_weights: bool = False
    reads_values: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"rule {self.name}: kind {self.kind!r} not in {KINDS}")

    @property
    def resilient(self) -> bool:
        """(f, lambda)-resilient averaging (RESAM Definition 2)."""
        return self.lam is not None

    @property
    def params(self) -> dict[str, Any]:
        """The parameters ``fast`` takes (besides ``v``, ``f`` and ``rng``), with their defaults."""
        return {
            k: v for k, v in keyword_params(self.fast, 2).items() if k not in ("rng", "block_rows", "weights")
        }

    def check(self, params: dict[str, Any]) -> None:
        """Raise ``ValueError`` for a parameter this rule does not take."""
        check_params(f"rule {self.name!r}", params, self.params)

    def __call__(self, v, f: int, *, rng: torch.Generator | None = None, **params: Any) -> RuleResult:
        if self.needs_rng:
            params["rng"] = rng
        return self.fast(v, f, **params)

    def run_literal(self, x: Tensor, f: int, *, rng: torch.Generator | None = None, **params: Any):
        if self.needs_rng:
            params["rng"] = rng
        return self.literal(x, f, **params)


RULES: Registry[RuleSpec] = Registry("rule")
"""Every robust rule by name; a rule module registers itself with ``register_rule`` on import."""


def register_rule(spec: RuleSpec) -> RuleSpec:
    RULES.register(spec)
    return spec


def nan_scores(n: int, device: torch.device | str = "cpu") -> Tensor:
    """``[n]`` float64 nan: for rules that score nobody."""
    return torch.full((n,), float("nan"), dtype=torch.float64, device=device)


def dense_rows(x: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """A literal rule's aggregate over every row of ``x [n, n_rows, d]``: ``(arange(n_rows), values)``."""
    return torch.arange(x.shape[1], device=x.device), values.reshape(x.shape[1], x.shape[2])
