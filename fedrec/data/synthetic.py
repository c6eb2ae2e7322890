"""A seeded synthetic implicit-feedback dataset with learnable low-rank structure."""

from __future__ import annotations

import numpy as np

from fedrec.data.interactions import Interactions

MIN_ITEMS = 3  # every user gets at least this many items, so that each can be split and evaluated
AFFINITY = 2.5  # std of the user-item affinity term relative to the Gumbel noise (std ~1.28)
COUNT_SIGMA = 1.0  # log-normal shape of the per-user item counts (a long tail of heavy users)
_BLOCK = 1 << 22  # score-matrix entries materialised at once


def user_counts(rng: np.random.Generator, n_users: int, n_items: int, mean_items: float) -> np.ndarray:
    """Per-user item counts: ``MIN_ITEMS`` plus a log-normal tail, mean about ``mean_items``, at most
    half the catalog (every user keeps unrated items to sample BPR negatives from)."""
    extra_mean = mean_items - MIN_ITEMS + 0.5  # + 0.5: floor() loses half an item on average
    if extra_mean <= 0.5:
        extra = np.zeros(n_users, dtype=np.int64)
    else:
        mu = np.log(extra_mean) - COUNT_SIGMA**2 / 2
        extra = np.floor(rng.lognormal(mu, COUNT_SIGMA, size=n_users)).astype(np.int64)
    return np.minimum(MIN_ITEMS + extra, max(MIN_ITEMS, n_items // 2))


def synthetic(
    n_users: int,
    n_items: int,
    *,
    d: int = 8,
    mean_items: float = 20,
    popularity: float = 1.0,
    seed: int = 0,
) -> Interactions:
    """Sample a users x items interaction matrix from a latent-factor model with a popularity bias.

    Score of (u, i): ``AFFINITY * <x_u, y_i> / sqrt(d) - popularity * log(1 + rank_i)`` with standard
    normal factors and a random popularity rank per item (Zipf-like: exponent ``popularity``). Each
    user draws ``user_counts`` items without replacement with probability proportional to
    ``exp(score)`` via Gumbel-top-k, so a model that learns the factors beats most-popular.
    Deterministic for a seed.
    """
    if n_users < 1 or n_items < MIN_ITEMS:
        raise ValueError(f"need n_users >= 1 and n_items >= {MIN_ITEMS}, got {n_users} x {n_items}")
    rng = np.random.Generator(np.random.PCG64(seed))
    user_f = rng.standard_normal((n_users, d))
    item_f = rng.standard_normal((n_items, d))
    bias = -popularity * np.log1p(rng.permutation(n_items))
    counts = user_counts(rng, n_users, n_items, mean_items)
    scale = AFFINITY / np.sqrt(d)

    items = []
    block = max(1, _BLOCK // n_items)
    for lo in range(0, n_users, block):
        hi = min(lo + block, n_users)
        z = (user_f[lo:hi] @ item_f.T) * scale + bias + rng.gumbel(size=(hi - lo, n_items))
        k = counts[lo:hi]
        kmax = int(k.max())
        top = np.argpartition(-z, kmax - 1, axis=1)[:, :kmax]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(z, top, axis=1), axis=1), axis=1)
        items.append(top[np.arange(kmax) < k[:, None]])  # each row's k_u highest perturbed scores
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    return Interactions.from_pairs(
        users, np.concatenate(items), n_users=n_users, n_items=n_items, name="synthetic"
    )
