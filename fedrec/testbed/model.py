"""The testbed's models with all parameters in one flat ``[P]`` vector, and the gradients of all n
workers at once.

- ``softmax``: multinomial logistic regression ``x W + b`` (P = 64 * 10 + 10 = 650, convex);
- ``mlp``: one hidden ReLU layer ``relu(x W1 + b1) W2 + b2`` (P = 64 h + h + 10 h + 10; h = 64: 4,810).

Per-worker gradients: every worker gets its own copy of the parameters (``[n, P]``, one leaf), the
forward pass is batched over workers (``baddbmm``), and one backward pass of the sum of the workers'
mean losses gives each worker's gradient in its own row (worker i's loss depends only on row i). No
Python loop over workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedrec.testbed.data import N_CLASSES, N_FEATURES

Tensor = torch.Tensor

MODELS = ("softmax", "mlp")


@dataclass(frozen=True)
class Model:
    """A model over flat parameters. ``name``: softmax | mlp; ``hidden``: the MLP's width."""

    name: str = "softmax"
    hidden: int = 64

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"model={self.name!r}: expected one of {', '.join(MODELS)}")
        if self.name == "mlp" and self.hidden < 1:
            raise ValueError(f"hidden={self.hidden!r}: must be >= 1")

    def shapes(self) -> list[tuple[int, ...]]:
        """The parameter tensors in the order they sit in the flat vector."""
        if self.name == "softmax":
            return [(N_FEATURES, N_CLASSES), (N_CLASSES,)]
        h = self.hidden
        return [(N_FEATURES, h), (h,), (h, N_CLASSES), (N_CLASSES,)]

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes())

    def init(self, generator: torch.Generator) -> Tensor:
        """``[P]`` float64: weights and biases uniform in +-1/sqrt(fan_in) (torch.nn.Linear's default)."""
        parts, fan_in = [], 1
        for s in self.shapes():
            fan_in = s[0] if len(s) == 2 else fan_in  # a bias takes its weight's fan-in
            bound = 1.0 / math.sqrt(fan_in)
            parts.append(
                (torch.rand(s, generator=generator, dtype=torch.float64) * 2 - 1).reshape(-1) * bound
            )
        return torch.cat(parts)

    def unflatten(self, theta: Tensor) -> list[Tensor]:
        """``theta [k, P]`` as the parameter tensors ``[k, *shape]`` (views)."""
        out, lo = [], 0
        for s in self.shapes():
            size = math.prod(s)
            out.append(theta[:, lo : lo + size].reshape(theta.shape[0], *s))
            lo += size
        return out

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        """``theta [k, P]``, ``x [k, B, 64]`` -> ``[k, B, 10]``: model k on batch k."""
        p = self.unflatten(theta)
        if self.name == "softmax":
            return torch.baddbmm(p[1].unsqueeze(1), x, p[0])
        hid = torch.relu(torch.baddbmm(p[1].unsqueeze(1), x, p[0]))
        return torch.baddbmm(p[3].unsqueeze(1), hid, p[2])

    def worker_grads(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Each worker's gradient of its mean cross-entropy on its batch, at the shared ``theta [P]``.

        ``x [n, B, 64]``, ``y [n, B]`` -> ``(g [n, P], loss [n])`` (no weight decay: the caller adds it)."""
        n = x.shape[0]
        with torch.enable_grad():
            copies = theta.detach().expand(n, -1).clone().requires_grad_(True)
            z = self.logits(copies, x)
            loss = torch.nn.functional.cross_entropy(
                z.reshape(-1, N_CLASSES), y.reshape(-1), reduction="none"
            )
            loss = loss.reshape(n, -1).mean(1)
            (g,) = torch.autograd.grad(loss.sum(), copies)
        return g, loss.detach()

    @torch.no_grad()
    def evaluate(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[float, float]:
        """``(accuracy, mean cross-entropy)`` of the parameters ``theta [P]`` on ``x [N, 64]``, ``y [N]``."""
        z = self.logits(theta.unsqueeze(0), x.unsqueeze(0))[0]
        loss = torch.nn.functional.cross_entropy(z, y)
        return float((z.argmax(1) == y).double().mean()), float(loss)
