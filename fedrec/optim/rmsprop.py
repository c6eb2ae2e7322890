"""RMSProp as paper 000 Appendix E, Eq. (78)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedrec.optim.base import (
    Rows,
    RuleBase,
    Tensor,
    cast_grad,
    check_round,
    f64,
    positive,
    tiny,
    unit_interval,
    unit_roundoff,
    violation,
)


@dataclass(frozen=True)
class RMSProp(RuleBase):
    """Paper 000 Eq. (78), epsilon inside the square root (unlike ``torch.optim.RMSprop``)::

        r     = b4 r_bar + (1 - b4) g^2
        u     = g / sqrt(r + eps)
        theta = theta_bar - eta u

    The paper gives no values for ``b4`` and ``eps``; the defaults 0.9 and 1e-8 are the usual ones.

    ``r`` alone does not give the sign of ``g``, so the server recovers it from theta,
    ``g = (theta_bar - theta) sqrt(r + eps) / eta``, and checks ``r == b4 r_bar + (1 - b4) g^2``.

    Tolerances (``u`` the unit roundoff, ``tiny`` the smallest normal; see fedrec.optim.base):

    * ``g``: with ``D = sqrt(r + eps)`` from the uploaded ``r``, the client's ``D`` is within ``2u``
      relative (eps rounding + add, halved by the sqrt, + sqrt), the division adds ``u``, ``eta``
      rounding and the multiply ``2u``: its step is within ``5u`` of ``eta g / D``; the subtraction
      adds ``u|theta|`` (+ ``3 tiny``), amplified by ``D / eta``: ``dg = 5u|g| + (u|theta| + 3 tiny)
      D / eta``.
    * ``r``: the client's ``r`` is within ``4u r + 3 tiny`` (two roundings per product, a third for
      ``g^2``, one for the sum; all terms non-negative) and ``(1-b4)|g_hat^2 - g^2| <= (1-b4)(2|g_hat|
      + dg) dg``: ``tol_r = 4u|r| + 3 tiny + (1-b4)(2|g_hat| + dg) dg``.
    """

    name: ClassVar[str] = "rmsprop"
    state_names: ClassVar[tuple[str, ...]] = ("r",)
    nonnegative: ClassVar[tuple[str, ...]] = ("r",)

    eta: float = 1e-3
    b4: float = 0.9
    eps: float = 1e-8

    def __post_init__(self) -> None:
        positive(self, "eta")
        unit_interval(self, "b4")
        positive(self, "eps")

    def client_step(self, prev: Rows, g: Tensor, t: int) -> Rows:
        check_round(t)
        g = cast_grad(g, prev["theta"])
        r = self.b4 * prev["r"] + (1.0 - self.b4) * (g * g)
        theta = prev["theta"] - self.eta * (g / torch.sqrt(r + self.eps))
        return {"theta": theta, "r": r}

    def default_rows(self, prev: Rows, t: int) -> Rows:
        """g = 0: ``r = b4 r_bar``, theta unchanged (a copy)."""
        check_round(t)
        return {"theta": prev["theta"].clone(), "r": self.b4 * prev["r"]}

    def _grad64(self, prev: Rows, up: Rows) -> tuple[Tensor, Tensor]:
        denom = torch.sqrt(f64(up["r"]) + self.eps)
        return (f64(prev["theta"]) - f64(up["theta"])) * denom / self.eta, denom

    def reconstruct(self, prev: Rows, up: Rows, t: int) -> Tensor:
        """``g = (theta_bar - theta) sqrt(r + eps) / eta`` in float64, returned in the upload's dtype
        (its error is dominated by the client's float32 rounding of theta, amplified by D / eta)."""
        check_round(t)
        return self._grad64(prev, up)[0].to(up["theta"].dtype)

    def reconstruct_and_verify(self, prev: Rows, up: Rows, t: int) -> tuple[Tensor, Tensor]:
        check_round(t)
        u = unit_roundoff(prev["theta"], up["theta"], up["r"])
        tn = tiny(prev["theta"], up["theta"], up["r"])
        c4 = 1.0 - self.b4
        g, denom = self._grad64(prev, up)
        r = f64(up["r"])
        dg = 5 * u * g.abs() + (u * f64(up["theta"]).abs() + 3 * tn) * denom / self.eta
        err_r = r - (self.b4 * f64(prev["r"]) + c4 * g * g)
        tol_r = 4 * u * r.abs() + 3 * tn + c4 * (2 * g.abs() + dg) * dg
        viol = violation([(err_r, tol_r)], [up["theta"], up["r"]])
        return g.to(up["theta"].dtype), viol
