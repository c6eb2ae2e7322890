"""``touched_rows`` (fedrec.models.bpr) as one C loop over a batch's users, for int64 batches on the CPU.

torch finds a round's touched ``(owner, row)`` pairs with ~10 operations and a sort of the whole round's
keys (``torch.unique``), ~3 % of an ML-100K round. A user's rows are three runs: the P rows of its
positives and the Q rows of its positives (each ascending: items are sorted within a user, which the
loop checks) and the P rows of its negatives (unsorted). Per user, the cheaper of two ways: where its
rows are many against the table (ML-100K), they are set as bits of a zeroed bitmap and read back in
order; otherwise the negatives' run is sorted (a bottom-up merge sort: no recursion, ``O(m log m)``
whatever the draws) and the three runs merged. Either way equal rows come out once, so the pairs are
sorted by owner, then row, and unique: ``torch.unique``'s result, element for element
(``tests/test_touched_native.py``). Owners are read from ``ptr``, which ``UserBatch.owner`` repeats.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.models.layout import TableLayout
from fedrec.native import load

Tensor = torch.Tensor

_C = r"""
#include <stdint.h>

/* The sorted unique rows of each user b of the batch (entries ptr[b]..ptr[b+1]-1 of items, sorted
   within a user; neg [H, n_neg]): P rows items + p_off and neg + p_off, and Q rows items + q_off
   where q_off >= 0. Writes (b, row) pairs, b ascending then row ascending, into owner_out / row_out
   (room for H (n_neg + 2) pairs) and returns their number; -1 (the caller falls back) when ptr does
   not rise from 0 to H or a row lies outside [0, n_rows). a and b: scratch of H n_neg entries each;
   bits: (n_rows + 63) / 64 zero words, left zero. A user whose rows times bitmap_ratio cover the
   bitmap's words takes the bitmap, any other the sort and merge: both give its rows ascending, once
   each. -1 also where a user's items do not ascend (the merge reads them as sorted runs). */
int64_t fedrec_touched_rows(const int64_t *ptr, int64_t B, const int64_t *items, int64_t H,
                            const int64_t *neg, int64_t n_neg, int64_t p_off, int64_t q_off,
                            int64_t n_rows, int64_t bitmap_ratio, int64_t *a, int64_t *b,
                            uint64_t *bits, int64_t *owner_out, int64_t *row_out) {
    if (B < 0 || ptr[0] != 0 || ptr[B] != H) return -1;
    for (int64_t u = 0; u < B; ++u)
        if (ptr[u + 1] < ptr[u]) return -1;
    const int64_t np_lo = -p_off, np_hi = n_rows - p_off;          /* item x is a row iff np_lo <= x < np_hi */
    const int64_t nq_lo = -q_off, nq_hi = n_rows - q_off;
    for (int64_t u = 0; u < B; ++u)                       /* items ascend within a user: the merge's runs */
        for (int64_t h = ptr[u] + 1; h < ptr[u + 1]; ++h)
            if (items[h] < items[h - 1]) return -1;
    for (int64_t h = 0; h < H; ++h) {
        if (items[h] < np_lo || items[h] >= np_hi) return -1;
        if (q_off >= 0 && (items[h] < nq_lo || items[h] >= nq_hi)) return -1;
    }
    for (int64_t e = 0; e < H * n_neg; ++e)
        if (neg[e] < np_lo || neg[e] >= np_hi) return -1;
    const int64_t words = (n_rows + 63) / 64, per = 1 + n_neg + (q_off >= 0);
    int64_t n = 0;
    for (int64_t u = 0; u < B; ++u) {
        const int64_t lo = ptr[u], hi = ptr[u + 1], m = (hi - lo) * n_neg;
        if (words <= bitmap_ratio * (hi - lo) * per) {
            /* rows as bits of a zeroed bitmap, read back in order and cleared: O(rows + n_rows / 64) */
            for (int64_t h = lo; h < hi; ++h) {
                const uint64_t r = (uint64_t)(items[h] + p_off);
                bits[r >> 6] |= (uint64_t)1 << (r & 63);
                if (q_off >= 0) {
                    const uint64_t s = (uint64_t)(items[h] + q_off);
                    bits[s >> 6] |= (uint64_t)1 << (s & 63);
                }
            }
            for (int64_t e = lo * n_neg; e < hi * n_neg; ++e) {
                const uint64_t r = (uint64_t)(neg[e] + p_off);
                bits[r >> 6] |= (uint64_t)1 << (r & 63);
            }
            for (int64_t w = 0; w < words; ++w) {
                uint64_t x = bits[w];
                if (!x) continue;
                bits[w] = 0;
                while (x) {
                    owner_out[n] = u;
                    row_out[n++] = w * 64 + __builtin_ctzll(x);
                    x &= x - 1;
                }
            }
            continue;
        }
        int64_t *x = a, *y = b;                           /* bottom-up merge sort of the negatives */
        for (int64_t e = 0; e < m; ++e) x[e] = neg[lo * n_neg + e];
        for (int64_t w = 1; w < m; w *= 2) {
            for (int64_t s = 0; s < m; s += 2 * w) {
                const int64_t mid = s + w < m ? s + w : m, end = s + 2 * w < m ? s + 2 * w : m;
                int64_t i = s, j = mid, k = s;
                while (i < mid && j < end) y[k++] = x[j] < x[i] ? x[j++] : x[i++];
                while (i < mid) y[k++] = x[i++];
                while (j < end) y[k++] = x[j++];
            }
            int64_t *tmp = x; x = y; y = tmp;
        }
        /* merge P rows of the positives, of the negatives (x), Q rows of the positives; equal rows once */
        const int64_t nq = q_off >= 0 ? hi - lo : 0, start = n;
        int64_t i = lo, j = 0, k = 0;
        while (i < hi || j < m || k < nq) {
            int64_t r = n_rows, w = -1;                   /* every row is below n_rows */
            if (i < hi && items[i] + p_off < r) { r = items[i] + p_off; w = 0; }
            if (j < m && x[j] + p_off < r) { r = x[j] + p_off; w = 1; }
            if (k < nq && items[lo + k] + q_off < r) { r = items[lo + k] + q_off; w = 2; }
            if (w == 0) ++i; else if (w == 1) ++j; else ++k;
            if (n == start || row_out[n - 1] != r) { owner_out[n] = u; row_out[n] = r; ++n; }
        }
    }
    return n;
}
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C loop compiled for this process (fedrec.native), or None."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    return load(
        _C, {"fedrec_touched_rows": (i64, [p, i64, p, i64, p, i64, i64, i64, i64, i64, p, p, p, p, p])}
    )


PATHS = {"auto": 2, "bitmap": 1 << 40, "sort": 0}  # bitmap_ratio: a user's rows x ratio >= the bitmap's words


def touched_rows_native(
    ptr: Tensor, items: Tensor, neg: Tensor, layout: TableLayout, path: str = "auto"
) -> tuple[Tensor, Tensor] | None:
    """``touched_rows``' ``(owner, row)`` pairs (the module docstring), or None where the C loop does not
    apply: no compiler, a tensor not int64 on the CPU, shapes that do not fit, a ``ptr`` that does not
    cover the entries, a user's items not ascending, a row outside the layout. ``path`` (tests): the
    bitmap or the sort for every user, instead of the cheaper for each."""
    lib = native()
    if (
        lib is None
        or any(x.device.type != "cpu" or x.dtype != torch.int64 for x in (ptr, items, neg))
        or ptr.dim() != 1
        or ptr.shape[0] < 1
        or items.dim() != 1
        or neg.dim() != 2
        or neg.shape[0] != items.shape[0]
        or "P" not in layout.ranges
        or layout.ranges.get("Q", (0, 0))[0] < 0  # -1 says "no Q" to the loop
    ):
        return None
    ptr, items, neg = ptr.contiguous(), items.contiguous(), neg.contiguous()
    H, n_neg = neg.shape
    q_off = layout.ranges["Q"][0] if "Q" in layout.ranges else -1
    scratch = torch.empty(2, max(H * n_neg, 1), dtype=torch.int64)
    bits = torch.zeros((layout.n_rows + 63) // 64, dtype=torch.int64)
    out = torch.empty(2, H * (n_neg + 2), dtype=torch.int64)
    n = lib.fedrec_touched_rows(
        ptr.data_ptr(), ptr.shape[0] - 1, items.data_ptr(), H, neg.data_ptr(), n_neg, layout.ranges["P"][0],
        q_off, layout.n_rows, PATHS[path], scratch[0].data_ptr(), scratch[1].data_ptr(), bits.data_ptr(),
        out[0].data_ptr(), out[1].data_ptr(),
    )  # fmt: skip
    if n < 0:
        return None
    return out[0, :n], out[1, :n]
