"""Centralized FISM-BPR / MF-BPR trained with Adam: the upper bound for federated training.

Same model, loss (Eq. 1, 7) and split as the federated clients, but one server sees every user's data
and takes mini-batch Adam steps over users (torch.optim.Adam, dense moments).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fedrec.data.interactions import Split
from fedrec.eval import Scorer
from fedrec.models import (
    CSRTensors,
    TableLayout,
    bpr_objective,
    fism_scorer,
    gather_users,
    mf_scorer,
    sample_negatives,
)


@dataclass
class CentralizedModel:
    layout: TableLayout
    theta: torch.Tensor  # stacked shared tables
    user_vectors: torch.Tensor | None  # MF only
    gamma: float
    train: CSRTensors

    def scorer(self) -> Scorer:
        if self.layout.model == "fism":
            return fism_scorer(self.theta, self.layout, self.train, self.gamma)
        return mf_scorer(self.layout.view(self.theta, "P"), self.user_vectors)


@dataclass
class CentralizedResult:
    model: CentralizedModel
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_centralized(
    split: Split,
    *,
    model: str = "fism",
    dim: int = 64,
    gamma: float = 1.0,
    init_std: float = 1.0,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    negatives: int = 1,
    epochs: int = 20,
    batch_users: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, float, CentralizedModel], None] | None = None,
) -> CentralizedResult:
    """Train ``model`` ('fism' or 'mf') on ``split.train`` with Adam; ``on_epoch(epoch, loss, model)``
    is called after every epoch (the caller evaluates and reports progress there)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed)
    layout = TableLayout.for_model(model, split.train.n_items)
    theta = layout.init(dim, std=init_std, generator=gen, device=device).requires_grad_(True)
    params = [theta]
    user_vectors = None
    if model == "mf":
        user_vectors = (torch.randn(split.train.n_users, dim, generator=gen) * init_std).to(device)
        user_vectors.requires_grad_(True)
        params.append(user_vectors)
    opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
    train = CSRTensors.from_interactions(split.train, device)
    active = torch.nonzero(train.counts() > 0).flatten()
    state = CentralizedModel(layout, theta, user_vectors, gamma, train)

    def lookup(owner: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return theta[rows]

    result = CentralizedResult(state)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = active[torch.randperm(active.shape[0], generator=gen).to(device)]
        total = torch.zeros((), device=device)
        for users in order.split(batch_users):
            batch = gather_users(train, users)
            neg = sample_negatives(batch, layout.n_items, negatives, dev_gen)
            u = user_vectors[users] if user_vectors is not None else None
            loss = bpr_objective(
                lookup, layout, batch, neg, gamma=gamma, lam=weight_decay, user_vectors=u
            ).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        result.losses.append(float(total))
        if not math.isfinite(result.losses[-1]):  # a NaN model scored anyway looked like a trained one
            raise ValueError(
                f"centralized training diverged at epoch {epoch} (loss {result.losses[-1]}): lower "
                "centralized.lr or centralized.init_std"
            )
        if on_epoch is not None:
            on_epoch(epoch, result.losses[-1], state)
    result.seconds = time.perf_counter() - start
    theta.requires_grad_(False)
    if user_vectors is not None:
        user_vectors.requires_grad_(False)
    return result
