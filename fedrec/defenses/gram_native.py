"""The Gram matrix of sparse client vectors by pairs of listers (``fedrec.defenses.vectors.gram``'s
``pairs`` way) as one C pass: the entries linked by row, and for every row each unordered pair of its
entries' dot product (float64, eight fixed lanes) added to both cells of the pair. Krum, the geometric
median (RFA), MDA and SignGuard take their distances from this matrix; in torch the pairs way is ~15
operations over ``[P, d]`` float64 copies of the pairs, a fifth of an ML-100K round under Krum.

The same matrix as the torch way to float64 round-off (another summation order;
``tests/test_defenses_rules.py``) while the products and sums stay finite (float64 values past ~1e154
overflow either way, and the two ways may then differ in where inf or NaN appear), exactly symmetric
(a pair's product goes to both cells in the same order). With ``method="auto"`` the C pass makes the torch way's choice itself (``8 sum_r c_r^2 < n^2 M``,
integers) and leaves dense listings to the blocks way. Where it does not apply (other devices or
dtypes, no C compiler) the torch way runs.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from fedrec.native import load

Tensor = torch.Tensor

_C = r"""
#include <stdint.h>

/* G (n x n, zeroed by the caller) += <x_a, x_b> over the pairs of entries a, b listed at the same row.
   Returns 0 (done), 1 (factor > 0 and factor sum_r c_r^2 >= n^2 M: the dense blocks are cheaper, nothing
   written) or -1 (a row outside [0, n_rows) or an owner outside [0, n): nothing written). */
#define GRAM(NAME, T)                                                                            \
int64_t NAME(double *G, int64_t n, const int64_t *rows, const int64_t *owner, int64_t K,         \
             const T *x, int64_t d, int64_t n_rows, int64_t factor, int64_t *head, int64_t *next) {  \
    for (int64_t e = 0; e < K; ++e)                                                             \
        if (rows[e] < 0 || rows[e] >= n_rows || owner[e] < 0 || owner[e] >= n) return -1;       \
    for (int64_t r = 0; r < n_rows; ++r) head[r] = -1;                                          \
    for (int64_t e = K - 1; e >= 0; --e) { next[e] = head[rows[e]]; head[rows[e]] = e; }        \
    if (factor > 0) {                                                                           \
        int64_t pairs = 0, M = 0;                                                               \
        for (int64_t r = 0; r < n_rows; ++r) {                                                  \
            int64_t c = 0;                                                                      \
            for (int64_t e = head[r]; e >= 0; e = next[e]) ++c;                                 \
            pairs += c * c;                                                                     \
            M += c > 0;                                                                         \
        }                                                                                       \
        if (!(factor * pairs < n * n * M)) return 1;                                            \
    }                                                                                           \
    for (int64_t r = 0; r < n_rows; ++r)                                                        \
        for (int64_t a = head[r]; a >= 0; a = next[a])                                          \
            for (int64_t b = a; b >= 0; b = next[b]) {                                          \
                const T *xa = x + a * d, *xb = x + b * d;                                       \
                double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                      \
                int64_t k = 0;                                                                  \
                for (; k + 8 <= d; k += 8)                                                      \
                    for (int j = 0; j < 8; ++j) lane[j] += (double)xa[k + j] * (double)xb[k + j];   \
                for (; k < d; ++k) lane[k & 7] += (double)xa[k] * (double)xb[k];                \
                double s = 0;                                                                   \
                for (int j = 0; j < 8; ++j) s += lane[j];                                       \
                G[owner[a] * n + owner[b]] += s;                                                \
                if (a != b) G[owner[b] * n + owner[a]] += s;                                    \
            }                                                                                   \
    return 0;                                                                                   \
}

GRAM(fedrec_gram_pairs_f32, float)
GRAM(fedrec_gram_pairs_f64, double)
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C pass compiled for this process (fedrec.native), or None."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    args = [p, i64, p, p, i64, p, i64, i64, i64, p, p]
    return load(_C, {"fedrec_gram_pairs_f32": (i64, args), "fedrec_gram_pairs_f64": (i64, args)})


def gram_pairs(rows: Tensor, owner: Tensor, values: Tensor, n: int, n_rows: int, auto: bool) -> Tensor | None:
    """``[n, n]`` float64 Gram matrix of the vectors (entry ``e``: client ``owner[e]``'s values
    ``values[e]`` at row ``rows[e]``) by pairs of listers; None where the C pass does not apply or, with
    ``auto``, where the dense blocks are the cheaper way (the module docstring). A row or owner outside
    raises IndexError before anything is written."""
    lib = native()
    K = rows.shape[0]
    if (
        lib is None
        or values.device.type != "cpu"
        or values.dtype not in (torch.float32, torch.float64)
        or values.dim() != 2
        or values.shape[0] != K
        or any(x.device.type != "cpu" or x.dtype != torch.int64 or x.shape != (K,) for x in (rows, owner))
    ):
        return None
    rows, owner, values = rows.contiguous(), owner.contiguous(), values.contiguous()
    g = torch.zeros(n, n, dtype=torch.float64)
    links = torch.empty(n_rows + K, dtype=torch.int64)
    fn = lib.fedrec_gram_pairs_f32 if values.dtype == torch.float32 else lib.fedrec_gram_pairs_f64
    status = fn(
        g.data_ptr(), n, rows.data_ptr(), owner.data_ptr(), K, values.data_ptr(), values.shape[1], n_rows,
        8 if auto else 0, links.data_ptr(), links.data_ptr() + 8 * n_rows,
    )  # fmt: skip
    if status < 0:
        raise IndexError(f"gram: a row outside [0, {n_rows}) or an owner outside [0, {n})")
    return g if status == 0 else None
