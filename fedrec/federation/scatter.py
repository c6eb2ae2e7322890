"""The aggregation's scatter ``D[r] += w_i (X_i[r] - D[r])`` over a round's listed rows (fedrec.federation
.server, ``_add_terms``) as one C loop on float32 tables: the terms from ``D`` before any is added,
then added in upload order, the operations torch's ``(X - D.index_select(0, idx)) * w`` and
``index_add_`` make (a float32 subtraction, a multiplication, and the additions in index order at one
thread), so the tables come out bit for bit the same, in two passes over the rows instead of five.
None where no C compiler works, off the CPU, or for other dtypes: the caller's torch path runs."""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.native import load

Tensor = torch.Tensor

_C = r"""
#include <stdint.h>

/* Returns 0, or -1 (nothing written) when a row index lies outside [0, n) or an owner outside [0, nw). */
int64_t fedrec_scatter_f32(float *D, int64_t n, int64_t d, const int64_t *idx, const int64_t *owner,
                           const float *w, int64_t nw, const float *X, int64_t K, float *buf) {
    for (int64_t e = 0; e < K; ++e)
        if (idx[e] < 0 || idx[e] >= n || owner[e] < 0 || owner[e] >= nw) return -1;
    for (int64_t e = 0; e < K; ++e) {            /* every term from D before any is added */
        const float we = w[owner[e]];
        const float *x = X + e * d, *row = D + idx[e] * d;
        float *b = buf + e * d;
        for (int64_t c = 0; c < d; ++c) b[c] = (x[c] - row[c]) * we;
    }
    for (int64_t e = 0; e < K; ++e) {            /* added in order, as index_add_ */
        float *row = D + idx[e] * d;
        const float *b = buf + e * d;
        for (int64_t c = 0; c < d; ++c) row[c] = row[c] + b[c];
    }
    return 0;
}
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C scatter compiled for this process (fedrec.native), or None."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    return load(_C, {"fedrec_scatter_f32": (i64, [p, i64, i64, p, p, p, i64, p, i64, p])})


def scatter_terms(D: Tensor, idx: Tensor, owner: Tensor, w: Tensor, X: Tensor) -> bool:
    """``D.index_add_(0, idx, (X - D.index_select(0, idx)) * w[owner][:, None])`` in place, all float32
    on the CPU (``w`` per upload, ``owner`` per entry); False (nothing done) where the C loop does not
    apply. An index outside ``D`` raises IndexError, as ``index_add_`` would."""
    lib = native()
    if (
        lib is None
        or D.device.type != "cpu"
        or not (D.dtype == X.dtype == w.dtype == torch.float32)
        or D.dim() != 2
        or not D.is_contiguous()
        or X.shape != (idx.shape[0], D.shape[1])
        or owner.shape != idx.shape
        or w.dim() != 1
    ):
        return False
    X, w = X.contiguous(), w.contiguous()
    idx, owner = idx.to(torch.int64).contiguous(), owner.to(torch.int64).contiguous()
    buf = torch.empty_like(X)
    status = lib.fedrec_scatter_f32(
        D.data_ptr(), D.shape[0], D.shape[1], idx.data_ptr(), owner.data_ptr(), w.data_ptr(), w.shape[0],
        X.data_ptr(), X.shape[0], buf.data_ptr(),
    )  # fmt: skip
    if status < 0:
        raise IndexError(f"scatter: a row outside [0, {D.shape[0]}) or an owner outside [0, {w.shape[0]})")
    return True
