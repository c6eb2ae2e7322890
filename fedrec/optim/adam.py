"""Adam exactly as paper 000 Eq. (2)-(6): epsilon inside the square root, bias correction folded into
the step size, raw moments uploaded."""

from __future__ import annotations

import math
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
class Adam(RuleBase):
    """Paper 000 Eq. (2)-(6), with the defaults of its Appendix G (eta 1e-3, b1 0.9, b2 0.999, eps 1e-8)::

        m     = b1 m_bar + (1 - b1) g                       (2)
        v     = b2 v_bar + (1 - b2) g^2                     (3)
        eta_t = eta sqrt(1 - b2^t) / (1 - b1^t)             (4)
        u     = m / sqrt(v + eps)                           (5)
        theta = theta_bar - eta_t u                         (6)

    The server recovers ``g = (m - b1 m_bar) / (1 - b1)`` from Eq. (2) (Algorithm 1) and checks the
    remaining equations (3) and (5)-(6) against the upload.

    Tolerances (``u`` the unit roundoff, ``tiny`` the smallest normal; see fedrec.optim.base):

    * ``g``: the client's ``m`` carries ``2u`` on each product (constant rounding + multiply) and ``u``
      on the sum, so ``|m - m_exact| <= 3u (b1|m_bar| + (1-b1)|g|) + 3 tiny <= 3u (|m| + 2 b1|m_bar|)
      + 3 tiny`` (using ``(1-b1)|g| <= |m| + b1|m_bar|``); dividing by ``1 - b1`` gives the bound
      ``dg`` on ``|g_hat - g|``: the 1/(1-b1) amplification.
    * Eq. (3): the client's ``v`` is within ``4u v + 3 tiny`` of the exact value for its ``g`` (all
      terms non-negative; ``g^2`` adds a third rounding to the second term), and ``(1-b2)|g_hat^2 -
      g^2| <= (1-b2)(2|g_hat| + dg) dg``; ``tol_v`` is the sum.
    * Eq. (5)-(6), evaluated with the uploaded ``m`` and ``v``: ``v + eps`` is off by ``2u`` relative
      (eps rounding + add), its square root by ``2u``, the division adds ``u``, ``eta_t`` rounding and
      the multiplication ``2u``: the step ``s = eta_t m / sqrt(v + eps)`` is within ``5u |s|``; the
      subtraction adds ``u |theta|``: ``tol_theta = 5u|s| + u|theta| + (2 + eta_t) tiny``.
    """

    name: ClassVar[str] = "adam"
    state_names: ClassVar[tuple[str, ...]] = ("m", "v")
    nonnegative: ClassVar[tuple[str, ...]] = ("v",)

    eta: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        positive(self, "eta")
        unit_interval(self, "b1")
        unit_interval(self, "b2")
        positive(self, "eps")

    def step_size(self, t: int | Tensor) -> float | Tensor:
        """Eq. (4): ``eta_t = eta sqrt(1 - b2^t) / (1 - b1^t)`` (element-wise for a tensor ``t``)."""
        check_round(t)
        if isinstance(t, Tensor):
            return self.eta * torch.sqrt(1.0 - self.b2**t) / (1.0 - self.b1**t)
        return self.eta * math.sqrt(1.0 - self.b2**t) / (1.0 - self.b1**t)

    def client_step(self, prev: Rows, g: Tensor, t: int) -> Rows:
        eta_t = self.step_size(t)
        g = cast_grad(g, prev["theta"])
        m = self.b1 * prev["m"] + (1.0 - self.b1) * g
        v = self.b2 * prev["v"] + (1.0 - self.b2) * (g * g)
        return {"theta": self._theta(prev["theta"], m, v, eta_t), "m": m, "v": v}

    def _theta(self, theta_bar: Tensor, m: Tensor, v: Tensor, eta_t: float | Tensor) -> Tensor:
        """Eq. (5)-(6), ``theta_bar - eta_t m / sqrt(v + eps)``, in place on one buffer; client_step and
        default_rows share it, so a zero gradient gives the default rows bit for bit."""
        step = torch.add(v, self.eps).sqrt_()
        torch.div(m, step, out=step)
        if isinstance(eta_t, Tensor):  # per-row step counts (MF's private vectors), or the compiled pass's
            return torch.sub(theta_bar, step.mul_(eta_t), out=step)
        return torch.sub(theta_bar, step, alpha=eta_t, out=step)

    def default_rows(self, prev: Rows, t: int) -> Rows:
        """g = 0: ``m = b1 m_bar``, ``v = b2 v_bar`` and theta still moves by ``eta_t m / sqrt(v + eps)``."""
        return self.default_step(prev, self.step_size(t))

    def default_step(self, prev: Rows, eta_t: float | Tensor) -> Rows:
        """``default_rows`` at the step size ``eta_t`` (Eq. 4) of its round: a Python float, or a 0-dim
        tensor, which is how the server's compiled default pass (fedrec.optim.fused) takes it, so that
        one kernel serves every round."""
        # this runs over the whole table every round: the memory-bandwidth floor of the server
        m = self.b1 * prev["m"]
        v = self.b2 * prev["v"]
        return {"theta": self._theta(prev["theta"], m, v, eta_t), "m": m, "v": v}

    def _grad64(self, prev: Rows, up: Rows) -> Tensor:
        return (f64(up["m"]) - self.b1 * f64(prev["m"])) / (1.0 - self.b1)

    def reconstruct(self, prev: Rows, up: Rows, t: int) -> Tensor:
        """Eq. (2) solved for g, computed in float64 and returned in the upload's dtype: the client's own
        float32 rounding of ``m`` (amplified by 1/(1-b1)) dominates the error, so float64 output would
        carry no information while doubling the memory of the server's Krum distances."""
        check_round(t)
        return self._grad64(prev, up).to(up["theta"].dtype)

    def reconstruct_and_verify(self, prev: Rows, up: Rows, t: int) -> tuple[Tensor, Tensor]:
        eta_t = self.step_size(t)
        u = unit_roundoff(prev["theta"], up["theta"], up["m"], up["v"])
        tn = tiny(prev["theta"], up["theta"], up["m"], up["v"])
        c1, c2 = 1.0 - self.b1, 1.0 - self.b2
        m_bar, v_bar, theta_bar = f64(prev["m"]), f64(prev["v"]), f64(prev["theta"])
        m, v, theta = f64(up["m"]), f64(up["v"]), f64(up["theta"])

        g = (m - self.b1 * m_bar) / c1
        dg = (3 * u * (m.abs() + 2 * self.b1 * m_bar.abs()) + 3 * tn) / c1
        err_v = v - (self.b2 * v_bar + c2 * g * g)
        tol_v = 4 * u * v.abs() + 3 * tn + c2 * (2 * g.abs() + dg) * dg

        step = eta_t * m / torch.sqrt(v + self.eps)
        err_theta = theta - (theta_bar - step)
        tol_theta = 5 * u * step.abs() + u * theta.abs() + (2 + eta_t) * tn

        viol = violation([(err_v, tol_v), (err_theta, tol_theta)], [up["theta"], up["m"], up["v"]])
        return g.to(up["theta"].dtype), viol
