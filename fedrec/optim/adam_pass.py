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
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.native import load
from fedrec.optim.adam import Adam
from fedrec.optim.base import Rows

_C = r"""
#include <math.h>
#include <stdint.h>

/* restrict: the outputs are new tables (lets the compiler vectorise without alias checks) */
#define PASS(NAME, T, SQRT)                                                                      \
void NAME(const T *restrict th, const T *restrict m, const T *restrict v, T *restrict oth,       \
          T *restrict om, T *restrict ov, int64_t n, T eta, T b1, T b2, T eps) {                \
    for (int64_t i = 0; i < n; ++i) {                                                           \
        T m2 = m[i] * b1, v2 = v[i] * b2;                                                       \
        T s = m2 / SQRT(v2 + eps);                                                              \
        oth[i] = th[i] - eta * s;                                                               \
        om[i] = m2;                                                                             \
        ov[i] = v2;                                                                             \
    }                                                                                           \
}

PASS(fedrec_adam_pass_f32, float, sqrtf)
PASS(fedrec_adam_pass_f64, double, sqrt)
"""

KEYS = ("theta", "m", "v")


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C pass compiled for this process (fedrec.native), or None."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    sig = {}
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        sig[f"fedrec_adam_pass_{suffix}"] = (None, [p, p, p, p, p, p, i64, real, real, real, real])
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
        float(eta_t), rule.b1, rule.b2, rule.eps,
    )  # fmt: skip
    return out
