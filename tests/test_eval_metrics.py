"""Ranking primitives of fedrec.eval.metrics against plain-numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.eval import hit, masked_scores, ndcg, precision, recall, topk_hits, topk_items


def _numpy_ranking(scores: np.ndarray, k: int) -> np.ndarray:
    """Reference order: score descending, then item index ascending (lexsort's last key is primary)."""
    n_rows, n_items = scores.shape
    cols = np.broadcast_to(np.arange(n_items), scores.shape)
    return np.stack([np.lexsort((cols[r], -scores[r]))[:k] for r in range(n_rows)])


@pytest.mark.parametrize(
    ("n_rows", "n_items", "k", "levels", "seed"),
    [
        (5, 7, 7, 2, 0),  # k = n_items: the whole row, two score levels
        (16, 40, 5, 3, 1),  # heavy ties at the boundary
        (9, 100, 20, 1, 2),  # all scores equal: the first k items
        (32, 300, 10, 0, 3),  # continuous scores
        (8, 50, 3, 4, 4),
    ],
)
def test_topk_items_matches_stable_numpy_order(
    n_rows: int, n_items: int, k: int, levels: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    if levels:
        scores = rng.integers(0, levels, size=(n_rows, n_items)).astype(np.float32)
    else:
        scores = rng.standard_normal((n_rows, n_items)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = -np.inf  # masked items tie among themselves too
    got = topk_items(torch.from_numpy(scores), k).numpy()
    np.testing.assert_array_equal(got, _numpy_ranking(scores, k))


def test_topk_items_ties_across_signed_zero_and_infinities() -> None:
    scores = torch.tensor([[-0.0, 0.0, math.inf, -math.inf, math.inf, 0.0, -1.0]])
    assert topk_items(scores, 7).tolist() == [[2, 4, 0, 1, 5, 6, 3]]
    assert topk_items(scores, 3).tolist() == [[2, 4, 0]]


def test_masked_scores_sends_nan_and_excluded_items_last_without_touching_input() -> None:
    scores = torch.tensor([[1.0, math.nan, 3.0, 2.0], [5.0, 4.0, math.nan, math.inf]])
    before = scores.clone()
    out = masked_scores(scores, torch.tensor([0, 1, 3]), torch.tensor([2, 2, 3]))
    torch.testing.assert_close(scores, before, equal_nan=True, rtol=0, atol=0)  # input unchanged
    ninf = -math.inf
    assert out.tolist() == [[1.0, ninf, ninf, 2.0], [5.0, 4.0, ninf, ninf]]
    assert topk_items(out, 4).tolist() == [[3, 0, 1, 2], [0, 1, 2, 3]]


def test_topk_hits_matches_dense_membership() -> None:
    rng = np.random.default_rng(5)
    n_rows, n_items, k = 12, 30, 6
    scores = torch.from_numpy(rng.standard_normal((n_rows, n_items)).astype(np.float32))
    test_mask = rng.random((n_rows, n_items)) < 0.2
    train_mask = (rng.random((n_rows, n_items)) < 0.3) & ~test_mask
    indptr = lambda m: torch.from_numpy(np.concatenate([[0], np.cumsum(m.sum(1))]))  # noqa: E731
    indices = lambda m: torch.from_numpy(np.nonzero(m)[1])  # noqa: E731
    # A slice from the middle of a larger CSR: offsets that do not start at zero.
    pad = 4
    test_ptr = indptr(test_mask) + pad
    hits = topk_hits(
        scores,
        test_ptr,
        indices(test_mask),
        (2, k),
        exclude_indptr=indptr(train_mask),
        exclude_indices=indices(train_mask),
    )
    masked = np.where(train_mask, -np.inf, scores.numpy())
    ranked = _numpy_ranking(masked, k)
    np.testing.assert_array_equal(hits.numpy(), np.take_along_axis(test_mask, ranked, axis=1))


def test_topk_hits_without_test_items_is_all_false() -> None:
    hits = topk_hits(torch.rand(3, 5), torch.zeros(4, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2)
    assert hits.shape == (3, 2)
    assert not hits.any()


def test_metric_functions_per_user() -> None:
    hits = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    n_pos = torch.tensor([5, 2, 1])
    assert precision(hits, n_pos, 3).tolist() == pytest.approx([2 / 3, 0, 1 / 3])
    assert recall(hits, n_pos, 2).tolist() == pytest.approx([1 / 5, 0, 1])
    assert hit(hits, n_pos, 1).tolist() == [0, 0, 1]
    # user 0: |T| = 5 > K = 3, so IDCG has three ideal positions.
    dcg0, idcg0 = 1 / math.log2(3) + 1 / 2, 1 + 1 / math.log2(3) + 1 / 2
    assert ndcg(hits, n_pos, 3).tolist() == pytest.approx([dcg0 / idcg0, 0, 1])
