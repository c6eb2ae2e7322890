"""Per-user seeded train/test split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data import DataError, Interactions, Split, split_per_user, synthetic


def _pairs(inter: Interactions) -> set[tuple[int, int]]:
    return set(zip(inter.user_of_entry().tolist(), inter.indices.tolist(), strict=True))


def _expected_n_test(n: int, fraction: float) -> int:
    """The documented rule, written out per user."""
    if n < 2:
        return 0
    return min(max(round(fraction * n), 1), n - 1)


def _check_split(inter: Interactions, split: Split, fraction: float) -> None:
    train, test = split.train, split.test
    for half in (train, test):
        assert (half.n_users, half.n_items) == (inter.n_users, inter.n_items)
        np.testing.assert_array_equal(half.user_ids, inter.user_ids)
        np.testing.assert_array_equal(half.item_ids, inter.item_ids)
        assert half.name == inter.name
        for u in range(half.n_users):  # CSR invariant: ascending, unique items per user
            assert np.all(np.diff(half.items_of(u)) > 0)
    assert _pairs(train).isdisjoint(_pairs(test))
    assert _pairs(train) | _pairs(test) == _pairs(inter)
    expected = [_expected_n_test(int(n), fraction) for n in inter.counts()]
    np.testing.assert_array_equal(test.counts(), expected)
    assert (split.test_fraction, train.nnz + test.nnz) == (fraction, inter.nnz)


@pytest.fixture(scope="module")
def data() -> Interactions:
    return synthetic(200, 150, seed=3)


def test_partition_and_sizes(data: Interactions) -> None:
    split = split_per_user(data, 0.2, seed=0)
    _check_split(data, split, 0.2)
    assert split.seed == 0


def test_deterministic_per_seed(data: Interactions) -> None:
    a, b, c = split_per_user(data, seed=7), split_per_user(data, seed=7), split_per_user(data, seed=8)
    np.testing.assert_array_equal(a.test.indices, b.test.indices)
    np.testing.assert_array_equal(a.train.indptr, b.train.indptr)
    assert _pairs(a.test) != _pairs(c.test)


def test_matches_reference_algorithm(data: Interactions) -> None:
    """Same PCG64 stream, one key per interaction in CSR order, smallest keys of each user go to test."""
    split = split_per_user(data, 0.3, seed=11)
    keys = np.random.Generator(np.random.PCG64(11)).random(data.nnz)
    for u in range(data.n_users):
        lo, hi = data.indptr[u], data.indptr[u + 1]
        k = _expected_n_test(hi - lo, 0.3)
        chosen = data.indices[lo:hi][np.argsort(keys[lo:hi], kind="stable")[:k]]
        np.testing.assert_array_equal(split.test.items_of(u), np.sort(chosen))


def test_tiny_users() -> None:
    # user 0: no items, user 1: one item, user 2: two items, user 3: three items
    inter = Interactions.from_pairs(
        np.array([1, 2, 2, 3, 3, 3]), np.array([4, 0, 1, 2, 3, 4]), n_users=4, n_items=5
    )
    split = split_per_user(inter, 0.2, seed=0)
    np.testing.assert_array_equal(split.test.counts(), [0, 0, 1, 1])
    np.testing.assert_array_equal(split.train.counts(), [0, 1, 1, 2])
    np.testing.assert_array_equal(split.train.items_of(1), [4])


def test_every_item_equally_likely_held_out() -> None:
    inter = Interactions.from_pairs(np.zeros(10, dtype=np.int64), np.arange(10), n_users=1, n_items=10)
    held = np.zeros(10)
    for seed in range(2000):
        held[split_per_user(inter, 0.2, seed=seed).test.indices] += 1
    np.testing.assert_allclose(held / 2000, 0.2, atol=0.04)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_rejects_bad_fraction(data: Interactions, fraction: float) -> None:
    with pytest.raises(ValueError):
        split_per_user(data, fraction)


@st.composite
def interactions(draw: st.DrawFn) -> Interactions:
    n_users = draw(st.integers(1, 12))
    n_items = draw(st.integers(1, 15))
    pairs = draw(st.lists(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)), max_size=80))
    users = np.array([p[0] for p in pairs], dtype=np.int64)
    items = np.array([p[1] for p in pairs], dtype=np.int64)
    return Interactions.from_pairs(users, items, n_users=n_users, n_items=n_items, name="h")


@settings(max_examples=60, deadline=None)
@given(inter=interactions(), fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**32 - 1))
def test_split_property(inter: Interactions, fraction: float, seed: int) -> None:
    if not (inter.counts() >= 2).any():  # nothing to hold out: refused (see the test below)
        with pytest.raises(DataError):
            split_per_user(inter, fraction, seed)
        return
    split = split_per_user(inter, fraction, seed)
    _check_split(inter, split, fraction)
    again = split_per_user(inter, fraction, seed)
    np.testing.assert_array_equal(split.test.indices, again.test.indices)


def test_users_of_one_item_each_failed_after_the_run_folder_was_made() -> None:
    """With no user of 2 or more items nothing is held out: the run failed at its first evaluation
    ("no users with test items"), its folder already made; now the split says so."""
    inter = Interactions.from_pairs(np.arange(3), np.arange(3), name="one-each")
    with pytest.raises(DataError, match="one-each: no user has 2 or more interactions"):
        split_per_user(inter)
