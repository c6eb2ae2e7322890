"""The server's step in the testbed: the registered robust rule over the n dense worker messages.

A dense message of P parameters is a ``ClientVectors`` in which every worker lists the one row of a
``[1, P]`` table (``ROWS = 1``, ``d = P``). One row keeps the sparse machinery trivial: the union of
listed rows is one row, every per-entry index has n entries, ``dense_blocks`` yields a single
``[n, 1, P]`` block (P <= 5k, far below the block budget), so coordinate-wise rules sort one ``[n, P]``
slab and the Gram matrix is one ``[n, P] @ [P, n]`` product. (A ``[P, 1]`` layout would give the same
numbers but index n P entries every step.)

How a ``RuleResult`` becomes the server's vector: ``aggregate`` set -> that vector (rows it does not
list are 0); else ``weights`` -> the weighted sum; else the unweighted mean of the ``accepted`` messages
(testbed workers are equal: no n_i weights).
"""

from __future__ import annotations

import torch

import fedrec.defenses  # noqa: F401  (registers the rules)
from fedrec.defenses.base import RULES, RuleResult, RuleSpec
from fedrec.defenses.preagg import compose
from fedrec.defenses.vectors import ClientVectors

Tensor = torch.Tensor

ROWS = 1


def table(x: Tensor) -> Tensor:
    """``[k, P]`` messages (or ``[P]`` parameters) as ``[k, ROWS, P // ROWS]`` (``[ROWS, P // ROWS]``)."""
    return x.reshape(*x.shape[:-1], ROWS, x.shape[-1] // ROWS)


def lookup_rule(name: str, params: dict, n: int, f: int, pre: str | None = None) -> RuleSpec:
    """The registered rule (after the pre-aggregation step ``pre``, when given: ``preagg.compose``),
    after checking its parameters and that it runs on n messages with this f (ValueError, one line,
    otherwise)."""
    spec = RULES.lookup(name) if pre is None else compose(pre, name, params.get("s", 2))
    spec.check(params)
    need = spec.min_n(f)
    if n < need:
        raise ValueError(f"rule {name!r} with f={f} needs at least {need} workers, got n={n}")
    return spec


def combine(result: RuleResult, msgs: Tensor) -> Tensor:
    """The server's vector ``[P]`` from a rule's result on the messages ``msgs [n, P]``."""
    if result.aggregate is not None:
        rows, values = result.aggregate
        out = msgs.new_zeros(ROWS, msgs.shape[1] // ROWS)
        out[rows] = values.to(msgs.dtype)
        return out.reshape(-1)
    if result.weights is not None:
        return result.weights.to(msgs.dtype) @ msgs
    if result.accepted is None:
        raise ValueError("the rule returned neither an aggregate, weights nor accepted workers")
    acc = result.accepted
    if not bool(acc.any()):
        raise ValueError("the rule accepted no worker")
    return msgs[acc].mean(0)


def robust_aggregate(
    spec: RuleSpec, msgs: Tensor, f: int, params: dict, rng: torch.Generator | None
) -> tuple[Tensor, Tensor | None]:
    """``(F [P], accepted [n] bool or None)``: the rule on the messages ``msgs [n, P]``."""
    v = ClientVectors.from_dense(table(msgs), all_rows=True)
    result = spec(v, f, rng=rng, **params)
    return combine(result, msgs), result.accepted
