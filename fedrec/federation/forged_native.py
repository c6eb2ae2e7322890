"""``forged_distance`` (fedrec.federation.forged) as one C pass over the Byzantine uploads: per upload, its
reconstructed gradient's rows and its client's own gradient's rows merged by row id (both strictly
increasing within an upload), ``sum (g~ - g)^2`` in float64 (a row listed on one side only counts as
its square), then the square root. torch makes ~20 float64 operations over ``[K, d]`` copies of it a
round (a tenth of an attacked Citeulike-a round); this reads each value once.

The sum is taken in eight fixed lanes (column ``c`` into lane ``c mod 8``, the lanes added in order at
the end), so it is the same on every call and needs no cancellation (the torch way subtracts the
squares at the client's own rows from the total): the two agree to float64 round-off
(``tests/test_forged_and_outliers.py``), not bit for bit. An infinite reconstructed value gives an
infinite distance (the torch way's ``inf - inf`` made it NaN) unless the client's own gradient is
infinite at the same entry (``inf - inf``: NaN), and a NaN gives NaN. Where it does not apply (other
devices, row lists that are not strictly increasing, no C compiler) the caller's torch way runs.
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

/* 1 when ptr rises from 0 to K and the rows of each segment are strictly increasing (the offsets are
   all checked before any row is read) */
static int rising(const int64_t *ptr, int64_t b, int64_t K, const int64_t *rows) {
    if (ptr[0] != 0 || ptr[b] != K) return 0;
    for (int64_t i = 0; i < b; ++i)
        if (ptr[i + 1] < ptr[i]) return 0;
    for (int64_t i = 0; i < b; ++i)
        for (int64_t e = ptr[i] + 1; e < ptr[i + 1]; ++e)
            if (rows[e] <= rows[e - 1]) return 0;
    return 1;
}

/* lane[k mod 8] += X(k)^2 over the columns k in order, in blocks of 8 (which the compiler vectorises);
   X one of the three below, of the rows a (reconstructed) and gg (the client's own) */
#define ADD(X)                                                                                   \
    {                                                                                            \
        int64_t k = 0;                                                                           \
        for (; k + 8 <= d; k += 8)                                                               \
            for (int j = 0; j < 8; ++j) { const double x = X(k + j); lane[j] += x * x; }         \
        for (; k < d; ++k) { const double x = X(k); lane[k & 7] += x * x; }                      \
    }
#define BOTH(k) ((double)a[k] - (double)gg[k])
#define A_ONLY(k) ((double)a[k])
#define G_ONLY(k) ((double)gg[k])

/* out[i] = sqrt(sum over the merged rows of upload pick[i] and client i of (a - g)^2), a the
   reconstructed row (0 where the upload does not list it), g the client's own (0 where it has none).
   Returns 0, or -1 (nothing written) when a ptr does not rise from 0 to its K, rows are not strictly
   increasing, or a pick lies outside [0, nu). */
#define DIST(NAME, T)                                                                            \
int64_t NAME(double *out, int64_t b, const int64_t *pick, int64_t nu, const int64_t *uptr,        \
             const int64_t *urows, int64_t K, const T *rec, const int64_t *optr,                 \
             const int64_t *orows, int64_t Ko, const T *g, int64_t d) {                          \
    if (!rising(uptr, nu, K, urows) || !rising(optr, b, Ko, orows)) return -1;                  \
    for (int64_t i = 0; i < b; ++i)                                                             \
        if (pick[i] < 0 || pick[i] >= nu) return -1;                                            \
    for (int64_t i = 0; i < b; ++i) {                                                           \
        double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                              \
        int64_t p = uptr[pick[i]], q = optr[i];                                                 \
        const int64_t pe = uptr[pick[i] + 1], qe = optr[i + 1];                                 \
        while (p < pe || q < qe) {                                                              \
            const int take_a = p < pe && (q >= qe || urows[p] <= orows[q]);                     \
            const int take_g = q < qe && (p >= pe || orows[q] <= urows[p]);                     \
            const T *a = rec + p * d, *gg = g + q * d;                                          \
            if (take_a && take_g) ADD(BOTH)                                                     \
            else if (take_a) ADD(A_ONLY)                                                        \
            else ADD(G_ONLY)                                                                    \
            p += take_a;                                                                        \
            q += take_g;                                                                        \
        }                                                                                       \
        double s = 0;                                                                           \
        for (int j = 0; j < 8; ++j) s += lane[j];                                               \
        out[i] = sqrt(s);                                                                       \
    }                                                                                           \
    return 0;                                                                                   \
}

DIST(fedrec_forged_f32, float)
DIST(fedrec_forged_f64, double)

/* out[owner[e]] += sum over row e's columns of x^2 (float64, the eight lanes of ADD), in entry order;
   out [n] zeroed here. Returns 0, or -1 (nothing written) when an owner lies outside [0, n). */
#define ONLY(k) ((double)a[k])
#define SQ(NAME, T)                                                                              \
int64_t NAME(double *out, int64_t n, const int64_t *owner, int64_t K, const T *x, int64_t d) {   \
    for (int64_t e = 0; e < K; ++e)                                                             \
        if (owner[e] < 0 || owner[e] >= n) return -1;                                           \
    for (int64_t i = 0; i < n; ++i) out[i] = 0;                                                 \
    for (int64_t e = 0; e < K; ++e) {                                                           \
        double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                              \
        const T *a = x + e * d;                                                                 \
        ADD(ONLY)                                                                               \
        double s = 0;                                                                           \
        for (int j = 0; j < 8; ++j) s += lane[j];                                               \
        out[owner[e]] += s;                                                                     \
    }                                                                                           \
    return 0;                                                                                   \
}

SQ(fedrec_sq_norms_f32, float)
SQ(fedrec_sq_norms_f64, double)
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C pass compiled for this process (fedrec.native), or None."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    args = [p, i64, p, i64, p, p, i64, p, p, p, i64, p, i64]
    sq = [p, i64, p, i64, p, i64]  # out, n, owner, K, x, d
    return load(
        _C,
        {
            "fedrec_forged_f32": (i64, args), "fedrec_forged_f64": (i64, args),
            "fedrec_sq_norms_f32": (i64, sq), "fedrec_sq_norms_f64": (i64, sq),
        },
    )  # fmt: skip


def sq_norms(owner: Tensor, values: Tensor, n: int) -> Tensor | None:
    """``[n]`` float64: per owner the sum of its rows' squares (``segment_sq_norms``), each row summed in
    the eight lanes of the distances (equal to the torch way to float64 round-off); None where the C loop
    does not apply (not the CPU, not float32 / float64 ``[K, d]`` values, no compiler)."""
    lib = native()
    if (
        lib is None
        or owner.device.type != "cpu"
        or owner.dtype != torch.int64
        or values.device.type != "cpu"
        or values.dtype not in (torch.float32, torch.float64)
        or values.dim() != 2
        or owner.shape != values.shape[:1]
    ):
        return None
    owner, values = owner.contiguous(), values.contiguous()
    out = torch.empty(n, dtype=torch.float64)
    fn = lib.fedrec_sq_norms_f32 if values.dtype == torch.float32 else lib.fedrec_sq_norms_f64
    if fn(out.data_ptr(), n, owner.data_ptr(), owner.shape[0], values.data_ptr(), values.shape[1]) < 0:
        raise IndexError(f"segment norms: an owner outside [0, {n})")
    return out


def distances(
    uptr: Tensor,
    urows: Tensor,
    rec: Tensor,
    optr: Tensor,
    orows: Tensor,
    g: Tensor,
    pick: Tensor | None = None,
) -> Tensor | None:
    """``[b]`` float64 ``|g~_i - g_i|`` (the module docstring): the reconstructed rows ``rec`` at
    ``urows`` of upload ``pick[i]`` (segments ``uptr``; ``pick`` default ``0 .. b-1``), client ``i``'s
    own ``g[optr[i]:optr[i+1]]`` at ``orows``; None where the C pass does not apply."""
    lib = native()
    b = optr.shape[0] - 1
    if pick is None:
        pick = torch.arange(max(b, 0))
    ints = (uptr, urows, optr, orows, pick)
    if (
        lib is None
        or b < 0
        or uptr.shape[0] < 1
        or pick.shape != (b,)
        or any(x.device.type != "cpu" or x.dtype != torch.int64 or x.dim() != 1 for x in ints)
        or any(x.device.type != "cpu" or x.dim() != 2 or not x.is_floating_point() for x in (rec, g))
        or rec.shape[1] != g.shape[1]
        or rec.shape[0] != urows.shape[0]
        or g.shape[0] != orows.shape[0]
    ):
        return None
    dtype = torch.float32 if rec.dtype == g.dtype == torch.float32 else torch.float64
    rec, g = rec.to(dtype).contiguous(), g.to(dtype).contiguous()
    uptr, urows, optr, orows, pick = (x.contiguous() for x in ints)
    out = torch.empty(b, dtype=torch.float64)
    fn = lib.fedrec_forged_f32 if dtype == torch.float32 else lib.fedrec_forged_f64
    status = fn(
        out.data_ptr(), b, pick.data_ptr(), uptr.shape[0] - 1, uptr.data_ptr(), urows.data_ptr(),
        urows.shape[0], rec.data_ptr(), optr.data_ptr(), orows.data_ptr(), orows.shape[0], g.data_ptr(),
        rec.shape[1],
    )  # fmt: skip
    return out if status == 0 else None
