"""``validate``'s value checks (fedrec.federation.validate) as one C pass over a batch of float32 uploads
on the CPU: non-finite values, rows out of range, rows not strictly increasing within an upload, an
``n_examples`` below 1 or above what the upload can claim, the first failing check winning and a code
already set staying, as the torch checks decide (``tests/test_validate_native.py`` compares them on
forged batches). torch makes ~40 small operations of it a round; this is one call. Where it does not
apply (another dtype or device, no C compiler) the caller's torch checks run.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.native import load

Tensor = torch.Tensor

_C = r"""
#include <math.h>
#include <stdint.h>

/* code[i] (int64, 0 = valid so far) of upload i, rows ptr[i] .. ptr[i+1] of rows and of the nt float32
   tables xs[0..nt-1] ([K, d] each): the first failing check of
   cf: a non-finite value, cr: a row outside [0, n_rows), cu: rows not strictly increasing,
   ci: ne < 1, ca: ne > max_examples or ne > the rows listed.
   Returns 0, or -1 (nothing written) when ptr does not rise from 0 to K. */
int64_t fedrec_validate_f32(int64_t *code, int64_t n, const int64_t *ptr, const int64_t *rows, int64_t K,
                            const float *const *xs, int64_t nt, int64_t d, const int64_t *ne,
                            int64_t n_rows, int64_t max_examples, int64_t cf, int64_t cr, int64_t cu,
                            int64_t ci, int64_t ca) {
    if (ptr[0] != 0 || ptr[n] != K) return -1;
    for (int64_t i = 0; i < n; ++i)
        if (ptr[i + 1] < ptr[i]) return -1;
    for (int64_t i = 0; i < n; ++i) {
        if (code[i] != 0) continue;
        const int64_t lo = ptr[i], hi = ptr[i + 1];
        int finite = 1;
        for (int64_t t = 0; t < nt && finite; ++t) {
            const float *x = xs[t] + lo * d;
            const int64_t len = (hi - lo) * d;
            int bad = 0;
            for (int64_t e = 0; e < len; ++e) bad |= !(fabsf(x[e]) < INFINITY);   /* NaN fails too */
            finite = !bad;
        }
        if (!finite) { code[i] = cf; continue; }
        int range = 1, sorted = 1;
        for (int64_t e = lo; e < hi; ++e) {
            range &= rows[e] >= 0 && rows[e] < n_rows;
            if (e > lo) sorted &= rows[e] > rows[e - 1];
        }
        if (!range) { code[i] = cr; continue; }
        if (!sorted) { code[i] = cu; continue; }
        if (ne[i] < 1) { code[i] = ci; continue; }
        if (ne[i] > max_examples || ne[i] > hi - lo) code[i] = ca;
    }
    return 0;
}
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C pass compiled for this process (fedrec.native), or None."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    args = [p, i64, p, p, i64, p, i64, i64, p, i64, i64, i64, i64, i64, i64, i64]
    return load(_C, {"fedrec_validate_f32": (i64, args)})


def value_checks(
    code: Tensor, ptr: Tensor, rows: Tensor, tables: list[Tensor], ne: Tensor, n_rows: int,
    max_examples: int, codes: tuple[int, int, int, int, int],
) -> bool:  # fmt: skip
    """The checks of the module docstring into ``code`` (int64 ``[n]``) in place, ``codes`` the reason
    codes of the five checks in order; False (nothing written) where the C pass does not apply."""
    lib = native()
    n = code.shape[0]
    ints = (code, ptr, rows, ne)
    if (
        lib is None
        or not tables
        or any(x.device.type != "cpu" or x.dtype != torch.int64 or x.dim() != 1 for x in ints)
        or not code.is_contiguous()
        or ptr.shape[0] != n + 1
        or ne.shape[0] != n
        or any(x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 for x in tables)
        or any(x.shape != tables[0].shape for x in tables)
        or tables[0].shape[0] != rows.shape[0]
    ):
        return False
    ptr, rows, ne = ptr.contiguous(), rows.contiguous(), ne.contiguous()
    tables = [x.contiguous() for x in tables]
    pointers = (ctypes.c_void_p * len(tables))(*(x.data_ptr() for x in tables))
    status = lib.fedrec_validate_f32(
        code.data_ptr(), n, ptr.data_ptr(), rows.data_ptr(), rows.shape[0], pointers, len(tables),
        tables[0].shape[1], ne.data_ptr(), int(n_rows), int(max_examples), *codes,
    )  # fmt: skip
    return status == 0
