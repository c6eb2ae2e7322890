"""A batch of users with their positives and sampled negatives, built without Python loops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CSRTensors:
    """A user x item CSR matrix as torch tensors on one device."""

    indptr: torch.Tensor  # int64 [n_users + 1]
    indices: torch.Tensor  # int64 [nnz]
    n_items: int

    @classmethod
    def from_interactions(cls, inter, device: str | torch.device = "cpu") -> CSRTensors:
        return cls(
            torch.as_tensor(np.asarray(inter.indptr), dtype=torch.int64, device=device),
            torch.as_tensor(np.asarray(inter.indices), dtype=torch.int64, device=device),
            int(inter.n_items),
        )

    @property
    def n_users(self) -> int:
        return self.indptr.shape[0] - 1

    def counts(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]


@dataclass(frozen=True)
class UserBatch:
    """``B`` users and all their items, flat: ``items[ptr[b]:ptr[b+1]]`` belong to ``users[b]``.

    ``owner[h]`` is the batch position of the user of entry ``h``; items are sorted within a user.
    """

    users: torch.Tensor  # [B] global user ids
    ptr: torch.Tensor  # [B + 1]
    items: torch.Tensor  # [H]
    owner: torch.Tensor  # [H]

    @property
    def size(self) -> int:
        return self.users.shape[0]

    def counts(self) -> torch.Tensor:
        return self.ptr[1:] - self.ptr[:-1]


def gather_users(csr: CSRTensors, users: torch.Tensor) -> UserBatch:
    """Slice the rows ``users`` out of ``csr`` (vectorised segment gather)."""
    starts = csr.indptr[users]
    counts = csr.indptr[users + 1] - starts
    ptr = torch.zeros(users.shape[0] + 1, dtype=torch.int64, device=users.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    owner = torch.repeat_interleave(torch.arange(users.shape[0], device=users.device), counts)
    offset = torch.arange(owner.shape[0], device=users.device) - ptr[:-1][owner]
    items = csr.indices[starts[owner] + offset]
    return UserBatch(users=users, ptr=ptr, items=items, owner=owner)


def sample_negatives(
    batch: UserBatch, n_items: int, n_neg: int, generator: torch.Generator, max_rounds: int = 1000
) -> torch.Tensor:
    """``n_neg`` uniform items per positive that are not positives of its user: ``[H, n_neg]``.

    Rejection sampling: every draw that hits a positive is redrawn, all at once per round; the loop
    runs over rounds (a handful), never over users.
    """
    device = batch.items.device
    if bool((batch.counts() >= n_items).any()):
        raise ValueError("a user has interacted with every item: no negative can be sampled")
    keys = batch.owner * n_items + batch.items  # sorted: owners ascend, items ascend within a user
    out = torch.randint(n_items, (batch.items.shape[0], n_neg), generator=generator, device=device)
    owner = batch.owner[:, None].expand_as(out)
    bad = _is_positive(keys, owner * n_items + out)
    for _ in range(max_rounds):
        if not bool(bad.any()):
            return out
        redraw = torch.randint(n_items, (int(bad.sum()),), generator=generator, device=device)
        out[bad] = redraw
        bad_idx = bad.nonzero(as_tuple=True)
        bad[bad_idx] = _is_positive(keys, owner[bad_idx] * n_items + redraw)
    raise RuntimeError("negative sampling did not finish: users with almost every item positive")


def _is_positive(sorted_keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    pos = torch.searchsorted(sorted_keys, query).clamp(max=sorted_keys.shape[0] - 1)
    return sorted_keys[pos] == query
