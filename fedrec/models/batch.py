"""A batch of users with their positives and sampled negatives, built without Python loops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.models.gather_native import gather_users_native
from fedrec.models.negatives_native import redraw_positives, unseen_draws, unseen_item


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
        return torch.diff(self.ptr)  # ptr[1:] - ptr[:-1] in one operation


def gather_users(csr: CSRTensors, users: torch.Tensor) -> UserBatch:
    """Slice the rows ``users`` out of ``csr`` (vectorised segment gather; on the CPU two C loops,
    fedrec.models.gather_native, the same tensors)."""
    native = gather_users_native(csr.indptr, csr.indices, users)
    if native is not None:
        return UserBatch(users=users, ptr=native[0], items=native[1], owner=native[2])
    return gather_users_torch(csr, users)


def gather_users_torch(csr: CSRTensors, users: torch.Tensor) -> UserBatch:
    """``gather_users`` as torch operations (any device)."""
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
    out = torch.randint(n_items, (batch.items.shape[0], n_neg), generator=generator, device=device)
    if redraw_positives(batch.ptr, batch.items, out, n_items, generator, max_rounds):
        return out  # the rounds below as C loops, the same draws (fedrec.models.negatives_native)
    keys = batch.owner * n_items + batch.items  # sorted: owners ascend, items ascend within a user
    owner = batch.owner[:, None].expand_as(out)
    bad = _is_positive(keys, owner * n_items + out)
    for _ in range(max_rounds):
        if not bool(bad.any()):
            return out
        redraw = torch.randint(n_items, (int(bad.sum()),), generator=generator, device=device)
        out[bad] = redraw
        bad_idx = bad.nonzero(as_tuple=True)
        bad[bad_idx] = _is_positive(keys, owner[bad_idx] * n_items + redraw)
    if bool(bad.any()):  # users with nearly every item positive: draw from what they have not seen
        flat = bad.view(-1).nonzero().flatten()
        out.view(-1)[flat] = unseen_draws(batch.ptr, batch.items, n_items, flat, n_neg, generator)
    return out


# -- keyed draws: a client's random numbers as a function of (key, client, position) -------------------
# A stream shared by all clients of a round (``sample_negatives``) makes a client's draws depend on who
# else was sampled, so a process that holds only some clients (a Flower SuperNode) cannot reproduce
# them. Keyed draws depend only on the round's key, the client's id and the entry's position: any split
# of the clients over processes draws the same numbers, still without a loop over clients.


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _M1, _M2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (``>>`` is arithmetic on signed integers)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (multiplication wraps modulo 2^64 in torch)."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def mix64_int(x: int) -> int:
    """``mix64`` of one integer, taken modulo 2^64, in Python's integers: the int64 ``mix64`` gives on
    it (without a dozen torch operations on a one-element tensor)."""
    mask = (1 << 64) - 1
    x = (x + _GOLDEN) & mask
    x = ((x ^ (x >> 30)) * _M1) & mask
    x = ((x ^ (x >> 27)) * _M2) & mask
    return _signed(x ^ (x >> 31))


def round_key(seed: int, t: int) -> int:
    """The key of round ``t`` under ``seed``: an int64 that keyed draws of that round start from.
    ``seed * 1_000_003 + t`` is taken modulo 2^64, so every seed the config allows (below 2^62) has a
    key; where it fits in an int64 the key is ``mix64`` of it."""
    return mix64_int(seed * 1_000_003 + t)


def keyed_below(h: torch.Tensor, n: int) -> torch.Tensor:
    """Integers in ``[0, n)`` from 64-bit hashes (53 high bits modulo n: bias below n / 2^53)."""
    return _shr(h, 11) % n


def sample_negatives_keyed(
    batch: UserBatch, n_items: int, n_neg: int, key: int, max_rounds: int = 1000
) -> torch.Tensor:
    """``sample_negatives`` with keyed draws: the ``a``-th draw of negative ``r`` of the ``j``-th positive
    of user ``u`` is a hash of ``(key, u, j, r, a)``, so a user's negatives do not depend on the other
    users in the batch. Same distribution: uniform over the user's non-positives."""
    device = batch.items.device
    if bool((batch.counts() >= n_items).any()):
        raise ValueError("a user has interacted with every item: no negative can be sampled")
    keys = batch.owner * n_items + batch.items
    H = batch.items.shape[0]
    j = torch.arange(H, device=device) - batch.ptr[:-1][batch.owner]
    per_user = mix64(batch.users[batch.owner] + key)
    r = torch.arange(n_neg, device=device)
    base = mix64(per_user[:, None] ^ (j[:, None] * n_neg + r[None, :]))  # [H, n_neg]
    out = keyed_below(mix64(base), n_items)
    owner = batch.owner[:, None].expand_as(out)
    bad = _is_positive(keys, owner * n_items + out)
    for attempt in range(1, max_rounds + 1):
        if not bool(bad.any()):
            return out
        bad_idx = bad.nonzero(as_tuple=True)
        redraw = keyed_below(mix64(base[bad_idx] + _signed(attempt * _GOLDEN % (1 << 64))), n_items)
        out[bad_idx] = redraw
        bad[bad_idx] = _is_positive(keys, owner[bad_idx] * n_items + redraw)
    if bool(bad.any()):  # nearly every item positive: the unseen item a keyed U in [0, 1) picks
        bad_idx = bad.nonzero(as_tuple=True)
        u = (_shr(mix64(base[bad_idx] ^ _signed(_M2)), 11)).double() / 2.0**53
        out[bad_idx] = unseen_item(batch.ptr, batch.items, n_items, bad_idx[0], u)
    return out


def _is_positive(sorted_keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    pos = torch.searchsorted(sorted_keys, query).clamp(max=sorted_keys.shape[0] - 1)
    return sorted_keys[pos] == query
