"""AdaGrad as paper 000 Appendix D, Eq. (50)."""

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
    unit_roundoff,
    violation,
)


@dataclass(frozen=True)
class AdaGrad(RuleBase):
    """Paper 000 Eq. (50), epsilon outside the square root::

        r     = r_bar + g^2
        u     = g / (sqrt(r) + eps)
        theta = theta_bar - eta u

    The paper gives no value for ``eps``; the default 1e-10 is ``torch.optim.Adagrad``'s (with which
    this rule coincides for ``lr_decay = 0`` and ``initial_accumulator_value = 0``).

    ``r`` alone does not give the sign of ``g``, so the server recovers it from theta,
    ``g = (theta_bar - theta)(sqrt(r) + eps) / eta``, and checks ``r == r_bar + g^2``.

    Tolerances (``u`` the unit roundoff, ``tiny`` the smallest normal; see fedrec.optim.base):

    * ``g``: with ``D = sqrt(r) + eps`` from the uploaded ``r``, the client's ``D`` is within ``2u``
      relative (sqrt, add), the division adds ``u``, ``eta`` rounding and the multiply ``2u``: its step
      is within ``5u`` of ``eta g / D``; the subtraction adds ``u|theta|`` (+ ``3 tiny``), amplified by
      ``D / eta``: ``dg = 5u|g| + (u|theta| + 3 tiny) D / eta``.
    * ``r``: the client's ``r`` is within ``2u r + 2 tiny`` (square, add) and ``|g_hat^2 - g^2| <=
      (2|g_hat| + dg) dg``: ``tol_r = 2u|r| + 2 tiny + (2|g_hat| + dg) dg``.
    """

    name: ClassVar[str] = "adagrad"
    state_names: ClassVar[tuple[str, ...]] = ("r",)
    nonnegative: ClassVar[tuple[str, ...]] = ("r",)

    eta: float = 1e-3
    eps: float = 1e-10

    def __post_init__(self) -> None:
        positive(self, "eta")
        positive(self, "eps")

    def client_step(self, prev: Rows, g: Tensor, t: int) -> Rows:
        check_round(t)
        g = cast_grad(g, prev["theta"])
        r = prev["r"] + g * g
        theta = prev["theta"] - self.eta * (g / (torch.sqrt(r) + self.eps))
        return {"theta": theta, "r": r}

    def default_rows(self, prev: Rows, t: int) -> Rows:
        """g = 0: theta and r unchanged (copies)."""
        check_round(t)
        return {"theta": prev["theta"].clone(), "r": prev["r"].clone()}

    def _grad64(self, prev: Rows, up: Rows) -> tuple[Tensor, Tensor]:
        denom = torch.sqrt(f64(up["r"])) + self.eps
        return (f64(prev["theta"]) - f64(up["theta"])) * denom / self.eta, denom

    def reconstruct(self, prev: Rows, up: Rows, t: int) -> Tensor:
        """``g = (theta_bar - theta)(sqrt(r) + eps) / eta`` in float64, returned in the upload's dtype
        (its error is dominated by the client's float32 rounding of theta, amplified by D / eta)."""
        check_round(t)
        return self._grad64(prev, up)[0].to(up["theta"].dtype)

    def reconstruct_and_verify(self, prev: Rows, up: Rows, t: int) -> tuple[Tensor, Tensor]:
        check_round(t)
        u = unit_roundoff(prev["theta"], up["theta"], up["r"])
        tn = tiny(prev["theta"], up["theta"], up["r"])
        g, denom = self._grad64(prev, up)
        r = f64(up["r"])
        dg = 5 * u * g.abs() + (u * f64(up["theta"]).abs() + 3 * tn) * denom / self.eta
        err_r = r - (f64(prev["r"]) + g * g)
        tol_r = 2 * u * r.abs() + 2 * tn + (2 * g.abs() + dg) * dg
        viol = violation([(err_r, tol_r)], [up["theta"], up["r"]])
        return g.to(up["theta"].dtype), viol
