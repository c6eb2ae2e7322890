"""SGD with momentum as paper 000 Appendix C, Eq. (44)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
class Momentum(RuleBase):
    """Paper 000 Eq. (44) (undampened heavy-ball momentum, as ``torch.optim.SGD(momentum=b3)``)::

        m     = b3 m_bar + g
        theta = theta_bar - eta m

    The paper gives no value for ``b3``; the default 0.9 is the usual choice. The server recovers
    ``g = m - b3 m_bar`` and checks the theta equation.

    Tolerances (``u`` the unit roundoff, ``tiny`` the smallest normal; see fedrec.optim.base):

    * ``g``: the client's ``m`` carries ``2u b3|m_bar|`` (constant rounding + multiply) and ``u|m|``
      (the sum), so ``|g_hat - g| <= 2u b3|m_bar| + u|m| + tiny`` (no amplification).
    * theta, evaluated with the uploaded ``m``: ``eta`` rounding and the multiplication give ``2u eta
      |m|``, the subtraction ``u|theta|``: ``tol_theta = 2u eta|m| + u|theta| + 2 tiny``.
    """

    name: ClassVar[str] = "momentum"
    state_names: ClassVar[tuple[str, ...]] = ("m",)

    eta: float = 1e-3
    b3: float = 0.9

    def __post_init__(self) -> None:
        positive(self, "eta")
        unit_interval(self, "b3")

    def client_step(self, prev: Rows, g: Tensor, t: int) -> Rows:
        check_round(t)
        m = self.b3 * prev["m"] + cast_grad(g, prev["theta"])
        return {"theta": prev["theta"] - self.eta * m, "m": m}

    def default_rows(self, prev: Rows, t: int) -> Rows:
        """g = 0: ``m = b3 m_bar`` and theta moves by ``eta m``."""
        check_round(t)
        m = self.b3 * prev["m"]
        return {"theta": prev["theta"] - self.eta * m, "m": m}

    def reconstruct(self, prev: Rows, up: Rows, t: int) -> Tensor:
        """``g = m - b3 m_bar`` in float64, returned in the upload's dtype."""
        check_round(t)
        return (f64(up["m"]) - self.b3 * f64(prev["m"])).to(up["theta"].dtype)

    def reconstruct_and_verify(self, prev: Rows, up: Rows, t: int) -> tuple[Tensor, Tensor]:
        check_round(t)
        u = unit_roundoff(prev["theta"], up["theta"], up["m"])
        tn = tiny(prev["theta"], up["theta"], up["m"])
        m, theta = f64(up["m"]), f64(up["theta"])
        g = m - self.b3 * f64(prev["m"])
        err_theta = theta - (f64(prev["theta"]) - self.eta * m)
        tol_theta = 2 * u * self.eta * m.abs() + u * theta.abs() + 2 * tn
        viol = violation([(err_theta, tol_theta)], [up["theta"], up["m"]])
        return g.to(up["theta"].dtype), viol
