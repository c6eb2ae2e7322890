"""implicit's CPU BPR as an external matrix-factorisation reference (ANCHORS.md section 4.12)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.recommender_base import ModelFitError

from fedrec.data.interactions import Interactions
from fedrec.eval import Scorer
from fedrec.models import mf_scorer


def train_implicit_bpr(
    train: Interactions,
    *,
    factors: int = 64,
    learning_rate: float = 0.01,
    regularization: float = 0.01,
    iterations: int = 100,
    seed: int = 0,
    num_threads: int = 1,
) -> tuple[Scorer, dict[str, Any]]:
    """Fit ``implicit.cpu.bpr.BayesianPersonalizedRanking`` on ``train`` and return ``(scorer, info)``.

    The defaults are implicit's own, except ``factors=64`` (fedrec's embedding size) and
    ``num_threads=1``: implicit's Hogwild SGD is not reproducible with more threads even with a
    fixed ``random_state`` (implicit #710). The CPU class is used directly so no GPU is ever touched.

    implicit appends a bias column to the factors (1 for users, the item bias for items), so
    ``user_factors @ item_factors.T`` is exactly the score ``model.recommend`` ranks by.
    ``info`` holds ``wall_s`` (fit time) and the hyper-parameters.
    """
    model = BayesianPersonalizedRanking(
        factors=factors,
        learning_rate=learning_rate,
        regularization=regularization,
        iterations=iterations,
        num_threads=num_threads,
        random_state=seed,
    )
    start = time.perf_counter()
    try:
        model.fit(train.to_scipy(), show_progress=False)  # rows are users (implicit >= 0.5)
    except ModelFitError as err:  # NaN factors (a learning rate of 1 diverges): one line, not a traceback
        raise ValueError(f"implicit-bpr diverged ({err}): lower centralized.implicit_lr") from None
    wall_s = time.perf_counter() - start
    info: dict[str, Any] = {
        "model": "implicit-bpr",
        "wall_s": wall_s,
        "factors": factors,
        "learning_rate": learning_rate,
        "regularization": regularization,
        "iterations": iterations,
        "seed": seed,
        "num_threads": num_threads,
    }
    # implicit's factors carry its item-bias column (the user side is fixed at 1), so the dot product is
    # exactly implicit's own score
    users = torch.from_numpy(np.ascontiguousarray(model.user_factors, dtype=np.float32))
    items = torch.from_numpy(np.ascontiguousarray(model.item_factors, dtype=np.float32))
    return mf_scorer(items, users), info
