"""The server's rule check of Adam uploads (``fedrec.optim.fused.row_checks`` for ``Adam``) as one C
loop over the listed rows: gather the global row, reconstruct the gradient (paper 000 Eq. 2), check the
state domain, Eq. (3) and Eq. (5)-(6) within ``Adam.reconstruct_and_verify``'s tolerances, and the
gradient bound, reading each operand once and writing only the float32 gradient and three flags a row.

The same float64 operations in the same order as ``Adam.reconstruct_and_verify`` and ``violation``
(fedrec.optim.base), each an IEEE operation (fedrec.native: no contraction, no fast-math): the
gradient is bit-identical to the eager reconstruction and every verdict the eager one, not merely
within the check's slack (tests/test_fused.py). inductor's kernel of the same function makes four
loops with float64 buffers between them, 2-5x the time (``benchmarks/bench_c_loops.py``).

Only float32 tables and uploads on the CPU; everything else takes the compiled or eager function.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.native import load
from fedrec.optim.adam import Adam
from fedrec.optim.base import SLACK, Rows, Tensor, tiny, unit_roundoff

_C = r"""
#include <math.h>
#include <stdint.h>

/* Returns 0, or -1 (nothing written) when a row index lies outside [0, n_table).
   Verdicts as comparisons: for a finite a >= 0 and b > 0 (b >= 3 tiny of float32 here, never
   subnormal), fl(a / b) <= 1 exactly when a <= b (a > b makes a / b > 1 + 2^-53, which rounds above
   1), a NaN fails both, and an infinite a fails both (inf / inf is NaN, inf / b is inf); so
   `!(|err| <= slack tol) | !(|err| < inf)` is `violation`'s `!(|err| / (slack tol) <= 1)` without
   the division. Flags are OR-ed as integers so that the loop over a row vectorises. */
int64_t fedrec_adam_check_f32(
    const float *th_tab, const float *m_tab, const float *v_tab, int64_t n_table,
    const int64_t *rows, int64_t K, int64_t d,
    const float *th_up, const float *m_up, const float *v_up,
    double b1, double b2, double eps, double eta_t, double u, double tn, double slack,
    float max_grad, int verify,
    float *g_out, uint8_t *domain, uint8_t *broken, uint8_t *too_big) {
    for (int64_t k = 0; k < K; ++k)
        if (rows[k] < 0 || rows[k] >= n_table) return -1;
    const double c1 = 1.0 - b1, c2 = 1.0 - b2;
    const double u3 = 3 * u, u4 = 4 * u, u5 = 5 * u, tn3 = 3 * tn, b1x2 = 2 * b1;
    const double tn_theta = (2 + eta_t) * tn;
    for (int64_t k = 0; k < K; ++k) {
        const int64_t r = rows[k];
        if (k + 2 < K) {  /* a later row's global values on their way from memory while this one is checked */
            const int64_t o = rows[k + 2] * d;
            for (int64_t c = 0; c < d; c += 16) {
                __builtin_prefetch(th_tab + o + c); __builtin_prefetch(m_tab + o + c);
                __builtin_prefetch(v_tab + o + c);
            }
        }
        const float *restrict thb = th_tab + r * d, *restrict mb = m_tab + r * d, *restrict vb = v_tab + r * d;
        const float *restrict th = th_up + k * d, *restrict m = m_up + k * d, *restrict v = v_up + k * d;
        float *restrict g = g_out + k * d;
        int neg = 0, big = 0, bad = 0;
        if (verify) {                                            /* one loop: gd is computed once */
            for (int64_t c = 0; c < d; ++c) {                    /* Eq. (2) solved for g, the bound, */
                const double M = m[c], V = v[c], TH = th[c], MB = mb[c];   /* Eq. (3), (5)-(6) */
                const double gd = (M - b1 * MB) / c1;
                const float gf = (float)gd;
                g[c] = gf;
                neg |= !(v[c] >= 0);                             /* amin(v) >= 0 fails: < 0 or NaN */
                big |= !(fabsf(gf) <= max_grad);                 /* amax(|g|) <= max_grad fails */
                const double dg = (u3 * (fabs(M) + b1x2 * fabs(MB)) + tn3) / c1;
                const double err_v = V - (b2 * (double)vb[c] + (c2 * gd) * gd);
                const double tol_v = (u4 * fabs(V) + tn3) + (c2 * (2 * fabs(gd) + dg)) * dg;
                const double step = (eta_t * M) / sqrt(V + eps);
                const double err_t = TH - ((double)thb[c] - step);
                const double tol_t = (u5 * fabs(step) + u * fabs(TH)) + tn_theta;
                bad |= !(fabsf(th[c]) < INFINITY) | !(fabsf(m[c]) < INFINITY) | !(fabsf(v[c]) < INFINITY);
                bad |= !(fabs(err_v) <= slack * tol_v) | !(fabs(err_t) <= slack * tol_t);
                bad |= !(fabs(err_v) < INFINITY) | !(fabs(err_t) < INFINITY);  /* inf / inf is NaN there */
            }
        } else {
            for (int64_t c = 0; c < d; ++c) {                    /* Eq. (2) solved for g, the bound */
                const double gd = ((double)m[c] - b1 * (double)mb[c]) / c1;
                const float gf = (float)gd;
                g[c] = gf;
                neg |= !(v[c] >= 0);
                big |= !(fabsf(gf) <= max_grad);
            }
        }
        domain[k] = (uint8_t)neg;
        too_big[k] = (uint8_t)big;
        broken[k] = (uint8_t)bad;
    }
    return 0;
}
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C check compiled for this process (fedrec.native), or None."""
    p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    return load(
        _C,
        {
            "fedrec_adam_check_f32": (
                i64,
                [p, p, p, i64, p, i64, i64, p, p, p, *[f64] * 7, ctypes.c_float, ctypes.c_int, p, p, p, p],
            )
        },
    )


def applies(rule: Any, tables: Rows, rows: Tensor, up: Rows) -> bool:
    """Whether the C loop can check these uploads: exactly ``Adam`` (a subclass may change its
    equations), float32 CPU tables of one shape and uploads of one shape with ``d > 0``, integer row ids
    ``[K]`` on the CPU, and a compiler (checked last: the first call compiles). Anything else takes the
    torch function, which raises where the inputs are wrong."""
    keys = ("theta", "m", "v")
    if type(rule) is not Adam or set(tables) != set(keys) or set(up) != set(keys):
        return False
    tabs, ups = [tables[k] for k in keys], [up[k] for k in keys]
    return (
        all(x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 for x in (*tabs, *ups))
        and tabs[0].shape == tabs[1].shape == tabs[2].shape
        and ups[0].shape == ups[1].shape == ups[2].shape
        and ups[0].shape[1] == tabs[0].shape[1] > 0
        and rows.device.type == "cpu"
        and rows.dtype in (torch.int64, torch.int32)
        and rows.shape == ups[0].shape[:1]
        and native() is not None
    )


def adam_row_checks(
    rule: Any, tables: Rows, rows: Tensor, up: Rows, t: int, max_grad: float, verify: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``fedrec.optim.fused.row_checks`` for Adam in one C loop (``applies`` must hold)."""
    th_t, m_t, v_t = (tables[k].contiguous() for k in ("theta", "m", "v"))
    th_u, m_u, v_u = (up[k].contiguous() for k in ("theta", "m", "v"))
    rows = rows.to(torch.int64).contiguous()
    K, d = th_u.shape
    if rows.shape != (K,) or th_t.shape[1] != d or not (m_u.shape == v_u.shape == th_u.shape):
        raise ValueError("adam_row_checks: rows [K], uploads [K, d] and tables [n, d] of one d")
    g = torch.empty((K, d), dtype=torch.float32)
    flags = torch.empty((3, K), dtype=torch.bool)
    eta_t = rule.step_size(t)
    status = native().fedrec_adam_check_f32(
        th_t.data_ptr(), m_t.data_ptr(), v_t.data_ptr(), th_t.shape[0], rows.data_ptr(), K, d,
        th_u.data_ptr(), m_u.data_ptr(), v_u.data_ptr(),
        rule.b1, rule.b2, rule.eps, eta_t, unit_roundoff(th_t, th_u, m_u, v_u), tiny(th_t, th_u, m_u, v_u),
        SLACK, max_grad, int(verify),
        g.data_ptr(), flags[0].data_ptr(), flags[1].data_ptr(), flags[2].data_ptr(),
    )  # fmt: skip
    if status < 0:
        raise IndexError(f"rule check: a row index outside [0, {th_t.shape[0]})")
    return flags[0], flags[1], flags[2], g
