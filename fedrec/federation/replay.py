"""Adam's skipped default passes replayed on the rows a deferred server reads (fedrec.federation.deferred).

A row untouched for k rounds owes k zero-gradient steps (``Adam.default_step``, paper 000 Eq. 2-6 with
g = 0), pass ``p`` with its own step size ``eta_p``::

    m = b1 m;  v = b2 v;  theta = theta - eta_p * (m / sqrt(v + eps))

in that order, every operation rounded to the table's dtype (the op order of ``Adam._theta``, as the
compiled dense pass evaluates it: ``DefaultPass``).

**Frozen theta.** Once every coordinate satisfies ``eta_max |m| / sqrt(w) < ulp(theta) / 8`` (``eta_max``
the largest step size left, ``w = v + eps`` when ``b1^2 <= b2``, else ``eps``), no later step can move
theta: ``|m|`` shrinks by ``b1`` a step and, when ``b1^2 <= b2``, ``b1^i / sqrt(b2^i v + eps) <=
1 / sqrt(v + eps)`` (``b2^i v + eps >= b2^i (v + eps)``), so every later step is below a quarter of
the spacing of the floats around theta (an eighth, for the rounding of the step itself), and
``theta - step`` rounds to theta, in the dense pass as here. Past that point only ``m`` and ``v`` are
multiplied, still once a step (iterated rounding: not ``b^k`` in one go, which rounds differently).
After a zero-gradient update ``|m|`` falls by 0.9 a round, so a row freezes within ~100-250 steps:
a row read after k skipped rounds costs ``min(k, ~200)`` steps of arithmetic plus k multiplications.

The C loop steps a row's columns in blocks held in registers (64 float32 or 32 float64 columns): a
block freezes on the bound restricted to its own columns (each column's steps are its own), and its
frozen tail multiplies from registers rather than through memory each step, ~1.5-1.8x faster on rows
whose lag is in the hundreds; the values are those of the plain row-by-row loop bit for bit
(``tests/test_deferred.py``).

Two implementations, the same arithmetic: a loop in C (``native()``, compiled with the system's C
compiler into a fresh temporary folder when first needed; no fast-math, no contraction, so each
operation is the IEEE one torch's kernels compute), and ``replay_steps`` / ``decay_steps`` in torch,
which run where no C compiler is found (slower: a Python call per chunk of steps).
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import Any

import torch

from fedrec.native import load
from fedrec.optim.adam_pass import ROW_HELPERS

Tensor = torch.Tensor
CHUNK = 8  # steps a torch call applies
FREEZE_EVERY = 16  # steps between checks for frozen rows

_C = (
    ROW_HELPERS
    + r"""
#include <math.h>
#include <stdint.h>

/* one zero-gradient step of one value: m = b1 m, v = b2 v, theta -= e m / sqrt(v + eps) */
#define STEP(T, SQRT, TH, M, V, E)                                                                \
    {                                                                                            \
        T m2 = (M) * b1, v2 = (V) * b2;                                                          \
        T s = m2 / SQRT(v2 + eps);                                                               \
        (TH) = (TH) - (E) * s;                                                                   \
        (M) = m2;                                                                                \
        (V) = v2;                                                                                \
    }

/* one step of a row's d values in place (restrict: theta, m and v are disjoint, so it vectorises) */
#define STEPS(T, SQRT)                                                                            \
static inline void steps_##T(T *restrict t, T *restrict mm, T *restrict vv, int64_t d, T e, T b1, \
                             T b2, T eps) {                                                      \
    for (int64_t c = 0; c < d; ++c) STEP(T, SQRT, t[c], mm[c], vv[c], e)                        \
}
STEPS(float, sqrtf)
STEPS(double, sqrt)

/* a row's lines of the three tables on their way (to be written) while another row is computed */
#define PREFETCH(T)                                                                               \
static inline void prefetch_##T(const T *th, const T *m, const T *v, int64_t o, int64_t d) {     \
    for (int64_t c = 0; c < d; c += 64 / (int64_t)sizeof(T)) {                                   \
        __builtin_prefetch(th + o + c, 1); __builtin_prefetch(m + o + c, 1);                     \
        __builtin_prefetch(v + o + c, 1);                                                        \
    }                                                                                            \
}
PREFETCH(float)
PREFETCH(double)

/* one row's n steps from the step sizes e[0..n-1] in place, every operation its own IEEE rounding
   (rows too short to reach a freeze check: no check, no tail) */
#define ROW_DIRECT(NAME, T)                                                                       \
static void NAME(T *t, T *mm, T *vv, const T *e, int64_t n, int64_t d, T b1, T b2, T eps) {     \
    for (int64_t k = 0; k < n; ++k) steps_##T(t, mm, vv, d, e[k], b1, b2, eps);                  \
}

/* One row's lag steps, B columns at a time held in local arrays (registers) through all n steps. Every
   `every` steps a block checks whether it is frozen: no later step can move its theta (the module
   docstring's bound, column by column); from there its m and v are still multiplied once a step, from
   registers. A column's steps are its own (element-wise), so blocks may freeze one by one and the values
   are ROW_DIRECT's; zero checks at another cadence change nothing (0 and -0 stay themselves). Rows too
   short to reach a check take ROW_DIRECT. Padding columns hold 0, which every step leaves 0. */
#define ROW(NAME, DIRECT, T, SQRT, FABS, NEXT, B)                                                 \
static void NAME(T *t, T *mm, T *vv, const T *e, int64_t n, int64_t d, T b1, T b2, T eps,        \
                 double eta_max, int use_v, int64_t every) {                                     \
    if (n < every) {                                                                             \
        DIRECT(t, mm, vv, e, n, d, b1, b2, eps);                                                 \
        return;                                                                                  \
    }                                                                                            \
    for (int64_t c0 = 0; c0 < d; c0 += B) {                                                      \
        const int64_t w = d - c0 < B ? d - c0 : B;                                               \
        T lt[B], lm[B], lv[B];                                                                   \
        for (int64_t c = 0; c < B; ++c) {                                                        \
            lt[c] = c < w ? t[c0 + c] : 0;                                                       \
            lm[c] = c < w ? mm[c0 + c] : 0;                                                      \
            lv[c] = c < w ? vv[c0 + c] : 0;                                                      \
        }                                                                                        \
        int64_t k = 0;                                                                           \
        int frozen = 0;                                                                          \
        for (; k < n && !frozen; ++k) {                                                          \
            const T ek = e[k];                                                                   \
            for (int64_t c = 0; c < B; ++c) STEP(T, SQRT, lt[c], lm[c], lv[c], ek)               \
            if ((k + 1) % every == 0) {                                                          \
                frozen = 1;                                                                      \
                for (int64_t c = 0; c < w && frozen; ++c) {                                      \
                    T a = FABS(lt[c]);                                                           \
                    double ulp = (double)(NEXT(a, (T)INFINITY) - a);                             \
                    double ww = use_v ? (double)lv[c] + (double)eps : (double)eps;               \
                    frozen = lv[c] >= 0 && isfinite(ulp) &&                                      \
                             (double)FABS(lm[c]) * eta_max / sqrt(ww) < ulp / 8;                 \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        while (k < n) { /* frozen: theta stays, m and v still step */                           \
            const int64_t stop = n - k < 256 ? n : k + 256;                                      \
            for (; k < stop; ++k)                                                                \
                for (int64_t c = 0; c < B; ++c) {                                                \
                    lm[c] = lm[c] * b1;                                                          \
                    lv[c] = lv[c] * b2;                                                          \
                }                                                                                \
            int zero = 1; /* all zero: so is every later step */                                \
            for (int64_t c = 0; c < B; ++c) zero &= (lm[c] == 0) & (lv[c] == 0);                 \
            if (zero) break;                                                                     \
        }                                                                                        \
        for (int64_t c = 0; c < w; ++c) {                                                        \
            t[c0 + c] = lt[c];                                                                   \
            mm[c0 + c] = lm[c];                                                                  \
            vv[c0 + c] = lv[c];                                                                  \
        }                                                                                        \
    }                                                                                            \
}

#define REPLAY(NAME, ROWFN, T)                                                                    \
void NAME(T *th, T *m, T *v, const int64_t *lag, const int64_t *first, const T *eta,             \
          int64_t rows, int64_t d, T b1, T b2, T eps, double eta_max, int use_v, int64_t every) { \
    for (int64_t r = 0; r < rows; ++r)                                                           \
        ROWFN(th + r * d, m + r * d, v + r * d, eta + first[r], lag[r], d, b1, b2, eps,         \
              eta_max, use_v, every);                                                            \
}

/* rows idx[0..n-1] of the tables (repeats allowed) brought to `target` passes in place: row r owes
   passes clock[r] + 1 .. target (step sizes eta[clock[r] .. target - 1]); rows whose m and v are all +0
   are fixed points and only their clock moves. Returns the number of rows that were behind, or -1
   (nothing written) when an index lies outside [0, n_table). */
#define CATCHUP(NAME, ROWFN, T)                                                                   \
int64_t NAME(T *th, T *m, T *v, int64_t *clock, const int64_t *idx, int64_t n, int64_t n_table,  \
             int64_t d, int64_t target, const T *eta, T b1, T b2, T eps, double eta_max,         \
             int use_v, int64_t every) {                                                         \
    for (int64_t i = 0; i < n; ++i)                                                              \
        if (idx[i] < 0 || idx[i] >= n_table) return -1;                                          \
    int64_t behind = 0;                                                                          \
    for (int64_t i = 0; i < n; ++i) {                                                            \
        /* a later row's clock, then (when it is behind) its lines on their way while this one steps */ \
        if (i + 4 < n) __builtin_prefetch(clock + idx[i + 4]);                                   \
        if (i + 2 < n && clock[idx[i + 2]] < target) prefetch_##T(th, m, v, idx[i + 2] * d, d); \
        int64_t r = idx[i], c0 = clock[r];                                                       \
        if (c0 >= target) continue;                                                              \
        ++behind;                                                                                \
        T *mm = m + r * d, *vv = v + r * d;                                                      \
        int zero = 1;                                                                            \
        for (int64_t c = 0; c < d && zero; ++c)                                                  \
            zero = mm[c] == 0 && !signbit(mm[c]) && vv[c] == 0 && !signbit(vv[c]);               \
        if (!zero)                                                                               \
            ROWFN(th + r * d, mm, vv, eta + c0, target - c0, d, b1, b2, eps, eta_max, use_v,    \
                  every);                                                                        \
        clock[r] = target;                                                                       \
    }                                                                                            \
    return behind;                                                                               \
}

/* A deferred round's write, in place at the rows its kept entries list: entry e (row idx[e], weight
   w[owner[e]], uploaded rows x?[e]) counts when keep is NULL or keep[owner[e]]. Each listed row is caught
   up to `target` passes, copied to rows_out / b? (the state before the round, in the order rows_out
   lists them), stepped by the round's pass (step size eta_t) into D, and takes its entries' terms
   w (X - D) in increasing e: the IEEE operations of the dense pass with the terms folded in
   (fedrec.optim.adam_pass, PASS_TERMS), in its order. Then clock[row] = target + 1. head (n_table
   entries) is -1 on entry and on return; next has K. Returns the number of rows written, or -1 (nothing
   written) when a kept entry's row lies outside [0, n_table) or an owner outside [0, nw). buf: 3 d. */
#define ROUND(NAME, ROWFN, T)                                                               \
int64_t NAME(T *th, T *m, T *v, int64_t *clock, int64_t n_table, int64_t d, int64_t target,     \
             const T *eta, T b1, T b2, T eps, double eta_max, int use_v, int64_t every, T eta_t, \
             const int64_t *idx, const int64_t *owner, const T *w, int64_t nw,                   \
             const T *xth, const T *xm, const T *xv, int64_t K, const uint8_t *keep,             \
             int64_t *head, int64_t *next, int64_t *rows_out, T *bth, T *bm, T *bv,              \
             T *restrict buf) {                                                                  \
    for (int64_t e = 0; e < K; ++e) {                                                           \
        if (owner[e] < 0 || owner[e] >= nw) return -1;                                          \
        if ((!keep || keep[owner[e]]) && (idx[e] < 0 || idx[e] >= n_table)) return -1;          \
    }                                                                                           \
    int64_t nr = 0;                                                                             \
    for (int64_t e = K - 1; e >= 0; --e) {                                                      \
        if (keep && !keep[owner[e]]) continue;                                                  \
        const int64_t r = idx[e];                                                               \
        if (head[r] < 0) rows_out[nr++] = r;                                                    \
        next[e] = head[r];                                                                      \
        head[r] = e;                                                                            \
    }                                                                                           \
    T *restrict dth = buf, *restrict dm = buf + d, *restrict dv = buf + 2 * d;                  \
    for (int64_t j = 0; j < nr; ++j) {                                                          \
        const int64_t r = rows_out[j], c0 = clock[r];                                           \
        T *rt = th + r * d, *rm = m + r * d, *rv = v + r * d;                                   \
        if (c0 < target) {                                                                      \
            int zero = 1;                                                                       \
            for (int64_t c = 0; c < d && zero; ++c)                                             \
                zero = rm[c] == 0 && !signbit(rm[c]) && rv[c] == 0 && !signbit(rv[c]);          \
            if (!zero)                                                                          \
                ROWFN(rt, rm, rv, eta + c0, target - c0, d, b1, b2, eps, eta_max, use_v, every); \
        }                                                                                       \
        if (j + 1 < nr) prefetch_##T(th, m, v, rows_out[j + 1] * d, d); /* the next row's */     \
        copy_##T(bth + j * d, rt, d); copy_##T(bm + j * d, rm, d); copy_##T(bv + j * d, rv, d);  \
        copy_##T(dth, rt, d); copy_##T(dm, rm, d); copy_##T(dv, rv, d);                         \
        steps_##T(dth, dm, dv, d, eta_t, b1, b2, eps);                                          \
        copy_##T(rt, dth, d); copy_##T(rm, dm, d); copy_##T(rv, dv, d);                         \
        for (int64_t e = head[r]; e >= 0; e = next[e]) {                                        \
            const T we = w[owner[e]];                                                           \
            terms_##T(rt, xth + e * d, dth, we, d);                                             \
            terms_##T(rm, xm + e * d, dm, we, d);                                               \
            terms_##T(rv, xv + e * d, dv, we, d);                                               \
        }                                                                                       \
        head[r] = -1;                                                                           \
        clock[r] = target + 1;                                                                  \
    }                                                                                           \
    return nr;                                                                                  \
}

ROW_DIRECT(direct_f32, float)
ROW_DIRECT(direct_f64, double)
ROW(row_f32, direct_f32, float, sqrtf, fabsf, nextafterf, 64)
ROW(row_f64, direct_f64, double, sqrt, fabs, nextafter, 32)
REPLAY(fedrec_replay_f32, row_f32, float)
REPLAY(fedrec_replay_f64, row_f64, double)
CATCHUP(fedrec_catchup_f32, row_f32, float)
CATCHUP(fedrec_catchup_f64, row_f64, double)
ROUND(fedrec_round_rows_f32, row_f32, float)
ROUND(fedrec_round_rows_f64, row_f64, double)
"""
)


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C replay compiled for this process (fedrec.native), or None where no C compiler works."""
    p, i64, f64, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    signatures = {}
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        signatures[f"fedrec_replay_{suffix}"] = (
            None,
            [p, p, p, p, p, p, i64, i64, real, real, real, f64, flag, i64],
        )
        signatures[f"fedrec_catchup_{suffix}"] = (
            i64, [p, p, p, p, p, i64, i64, i64, i64, p, real, real, real, f64, flag, i64],
        )  # fmt: skip
        # tables (3), clock, n_table, d, target, eta, b1, b2, eps, eta_max, use_v, every, eta_t,
        # idx, owner, w, nw, X (3), K, keep, head, next, rows_out, before (3), buf
        signatures[f"fedrec_round_rows_{suffix}"] = (
            i64,
            [p, p, p, p, i64, i64, i64, p, real, real, real, f64, flag, i64, real, p, p, p, i64, p, p, p, i64]
            + [p] * 8,
        )
    return load(_C, signatures)


@functools.lru_cache(maxsize=64)  # asked on every catch-up (several a round); rules are frozen
def uses_v(rule: Any, dtype: torch.dtype) -> bool:
    """Whether the frozen-theta bound may use ``v + eps`` (``b1^2 <= b2`` in the tables' dtype, with a
    margin), else only ``eps`` (the module docstring)."""
    b1_t, b2_t = (float(torch.tensor(b, dtype=dtype)) for b in (rule.b1, rule.b2))
    return b1_t * b1_t * (1 + 1e-6) <= b2_t


def catch_up_native(
    tables: dict[str, Tensor],
    clock: Tensor,
    rows: Tensor,
    target: int,
    eta: Tensor,
    eta_max: float,
    rule: Any,
) -> int | None:
    """The C loop of a deferred store's catch-up (fedrec.federation.deferred): Adam's tables ``theta``,
    ``m``, ``v`` and their ``clock`` (passes applied per row) updated in place at ``rows`` (any order,
    repeats allowed) to ``target`` passes, pass ``p`` with step size ``eta[p - 1]``; ``eta_max`` bounds
    every step size (any bound keeps the result exact; a tight one freezes rows sooner). The same
    arithmetic as ``replay`` row by row, with no gathers, masks or copies. Returns the number of rows
    that were behind, or None where the C loop does not apply (no compiler, not the CPU, another dtype
    or layout); an index outside the table raises IndexError before anything is written."""
    th, m, v = tables["theta"], tables["m"], tables["v"]
    if not _native_fits(tables, clock, target, eta, rows):
        return None
    lib = native()
    rows = rows.reshape(-1).to(torch.int64).contiguous()
    fn = lib.fedrec_catchup_f32 if th.dtype == torch.float32 else lib.fedrec_catchup_f64
    behind = fn(
        th.data_ptr(), m.data_ptr(), v.data_ptr(), clock.data_ptr(), rows.data_ptr(), rows.shape[0],
        th.shape[0], th.shape[1], target, eta.data_ptr(), rule.b1, rule.b2, rule.eps, eta_max,
        int(uses_v(rule, th.dtype)), FREEZE_EVERY,
    )  # fmt: skip
    if behind < 0:
        raise IndexError(f"catch-up: a row index outside [0, {th.shape[0]})")
    return int(behind)


def round_rows_native(
    tables: dict[str, Tensor], clock: Tensor, head: Tensor, target: int, eta: Tensor, eta_max: float,
    rule: Any, eta_t: float, idx: Tensor, owner: Tensor, w: Tensor, X: dict[str, Tensor],
    keep: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]] | None:  # fmt: skip
    """A deferred round's write as one C loop, in place (fedrec.federation.deferred, ``DeferredStore
    .write_terms``): each row that a kept entry lists (entry ``e``: row ``idx[e]``, weight
    ``w[owner[e]]``, uploaded values ``X[key][e]``; ``keep`` bool per owner, None: all) is caught up to
    ``target`` passes, stepped by the round's default pass (step size ``eta_t``) into ``D``, and takes
    ``w_e (X_e - D)`` from its entries in entry order: what the dense pass with the terms folded in
    (fedrec.optim.adam_pass) computes at that row, bit for bit; its clock becomes ``target + 1``.
    ``head``: ``[n_table]`` int64 scratch, all -1 (left so). Returns the rows written (in the loop's order)
    and their values before the round, or None where the loop does not apply (as ``catch_up_native``,
    or ``X`` / ``w`` not of the tables' dtype and shape); a kept row or an owner outside raises
    IndexError before anything is written."""
    th = tables["theta"]
    if not _native_fits(tables, clock, target, eta, idx):
        return None
    n, d = th.shape
    K = idx.shape[0]
    keys = ("theta", "m", "v")
    xs = {k: X[k].contiguous() for k in keys} if set(X) == set(keys) else None
    if (
        xs is None
        or any(x.shape != (K, d) or x.dtype != th.dtype or x.device.type != "cpu" for x in xs.values())
        or idx.shape != (K,)
        or owner.shape != (K,)
        or owner.device.type != "cpu"
        or w.dim() != 1
        or w.dtype != th.dtype
        or w.device.type != "cpu"
        or head.shape != (n,)
        or head.dtype != torch.int64
        or not head.is_contiguous()
        or (
            keep is not None
            and (keep.shape != w.shape or keep.dtype != torch.bool or keep.device.type != "cpu")
        )
    ):
        return None
    storages = {x.untyped_storage().data_ptr() for x in tables.values()}
    if any(x.untyped_storage().data_ptr() in storages for x in xs.values()):
        return None  # uploads that are views of the tables would be read after the loop wrote them
    idx, owner, w = idx.to(torch.int64).contiguous(), owner.to(torch.int64).contiguous(), w.contiguous()
    kept = None if keep is None else keep.to(torch.uint8).contiguous()
    links = torch.empty(2 * K, dtype=torch.int64)  # next, then the rows written
    before = {k: torch.empty((K, d), dtype=th.dtype) for k in keys}
    buf = torch.empty(3 * d, dtype=th.dtype)
    lib = native()
    fn = lib.fedrec_round_rows_f32 if th.dtype == torch.float32 else lib.fedrec_round_rows_f64
    T = tables
    nr = fn(
        T["theta"].data_ptr(), T["m"].data_ptr(), T["v"].data_ptr(), clock.data_ptr(), n, d, target,
        eta.data_ptr(), rule.b1, rule.b2, rule.eps, eta_max, int(uses_v(rule, th.dtype)), FREEZE_EVERY,
        float(eta_t), idx.data_ptr(), owner.data_ptr(), w.data_ptr(), w.shape[0],
        *(xs[k].data_ptr() for k in keys), K, None if kept is None else kept.data_ptr(),
        head.data_ptr(), links.data_ptr(), links.data_ptr() + 8 * K,
        *(before[k].data_ptr() for k in keys), buf.data_ptr(),
    )  # fmt: skip
    if nr < 0:
        raise IndexError(f"aggregation: a row outside [0, {n}) or an owner outside [0, {w.shape[0]})")
    return links[K : K + nr], {k: x[:nr] for k, x in before.items()}


def _native_fits(tables: dict[str, Tensor], clock: Tensor, target: int, eta: Tensor, rows: Tensor) -> bool:
    """Whether the C loops apply to these tables (``catch_up_native``'s conditions)."""
    th, m, v = tables["theta"], tables["m"], tables["v"]
    return not (
        native() is None
        or th.device.type != "cpu"
        or th.dtype not in (torch.float32, torch.float64)
        or not (th.dtype == m.dtype == v.dtype == eta.dtype)
        or not (th.shape == m.shape == v.shape and th.dim() == 2)
        or not all(x.is_contiguous() for x in (th, m, v, clock, eta))
        or clock.dtype != torch.int64
        or target > eta.shape[0]
        or rows.device.type != "cpu"
        or rows.dtype not in (torch.int64, torch.int32)
    )


def replay_steps(
    theta: Tensor, m: Tensor, v: Tensor, lag: Tensor, first: Tensor, j0: int, eta: Tensor,
    b1: float, b2: float, eps: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``CHUNK`` steps on rows ``[n, d]`` (the torch path): row ``r``'s step ``j`` (``j = j0 .. j0 +
    CHUNK - 1``) applies when ``j < lag[r]``, with the step size ``eta[first[r] + j]``."""
    for j in range(j0, j0 + CHUNK):
        do = (j < lag)[:, None]
        eta_j = eta.index_select(0, torch.clamp(first + j, max=eta.shape[0] - 1))[:, None]
        m2 = m * b1
        v2 = v * b2
        th2 = theta - eta_j * (m2 / torch.sqrt(v2 + eps))
        theta, m, v = torch.where(do, th2, theta), torch.where(do, m2, m), torch.where(do, v2, v)
    return theta, m, v


def frozen_rows(theta: Tensor, m: Tensor, v: Tensor, eta_max: float, eps: float, use_v: bool) -> Tensor:
    """Per row, whether no later step can move theta (the module docstring's bound), in float64."""
    a = theta.abs()
    ulp = (torch.nextafter(a, torch.full_like(a, math.inf)) - a).double()
    w = v.double() + eps if use_v else torch.full_like(ulp, eps)
    # a finite spacing: at the largest float the next one up is inf, and a step can overflow theta
    return ((v >= 0) & torch.isfinite(ulp) & (m.abs().double() * eta_max / w.sqrt() < ulp / 8)).all(-1)


def replay(
    theta: Tensor, m: Tensor, v: Tensor, lag: Tensor, first: Tensor, eta: Tensor, rule: Any,
    inplace: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Rows ``[n, d]`` after ``lag[r]`` steps each, row ``r``'s ``j``-th with step size ``eta[first[r] +
    j]`` (``eta`` in the rows' dtype). New tensors, unless ``inplace`` and the inputs are contiguous
    (then they are the outputs: the caller's own copies)."""
    if not (
        theta.shape == m.shape == v.shape and theta.dim() == 2 and lag.shape == first.shape == theta.shape[:1]
    ):
        raise ValueError("replay: theta, m, v [n, d] and lag, first [n]")
    if not (theta.dtype == m.dtype == v.dtype == eta.dtype and eta.dim() == 1):
        raise ValueError("replay: theta, m, v and eta of one dtype")
    if lag.numel() and not (
        int(first.min()) >= 0 and int(lag.min()) >= 0 and int((first + lag).max()) <= eta.shape[0]
    ):
        raise ValueError(
            "replay: every row's steps must lie within eta (0 <= first, 0 <= lag, first + lag <= len)"
        )
    b1, b2 = rule.b1, rule.b2
    eps_t = float(torch.tensor(rule.eps, dtype=theta.dtype))  # eps as the dtype holds it
    eta_max = float(eta[int(first.min()) :].abs().max()) if lag.numel() else 0.0
    use_v = uses_v(rule, theta.dtype)
    theta, m, v = (x if inplace and x.is_contiguous() else x.contiguous().clone() for x in (theta, m, v))
    lag, first = lag.to(torch.int64).contiguous(), first.to(torch.int64).contiguous()
    lib = native() if theta.device.type == "cpu" and theta.dtype in (torch.float32, torch.float64) else None
    if lib is not None and theta.shape[0]:
        fn = lib.fedrec_replay_f32 if theta.dtype == torch.float32 else lib.fedrec_replay_f64
        eta = eta.contiguous()
        fn(
            theta.data_ptr(), m.data_ptr(), v.data_ptr(), lag.data_ptr(), first.data_ptr(), eta.data_ptr(),
            theta.shape[0], theta.shape[1], b1, b2, rule.eps, eta_max, int(use_v), FREEZE_EVERY,
        )  # fmt: skip
        return theta, m, v
    return _replay_torch(theta, m, v, lag, first, eta, b1, b2, rule.eps, eta_max, use_v, eps_t)


def _replay_torch(theta, m, v, lag, first, eta, b1, b2, eps, eta_max, use_v, eps_t):
    """``replay`` in torch: chunks of steps over the rows still stepping theta (a shrinking set),
    then the frozen rows' multiplications."""
    out_t, out_m, out_v = theta, m, v
    idx = torch.arange(theta.shape[0], device=theta.device)
    left = torch.zeros_like(lag)  # frozen rows: the multiplications still owed
    j = 0
    while idx.numel():
        th, mm, vv = out_t.index_select(0, idx), out_m.index_select(0, idx), out_v.index_select(0, idx)
        lag_i = lag.index_select(0, idx)
        th, mm, vv = replay_steps(th, mm, vv, lag_i, first.index_select(0, idx), j, eta, b1, b2, eps)
        out_t.index_copy_(0, idx, th)
        out_m.index_copy_(0, idx, mm)
        out_v.index_copy_(0, idx, vv)
        j += CHUNK
        going = lag_i > j
        if j % FREEZE_EVERY == 0:
            frozen = frozen_rows(th, mm, vv, eta_max, eps_t, use_v) & going
            left.index_copy_(0, idx[frozen], lag_i[frozen] - j)
            going = going & ~frozen
        idx = idx[going]
    # frozen rows: the rest of their steps on m and v alone
    done = 0
    while bool((left > done).any()):
        out_m, out_v = decay_steps(out_m, out_v, left - done, b1, b2)
        done += CHUNK
    return out_t, out_m, out_v


def decay_steps(m: Tensor, v: Tensor, left: Tensor, b1: float, b2: float) -> tuple[Tensor, Tensor]:
    """``CHUNK`` multiplications ``m = b1 m``, ``v = b2 v`` of rows with ``j < left[r]``."""
    for j in range(CHUNK):
        do = (j < left)[:, None]
        m, v = torch.where(do, m * b1, m), torch.where(do, v * b2, v)
    return m, v
