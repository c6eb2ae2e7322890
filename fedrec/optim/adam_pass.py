"""Adam's default pass over the whole table (``Adam.default_step``, paper 000 Eq. 2-6 with g = 0) as one
C loop: the server's ``DefaultPass`` when ``run.compile`` asks for the fused pass (fedrec.optim.fused).

Per element, in this order, each operation rounded to the table's dtype (the IEEE operations of the
compiled dense pass, and of the deferred replay, fedrec.federation.replay)::

    m' = b1 m;  v' = b2 v;  theta' = theta - eta_t * (m' / sqrt(v' + eps))

with ``eta_t`` (Eq. 4) rounded to the table's dtype first, as the compiled kernel takes it. So the
tables are those of inductor's kernel bit for bit (``tests/test_fused.py``), without its start-up
(tracing, compiling or loading a kernel in each process: ~1 s a grid cell) or its Python wrapper
(~0.2 ms a call, a twentieth of an ML-100K round). The pass is memory-bound: three tables read, three
written, one pass.

``adam_pass_with_terms`` is the same pass with the server's aggregation folded in (fedrec.federation
.server, the module docstring there): each listed row, right after its default, takes its uploads'
terms ``w_e (X_e - D)``, every term from the default before any is added and the terms added in upload
order, the float operations of the scatter (fedrec.federation.scatter) in its order. So the tables are
the pass-then-scatter ones bit for bit (``tests/test_fused.py``), and a listed row is read and written
once, while it is in cache, instead of a second time after the whole table has streamed past.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.native import load
from fedrec.optim.adam import Adam
from fedrec.optim.base import Rows

ROW_HELPERS = r"""
#include <stdint.h>

/* A row's copy and its terms r += (x - D) w, with restrict parameters (disjoint memory) so that the
   loops vectorise: written inline in a loop over rows, the compiler could not prove a row's buffers
   apart and ran them one element at a time. Shared by this pass and the deferred round write
   (fedrec.federation.replay), whose terms must be these operations. */
#define ROW_OPS(T)                                                                                \
static inline void copy_##T(T *restrict dst, const T *restrict src, int64_t d) {                 \
    for (int64_t c = 0; c < d; ++c) dst[c] = src[c];                                             \
}                                                                                                \
static inline void terms_##T(T *restrict r, const T *restrict x, const T *restrict D, T we,      \
                             int64_t d) {                                                        \
    for (int64_t c = 0; c < d; ++c) r[c] = r[c] + (x[c] - D[c]) * we;                            \
}
ROW_OPS(float)
ROW_OPS(double)
"""

_C = (
    ROW_HELPERS
    + r"""
#include <math.h>
#include <stdint.h>

/* Streaming stores: a table larger than the caches is written without first reading its old lines
   into the cache (a plain store reads each line it writes: a third more memory traffic for this pass).
   Only how values reach memory changes, never a value; where the compiler has no AVX, plain stores. */
#if defined(__AVX__)
#include <immintrin.h>
#define CAN_STREAM 1
static void stream_float(float *dst, const float *src, int64_t len) {     /* dst 32-byte aligned */
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
    for (; i < len; ++i) dst[i] = src[i];
}
static void stream_double(double *dst, const double *src, int64_t len) {
    int64_t i = 0;
    for (; i + 4 <= len; i += 4) _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
    for (; i < len; ++i) dst[i] = src[i];
}
static void fence(void) { _mm_sfence(); }
#else
#define CAN_STREAM 0
static void stream_float(float *dst, const float *src, int64_t len) { for (int64_t i = 0; i < len; ++i) dst[i] = src[i]; }
static void stream_double(double *dst, const double *src, int64_t len) { for (int64_t i = 0; i < len; ++i) dst[i] = src[i]; }
static void fence(void) {}
#endif
#define ALIGNED(p) (((uintptr_t)(p) & 31) == 0)
#define CHUNK 512

/* The default of elements i0 .. i0 + len into ot, om2, ov2 (restrict: new memory, so the loop
   vectorises without alias checks) */
#define DEFAULTS(T, SQRT, ot, om2, ov2, i0, len)                                                 \
    for (int64_t c = 0; c < (len); ++c) {                                                       \
        T m2 = m[(i0) + c] * b1, v2 = v[(i0) + c] * b2;                                          \
        T s = m2 / SQRT(v2 + eps);                                                              \
        (ot)[c] = th[(i0) + c] - eta * s;                                                       \
        (om2)[c] = m2;                                                                          \
        (ov2)[c] = v2;                                                                          \
    }

/* stream: write the new tables with streaming stores (chunks computed in a buffer on the stack) */
#define PASS(NAME, T, SQRT)                                                                      \
void NAME(const T *restrict th, const T *restrict m, const T *restrict v, T *restrict oth,       \
          T *restrict om, T *restrict ov, int64_t n, T eta, T b1, T b2, T eps, int stream) {    \
    if (!(stream && CAN_STREAM && ALIGNED(oth) && ALIGNED(om) && ALIGNED(ov))) {                \
        DEFAULTS(T, SQRT, oth, om, ov, 0, n)                                                    \
        return;                                                                                 \
    }                                                                                           \
    T bt[CHUNK], bm[CHUNK], bv[CHUNK];                                                          \
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {                                                 \
        const int64_t len = n - i0 < CHUNK ? n - i0 : CHUNK;                                    \
        T *restrict ot = bt, *restrict om2 = bm, *restrict ov2 = bv;                            \
        DEFAULTS(T, SQRT, ot, om2, ov2, i0, len)                                                \
        stream_##T(oth + i0, bt, len);                                                          \
        stream_##T(om + i0, bm, len);                                                           \
        stream_##T(ov + i0, bv, len);                                                           \
    }                                                                                           \
    fence();                                                                                    \
}

PASS(fedrec_adam_pass_f32, float, sqrtf)
PASS(fedrec_adam_pass_f64, double, sqrt)

/* The pass, then at each listed row its terms: entry e (row idx[e], weight w[owner[e]], uploaded rows
   X?[e]) adds w (X - D) to the row's default D, the entries of a row in increasing e (a linked list:
   head[row], next[e]); keep (per owner; NULL: all) leaves the entries of the other owners out, unread.
   Returns 0, or -1 (nothing written) when a kept entry's row lies outside [0, n) or an owner outside
   [0, nw). buf: 6 d scratch values (a row's defaults, from which every term is taken, and,
   streaming, the row as it is built). */
#define PASS_TERMS(NAME, T, SQRT)                                                                \
int64_t NAME(const T *restrict th, const T *restrict m, const T *restrict v, T *restrict oth,    \
             T *restrict om, T *restrict ov, int64_t n, int64_t d, T eta, T b1, T b2, T eps,     \
             const int64_t *idx, const int64_t *owner, const T *w, int64_t nw,                   \
             const T *restrict xth, const T *restrict xm, const T *restrict xv, int64_t K,       \
             int64_t *head, int64_t *next, T *restrict buf, int stream, const uint8_t *keep) {   \
    for (int64_t e = 0; e < K; ++e) {                                                           \
        if (owner[e] < 0 || owner[e] >= nw) return -1;                                          \
        if ((!keep || keep[owner[e]]) && (idx[e] < 0 || idx[e] >= n)) return -1;                \
    }                                                                                           \
    for (int64_t r = 0; r < n; ++r) head[r] = -1;                                               \
    for (int64_t e = K - 1; e >= 0; --e)                                                        \
        if (!keep || keep[owner[e]]) { next[e] = head[idx[e]]; head[idx[e]] = e; }              \
    stream = stream && CAN_STREAM && ALIGNED(oth) && ALIGNED(om) && ALIGNED(ov)                 \
             && (d * (int64_t)sizeof(T)) % 32 == 0;                                             \
    T *restrict dth = buf, *restrict dm = buf + d, *restrict dv = buf + 2 * d;                  \
    for (int64_t r = 0; r < n; ++r) {                                                           \
        const int64_t o = r * d;                                                                \
        T *restrict rt = stream ? buf + 3 * d : oth + o;                                        \
        T *restrict rm = stream ? buf + 4 * d : om + o;                                         \
        T *restrict rv = stream ? buf + 5 * d : ov + o;                                         \
        DEFAULTS(T, SQRT, rt, rm, rv, o, d)                                                     \
        int64_t e = head[r];                                                                    \
        if (e >= 0) {                                                                           \
            copy_##T(dth, rt, d); copy_##T(dm, rm, d); copy_##T(dv, rv, d);                     \
            for (; e >= 0; e = next[e]) {                                                       \
                const T we = w[owner[e]];                                                       \
                terms_##T(rt, xth + e * d, dth, we, d);                                         \
                terms_##T(rm, xm + e * d, dm, we, d);                                           \
                terms_##T(rv, xv + e * d, dv, we, d);                                           \
            }                                                                                   \
        }                                                                                       \
        if (stream) {                                                                           \
            stream_##T(oth + o, rt, d);                                                         \
            stream_##T(om + o, rm, d);                                                          \
            stream_##T(ov + o, rv, d);                                                          \
        }                                                                                       \
    }                                                                                           \
    if (stream) fence();                                                                        \
    return 0;                                                                                   \
}

PASS_TERMS(fedrec_adam_pass_terms_f32, float, sqrtf)
PASS_TERMS(fedrec_adam_pass_terms_f64, double, sqrt)

/* The uploads' theta as deltas from the round's default: out[e] = x[e] - D[idx[e]], D the pass's theta
   (the operations of DEFAULTS, in its order) at row idx[e]; tables read in place, nothing written to
   them. Returns 0, or -1 (nothing written) when a row lies outside [0, n). */
#define THETA_DELTAS(NAME, T, SQRT)                                                              \
int64_t NAME(const T *restrict th, const T *restrict m, const T *restrict v, int64_t n,          \
             int64_t d, T eta, T b1, T b2, T eps, const int64_t *idx, int64_t K,                 \
             const T *restrict x, T *restrict out) {                                             \
    for (int64_t e = 0; e < K; ++e)                                                             \
        if (idx[e] < 0 || idx[e] >= n) return -1;                                               \
    for (int64_t e = 0; e < K; ++e) {                                                           \
        if (e + 2 < K) /* a later row on its way from memory */                                 \
            for (int64_t c = 0; c < d; c += 64 / (int64_t)sizeof(T)) {                          \
                const int64_t q = idx[e + 2] * d + c;                                           \
                __builtin_prefetch(th + q); __builtin_prefetch(m + q); __builtin_prefetch(v + q);  \
            }                                                                                   \
        const int64_t o = idx[e] * d;                                                           \
        const T *restrict a = x + e * d;                                                        \
        T *restrict r = out + e * d;                                                            \
        for (int64_t c = 0; c < d; ++c) {                                                       \
            T m2 = m[o + c] * b1, v2 = v[o + c] * b2;                                           \
            T s = m2 / SQRT(v2 + eps);                                                          \
            r[c] = a[c] - (th[o + c] - eta * s);                                                \
        }                                                                                       \
    }                                                                                           \
    return 0;                                                                                   \
}

THETA_DELTAS(fedrec_adam_theta_deltas_f32, float, sqrtf)
THETA_DELTAS(fedrec_adam_theta_deltas_f64, double, sqrt)
"""
)

KEYS = ("theta", "m", "v")
# new tables of at least this many bytes (theta, m and v together) are written with streaming stores:
# measured on the 2-core machine (32 MiB L3), ML-100K's 2.6 MB pass is 1.6x slower streamed, Last.fm's
# 27 MB 1.35x and Citeulike-t's 40 MB 1.6x faster (benchmarks/bench_c_loops.py)
STREAM_BYTES = 8 << 20


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C pass compiled for this process (fedrec.native), or None."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    sig = {}
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        sig[f"fedrec_adam_pass_{suffix}"] = (
            None,
            [p, p, p, p, p, p, i64, real, real, real, real, ctypes.c_int],
        )
        # the tables (6), n, d, eta, b1, b2, eps, idx, owner, w, nw, X (3), K, head, next, buf, stream, keep
        terms = [p] * 6 + [i64, i64] + [real] * 4 + [p, p, p, i64, p, p, p, i64, p, p, p, ctypes.c_int, p]
        sig[f"fedrec_adam_pass_terms_{suffix}"] = (i64, terms)
        # theta, m, v, n, d, eta, b1, b2, eps, idx, K, x, out
        sig[f"fedrec_adam_theta_deltas_{suffix}"] = (
            i64,
            [p, p, p, i64, i64, real, real, real, real, p, i64, p, p],
        )
    return load(_C, sig)


def applies(rule: Any, tables: Rows) -> bool:
    """Exactly ``Adam`` (a subclass may change its step), its three tables on the CPU in one float
    dtype (float32 or float64) and one shape, and a C compiler (checked last: the first call compiles)."""
    if type(rule) is not Adam or set(tables) != set(KEYS):
        return False
    xs = [tables[k] for k in KEYS]
    return (
        all(x.device.type == "cpu" and x.dtype == xs[0].dtype for x in xs)
        and xs[0].dtype in (torch.float32, torch.float64)
        and xs[0].shape == xs[1].shape == xs[2].shape
        and native() is not None
    )


def adam_default_pass(rule: Adam, tables: Rows, eta_t: float) -> Rows:
    """``Adam.default_step(tables, eta_t)`` as the compiled kernel computes it (the module docstring),
    into new tables."""
    src = {k: tables[k].contiguous() for k in KEYS}
    out = {k: torch.empty_like(x, memory_format=torch.contiguous_format) for k, x in src.items()}
    dtype = src["theta"].dtype
    fn = native().fedrec_adam_pass_f32 if dtype == torch.float32 else native().fedrec_adam_pass_f64
    # ctypes rounds each Python float to the kernel's type (to nearest), as torch does for a float32 table
    fn(
        *(src[k].data_ptr() for k in KEYS), *(out[k].data_ptr() for k in KEYS), src["theta"].numel(),
        float(eta_t), rule.b1, rule.b2, rule.eps, streams(out),
    )  # fmt: skip
    return out


def streams(out: Rows) -> int:
    """1 where the new tables are large enough to be written with streaming stores (``STREAM_BYTES``):
    past the caches a plain store first reads the line it writes; within them it is faster."""
    return int(sum(x.numel() * x.element_size() for x in out.values()) >= STREAM_BYTES)


def adam_pass_with_terms(
    rule: Adam, tables: Rows, eta_t: float, idx: torch.Tensor, owner: torch.Tensor, w: torch.Tensor, X: Rows,
    keep: torch.Tensor | None = None,
) -> Rows | None:  # fmt: skip
    """``adam_default_pass`` and then, at each entry ``e``, ``D[idx[e]] += w[owner[e]] (X[e] - D[idx[e]])``
    (``D`` the default before any term; the terms of a row in entry order) for every key, in one pass
    (the module docstring): ``tables`` ``[n, d]``, ``idx`` and ``owner`` ``[K]``, ``w`` per owner, ``X``
    ``[K, d]`` per key, all of the tables' dtype; ``keep`` (bool per owner) adds only the kept owners'
    entries (the others are not read: what selecting the kept uploads first gives, without the copy).
    None (nothing done) where the shapes or dtypes do not fit; a kept row or an owner outside raises
    IndexError before anything is written."""
    if not applies(rule, tables):  # theta, m and v of one shape and float dtype on the CPU
        return None
    src = {k: tables[k].contiguous() for k in KEYS}
    theta = src["theta"]
    dtype = theta.dtype
    if theta.dim() != 2 or set(X) != set(KEYS) or w.dim() != 1 or w.dtype != dtype or w.device.type != "cpu":
        return None
    n, d = theta.shape
    K = idx.shape[0]
    xs = {k: X[k].contiguous() for k in KEYS}
    if (
        any(x.shape != (K, d) or x.dtype != dtype or x.device.type != "cpu" for x in xs.values())
        or idx.shape != (K,)
        or owner.shape != (K,)
        or idx.device.type != "cpu"
        or owner.device.type != "cpu"
        or (
            keep is not None
            and (keep.shape != w.shape or keep.dtype != torch.bool or keep.device.type != "cpu")
        )
    ):
        return None
    idx, owner, w = idx.to(torch.int64).contiguous(), owner.to(torch.int64).contiguous(), w.contiguous()
    kept = None if keep is None else keep.to(torch.uint8).contiguous()
    out = {k: torch.empty_like(x, memory_format=torch.contiguous_format) for k, x in src.items()}
    links = torch.empty(n + K, dtype=torch.int64)
    buf = torch.empty(6 * d, dtype=dtype)
    lib = native()
    fn = lib.fedrec_adam_pass_terms_f32 if dtype == torch.float32 else lib.fedrec_adam_pass_terms_f64
    status = fn(
        *(src[k].data_ptr() for k in KEYS), *(out[k].data_ptr() for k in KEYS), n, d,
        float(eta_t), rule.b1, rule.b2, rule.eps, idx.data_ptr(), owner.data_ptr(), w.data_ptr(), w.shape[0],
        *(xs[k].data_ptr() for k in KEYS), K, links.data_ptr(), links.data_ptr() + 8 * n, buf.data_ptr(),
        streams(out), None if kept is None else kept.data_ptr(),
    )  # fmt: skip
    if status < 0:
        raise IndexError(f"aggregation: a row outside [0, {n}) or an owner outside [0, {w.shape[0]})")
    return out


def adam_theta_deltas(
    rule: Any, tables: Rows, t: int, idx: torch.Tensor, x: torch.Tensor
) -> torch.Tensor | None:
    """``x[e] - D[idx[e]]`` with ``D`` the theta of round ``t``'s ``adam_default_pass`` (the same
    operations, bit for bit), read at the listed rows of ``tables`` in place: the uploads' parameters as
    deltas from the round's default, a defense's ``theta`` space (fedrec.defenses.spaces). ``x`` ``[K, d]``
    of the tables' dtype; None where the loop does not apply (not Adam, not the CPU, another dtype or
    shape); a row outside the table raises IndexError."""
    if not applies(rule, tables):
        return None
    src = {k: tables[k].contiguous() for k in KEYS}
    theta = src["theta"]
    if theta.dim() != 2 or x.dtype != theta.dtype or x.device.type != "cpu" or idx.device.type != "cpu":
        return None
    n, d = theta.shape
    K = idx.shape[0]
    if x.shape != (K, d) or idx.shape != (K,):
        return None
    idx, x = idx.to(torch.int64).contiguous(), x.contiguous()
    out = torch.empty((K, d), dtype=theta.dtype)
    lib = native()
    fn = (
        lib.fedrec_adam_theta_deltas_f32 if theta.dtype == torch.float32 else lib.fedrec_adam_theta_deltas_f64
    )
    status = fn(
        *(src[k].data_ptr() for k in KEYS), n, d, float(rule.step_size(t)), rule.b1, rule.b2, rule.eps,
        idx.data_ptr(), K, x.data_ptr(), out.data_ptr(),
    )  # fmt: skip
    if status < 0:
        raise IndexError(f"theta deltas: a row outside [0, {n})")
    return out
