"""Evaluation protocols: full ranking and sampled leave-one-out (DESIGN.md section 9).

A *scorer* is any callable ``scorer(users: LongTensor[B]) -> Tensor[B, n_items]`` of float scores
(higher is better) on the device of its input. Both protocols evaluate the users with at least one
test item, optionally intersected with ``users`` (e.g. the benign clients), batch over them, and
order equal scores toward the lower item index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.data.interactions import Interactions
from fedrec.eval.metrics import METRICS, masked_scores, mean_metrics, per_user_metrics, topk_hits

Scorer = Callable[[torch.Tensor], torch.Tensor]

FULL_RANKING_KS = (1, 2, 3, 4, 5, 10, 20)
LEAVE_ONE_OUT_KS = (1, 5, 10)
ALL_METRICS = ("precision", "recall", "ndcg", "hit")
# Rejection sampling of negatives stops here; reachable only when a user has barely more
# eligible items than negatives requested.
_MAX_SAMPLING_ROUNDS = 10_000


@dataclass(frozen=True, eq=False)  # eq=False: the array / tensor fields have no boolean ==
class EvalResult:
    """Macro-averaged metrics of one evaluation, with the per-user values behind them.

    ``metrics[name][k]`` is the mean over the ``n_users`` evaluated users; ``per_user[name]`` is
    float64 ``[n_users, len(ks)]`` (columns in ``ks`` order, rows in ``users`` order, on the CPU).
    """

    metrics: dict[str, dict[int, float]]
    n_users: int
    ks: tuple[int, ...]
    protocol: str
    users: np.ndarray | None = None
    per_user: dict[str, torch.Tensor] | None = None

    def as_rows(self) -> list[dict[str, str | int | float]]:
        """One ``{"metric", "k", "value"}`` row per metric and K (the ``metrics.parquet`` layout)."""
        return [
            {"metric": name, "k": k, "value": value}
            for name, by_k in self.metrics.items()
            for k, value in by_k.items()
        ]

    def table_dict(self) -> dict[str, float]:
        """Flat ``{"precision@5": value, ...}``, RecBole's result-dict keys."""
        return {f"{name}@{k}": value for name, by_k in self.metrics.items() for k, value in by_k.items()}


def _check_pair(train: Interactions, test: Interactions) -> None:
    if (train.n_users, train.n_items) != (test.n_users, test.n_items):
        raise ValueError(
            f"train is {train.n_users}x{train.n_items} but test is {test.n_users}x{test.n_items}"
        )


def _check_ks(ks: Iterable[int], limit: int, what: str) -> tuple[int, ...]:
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if ks[-1] > limit:
        raise ValueError(f"max K = {ks[-1]} exceeds the {limit} {what}")
    return ks


def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - METRICS.keys())
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
    return metrics


def _users_with_test_items(test: Interactions, users: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Sorted users with >= 1 test item, intersected with ``users`` when given."""
    with_test = np.flatnonzero(test.counts() > 0)
    if users is None:
        return with_test
    users = np.asarray(users, dtype=np.int64).ravel()
    if users.size and (users.min() < 0 or users.max() >= test.n_users):
        raise ValueError(f"users must lie in [0, {test.n_users})")
    return np.intersect1d(with_test, users)


def _gather_rows(data: Interactions, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR (indptr, indices) of ``users``' rows, in that order (vectorised, no loop over users)."""
    counts = data.counts()[users]
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    shift = np.repeat(data.indptr[users] - indptr[:-1], counts)
    return indptr, data.indices[shift + np.arange(indptr[-1])]


def _result(
    hits: torch.Tensor,
    n_pos: torch.Tensor,
    ks: tuple[int, ...],
    metrics: tuple[str, ...],
    users: np.ndarray,
    protocol: str,
) -> EvalResult:
    per_user = {name: v.cpu() for name, v in per_user_metrics(hits, n_pos, ks, metrics).items()}
    return EvalResult(
        metrics=mean_metrics(per_user, ks),
        n_users=len(users),
        ks=ks,
        protocol=protocol,
        users=users,
        per_user=per_user,
    )


def full_ranking(
    scorer: Scorer,
    train: Interactions,
    test: Interactions,
    *,
    ks: Iterable[int] = FULL_RANKING_KS,
    users: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    metrics: Iterable[str] = ALL_METRICS,
) -> EvalResult:
    """RecBole-style full ranking: every item scored, training items at -inf, one top-K_max.

    Evaluated users: those with >= 1 test item (intersected with ``users``). Per batch the scorer
    scores all items, ``topk_hits`` masks the batch's training items and ranks (ties toward the
    lower item index), and the hit rows are kept; metrics are computed once over all hit rows.
    The batch loop has no host syncs: all CSR slice bounds are computed on the host beforehand.
    ``ks`` is deduplicated and sorted; ``per_user`` columns follow that order.
    """
    _check_pair(train, test)
    ks = _check_ks(ks, train.n_items, "items")
    metrics = _check_metrics(metrics)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    eval_users = _users_with_test_items(test, users)
    if eval_users.size == 0:
        raise ValueError("no users with test items to evaluate")
    device = torch.device(device)

    train_ptr, train_idx = _gather_rows(train, eval_users)
    test_ptr, test_idx = _gather_rows(test, eval_users)
    user_t = torch.from_numpy(eval_users).to(device)
    train_ptr_t, train_idx_t = torch.from_numpy(train_ptr).to(device), torch.from_numpy(train_idx).to(device)
    test_ptr_t, test_idx_t = torch.from_numpy(test_ptr).to(device), torch.from_numpy(test_idx).to(device)

    hits = []
    with torch.no_grad():
        for lo in range(0, len(eval_users), batch_size):
            hi = min(lo + batch_size, len(eval_users))
            scores = scorer(user_t[lo:hi])
            if scores.shape != (hi - lo, train.n_items):
                expected = (hi - lo, train.n_items)
                raise ValueError(f"scorer returned shape {tuple(scores.shape)}, expected {expected}")
            hits.append(
                topk_hits(
                    scores.to(device),
                    test_ptr_t[lo : hi + 1],
                    test_idx_t[test_ptr[lo] : test_ptr[hi]],
                    ks,
                    exclude_indptr=train_ptr_t[lo : hi + 1],
                    exclude_indices=train_idx_t[train_ptr[lo] : train_ptr[hi]],
                )
            )
    n_pos = torch.from_numpy(np.diff(test_ptr)).to(device)
    return _result(torch.cat(hits), n_pos, ks, metrics, eval_users, "full_ranking")


def _held_out_items(test: Interactions, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per user, the first test item in a seeded random order of the user's test items."""
    order = np.lexsort((rng.random(test.nnz), test.user_of_entry()))  # by user, then random key
    return test.indices[order[test.indptr[users]]]


def _in_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Elementwise membership of ``keys`` in the ascending ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[pos] == keys


def _repeats_in_row(a: np.ndarray) -> np.ndarray:
    """True where a value already occurred earlier in the same row."""
    order = np.argsort(a, axis=1, kind="stable")  # equal values keep column order
    s = np.take_along_axis(a, order, axis=1)
    repeat_sorted = np.zeros(a.shape, dtype=bool)
    repeat_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    out = np.empty_like(repeat_sorted)
    np.put_along_axis(out, order, repeat_sorted, axis=1)
    return out


def _sample_negatives(
    train: Interactions, test: Interactions, users: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``[len(users), n]`` distinct uniform items per user, none a train or test item of that user.

    Rejection sampling vectorised over users: each round redraws only the rejected entries.
    """
    n_items = train.n_items
    seen = np.union1d(
        train.user_of_entry() * n_items + train.indices, test.user_of_entry() * n_items + test.indices
    )  # sorted (user, item) keys of train or test
    n_seen = np.bincount(seen // n_items, minlength=train.n_users)[users]
    short = users[n_items - n_seen < n]
    if short.size:
        raise ValueError(f"{short.size} users have fewer than {n} unseen items (e.g. user {short[0]})")
    base = (users * n_items)[:, None]
    neg = rng.integers(0, n_items, size=(len(users), n))
    for _ in range(_MAX_SAMPLING_ROUNDS):
        bad = _in_sorted(seen, base + neg) | _repeats_in_row(neg)
        n_bad = int(bad.sum())
        if n_bad == 0:
            return neg
        neg[bad] = rng.integers(0, n_items, size=n_bad)
    raise RuntimeError(f"negative sampling did not finish in {_MAX_SAMPLING_ROUNDS} rounds")


def leave_one_out(
    scorer: Scorer,
    train: Interactions,
    test: Interactions,
    *,
    n_negatives: int = 99,
    ks: Iterable[int] = LEAVE_ONE_OUT_KS,
    seed: int = 0,
    users: Sequence[int] | np.ndarray | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    metrics: Iterable[str] = ("hit", "ndcg"),
) -> EvalResult:
    """Sampled leave-one-out as in the federated-attack literature (ANCHORS.md section 7.6).

    Per user with a test item: one held-out test item (the first in a seeded random order)
    ranked among ``n_negatives`` distinct seeded uniform items that are neither train nor test
    items of the user. rank = 1 + #negatives scoring higher + #tied negatives with a lower item
    index; HR@K = 1[rank <= K], NDCG@K = 1 / log2(rank + 1) if rank <= K. Held-out items and
    negatives are drawn for every user with a test item before ``users`` is applied, so a user's
    sample depends only on the data and the seed.
    """
    _check_pair(train, test)
    if n_negatives < 0 or batch_size < 1:
        raise ValueError("n_negatives must be >= 0 and batch_size >= 1")
    ks = _check_ks(ks, n_negatives + 1, "ranked candidates")
    metrics = _check_metrics(metrics)
    candidates = _users_with_test_items(test, None)
    rng = np.random.default_rng(seed)
    held_out = _held_out_items(test, candidates, rng)
    negatives = _sample_negatives(train, test, candidates, n_negatives, rng)

    eval_users = _users_with_test_items(test, users)
    if eval_users.size == 0:
        raise ValueError("no users with test items to evaluate")
    rows = np.searchsorted(candidates, eval_users)
    device = torch.device(device)
    items = torch.from_numpy(np.column_stack([held_out[rows], negatives[rows]])).to(device)
    user_t = torch.from_numpy(eval_users).to(device)

    ranks = []
    with torch.no_grad():
        for lo in range(0, len(eval_users), batch_size):
            hi = min(lo + batch_size, len(eval_users))
            cand = items[lo:hi]
            s = masked_scores(scorer(user_t[lo:hi]).to(device).gather(1, cand))  # NaN ranks last
            pos, neg = s[:, :1], s[:, 1:]
            beats = (neg > pos) | ((neg == pos) & (cand[:, 1:] < cand[:, :1]))
            ranks.append(1 + beats.sum(dim=1))
    rank = torch.cat(ranks)
    # One relevant item per user: the hit matrix has a single True at column rank - 1 (if < K_max).
    hits = torch.arange(ks[-1], device=device).unsqueeze(0) == (rank - 1).unsqueeze(1)
    n_pos = torch.ones_like(rank)
    return _result(hits, n_pos, ks, metrics, eval_users, "leave_one_out")


PROTOCOLS = ("full", "loo")  # eval.protocol
LOO_NEGATIVES = 99  # eval.protocol=loo: each held-out item ranked among this many sampled items


def run_protocol(
    protocol: str,
    scorer: Scorer,
    train: Interactions,
    test: Interactions,
    *,
    ks: Iterable[int],
    users: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> EvalResult:
    """The evaluation ``eval.protocol`` names, with every metric: ``full`` (``full_ranking``, paper 000
    Section 5) or ``loo`` (``leave_one_out`` among ``LOO_NEGATIVES`` sampled items; ``seed``, the
    split's, fixes each user's held-out item and candidates, so every run on one split ranks the same
    ones; precision@K = hit@K / K and recall@K = hit@K with one relevant item)."""
    if protocol == "full":
        return full_ranking(scorer, train, test, ks=ks, users=users, batch_size=batch_size, device=device)
    if protocol == "loo":
        return leave_one_out(
            scorer, train, test, n_negatives=LOO_NEGATIVES, ks=ks, seed=seed, users=users, device=device,
            batch_size=batch_size, metrics=ALL_METRICS,
        )  # fmt: skip
    raise ValueError(f"eval.protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
