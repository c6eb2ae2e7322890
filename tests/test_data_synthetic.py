"""Synthetic generator: determinism, shapes, counts, and structure a model can learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import svds

from fedrec.data import Interactions, split_per_user, synthetic


def test_deterministic_per_seed() -> None:
    a, b, c = synthetic(100, 80, seed=5), synthetic(100, 80, seed=5), synthetic(100, 80, seed=6)
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not (a.indptr.shape == c.indptr.shape and np.array_equal(a.indices, c.indices))


@pytest.mark.parametrize(
    ("n_users", "n_items", "mean_items"), [(300, 200, 20), (50, 3, 20), (40, 10, 3), (7, 5000, 50)]
)
def test_shapes_and_counts(n_users: int, n_items: int, mean_items: float) -> None:
    inter = synthetic(n_users, n_items, mean_items=mean_items, d=4, seed=1)
    assert (inter.n_users, inter.n_items, inter.name) == (n_users, n_items, "synthetic")
    counts = inter.counts()
    assert counts.min() >= 3 and counts.max() <= n_items
    assert inter.indices.min() >= 0 and inter.indices.max() < n_items
    for u in range(n_users):  # sampling without replacement: no pair was merged away
        assert np.all(np.diff(inter.items_of(u)) > 0)


def test_counts_are_skewed_with_the_requested_mean() -> None:
    counts = synthetic(2000, 500, mean_items=20, seed=2).counts()
    assert 17 <= counts.mean() <= 23
    assert counts.max() > 3 * np.median(counts)  # a long tail of heavy users


def _top_share(inter: Interactions) -> float:
    pop = np.sort(inter.item_popularity())[::-1]
    return pop[: len(pop) // 10].sum() / pop.sum()


def test_popularity_bias() -> None:
    flat = synthetic(1000, 500, popularity=0.0, seed=4)
    zipf = synthetic(1000, 500, popularity=1.0, seed=4)
    assert _top_share(zipf) > _top_share(flat) + 0.1


def _recall_at_10(train: Interactions, test: Interactions, scores: np.ndarray) -> float:
    seen = train.to_scipy().toarray() > 0
    top = np.argsort(-np.where(seen, -np.inf, scores), axis=1, kind="stable")[:, :10]
    truth = test.to_scipy().toarray() > 0
    hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
    n = truth.sum(axis=1)
    return float((hits[n > 0] / n[n > 0]).mean())


def test_low_rank_model_beats_most_popular() -> None:
    split = split_per_user(synthetic(600, 300, d=8, seed=1), 0.2, seed=0)
    x = split.train.to_scipy().astype(np.float64)
    u, s, vt = svds(x, k=8, v0=np.ones(min(x.shape)))  # fixed start vector: deterministic
    low_rank = _recall_at_10(split.train, split.test, (u * s) @ vt)
    pop = np.broadcast_to(split.train.item_popularity().astype(np.float64), x.shape)
    most_popular = _recall_at_10(split.train, split.test, pop)
    assert low_rank > 1.3 * most_popular


def test_rejects_tiny_catalog() -> None:
    with pytest.raises(ValueError):
        synthetic(10, 2)
