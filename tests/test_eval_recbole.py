"""full_ranking against RecBole 1.2.1's own metric code (recbole.evaluator.metrics).

RecBole's ``metric_info(pos_index, pos_len)`` returns per-user values at every K up to the width of
``pos_index``. It is fed twice: with fedrec's hit matrix, and with a hit matrix built independently
by a plain-numpy stable argsort of the masked scores. All four metrics must agree to 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.evaluator.metrics import NDCG, Hit, Precision, Recall

from fedrec.data.interactions import Interactions
from fedrec.eval import full_ranking, topk_hits


def _random_split(rng: np.random.Generator, n_users: int, n_items: int) -> tuple[Interactions, Interactions]:
    """Disjoint random train/test; about a fifth of the users get no test item."""
    train_mask = rng.random((n_users, n_items)) < 0.15
    test_mask = (rng.random((n_users, n_items)) < 0.1) & ~train_mask
    test_mask[rng.random(n_users) < 0.2] = False
    make = lambda m: Interactions.from_pairs(*np.nonzero(m), n_users=n_users, n_items=n_items)  # noqa: E731
    return make(train_mask), make(test_mask)


def _numpy_hits(scores: np.ndarray, train: Interactions, test: Interactions, k: int) -> np.ndarray:
    """Hit matrix by a stable argsort of the negated masked scores (ties: lower index first)."""
    masked = scores.copy()
    masked[train.user_of_entry(), train.indices] = -np.inf
    ranked = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    is_test = np.zeros(scores.shape, dtype=bool)
    is_test[test.user_of_entry(), test.indices] = True
    return np.take_along_axis(is_test, ranked, axis=1)


@pytest.fixture(autouse=True)
def _recbole_numpy_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    # RecBole's NDCG uses np.float, removed in NumPy 1.24 (RecBole issue #1604).
    monkeypatch.setattr(np, "float", float, raising=False)


def _recbole_per_user(pos_index: np.ndarray, pos_len: np.ndarray, k_max: int) -> dict[str, np.ndarray]:
    config = {"topk": [k_max], "metric_decimal_place": 6}
    return {
        "precision": Precision(config).metric_info(pos_index),
        "recall": Recall(config).metric_info(pos_index, pos_len),
        "ndcg": NDCG(config).metric_info(pos_index, pos_len),
        "hit": Hit(config).metric_info(pos_index),
    }


@pytest.mark.parametrize(
    ("n_users", "n_items", "ks", "levels", "batch_size", "seed"),
    [
        (40, 30, (1, 2, 3, 5), 0, 1024, 0),
        (120, 80, (1, 5, 10, 20), 0, 32, 1),
        (60, 25, (1, 3, 10), 4, 7, 2),  # integer scores: many ties
        (200, 300, (1, 2, 3, 4, 5, 10, 20), 2, 64, 3),
    ],
)
def test_full_ranking_matches_recbole(
    n_users: int, n_items: int, ks: tuple[int, ...], levels: int, batch_size: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    train, test = _random_split(rng, n_users, n_items)
    if levels:
        scores = rng.integers(0, levels, size=(n_users, n_items)).astype(np.float32)
    else:
        scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    table = torch.from_numpy(scores)
    result = full_ranking(lambda u: table[u], train, test, ks=ks, batch_size=batch_size)

    users = result.users
    assert users.tolist() == np.flatnonzero(test.counts() > 0).tolist()
    k_max = max(ks)
    pos_len = test.counts()[users]
    ours = topk_hits(
        table[users],
        torch.from_numpy(np.concatenate([[0], np.cumsum(pos_len)])),
        torch.from_numpy(np.concatenate([test.items_of(u) for u in users])),
        ks,
        exclude_indptr=torch.from_numpy(np.concatenate([[0], np.cumsum(train.counts()[users])])),
        exclude_indices=torch.from_numpy(np.concatenate([train.items_of(u) for u in users])),
    ).numpy()
    reference = _numpy_hits(scores, train, test, k_max)[users]
    np.testing.assert_array_equal(ours, reference)

    for pos_index in (ours, reference):
        recbole = _recbole_per_user(pos_index, pos_len, k_max)
        for name, values in recbole.items():
            for col, k in enumerate(ks):
                np.testing.assert_allclose(result.per_user[name][:, col].numpy(), values[:, k - 1], atol=1e-6)
                assert result.metrics[name][k] == pytest.approx(values[:, k - 1].mean(), abs=1e-6)
