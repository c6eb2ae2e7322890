"""full_ranking batching, user restriction and errors; leave_one_out sampling and ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.data.interactions import Interactions
from fedrec.eval import EvalResult, full_ranking, leave_one_out
from fedrec.eval.protocols import _held_out_items, _sample_negatives


def _random_data(seed: int, n_users: int = 50, n_items: int = 200) -> tuple[Interactions, Interactions]:
    rng = np.random.default_rng(seed)
    train_mask = rng.random((n_users, n_items)) < rng.uniform(0.05, 0.3, size=(n_users, 1))
    test_mask = (rng.random((n_users, n_items)) < 0.05) & ~train_mask
    test_mask[::7] = False  # some users without test items
    test_mask[1, :] = False
    test_mask[1, 3], train_mask[1, 3] = True, False  # at least one user with a single test item
    make = lambda m: Interactions.from_pairs(*np.nonzero(m), n_users=n_users, n_items=n_items)  # noqa: E731
    return make(train_mask), make(test_mask)


def _table_scorer(seed: int, n_users: int, n_items: int, levels: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if levels:
        table = torch.randint(0, levels, (n_users, n_items), generator=gen).float()
    else:
        table = torch.randn(n_users, n_items, generator=gen)
    return lambda users: table[users]


# ---------------------------------------------------------------- full ranking


@pytest.mark.parametrize("levels", [0, 3])
def test_full_ranking_batches_equal_one_batch(levels: int) -> None:
    train, test = _random_data(0)
    scorer = _table_scorer(1, train.n_users, train.n_items, levels)
    whole = full_ranking(scorer, train, test, batch_size=10_000)
    assert whole.n_users < train.n_users
    for batch_size in (1, 3, 16):
        part = full_ranking(scorer, train, test, batch_size=batch_size)
        assert part.metrics == whole.metrics
        for name, values in whole.per_user.items():
            assert torch.equal(part.per_user[name], values)


def test_full_ranking_users_restriction_selects_rows() -> None:
    train, test = _random_data(2)
    scorer = _table_scorer(3, train.n_users, train.n_items)
    everyone = full_ranking(scorer, train, test)
    subset = np.array([1, 2, 7, 9, 10, 11, 30, 49])  # 7 has no test item (every 7th user)
    some = full_ranking(scorer, train, test, users=subset)
    assert some.users.tolist() == [u for u in subset.tolist() if test.counts()[u] > 0]
    rows = np.searchsorted(everyone.users, some.users)
    for name, values in everyone.per_user.items():
        assert torch.equal(some.per_user[name], values[rows])
        assert some.metrics[name][5] == pytest.approx(values[rows, 4].mean().item())


def test_full_ranking_nan_scores_rank_last() -> None:
    train, test = _random_data(4)
    table = torch.full((train.n_users, train.n_items), math.nan)
    table[test.user_of_entry(), test.indices] = 1.0  # only test items have real scores
    result = full_ranking(lambda u: table[u], train, test, ks=(1,))
    assert result.metrics["precision"][1] == 1.0


def test_eval_result_helpers() -> None:
    train, test = _random_data(5)
    result = full_ranking(_table_scorer(6, 50, 200), train, test, ks=(5, 1), metrics=("recall", "hit"))
    assert isinstance(result, EvalResult)
    assert result.ks == (1, 5)
    assert result.per_user["recall"].shape == (result.n_users, 2)
    rows = result.as_rows()
    assert [(r["metric"], r["k"]) for r in rows] == [("recall", 1), ("recall", 5), ("hit", 1), ("hit", 5)]
    assert result.table_dict()["hit@5"] == result.metrics["hit"][5] == rows[-1]["value"]


def test_full_ranking_rejects_bad_arguments() -> None:
    train, test = _random_data(7)
    scorer = _table_scorer(8, 50, 200)
    with pytest.raises(ValueError, match="exceeds"):
        full_ranking(scorer, train, test, ks=(201,))
    with pytest.raises(ValueError, match="unknown metrics"):
        full_ranking(scorer, train, test, metrics=("mrr",))
    with pytest.raises(ValueError, match="no users"):
        full_ranking(scorer, train, test, users=[0, 7])
    with pytest.raises(ValueError, match="shape"):
        full_ranking(lambda u: torch.zeros(len(u), 3), train, test)
    small = Interactions.from_pairs(np.array([0]), np.array([0]), n_users=50, n_items=10)
    with pytest.raises(ValueError, match="train is"):
        full_ranking(scorer, small, test)


# ---------------------------------------------------------------- leave one out


def _test_item_scorer(test: Interactions, value: float, seed: int = 0):
    """Random scores in [0, 1) for every item, ``value`` for the user's test items."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.rand(test.n_users, test.n_items, generator=gen)
    table[test.user_of_entry(), test.indices] = value
    return lambda users: table[users]


def test_leave_one_out_held_out_first_gives_one() -> None:
    train, test = _random_data(9)
    result = leave_one_out(_test_item_scorer(test, 2.0), train, test, ks=(1, 5, 10), metrics=("hit", "ndcg"))
    assert result.n_users == int((test.counts() > 0).sum())
    for name in ("hit", "ndcg"):
        assert result.metrics[name] == {1: 1.0, 5: 1.0, 10: 1.0}


def test_leave_one_out_held_out_last_of_hundred() -> None:
    train, test = _random_data(10)
    result = leave_one_out(_test_item_scorer(test, -1.0), train, test, ks=(1, 10, 99, 100))
    assert result.metrics["hit"] == {1: 0.0, 10: 0.0, 99: 0.0, 100: 1.0}
    assert result.metrics["ndcg"][10] == 0.0
    assert result.metrics["ndcg"][100] == pytest.approx(1 / math.log2(101))  # rank exactly 100


def test_leave_one_out_ties_go_to_lower_item_index() -> None:
    """A constant scorer: the held-out item's rank is 1 + the negatives with a lower index."""
    train, test = _random_data(11)
    result = leave_one_out(lambda u: torch.zeros(len(u), test.n_items), train, test, ks=(100,), seed=4)
    users = np.flatnonzero(test.counts() > 0)
    rng = np.random.default_rng(4)  # replay the protocol's draws
    held = _held_out_items(test, users, rng)
    negatives = _sample_negatives(train, test, users, 99, rng)
    rank = 1 + (negatives < held[:, None]).sum(axis=1)
    np.testing.assert_allclose(result.per_user["ndcg"][:, 0].numpy(), 1 / np.log2(rank + 1))


def test_negatives_are_unseen_distinct_and_seeded() -> None:
    train, test = _random_data(12)
    users = np.flatnonzero(test.counts() > 0)
    neg = _sample_negatives(train, test, users, 99, np.random.default_rng(3))
    assert neg.shape == (len(users), 99)
    assert neg.min() >= 0 and neg.max() < train.n_items
    for row, u in zip(neg, users, strict=True):
        assert len(set(row.tolist())) == 99
        assert not set(row.tolist()) & (set(train.items_of(u).tolist()) | set(test.items_of(u).tolist()))
    again = _sample_negatives(train, test, users, 99, np.random.default_rng(3))
    other = _sample_negatives(train, test, users, 99, np.random.default_rng(4))
    np.testing.assert_array_equal(neg, again)
    assert not np.array_equal(neg, other)


def test_held_out_item_is_a_test_item() -> None:
    _, test = _random_data(13)
    users = np.flatnonzero(test.counts() > 0)
    held = _held_out_items(test, users, np.random.default_rng(0))
    assert all(h in test.items_of(u) for h, u in zip(held, users, strict=True))
    multi = users[test.counts()[users] > 1]
    draws = {tuple(_held_out_items(test, multi, np.random.default_rng(s)).tolist()) for s in range(5)}
    assert len(draws) > 1  # the choice depends on the seed


def test_leave_one_out_is_deterministic_and_subset_stable() -> None:
    train, test = _random_data(14)
    scorer = _table_scorer(15, train.n_users, train.n_items)
    a = leave_one_out(scorer, train, test, seed=7)
    b = leave_one_out(scorer, train, test, seed=7, batch_size=5)
    c = leave_one_out(scorer, train, test, seed=8)
    for name in ("hit", "ndcg"):
        assert torch.equal(a.per_user[name], b.per_user[name])
    assert not torch.equal(a.per_user["ndcg"], c.per_user["ndcg"])
    # Restricting to a subset of users leaves every remaining user's sample and value unchanged.
    subset = a.users[::3]
    s = leave_one_out(scorer, train, test, seed=7, users=subset)
    assert torch.equal(s.per_user["ndcg"], a.per_user["ndcg"][::3])


def test_leave_one_out_rejects_users_without_enough_unseen_items() -> None:
    train, test = _random_data(16)
    with pytest.raises(ValueError, match="unseen items"):
        leave_one_out(_table_scorer(0, 50, 200), train, test, n_negatives=150)


def test_eval_protocol_loo_is_what_a_run_evaluates_with() -> None:
    """``eval.protocol=loo`` was accepted and recorded nowhere, and every run scored full ranking."""
    from fedrec.config import load_config
    from fedrec.data import split_per_user, synthetic
    from fedrec.eval.protocols import ALL_METRICS, LOO_NEGATIVES, run_protocol
    from fedrec.federation.simulation import FederatedRun

    split = split_per_user(synthetic(60, 300, mean_items=8, seed=0), seed=0)
    for protocol in ("loo", "full"):
        cfg = load_config(
            None, ["train.mode=federated", "model.dim=4", "federated.rounds=3", f"eval.protocol={protocol}",
                   "eval.ks=[1, 5, 10]", "data.split_seed=3"],
        )  # fmt: skip
        run = FederatedRun.create(cfg, split, torch.device("cpu"))
        run.step()
        got = run.evaluate()
        if protocol == "loo":
            want = leave_one_out(
                run.scorer(), split.train, split.test, n_negatives=LOO_NEGATIVES, ks=[1, 5, 10], seed=3,
                users=run.benign_users(), metrics=ALL_METRICS,
            )  # fmt: skip
            assert got.protocol == "leave_one_out"
            # one relevant item: precision@K is hit@K / K, recall@K is hit@K
            for k in (1, 5, 10):
                assert got.metrics["precision"][k] == pytest.approx(got.metrics["hit"][k] / k)
                assert got.metrics["recall"][k] == pytest.approx(got.metrics["hit"][k])
        else:
            want = full_ranking(
                run.scorer(), split.train, split.test, ks=[1, 5, 10], users=run.benign_users()
            )
        assert got.metrics == want.metrics
    with pytest.raises(ValueError, match=r"eval\.protocol"):
        run_protocol("sampled", run.scorer(), split.train, split.test, ks=[1])
