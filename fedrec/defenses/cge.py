"""Comparative gradient elimination (CGE; Gupta, Liu, Vaidya, DSN-W 2021), as RESAM states it (El Mhamdi,
Guerraoui, Rouault, ICLR 2021, Appendix C.9); ALGORITHMS.md section 4.12. With ``tau`` a permutation
sorting the inputs by norm, ``|x_tau(1)| <= ... <= |x_tau(n)|``,

    CGE(x) = 1/(n - f) sum_{i=1}^{n-f} x_tau(i).

Registered as the selector ``cge``: ``accepted`` is the n - f smallest norms, and the server averages
the accepted uploads (DESIGN.md section 5). Ties in norm go to the lower client index (stable sort,
``select_lowest``). Not (f, lambda)-resilient averaging (RESAM's counter-example: n - f equal inputs x
with |x| > 0 and f smaller Byzantine inputs not summing to f x give ``CGE(x) != x`` although the honest
diameter is 0), so ``lam`` is None. ``min_n(f) = f + 1`` (at least one vector is kept).
"""

from __future__ import annotations

import torch

from fedrec.defenses.base import RuleResult, RuleSpec, register_rule
from fedrec.defenses.vectors import ClientVectors, select_lowest, sq_norms

Tensor = torch.Tensor


def _check(n: int, f: int) -> None:
    if f < 0 or n - f < 1:
        raise ValueError(f"CGE keeps the n - f smallest norms and needs 0 <= f < n, got n={n}, f={f}")


def cge(v: ClientVectors, f: int) -> RuleResult:
    """CGE as a selector: accept the n - f clients of smallest Euclidean norm.

    Returns:
        ``RuleResult`` with ``accepted`` (``[n]`` bool, exactly n - f True), ``scores`` the norms
        (float64) and ``info`` with ``rule`` and ``f``.

    Example (RESAM's counter-example: three honest copies of x = 1, two smaller Byzantine inputs)::

        >>> x = torch.tensor([1.0, 1.0, 1.0, 0.5, -0.5], dtype=torch.float64)[:, None, None]  # f = 2
        >>> res = cge(ClientVectors.from_dense(x), f=2)  # keeps 0.5, -0.5 and the first copy of 1
        >>> res.accepted.tolist(), x[res.accepted].mean().item()  # 1/3, not x = 1
        ([True, False, False, True, True], 0.3333333333333333)

    Raises:
        ValueError: if ``f < 0`` or ``n - f < 1``.
    """
    _check(v.n, f)
    norms = sq_norms(v).sqrt()
    return RuleResult(scores=norms, accepted=select_lowest(norms, v.n - f), info={"rule": "cge", "f": f})


def cge_literal(x: Tensor, f: int) -> RuleResult:
    """The n - f smallest norms of dense ``x [n, n_rows, d]``, ordered by (norm, index)."""
    n = x.shape[0]
    _check(n, f)
    norms = [float(torch.linalg.vector_norm(x[i].to(torch.float64))) for i in range(n)]
    order = sorted(range(n), key=lambda i: (norms[i], i))
    accepted = torch.zeros(n, dtype=torch.bool)
    accepted[order[: n - f]] = True
    return RuleResult(
        scores=torch.tensor(norms, dtype=torch.float64), accepted=accepted, info={"rule": "cge", "f": f}
    )


SPEC = register_rule(
    RuleSpec(
        name="cge",
        kind="select",
        fast=cge,
        literal=cge_literal,
        min_n=lambda f: f + 1,
        description="comparative gradient elimination: the n - f smallest norms (RESAM C.9; not resilient)",
    )
)
