"""Plain SGD: ``theta = theta_bar - eta g`` (paper 000 Eq. (44) with no momentum, b3 = 0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedrec.optim.base import Rows, RuleBase, Tensor, cast_grad, check_round, f64, violation


@dataclass(frozen=True)
class SGD(RuleBase):
    """``theta = theta_bar - eta g`` (Eq. (44) of paper 000 with b3 = 0; no state).

    The server recovers ``g = (theta_bar - theta) / eta``; no equation is left to check, so the
    violation is 0 for every finite upload (``inf`` for a non-finite one). The reconstruction error of
    an honest float32 upload is ``2u|g| + u|theta| / eta``: the client's multiply (and ``eta``
    rounding) and its subtraction, the latter amplified by ``1 / eta``.
    """

    name: ClassVar[str] = "sgd"
    state_names: ClassVar[tuple[str, ...]] = ()

    eta: float = 1e-3

    def client_step(self, prev: Rows, g: Tensor, t: int) -> Rows:
        check_round(t)
        return {"theta": prev["theta"] - self.eta * cast_grad(g, prev["theta"])}

    def default_rows(self, prev: Rows, t: int) -> Rows:
        """g = 0: theta unchanged (a copy)."""
        check_round(t)
        return {"theta": prev["theta"].clone()}

    def reconstruct(self, prev: Rows, up: Rows, t: int) -> Tensor:
        """``g = (theta_bar - theta) / eta`` in float64, returned in the upload's dtype."""
        check_round(t)
        return ((f64(prev["theta"]) - f64(up["theta"])) / self.eta).to(up["theta"].dtype)

    def reconstruct_and_verify(self, prev: Rows, up: Rows, t: int) -> tuple[Tensor, Tensor]:
        return self.reconstruct(prev, up, t), violation([], [up["theta"]])
