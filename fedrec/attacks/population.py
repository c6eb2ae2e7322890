"""Who is Byzantine (DESIGN.md section 7).

* ``byzantine_mask``: paper 000's setting (Section 5, Figure 4): a seeded random subset of the users,
  ``round(fraction n)`` of them (20 / 30 / 40 %), who keep their own data and are sampled each round
  like everyone else.
* ``inject_fake_users``: Spattack's setting (ANCHORS.md section 7): the real users stay honest and
  fake users are appended so that they are ``fraction`` of the new total, each with a seeded random
  set of items of a typical size (the median number of items of the real users).

Counts round half up (``round_half_up``), not to even as Python's ``round`` does.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedrec.data.interactions import Interactions


def round_half_up(x: float) -> int:
    """``floor(x + 1/2)``, with ``x`` first rounded to 9 decimals (``0.3 * 10`` is 3, not 3.0000000000000004)."""
    return math.floor(round(x, 9) + 0.5)


def _check_fraction(fraction: float, *, upper_open: bool) -> None:
    number = isinstance(fraction, int | float) and not isinstance(fraction, bool)
    if not (number and fraction >= 0 and (fraction < 1 if upper_open else fraction <= 1)):
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"the Byzantine fraction must lie in {interval}, got {fraction!r}")


def byzantine_count(n_users: int, fraction: float) -> int:
    """``round(fraction * n_users)``, rounded half up."""
    _check_fraction(fraction, upper_open=False)
    if n_users < 0:
        raise ValueError(f"n_users must be >= 0, got {n_users}")
    return round_half_up(fraction * n_users)


def byzantine_mask(n_users: int, fraction: float, seed: int) -> torch.Tensor:
    """A bool ``[n_users]`` mask with exactly ``byzantine_count(n_users, fraction)`` True entries, chosen
    uniformly at random by a generator seeded with ``seed`` (the same seed gives the same users)."""
    k = byzantine_count(n_users, fraction)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n_users, dtype=torch.bool)
    mask[torch.randperm(n_users, generator=gen)[:k]] = True
    return mask


def fake_user_count(n_users: int, fraction: float) -> int:
    """``round(fraction n / (1 - fraction))``, rounded half up: the fake users that make up ``fraction``
    of ``n_users + fakes``."""
    _check_fraction(fraction, upper_open=True)
    return round_half_up(fraction * n_users / (1.0 - fraction))


def typical_size(train: Interactions) -> int:
    """The median number of items per real user (rounded half up), clamped to ``[1, n_items]``."""
    counts = train.counts()
    median = float(np.median(counts)) if len(counts) else 1.0
    return int(min(max(round_half_up(median), 1), train.n_items))


def extend_users(x: Interactions, n_users: int) -> Interactions:
    """``x`` with users appended, without items, up to ``n_users`` (e.g. the test split of a run with
    injected fake users); the new users' original ids continue those of ``x`` (see ``inject_fake_users``)."""
    extra = n_users - x.n_users
    if extra < 0:
        raise ValueError(f"cannot shrink {x.n_users} users to {n_users}")
    if extra == 0:
        return x
    indptr = np.concatenate([x.indptr, np.full(extra, x.indptr[-1], dtype=np.int64)])
    return Interactions(
        indptr=indptr,
        indices=x.indices,
        n_users=n_users,
        n_items=x.n_items,
        user_ids=_fake_ids(x.user_ids, extra),
        item_ids=x.item_ids,
        name=x.name,
    )


def _fake_ids(user_ids: np.ndarray, extra: int) -> np.ndarray:
    """Original ids for ``extra`` appended users: integers after the largest id, else ``"fake-k"``."""
    if np.issubdtype(user_ids.dtype, np.integer):
        start = int(user_ids.max()) + 1 if len(user_ids) else 0
        return np.concatenate([user_ids, np.arange(start, start + extra, dtype=user_ids.dtype)])
    fakes = np.array([f"fake-{k}" for k in range(extra)])
    return np.concatenate([user_ids.astype(str), fakes])


def inject_fake_users(train: Interactions, fraction: float, seed: int) -> tuple[Interactions, torch.Tensor]:
    """Append ``fake_user_count(n, fraction)`` fake users after the ``n`` real ones, each with
    ``typical_size(train)`` distinct items drawn uniformly from the catalog by a generator seeded with
    ``seed``. Returns the enlarged interactions (same items, users ``n..n+f-1`` fake) and the bool
    ``[n + f]`` Byzantine mask (True exactly for the fake users). Fraction 0 returns ``train`` itself.
    Enlarge the matching test split with ``extend_users``."""
    n = train.n_users
    f = fake_user_count(n, fraction)
    mask = torch.zeros(n + f, dtype=torch.bool)
    mask[n:] = True
    if f == 0:
        return train, mask
    size = typical_size(train)
    rng = np.random.default_rng(seed)
    items = np.stack([np.sort(rng.choice(train.n_items, size=size, replace=False)) for _ in range(f)])
    indptr = np.concatenate([train.indptr, train.indptr[-1] + size * np.arange(1, f + 1, dtype=np.int64)])
    enlarged = Interactions(
        indptr=indptr.astype(np.int64),
        indices=np.concatenate([train.indices, items.reshape(-1).astype(np.int64)]),
        n_users=n + f,
        n_items=train.n_items,
        user_ids=_fake_ids(train.user_ids, f),
        item_ids=train.item_ids,
        name=train.name,
    )
    return enlarged, mask
