"""Most-popular baseline: every user gets the same ranking, by training popularity."""

from __future__ import annotations

import torch

from fedrec.data.interactions import Interactions
from fedrec.eval import Scorer


def most_popular(train: Interactions) -> Scorer:
    """Return a scorer whose score for item ``i`` is the number of training users of ``i``.

    The score does not depend on the user; ties are left to the evaluator. Items without training
    interactions score 0.
    """
    popularity = torch.from_numpy(train.item_popularity().astype("float32"))
    cache: dict[torch.device, torch.Tensor] = {popularity.device: popularity}

    def scorer(users: torch.Tensor) -> torch.Tensor:
        if users.device not in cache:
            cache[users.device] = popularity.to(users.device)
        # A fresh [B, n_items] tensor (not an expanded view) so the caller may mask it in place.
        return cache[users.device].repeat(users.shape[0], 1)

    return scorer
