"""Adam's client step (``Adam.client_step``, paper 000 Eq. 2-6) at a round's listed rows as one C loop:
the gather of theta, m and v at the rows and the step, for float32 tables on the CPU.

Per element, in ``Adam.client_step``'s order, each operation rounded to float32 as torch's eager
kernels round it (a Python constant becomes a float32 operand, and ``torch.sub(x, y, alpha=eta_t)`` is
one fused multiply-add, ``fmaf(-eta_t, y, x)``, on every path of torch's CPU kernel)::

    m = b1 m_bar + (1 - b1) g;   v = b2 v_bar + (1 - b2) (g g);   theta = theta_bar - eta_t (m / sqrt(v + eps))

The square root stays torch's (``sqrt_``): its float32 kernel is not always correctly rounded (one
ulp off IEEE's on some inputs), so a C ``sqrtf`` would not give the eager step's theta. Two C passes
around it (the moments and ``v + eps``; theta), so the uploads are torch's bit for bit
(``tests/test_adam_step.py``), in three calls instead of three gathers and ~10 element-wise operations. The zero-gradient step stays ``default_rows``' bit for bit
(fedrec.optim.base), which the definition of an unlisted row relies on.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.native import load
from fedrec.optim.adam import Adam
from fedrec.optim.base import Rows, Tensor

_C = r"""
#include <math.h>
#include <stdint.h>

/* rows idx[0..K-1] of m, v [n, d]; g [K, d]: om = b1 m + c1 g, ov = b2 v + c2 (g g), ow = ov + eps.
   Returns 0, or -1 (nothing written) when an index lies outside [0, n). */
int64_t fedrec_adam_moments_f32(const float *m, const float *v, int64_t n, int64_t d, const int64_t *idx,
                                int64_t K, const float *restrict g, float *restrict om, float *restrict ov,
                                float *restrict ow, float b1, float c1, float b2, float c2, float eps) {
    for (int64_t k = 0; k < K; ++k)
        if (idx[k] < 0 || idx[k] >= n) return -1;
    for (int64_t k = 0; k < K; ++k) {
        if (k + 2 < K)  /* a later row on its way from memory while this one is computed */
            for (int64_t c = 0; c < d; c += 16) {
                __builtin_prefetch(m + idx[k + 2] * d + c); __builtin_prefetch(v + idx[k + 2] * d + c);
            }
        const float *restrict mb = m + idx[k] * d, *restrict vb = v + idx[k] * d, *restrict gk = g + k * d;
        float *restrict omk = om + k * d, *restrict ovk = ov + k * d, *restrict owk = ow + k * d;
        for (int64_t c = 0; c < d; ++c) {
            const float gc = gk[c];
            omk[c] = b1 * mb[c] + c1 * gc;
            ovk[c] = b2 * vb[c] + c2 * (gc * gc);
            owk[c] = ovk[c] + eps;
        }
    }
    return 0;
}

/* in place on w [K, d] (holding sqrt(v + eps)): w = fma(-eta, m / w, theta[idx]) */
int64_t fedrec_adam_theta_f32(const float *th, int64_t n, int64_t d, const int64_t *idx, int64_t K,
                              const float *restrict m, float *restrict w, float eta) {
    for (int64_t k = 0; k < K; ++k)
        if (idx[k] < 0 || idx[k] >= n) return -1;
    for (int64_t k = 0; k < K; ++k) {
        if (k + 2 < K)
            for (int64_t c = 0; c < d; c += 16) __builtin_prefetch(th + idx[k + 2] * d + c);
        const float *restrict tb = th + idx[k] * d, *restrict mk = m + k * d;
        float *restrict wk = w + k * d;
        for (int64_t c = 0; c < d; ++c) wk[c] = fmaf(-eta, mk[c] / wk[c], tb[c]);
    }
    return 0;
}
"""

KEYS = ("theta", "m", "v")


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C loops compiled for this process (fedrec.native), or None."""
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    return load(
        _C,
        {
            "fedrec_adam_moments_f32": (i64, [p, p, i64, i64, p, i64, p, p, p, p, f32, f32, f32, f32, f32]),
            "fedrec_adam_theta_f32": (i64, [p, i64, i64, p, i64, p, p, f32]),
        },
    )


def applies(rule: Any, tables: Rows, rows: Tensor, g: Tensor) -> bool:
    """Exactly ``Adam`` (a subclass may change its step), its three float32 CPU tables of one 2-D shape,
    int64 row ids ``[K]`` and a float32 gradient ``[K, d]`` on the CPU, and a C compiler."""
    if type(rule) is not Adam or set(tables) != set(KEYS):
        return False
    xs = [tables[k] for k in KEYS]
    return (
        all(x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 for x in xs)
        and xs[0].shape == xs[1].shape == xs[2].shape
        and rows.device.type == "cpu"
        and rows.dtype == torch.int64
        and rows.dim() == 1
        and g.device.type == "cpu"
        and g.dtype == torch.float32
        and g.shape == (rows.shape[0], xs[0].shape[1])
        and native() is not None
    )


def adam_client_step(rule: Adam, tables: Rows, rows: Tensor, g: Tensor, t: int) -> Rows:
    """``rule.client_step({k: x[rows] for k, x in tables.items()}, g, t)`` bit for bit (the module
    docstring). Raises IndexError for a row outside the tables."""
    src = {k: tables[k].contiguous() for k in KEYS}
    n, d = src["theta"].shape
    rows, g = rows.contiguous(), g.contiguous()
    out = {k: torch.empty(rows.shape[0], d, dtype=torch.float32) for k in KEYS}
    lib, K = native(), rows.shape[0]
    # ctypes rounds each Python float to float32, as torch does for a Python scalar and a float32 tensor
    status = lib.fedrec_adam_moments_f32(
        src["m"].data_ptr(), src["v"].data_ptr(), n, d, rows.data_ptr(), K, g.data_ptr(), out["m"].data_ptr(),
        out["v"].data_ptr(), out["theta"].data_ptr(), rule.b1, 1.0 - rule.b1, rule.b2, 1.0 - rule.b2, rule.eps,
    )  # fmt: skip
    if status < 0:
        raise IndexError(f"client step: a row outside [0, {n})")
    out["theta"].sqrt_()  # torch's own square root (not always correctly rounded): the eager step's
    lib.fedrec_adam_theta_f32(
        src["theta"].data_ptr(), n, d, rows.data_ptr(), K, out["m"].data_ptr(), out["theta"].data_ptr(),
        float(rule.step_size(t)),
    )  # fmt: skip
    return out
