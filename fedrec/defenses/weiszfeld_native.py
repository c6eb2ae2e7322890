"""The smoothed Weiszfeld steps of ``fedrec.defenses.geomed.weiszfeld_gram`` as one C loop over the
``n x n`` float64 Gram matrix: each step

    beta_i <- alpha_i / max(nu, r_i) normalised,   r_i = sqrt(max(beta^T G beta - 2 (G beta)_i + G_ii, 0)),

stopping when ``max(delta^T G delta, 0) <= (tol s)^2 + 64 eps (n + 1) (|delta| . sqrt(G_ii))^2`` (the
module docstring of geomed). In torch a step is ~12 operations on vectors of a round's ~10-60 clients, all
dispatch (~20 steps a round: a fifth of an ML-100K round under RFA); here it is ~3 n^2 flops.

The same operations in the same order as the torch loop except the matrix-vector products, whose sums
run in index order where BLAS picks its own: the weights agree to float64 round-off and the stopping
test decides alike except within round-off of its threshold (tests/test_defenses_rules.py). NaN
propagates as in torch (``max`` written as a comparison that keeps a NaN). Where it does not apply (no C
compiler, another device) the torch loop runs.
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

/* y = G x for the symmetric n x n G, sums in index order */
static void matvec(const double *G, const double *x, double *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const double *gi = G + i * n;
        double s = 0;
        for (int64_t j = 0; j < n; ++j) s += gi[j] * x[j];
        y[i] = s;
    }
}

/* clamp_min(x, lo) as torch computes it: a NaN stays NaN */
static inline double at_least(double x, double lo) { return x < lo ? lo : x; }

/* Up to max_iter steps from beta, r (in place; n each). Returns the steps taken; *converged = 1 when the
   test was met. work: 3 n doubles. */
int64_t fedrec_weiszfeld(const double *G, const double *alpha, const double *diag, const double *root,
                         int64_t n, double nu, double thresh, double floor_c, int64_t max_iter,
                         double *beta, double *r, double *work, int64_t *converged) {
    double *nb = work, *delta = work + n, *gx = work + 2 * n;
    *converged = 0;
    for (int64_t it = 1; it <= max_iter; ++it) {
        double ssum = 0;
        for (int64_t i = 0; i < n; ++i) { nb[i] = alpha[i] / at_least(r[i], nu); ssum += nb[i]; }
        for (int64_t i = 0; i < n; ++i) { nb[i] = nb[i] / ssum; delta[i] = nb[i] - beta[i]; }
        matvec(G, delta, gx, n);
        double q = 0, lin = 0;
        for (int64_t i = 0; i < n; ++i) { q += delta[i] * gx[i]; lin += fabs(delta[i]) * root[i]; }
        const double step2 = at_least(q, 0.0), floor2 = floor_c * (lin * lin);
        for (int64_t i = 0; i < n; ++i) beta[i] = nb[i];
        matvec(G, beta, gx, n);
        double bb = 0;
        for (int64_t i = 0; i < n; ++i) bb += beta[i] * gx[i];
        for (int64_t i = 0; i < n; ++i) r[i] = sqrt(at_least(bb - 2.0 * gx[i] + diag[i], 0.0));
        if (step2 <= thresh + floor2) { *converged = 1; return it; }
    }
    return max_iter;
}
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C loop compiled for this process (fedrec.native), or None."""
    p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    return load(_C, {"fedrec_weiszfeld": (i64, [p, p, p, p, i64, f64, f64, f64, i64, p, p, p, p])})


def weiszfeld_steps(
    g: Tensor, alpha: Tensor, diag: Tensor, root: Tensor, beta: Tensor, r: Tensor, nu: float, thresh: float,
    floor_c: float, max_iter: int,
) -> tuple[Tensor, Tensor, int, bool] | None:  # fmt: skip
    """Up to ``max_iter`` steps from ``beta``, ``r`` (float64 ``[n]``, not written): the new ``beta``,
    ``r``, the steps taken and whether the test was met; ``thresh`` = ``(tol s)^2``, ``floor_c`` =
    ``64 eps (n + 1)``. None where the C loop does not apply."""
    n = g.shape[0]
    lib = native()
    xs = (g, alpha, diag, root, beta, r)
    if lib is None or any(x.device.type != "cpu" or x.dtype != torch.float64 for x in xs):
        return None
    g, alpha, diag, root = (x.contiguous() for x in (g, alpha, diag, root))
    beta, r = (
        beta.clone(memory_format=torch.contiguous_format),
        r.clone(memory_format=torch.contiguous_format),
    )
    work = torch.empty(3 * n, dtype=torch.float64)
    converged = ctypes.c_int64(0)
    steps = lib.fedrec_weiszfeld(
        g.data_ptr(), alpha.data_ptr(), diag.data_ptr(), root.data_ptr(), n, nu, thresh, floor_c, max_iter,
        beta.data_ptr(), r.data_ptr(), work.data_ptr(), ctypes.byref(converged),
    )  # fmt: skip
    return beta, r, int(steps), bool(converged.value)
