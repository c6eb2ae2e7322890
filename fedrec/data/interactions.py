"""The implicit-feedback matrix: users x items in CSR form (DESIGN.md section 3)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Interactions:
    """Binary user x item interactions in CSR layout.

    ``indptr[u]:indptr[u+1]`` slices ``indices`` to user ``u``'s items, sorted ascending and unique.
    ``n_items`` is the catalog size, which may exceed the number of items that occur (citeulike-t).
    ``user_ids`` / ``item_ids`` map dense indices back to the dataset's original ids.
    """

    indptr: np.ndarray  # int64 [n_users + 1]
    indices: np.ndarray  # int64 [nnz]
    n_users: int
    n_items: int
    user_ids: np.ndarray = field(repr=False)  # original id of each dense user index
    item_ids: np.ndarray = field(repr=False)  # original id of each dense item index
    name: str = ""

    def __post_init__(self) -> None:
        if self.indptr.shape != (self.n_users + 1,):
            raise ValueError(f"indptr has shape {self.indptr.shape}, expected ({self.n_users + 1},)")
        if int(self.indptr[-1]) != self.indices.shape[0]:
            raise ValueError("indptr[-1] must equal the number of stored interactions")
        if len(self.user_ids) != self.n_users or len(self.item_ids) != self.n_items:
            raise ValueError("id maps must have one entry per user and per item")

    @classmethod
    def from_pairs(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        *,
        n_users: int | None = None,
        n_items: int | None = None,
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
        name: str = "",
    ) -> Interactions:
        """Build from dense 0-based (user, item) index pairs; duplicate pairs count once."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        n_users = int(users.max()) + 1 if n_users is None else n_users
        n_items = int(items.max()) + 1 if n_items is None else n_items
        m = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
        m.sum_duplicates()
        m.sort_indices()
        return cls(
            indptr=m.indptr.astype(np.int64),
            indices=m.indices.astype(np.int64),
            n_users=n_users,
            n_items=n_items,
            user_ids=np.arange(n_users) if user_ids is None else np.asarray(user_ids),
            item_ids=np.arange(n_items) if item_ids is None else np.asarray(item_ids),
            name=name,
        )

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def counts(self) -> np.ndarray:
        """Number of items of every user."""
        return np.diff(self.indptr)

    def user_of_entry(self) -> np.ndarray:
        """The user index of every stored interaction (COO row array)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.counts())

    def items_of(self, u: int) -> np.ndarray:
        return self.indices[self.indptr[u] : self.indptr[u + 1]]

    def to_scipy(self) -> sp.csr_matrix:
        data = np.ones(self.nnz, dtype=np.float32)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(self.n_users, self.n_items))

    def item_popularity(self) -> np.ndarray:
        return np.bincount(self.indices, minlength=self.n_items)

    def stats(self) -> dict[str, int | float | str]:
        """Users / items (catalog) / interactions, as paper 000 Appendix G reports them."""
        density = self.nnz / (self.n_users * self.n_items) if self.n_users and self.n_items else 0.0
        return {
            "dataset": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.nnz,
            "items_with_interactions": int((self.item_popularity() > 0).sum()),
            "density": density,
        }


@dataclass(frozen=True)
class Split:
    """A train/test partition of the same users and items (DESIGN.md section 3)."""

    train: Interactions
    test: Interactions
    seed: int
    test_fraction: float

    def most_seen(self) -> int:
        """The most items one user with test items holds, train and test together (0 without such
        users): what leave-one-out's negatives are drawn around."""
        test = self.test.counts()
        counts = (self.train.counts() + test)[test > 0]
        return int(counts.max()) if counts.size else 0

    @functools.cached_property
    def fingerprint(self) -> str:
        """What a run's checkpoint was trained and split on: shape and a sha256 of both sides' CSR
        arrays. A data file edited after training silently gave another split to resume or to
        evaluate on (another P@K, no message); a checkpoint records this and is refused on a change.
        Hashed once per split (every checkpoint save reads it)."""
        digest = hashlib.sha256()
        for part in (self.train, self.test):
            for x in (part.indptr, part.indices):
                digest.update(np.ascontiguousarray(x, dtype=np.int64).tobytes())
        t = self.train
        return f"{t.n_users} users, {t.n_items} items, {t.nnz + self.test.nnz} interactions, {digest.hexdigest()[:16]}"
