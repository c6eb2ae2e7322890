"""The closed-form BPR gradient of ``fedrec.models.gradients`` (FISM or MF, paper 000 Eq. 1 and 7) as
one C loop over a batch's clients, for float32 rows on the CPU.

A round's clients are small problems (a client lists ~30-100 rows): torch computes their gradient in
~115 small operations (gathers, segment sums, searchsorted, index_add), most of a round's client side
on ML-100K. The loop below walks each client once: the sum ``S_u`` of its history's Q rows, each
positive's and negative's score, the sigmoid, and the shares added to its rows in place. Same
formulas as ``sample_terms`` / ``assemble_row_gradients`` / ``with_l2`` (the docstring of
``fedrec.models.gradients``); dot products are summed over 16 fixed partial sums and the sigmoid and
softplus are computed in float64, so the result equals torch's to float32 rounding, not bit for bit
(``tests/test_bpr_native.py``), and a client's gradient depends on its own rows only, never on the
other clients of the batch (a stack of runs gives each client what it gets alone).

``bpr_row_gradients_native`` returns None where the loop does not apply (no C compiler, not the CPU,
not float32, or a batch it cannot read); the caller's torch path then runs.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.models.batch import UserBatch
from fedrec.models.layout import TableLayout
from fedrec.native import load

Tensor = torch.Tensor

_C = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

static float dot(const float *a, const float *b, int64_t d) {
    float acc[16] = {0};
    int64_t c = 0;
    for (; c + 16 <= d; c += 16)
        for (int j = 0; j < 16; ++j) acc[j] += a[c + j] * b[c + j];
    for (int64_t j = 0; c < d; ++c, ++j) acc[j] += a[c] * b[c];
    float s = 0.0f;
    for (int j = 0; j < 16; ++j) s += acc[j];
    return s;
}

static void axpy(float *y, float a, const float *x, int64_t d) {   /* y += a x */
    for (int64_t c = 0; c < d; ++c) y[c] += a * x[c];
}

/* position of key in sorted keys[lo, hi), or -1 */
static int64_t find(const int64_t *keys, int64_t lo, int64_t hi, int64_t key) {
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < key) lo = mid + 1; else hi = mid;
    }
    return lo < 0 ? -1 : lo;
}

static int64_t lower(const int64_t *keys, int64_t K, int64_t key) {
    int64_t lo = 0, hi = K;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < key) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* W [K, d]: each client's copy of its touched rows, listed by the sorted keys owner * n_rows + row.
   FISM when q_off >= 0 (P rows at p_off + item, Q rows at q_off + item), MF otherwise (U [B, d]).
   Writes g [K, d] (zeroed here), g_user [B, d] (MF), loss [B]; work [4 d] scratch.
   Returns 0, -1 (outputs undefined) when an item, a negative or a row is not where it must be, or -2
   (nothing read past ptr) when ptr does not rise from 0 to H, the number of entries. */
int64_t fedrec_bpr_grad_f32(const float *W, int64_t K, int64_t d, const int64_t *keys, int64_t n_rows,
                            int64_t B, const int64_t *ptr, const int64_t *items, const int64_t *neg,
                            int64_t n_neg, int64_t n_items, int64_t p_off, int64_t q_off,
                            const float *U, double gamma, double lam, double sign,
                            float *g, float *g_user, float *loss, float *work, int64_t H) {
    if (ptr[0] != 0 || ptr[B] != H) return -2;
    for (int64_t b = 0; b < B; ++b)
        if (ptr[b + 1] < ptr[b]) return -2;
    memset(g, 0, sizeof(float) * (size_t)(K * d));
    float *S = work, *G = work + d, *u_pos = work + 2 * d, *u_n = work + 3 * d;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t lo = lower(keys, K, b * n_rows), hi = lower(keys, K, (b + 1) * n_rows);
        const int64_t h0 = ptr[b], h1 = ptr[b + 1], n = h1 - h0;
        double lb = 0.0;
        const float *u_neg = u_n;   /* FISM: c- S; MF: the user vector */
        float cp = 0.0f;
        memset(G, 0, sizeof(float) * (size_t)d);
        if (q_off >= 0) {
            memset(S, 0, sizeof(float) * (size_t)d);
            for (int64_t h = h0; h < h1; ++h) {
                if (items[h] < 0 || items[h] >= n_items) return -1;
                int64_t e = find(keys, lo, hi, b * n_rows + q_off + items[h]);
                if (e < 0 || e >= hi || keys[e] != b * n_rows + q_off + items[h]) return -1;
                for (int64_t c = 0; c < d; ++c) S[c] += W[e * d + c];
            }
            if (n > 1) cp = powf((float)(n - 1), (float)-gamma);
        } else {
            u_neg = U + b * d;
        }
        const float cn = n > 0 ? powf((float)n, (float)-gamma) : 0.0f;
        if (q_off >= 0)
            for (int64_t c = 0; c < d; ++c) u_n[c] = S[c] * cn;
        for (int64_t h = h0; h < h1; ++h) {
            const int64_t item = items[h];
            if (item < 0 || item >= n_items) return -1;
            const int64_t kp = b * n_rows + p_off + item;
            const int64_t ep = find(keys, lo, hi, kp);
            if (ep < 0 || ep >= hi || keys[ep] != kp) return -1;
            const float *p = W + ep * d;
            int64_t eq = -1;
            const float *upos = u_neg;
            if (q_off >= 0) {
                const int64_t kq = b * n_rows + q_off + item;
                eq = find(keys, lo, hi, kq);   /* present: checked while summing S */
                for (int64_t c = 0; c < d; ++c) u_pos[c] = (S[c] - W[eq * d + c]) * cp;
                upos = u_pos;
            }
            const float y_pos = dot(p, upos, d);
            double a_sum = 0.0;
            for (int64_t s = 0; s < n_neg; ++s) {
                const int64_t k = neg[h * n_neg + s];
                if (k < 0 || k >= n_items) return -1;
                const int64_t kn = b * n_rows + p_off + k;
                const int64_t en = find(keys, lo, hi, kn);
                if (en < 0 || en >= hi || keys[en] != kn) return -1;
                const float *pn = W + en * d;
                const float y_neg = dot(pn, u_neg, d);
                const double x = sign * ((double)y_pos - (double)y_neg);
                /* a = sigmoid(-x), softplus(-x) = -log sigmoid(x), both stable for any x */
                const double a = x >= 0 ? exp(-x) / (1.0 + exp(-x)) : 1.0 / (1.0 + exp(x));
                lb += (x >= 0 ? 0.0 : -x) + log1p(exp(-fabs(x)));
                a_sum += a;
                const float dn = (float)(sign * a);          /* dL/dy_neg */
                axpy(g + en * d, dn, u_neg, d);                /* dL/dp_k */
                axpy(G, q_off >= 0 ? dn * cn : dn, pn, d);     /* (c-) dL/du_neg */
            }
            const float dp = (float)(-sign * a_sum);           /* dL/dy_pos */
            axpy(g + ep * d, dp, upos, d);
            if (q_off >= 0) {
                const float own = dp * cp;                     /* c+ dL/dy_pos p_j: leaves its own Q row */
                axpy(G, own, p, d);
                axpy(g + eq * d, -own, p, d);
            } else {
                axpy(G, dp, p, d);
            }
        }
        if (q_off >= 0) {
            for (int64_t h = h0; h < h1; ++h) {                /* every Q row of the history: G_u */
                const int64_t eq = find(keys, lo, hi, b * n_rows + q_off + items[h]);
                for (int64_t c = 0; c < d; ++c) g[eq * d + c] += G[c];
            }
        } else {
            memcpy(g_user + b * d, G, sizeof(float) * (size_t)d);
        }
        if (lam != 0.0) {
            const float l2 = (float)(2.0 * lam);
            double sq = 0.0;
            for (int64_t e = lo; e < hi; ++e) {
                axpy(g + e * d, l2, W + e * d, d);
                sq += (double)dot(W + e * d, W + e * d, d);
            }
            if (q_off < 0) {
                axpy(g_user + b * d, l2, U + b * d, d);
                sq += (double)dot(U + b * d, U + b * d, d);
            }
            lb += lam * sq;
        }
        loss[b] = (float)lb;
    }
    return 0;
}
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C loop compiled for this process (fedrec.native), or None."""
    p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    args = [p, i64, i64, p, i64, i64, p, p, p, i64, i64, i64, i64, p, f64, f64, f64, p, p, p, p, i64]
    return load(_C, {"fedrec_bpr_grad_f32": (i64, args)})


def bpr_row_gradients_native(
    W: Tensor,
    keys: Tensor,
    layout: TableLayout,
    batch: UserBatch,
    neg: Tensor,
    *,
    gamma: float,
    lam: float,
    user_vectors: Tensor | None = None,
    flip: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor] | None:
    """``bpr_row_gradients`` (same arguments and results) in one C loop, or None where it does not
    apply. Raises ValueError when the batch lists an item or a row the keys do not hold."""
    lib = native()
    mf = layout.model != "fism"
    tensors = [W, keys, batch.ptr, batch.items, neg] + ([user_vectors] if mf else [])
    if (
        lib is None
        or (mf and user_vectors is None)
        or any(x is None or x.device.type != "cpu" for x in tensors)
        or W.dtype != torch.float32
        or (mf and user_vectors.dtype != torch.float32)
        or W.dim() != 2
        or neg.dim() != 2
        or neg.shape[0] != batch.items.shape[0]
    ):
        return None
    B, d = batch.size, W.shape[1]
    W = W.contiguous()
    keys, ptr, items = (x.to(torch.int64).contiguous() for x in (keys, batch.ptr, batch.items))
    neg = neg.to(torch.int64).contiguous()
    U = user_vectors.contiguous() if mf else None
    if keys.shape[0] != W.shape[0] or ptr.shape != (B + 1,) or (mf and U.shape != (B, d)) or items.dim() != 1:
        return None
    g = torch.empty_like(W)
    g_user = torch.empty(B, d, dtype=W.dtype) if mf else None
    loss = torch.empty(B, dtype=W.dtype)
    work = torch.empty(4 * d, dtype=W.dtype)
    p_off = layout.ranges["P"][0]
    q_off = -1 if mf else layout.ranges["Q"][0]
    status = lib.fedrec_bpr_grad_f32(
        W.data_ptr(), W.shape[0], d, keys.data_ptr(), layout.n_rows, B, ptr.data_ptr(), items.data_ptr(),
        neg.data_ptr(), neg.shape[1], layout.n_items, p_off, q_off, U.data_ptr() if mf else None,
        float(gamma), float(lam), -1.0 if flip else 1.0, g.data_ptr(),
        g_user.data_ptr() if mf else None, loss.data_ptr(), work.data_ptr(), items.shape[0],
    )  # fmt: skip
    if status == -2:  # a batch whose ptr does not cover its entries: the torch way says what is wrong
        return None
    if status < 0:
        raise ValueError("BPR gradient: a positive or negative item, or its row, is not in the batch's keys")
    return g, g_user, loss
