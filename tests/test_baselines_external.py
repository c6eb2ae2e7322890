"""Baselines: most-popular, implicit's BPR and RecBole's BPR (scores, id maps, quality, hygiene)."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch

from fedrec.baselines import fit_recbole_bpr, most_popular, train_implicit_bpr, train_recbole_bpr
from fedrec.data.interactions import Interactions

N_USERS, N_ITEMS, N_COMMUNITIES = 300, 200, 10


def community_split(seed: int = 0) -> tuple[Interactions, np.ndarray]:
    """Users like ~15 of the 20 items of their community plus 3 globally popular items.

    Returns the train interactions and the 2 held-out items of every user ([N_USERS, 2]).
    """
    rng = np.random.default_rng(seed)
    size = N_ITEMS // N_COMMUNITIES
    global_pop = 1.0 / np.arange(1, N_ITEMS + 1) ** 1.2  # Zipf over a random item order
    global_pop = global_pop[rng.permutation(N_ITEMS)] / global_pop.sum()
    train_u, train_i, held_out = [], [], []
    for u in range(N_USERS):
        c = u % N_COMMUNITIES
        liked = rng.choice(np.arange(c * size, (c + 1) * size), size=15, replace=False)
        extra = rng.choice(N_ITEMS, size=3, replace=False, p=global_pop)
        items = rng.permutation(np.union1d(liked, extra))
        held_out.append(items[:2])
        train_u += [u] * (len(items) - 2)
        train_i += list(items[2:])
    train = Interactions.from_pairs(np.array(train_u), np.array(train_i), n_users=N_USERS, n_items=N_ITEMS)
    return train, np.array(held_out)


def hit_rate(scorer, train: Interactions, held_out: np.ndarray, k: int = 5) -> float:
    """Share of users with at least one held-out item in their top k, training items masked."""
    scores = scorer(torch.arange(train.n_users)).clone()
    scores[torch.from_numpy(train.to_scipy().toarray() > 0)] = -torch.inf
    top = scores.topk(k, dim=1).indices.numpy()
    return float(np.mean([np.isin(held_out[u], top[u]).any() for u in range(train.n_users)]))


@pytest.fixture(scope="module")
def communities() -> tuple[Interactions, np.ndarray]:
    return community_split()


def small_random(seed: int = 0) -> Interactions:
    """Random pairs with the last user and the last two items left without interactions."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 59, size=900)
    items = rng.integers(0, 38, size=900)
    return Interactions.from_pairs(users, items, n_users=60, n_items=40)


def test_most_popular_scores_are_training_counts(communities) -> None:
    train, _ = communities
    scorer = most_popular(train)
    users = torch.tensor([0, 5, 5, 299])
    scores = scorer(users)
    assert scores.shape == (4, N_ITEMS) and scores.dtype == torch.float32
    expected = torch.from_numpy(train.item_popularity()).float()
    assert torch.equal(scores, expected.expand(4, -1))
    scores[:] = -1  # a fresh tensor: masking it in place must not leak into the next call
    assert torch.equal(scorer(users[:1])[0], expected)


def test_implicit_scorer_is_implicits_own_score() -> None:
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    train = small_random()
    params = dict(factors=8, learning_rate=0.05, regularization=0.01, iterations=20, seed=3)
    scorer, info = train_implicit_bpr(train, **params)
    assert info["model"] == "implicit-bpr" and info["wall_s"] > 0
    assert {k: info[k] for k in params} == params and info["num_threads"] == 1

    # One thread + random_state is reproducible, so a second fit is the same model.
    model = BayesianPersonalizedRanking(
        factors=8, learning_rate=0.05, regularization=0.01, iterations=20, num_threads=1, random_state=3
    )
    model.fit(train.to_scipy(), show_progress=False)
    users = np.array([0, 7, 58, 59])
    ids, ref = model.recommend(users, train.to_scipy()[users], N=10, filter_already_liked_items=False)
    ours = scorer(torch.from_numpy(users))
    assert ours.shape == (4, 40) and ours.dtype == torch.float32
    np.testing.assert_allclose(np.take_along_axis(ours.numpy(), ids, axis=1), ref, rtol=1e-5, atol=1e-6)


def test_recbole_scores_follow_recboles_own_ids(tmp_path, monkeypatch, capfd) -> None:
    from recbole.data.interaction import Interaction

    monkeypatch.chdir(tmp_path)
    # RecBole's Config would read these and override our settings; we hide them from it.
    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=1", "--embedding_size=4"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    threads = torch.get_num_threads()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)

    train = small_random()
    fit = fit_recbole_bpr(train, embedding_size=8, epochs=3, learning_rate=1e-2, train_batch_size=256)

    # Environment untouched: no output or files in the cwd, RNG streams, argv-free config, threads,
    # CUDA variable.
    assert capfd.readouterr() == ("", "")
    assert list(tmp_path.iterdir()) == []
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected_draws
    assert len(fit.info["train_loss"]) == 3 and fit.model.embedding_size == 8
    assert torch.get_num_threads() == threads
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"

    ds = fit.dataset
    # RecBole numbers tokens in its own order, so the map is not the identity (the test means something).
    assert not np.array_equal(fit.item_index, np.arange(40) + 1)
    users = np.array([0, 0, 13, 42, 59, 59, 7])
    items = np.array([0, 39, 5, 38, 1, 20, 11])  # includes the user and items without interactions
    inter = Interaction(
        {
            ds.uid_field: torch.from_numpy(ds.token2id(ds.uid_field, users.astype(str))),
            ds.iid_field: torch.from_numpy(ds.token2id(ds.iid_field, items.astype(str))),
        }
    )
    with torch.no_grad():
        reference = fit.model.predict(inter)
    scores = fit.scorer()(torch.from_numpy(users))
    assert scores.shape == (7, 40) and scores.dtype == torch.float32
    torch.testing.assert_close(scores[torch.arange(7), torch.from_numpy(items)], reference)


def test_recbole_is_reproducible() -> None:
    train = small_random(seed=1)
    a, _ = train_recbole_bpr(train, embedding_size=8, epochs=2, train_batch_size=256, seed=5)
    b, _ = train_recbole_bpr(train, embedding_size=8, epochs=2, train_batch_size=256, seed=5)
    users = torch.arange(60)
    assert torch.equal(a(users), b(users))


def test_implicit_bpr_beats_most_popular(communities) -> None:
    train, held_out = communities
    scorer, _ = train_implicit_bpr(train)  # defaults; hit@5 ~0.91 vs ~0.2 on five data seeds
    mp, learned = hit_rate(most_popular(train), train, held_out), hit_rate(scorer, train, held_out)
    assert learned > mp + 0.3, (learned, mp)


def test_recbole_bpr_beats_most_popular(communities) -> None:
    train, held_out = communities
    scorer, info = train_recbole_bpr(train)  # defaults; hit@5 ~0.87-0.92 vs ~0.2 on five data seeds
    mp, learned = hit_rate(most_popular(train), train, held_out), hit_rate(scorer, train, held_out)
    assert learned > mp + 0.3, (learned, mp, info["train_loss"][-1])


def test_recbole_workdir_keeps_the_atomic_files(tmp_path) -> None:
    train = small_random()
    train_recbole_bpr(train, embedding_size=4, epochs=1, workdir=tmp_path / "rb")
    lines = (tmp_path / "rb" / "fedrec" / "fedrec.train.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token" and len(lines) == train.nnz + 1
    assert len((tmp_path / "rb" / "fedrec" / "fedrec.item").read_text().splitlines()) == 41
    assert (tmp_path / "rb" / "log_tensorboard").is_dir()  # RecBole's own output stays in workdir
