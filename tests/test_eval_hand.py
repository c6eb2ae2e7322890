"""Full ranking on a hand-computed example (DESIGN.md section 9, ANCHORS.md section 7.6).

Four users x six items; user 3 has no test item and must be skipped, so |U| = 3.

user | train | test      | scores (items 0..5)  | ranking after masking train | top-3 hits
-----|-------|-----------|----------------------|-----------------------------|-----------
0    | {0}   | {2, 5}    | 9 1 4 3 5 2          | 4 2 3 5 1 (0 = -inf)        | 0 1 0
1    | {0}   | {1}       | 0 7 3 1 7 7          | 1 4 5 2 3 (tie 1,4,5)       | 1 0 0
2    | {2}   | {0, 1, 3} | 1 6 2 5 0 4          | 1 3 5 0 4                   | 1 1 0
3    | {1}   | {}        | 6 5 4 3 2 1          | skipped                     |

User 0's training item 0 has the top score and would be ranked first if it were not masked.
User 1's items 1, 4 and 5 tie at 7: toward the lower index, item 1 (the test item) is first; the
opposite order would put it third and make user 1 miss at K = 1. User 1 has |T_u| = 1 < K.

Per user (L = log2 3, so 1/log2(r + 2) = 1, 1/L, 1/2 for r = 0, 1, 2):

         P@1 P@2 P@3 | R@1 R@2 R@3 | NDCG@1 NDCG@2        NDCG@3                   | HR@1..3
user 0   0   1/2 1/3 | 0   1/2 1/2 | 0      (1/L)/(1+1/L) (1/L)/(1+1/L)            | 0 1 1
user 1   1   1/2 1/3 | 1   1   1   | 1      1             1                        | 1 1 1
user 2   1   1   2/3 | 1/3 2/3 2/3 | 1      1             (1+1/L)/(1+1/L+1/2)      | 1 1 1

Means: P = 2/3, 2/3, 4/9; R = 4/9, 13/18, 13/18; HR = 2/3, 1, 1;
NDCG@1 = 2/3, NDCG@2 = (1/(1+L) + 2)/3, NDCG@3 = (1/(1+L) + 1 + (1+1/L)/(3/2+1/L))/3.

implicit's precision = sum hits / sum min(K, |T_u|): K=1: 2/3; K=2: (1+1+2)/(2+1+2) = 4/5;
K=3: (1+1+2)/(2+1+3) = 2/3 -- versus RecBole's 2/3, 2/3, 4/9.
"""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest
import torch

from fedrec.data.interactions import Interactions
from fedrec.eval import full_ranking, implicit_precision_at_k, topk_hits

SCORES = torch.tensor(
    [
        [9, 1, 4, 3, 5, 2],
        [0, 7, 3, 1, 7, 7],
        [1, 6, 2, 5, 0, 4],
        [6, 5, 4, 3, 2, 1],
    ],
    dtype=torch.float32,
)
TRAIN = [(0, 0), (1, 0), (2, 2), (3, 1)]
TEST = [(0, 2), (0, 5), (1, 1), (2, 0), (2, 1), (2, 3)]

L = math.log2(3)
EXPECTED = {
    "precision": {1: F(2, 3), 2: F(2, 3), 3: F(4, 9)},
    "recall": {1: F(4, 9), 2: F(13, 18), 3: F(13, 18)},
    "hit": {1: F(2, 3), 2: F(1), 3: F(1)},
    "ndcg": {
        1: 2 / 3,
        2: (1 / (1 + L) + 2) / 3,
        3: (1 / (1 + L) + 1 + (1 + 1 / L) / (1.5 + 1 / L)) / 3,
    },
}
EXPECTED_HITS = [[False, True, False], [True, False, False], [True, True, False]]


def _interactions(pairs: list[tuple[int, int]]) -> Interactions:
    users, items = np.array(pairs).T
    return Interactions.from_pairs(users, items, n_users=4, n_items=6)


def _scorer(users: torch.Tensor) -> torch.Tensor:
    return SCORES[users]


def test_hand_computed_full_ranking() -> None:
    result = full_ranking(_scorer, _interactions(TRAIN), _interactions(TEST), ks=(1, 2, 3))
    assert result.n_users == 3
    assert result.users.tolist() == [0, 1, 2]  # user 3 has no test item
    for name, by_k in EXPECTED.items():
        for k, value in by_k.items():
            assert result.metrics[name][k] == pytest.approx(float(value), abs=1e-12), (name, k)
    # Per-user rows: user 0 misses at K=1 only because item 0 is masked (else it ranks first).
    assert result.per_user["precision"][:, 0].tolist() == [0.0, 1.0, 1.0]
    assert result.per_user["recall"][:, 2].tolist() == pytest.approx([0.5, 1.0, 2 / 3])


def test_unmasked_training_item_would_rank_first() -> None:
    """Without user 0's training item, item 0 (not a test item) takes rank 1 and shifts the list."""
    train = _interactions([p for p in TRAIN if p[0] != 0])
    result = full_ranking(_scorer, train, _interactions(TEST), ks=(1, 2, 3))
    # user 0's ranking becomes 0 4 2: hits 0 0 1, so its Recall@2 drops from 1/2 to 0.
    assert result.per_user["recall"][0].tolist() == [0.0, 0.0, 0.5]


def test_implicit_precision_differs_from_recbole() -> None:
    hits = torch.tensor(EXPECTED_HITS)
    n_pos = torch.tensor([2, 1, 3])
    assert implicit_precision_at_k(hits, n_pos, 1) == pytest.approx(2 / 3)
    assert implicit_precision_at_k(hits, n_pos, 2) == pytest.approx(4 / 5)
    assert implicit_precision_at_k(hits, n_pos, 3) == pytest.approx(2 / 3)
    result = full_ranking(_scorer, _interactions(TRAIN), _interactions(TEST), ks=(2, 3))
    assert result.metrics["precision"][2] == pytest.approx(2 / 3)
    assert result.metrics["precision"][3] == pytest.approx(4 / 9)


def test_hand_hit_matrix() -> None:
    train, test = _interactions(TRAIN), _interactions(TEST)
    hits = topk_hits(
        SCORES[:3],
        torch.from_numpy(test.indptr[:4]),
        torch.from_numpy(test.indices[: test.indptr[3]]),
        (1, 2, 3),
        exclude_indptr=torch.from_numpy(train.indptr[:4]),
        exclude_indices=torch.from_numpy(train.indices[: train.indptr[3]]),
    )
    assert hits.tolist() == EXPECTED_HITS
