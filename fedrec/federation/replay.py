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

Two implementations, the same arithmetic: a loop in C (``native()``, compiled with the system's C
compiler into a fresh temporary folder when first needed; no fast-math, no contraction, so each
operation is the IEEE one torch's kernels compute), and ``replay_steps`` / ``decay_steps`` in torch,
which run where no C compiler is found (slower: a Python call per chunk of steps).
"""

from __future__ import annotations

import ctypes
import functools
import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

Tensor = torch.Tensor
CHUNK = 8  # steps a torch call applies
FREEZE_EVERY = 16  # steps between checks for frozen rows

_C = r"""
#include <math.h>
#include <stdint.h>

#define REPLAY(NAME, T, SQRT, FABS, NEXT)                                                        \
void NAME(T *th, T *m, T *v, const int64_t *lag, const int64_t *first, const T *eta,             \
          int64_t rows, int64_t d, T b1, T b2, T eps, double eta_max, int use_v, int64_t every) { \
    for (int64_t r = 0; r < rows; ++r) {                                                         \
        T *t = th + r * d, *mm = m + r * d, *vv = v + r * d;                                     \
        const T *e = eta + first[r];                                                             \
        int64_t k = 0, n = lag[r];                                                               \
        int frozen = 0;                                                                          \
        for (; k < n && !frozen; ++k) {                                                          \
            T ek = e[k];                                                                         \
            for (int64_t c = 0; c < d; ++c) {                                                    \
                T m2 = mm[c] * b1, v2 = vv[c] * b2;                                              \
                T s = m2 / SQRT(v2 + eps);                                                       \
                t[c] = t[c] - ek * s;                                                            \
                mm[c] = m2;                                                                      \
                vv[c] = v2;                                                                      \
            }                                                                                    \
            if ((k + 1) % every == 0) {                                                          \
                frozen = 1;                                                                      \
                for (int64_t c = 0; c < d && frozen; ++c) {                                      \
                    T a = FABS(t[c]);                                                            \
                    double ulp = (double)(NEXT(a, (T)INFINITY) - a);                             \
                    double w = use_v ? (double)vv[c] + (double)eps : (double)eps;                \
                    frozen = vv[c] >= 0 && isfinite(ulp) &&                                      \
                             (double)FABS(mm[c]) * eta_max / sqrt(w) < ulp / 8;                  \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (; k < n; ++k) { /* frozen: theta stays, m and v still step */                      \
            for (int64_t c = 0; c < d; ++c) {                                                    \
                mm[c] = mm[c] * b1;                                                              \
                vv[c] = vv[c] * b2;                                                              \
            }                                                                                    \
            if ((k & 255) == 255) { /* all zero: so is every later step */                       \
                int zero = 1;                                                                    \
                for (int64_t c = 0; c < d; ++c) zero &= (mm[c] == 0) & (vv[c] == 0);             \
                if (zero) break;                                                                 \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
}
REPLAY(fedrec_replay_f32, float, sqrtf, fabsf, nextafterf)
REPLAY(fedrec_replay_f64, double, sqrt, fabs, nextafter)
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C replay compiled for this process (a fresh temporary folder: nothing persistent is loaded),
    or None where no C compiler works."""
    cc = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="fedrec-replay-"))
    src, lib = folder / "replay.c", folder / "replay.so"
    src.write_text(_C)
    # every operation rounded on its own (no -ffast-math, no fused multiply-add); -fno-math-errno only
    # lets sqrt vectorise and -march=native only widens the vectors (IEEE sqrt and division either
    # way: the same bits, ~2x faster with AVX-512); retried without it where the compiler refuses it
    flags = ["-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno"]
    handle = None
    try:
        for extra in (["-march=native"], []):
            try:
                cmd = [cc, *flags, *extra, str(src), "-o", str(lib), "-lm"]
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                handle = ctypes.CDLL(str(lib))
                break
            except (OSError, subprocess.SubprocessError):
                continue
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # a loaded library stays mapped
    if handle is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for name, real in (("fedrec_replay_f32", ctypes.c_float), ("fedrec_replay_f64", ctypes.c_double)):
        fn = getattr(handle, name)
        fn.restype = None
        fn.argtypes = [p, p, p, p, p, p, i64, i64, real, real, real, ctypes.c_double, ctypes.c_int, i64]
    return handle


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
    b1_t, b2_t = (float(torch.tensor(b, dtype=theta.dtype)) for b in (b1, b2))
    use_v = b1_t * b1_t * (1 + 1e-6) <= b2_t
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
