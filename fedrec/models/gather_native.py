"""``gather_users`` (fedrec.models.batch) as two C loops, for int64 CSR tensors and user ids on the CPU.

torch slices a round's users out of the CSR matrix with ~12 operations (a cumulative sum, a
``repeat_interleave``, three gathers and the arithmetic between them), each a dispatch on a round's
few users. Here one loop writes ``ptr`` and returns the number of entries, and after the allocation a
second copies each user's slice of ``indices`` and writes its owner: the same three tensors, element
for element (``tests/test_gather_native.py``).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.native import load

Tensor = torch.Tensor

_C = r"""
#include <stdint.h>
#include <string.h>

/* ptr[0] = 0, ptr[b + 1] = ptr[b] + indptr[users[b] + 1] - indptr[users[b]]; returns ptr[B], or -1
   (nothing to trust) when a user lies outside [0, n_users) or indptr falls or leaves [0, nnz]. */
int64_t fedrec_gather_ptr(const int64_t *indptr, int64_t n_users, int64_t nnz, const int64_t *users,
                          int64_t B, int64_t *ptr) {
    ptr[0] = 0;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t u = users[b];
        if (u < 0 || u >= n_users) return -1;
        const int64_t lo = indptr[u], hi = indptr[u + 1];
        if (lo < 0 || hi < lo || hi > nnz) return -1;
        ptr[b + 1] = ptr[b] + (hi - lo);
    }
    return ptr[B];
}

/* items[ptr[b] + j] = indices[indptr[users[b]] + j], owner of those entries b (after fedrec_gather_ptr). */
void fedrec_gather_items(const int64_t *indptr, const int64_t *indices, const int64_t *users, int64_t B,
                         const int64_t *ptr, int64_t *items, int64_t *owner) {
    for (int64_t b = 0; b < B; ++b) {
        const int64_t n = ptr[b + 1] - ptr[b];
        if (n > 0) memcpy(items + ptr[b], indices + indptr[users[b]], (size_t)n * sizeof(int64_t));
        for (int64_t j = ptr[b]; j < ptr[b + 1]; ++j) owner[j] = b;
    }
}
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C loops compiled for this process (fedrec.native), or None."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    return load(
        _C,
        {
            "fedrec_gather_ptr": (i64, [p, i64, i64, p, i64, p]),
            "fedrec_gather_items": (None, [p, p, p, i64, p, p, p]),
        },
    )


def gather_users_native(
    indptr: Tensor, indices: Tensor, users: Tensor
) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(ptr, items, owner)`` of ``gather_users``, or None where the C loops do not apply (no compiler,
    a tensor not int64 on the CPU or not 1-D, a user outside the matrix, an ``indptr`` that does not
    rise within ``indices``): torch then does it, and says what is wrong."""
    lib = native()
    if (
        lib is None
        or any(
            x.device.type != "cpu" or x.dtype != torch.int64 or x.dim() != 1 for x in (indptr, indices, users)
        )
        or indptr.shape[0] < 1
    ):
        return None
    indptr, indices, users = indptr.contiguous(), indices.contiguous(), users.contiguous()
    B = users.shape[0]
    ptr = torch.empty(B + 1, dtype=torch.int64)
    H = lib.fedrec_gather_ptr(
        indptr.data_ptr(), indptr.shape[0] - 1, indices.shape[0], users.data_ptr(), B, ptr.data_ptr()
    )
    if H < 0:
        return None
    items, owner = torch.empty(H, dtype=torch.int64), torch.empty(H, dtype=torch.int64)
    lib.fedrec_gather_items(
        indptr.data_ptr(), indices.data_ptr(), users.data_ptr(), B, ptr.data_ptr(), items.data_ptr(),
        owner.data_ptr(),
    )  # fmt: skip
    return ptr, items, owner
