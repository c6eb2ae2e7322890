"""scikit-learn's embedded digits (8x8 grey images, 10 classes, 1,797 samples, no download) as the
dense testbed's data: standardised features, a seeded train/test split and one shard per worker.

Shards (every worker gets the same number of training samples, the remainder is dropped):

- ``iid``: the training set shuffled and cut into n equal parts;
- ``sorted``: the training set sorted by label (ties in a seeded random order) and cut into n
  contiguous parts, so each worker holds one or two labels (MixTailor's and BRVR's non-iid setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Tensor = torch.Tensor

N_CLASSES = 10
N_FEATURES = 64
SHARDS = ("iid", "sorted")


@dataclass(frozen=True)
class Digits:
    """The split data set. ``x_*`` float64 ``[N, 64]`` standardised with the training mean and std;
    ``y_*`` int64 ``[N]`` labels in 0..9."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits(seed: int, test_fraction: float = 0.2) -> Digits:
    """Digits split into train and test by a seeded permutation (stratified: each class keeps its
    share in both parts); features standardised with the training statistics (constant pixels: std 1)."""
    from sklearn.datasets import load_digits as _load

    x, y = _load(return_X_y=True)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(N_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: round(test_fraction * len(idx))]] = True
    x_tr, x_te = x[~test], x[test]
    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std == 0] = 1.0
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Digits(
        x_train=t((x_tr - mean) / std).to(torch.float64),
        y_train=t(y[~test]).to(torch.int64),
        x_test=t((x_te - mean) / std).to(torch.float64),
        y_test=t(y[test]).to(torch.int64),
    )


def make_shards(y: Tensor, n: int, kind: str, seed: int) -> Tensor:
    """``[n, s]`` int64 indices into the training set, worker i's shard in row i (s = len(y) // n).

    ``iid``: a seeded permutation cut into n parts; ``sorted``: the samples ordered by label (a seeded
    permutation inside each label) and cut into n contiguous parts."""
    if kind not in SHARDS:
        raise ValueError(f"shards={kind!r}: expected one of {', '.join(SHARDS)}")
    s = y.shape[0] // n
    if s < 1:
        raise ValueError(f"{n} workers but only {y.shape[0]} training samples")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y.shape[0], generator=g)
    if kind == "sorted":
        perm = perm[torch.argsort(y[perm], stable=True)]
    return perm[: n * s].reshape(n, s)
