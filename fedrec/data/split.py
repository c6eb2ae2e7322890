"""Per-user random train/test split (DESIGN.md sections 2-3)."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedrec.data.errors import DataError
from fedrec.data.interactions import Interactions, Split


def n_test_items(counts: np.ndarray, test_fraction: float) -> np.ndarray:
    """Held-out items per user: ``round(test_fraction * n)`` (half to even, like Python's ``round``),
    at least 1 and at most ``n - 1`` when ``n >= 2``, and 0 when ``n < 2``."""
    counts = np.asarray(counts, dtype=np.int64)
    n_test = np.rint(test_fraction * counts).astype(np.int64)
    n_test = np.clip(n_test, 1, np.maximum(counts - 1, 1))
    return np.where(counts >= 2, n_test, 0)


def split_per_user(inter: Interactions, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Hold out a seeded random ``test_fraction`` of every user's items.

    Every interaction gets one random key from ``Generator(PCG64(seed))``; sorting by (user, key)
    and taking each user's first ``n_test`` entries picks a uniform random subset per user, with no
    Python loop over users and the same result on every machine. ``n_test`` is given by
    :func:`n_test_items`: ``round(test_fraction * n)``, at least 1 and at most ``n - 1`` for users with
    ``n >= 2`` items (so every evaluated user keeps a training item). Users with fewer than 2 items
    keep everything in train and have no test items; they are not evaluated (a :class:`DataError` when
    no user has 2 items: nothing could be evaluated). Both halves keep the input's ``n_users``,
    ``n_items``, id maps and name.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not (inter.counts() >= 2).any():  # said here, before a run folder; else evaluation fails at its end
        raise DataError(
            f"{inter.name or 'the data'}: no user has 2 or more interactions, so none can be held out for testing"
        )
    rng = np.random.Generator(np.random.PCG64(seed))
    keys = rng.random(inter.nnz)
    users = inter.user_of_entry()
    counts = inter.counts()
    order = np.lexsort((keys, users))  # entries grouped by user, shuffled within each user
    rank = np.arange(inter.nnz, dtype=np.int64) - inter.indptr[users[order]]
    is_test = np.empty(inter.nnz, dtype=bool)
    is_test[order] = rank < n_test_items(counts, test_fraction)[users[order]]
    return Split(
        train=_subset(inter, ~is_test),
        test=_subset(inter, is_test),
        seed=seed,
        test_fraction=test_fraction,
    )


def _subset(inter: Interactions, keep: np.ndarray) -> Interactions:
    """The entries selected by ``keep``; per-user order (ascending items) is preserved."""
    users = inter.user_of_entry()[keep]
    indptr = np.zeros(inter.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=inter.n_users), out=indptr[1:])
    return dataclasses.replace(inter, indptr=indptr, indices=inter.indices[keep].copy())
