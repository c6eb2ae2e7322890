"""The rejection test of ``sample_negatives`` (fedrec.models.batch) as a C loop: which draws hit a positive
of their user, and the redraws written into place, for int64 batches on the CPU.

``sample_negatives`` draws every negative from the shared generator, then redraws those that hit a
positive of their user, all at once per round of redraws, until none does. torch spends ~15 small
operations and two host syncs on each round of redraws (searchsorted, masks, nonzero, an indexed
write). Here each round is one ``torch.randint`` (the same call, so the same random numbers in the
same order) and one C call that writes the redraws in row-major order of the rejected places, as
``out[bad] = redraw`` does, and returns how many still hit a positive: the negatives come out the same,
bit for bit (``tests/test_negatives_native.py``).
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

static int positive(const int64_t *items, int64_t lo, int64_t hi, int64_t x) {   /* items sorted */
    const int64_t end = hi;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (items[mid] < x) lo = mid + 1; else hi = mid;
    }
    return lo < end && items[lo] == x;
}

/* The flat places (h * n_neg + s, ascending) of out [H, n_neg] whose item is a positive of entry h's
   user, into bad; returns their number, or -1 when ptr does not rise from 0 to H. */
int64_t fedrec_neg_bad(const int64_t *ptr, int64_t B, const int64_t *items, int64_t H,
                       const int64_t *out, int64_t n_neg, int64_t *bad) {
    if (ptr[0] != 0 || ptr[B] != H) return -1;
    int64_t n = 0;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t lo = ptr[b], hi = ptr[b + 1];
        if (hi < lo || hi > H) return -1;
        for (int64_t h = lo; h < hi; ++h)
            for (int64_t s = 0; s < n_neg; ++s)
                if (positive(items, lo, hi, out[h * n_neg + s])) bad[n++] = h * n_neg + s;
    }
    return n;
}

/* out[bad[i]] = redraw[i] for i < n; bad keeps, in order, the places whose redraw is still a positive
   (owner from ptr by a binary search); returns their number. */
int64_t fedrec_neg_redraw(const int64_t *ptr, int64_t B, const int64_t *items, int64_t *out,
                          int64_t n_neg, int64_t *bad, int64_t n, const int64_t *redraw) {
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t place = bad[i], h = place / n_neg;
        int64_t lo = 0, hi = B;                           /* the user b with ptr[b] <= h < ptr[b + 1] */
        while (hi - lo > 1) {
            int64_t mid = lo + (hi - lo) / 2;
            if (ptr[mid] <= h) lo = mid; else hi = mid;
        }
        out[place] = redraw[i];
        if (positive(items, ptr[lo], ptr[lo + 1], redraw[i])) bad[kept++] = place;
    }
    return kept;
}
"""


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The C loops compiled for this process (fedrec.native), or None."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    return load(
        _C,
        {
            "fedrec_neg_bad": (i64, [p, i64, p, i64, p, i64, p]),
            "fedrec_neg_redraw": (i64, [p, i64, p, p, i64, p, i64, p]),
        },
    )


def redraw_positives(
    ptr: Tensor, items: Tensor, out: Tensor, n_items: int, generator: torch.Generator, max_rounds: int
) -> bool:
    """``sample_negatives``' rejection rounds on ``out [H, n_neg]`` in place (the module docstring);
    False (nothing done) where the C loops do not apply. Draws still rejected after ``max_rounds`` are
    drawn from their user's unseen items (``unseen_draws``)."""
    lib = native()
    if (
        lib is None
        or any(
            x.device.type != "cpu" or x.dtype != torch.int64 or not x.is_contiguous()
            for x in (ptr, items, out)
        )
        or out.dim() != 2
        or out.shape[0] != items.shape[0]
        or ptr.dim() != 1
        or ptr.shape[0] < 1
        or items.dim() != 1
    ):
        return False
    B, H, n_neg = ptr.shape[0] - 1, items.shape[0], out.shape[1]
    bad = torch.empty(H * n_neg, dtype=torch.int64)
    n = lib.fedrec_neg_bad(ptr.data_ptr(), B, items.data_ptr(), H, out.data_ptr(), n_neg, bad.data_ptr())
    if n < 0:
        return False
    for _ in range(max_rounds):
        if n == 0:
            return True
        redraw = torch.randint(n_items, (n,), generator=generator)
        n = lib.fedrec_neg_redraw(
            ptr.data_ptr(), B, items.data_ptr(), out.data_ptr(), n_neg, bad.data_ptr(), n, redraw.data_ptr()
        )
    if n:
        flat = bad[:n]
        out.view(-1)[flat] = unseen_draws(ptr, items, n_items, flat, n_neg, generator)
    return True


def unseen_draws(
    ptr: Tensor, items: Tensor, n_items: int, flat: Tensor, n_neg: int, generator: torch.Generator
) -> Tensor:
    """Uniform draws from the unseen items of each entry's user, for the flat positions ``flat`` of the
    negatives ``[H, n_neg]``: where rejection did not finish in ``max_rounds`` (a user with ~99 % of
    the catalog positive: "negative sampling did not finish" ended the run). ``r`` is drawn as
    ``floor(U * free)`` with ``U`` uniform in float64, then mapped by ``unseen_item``."""
    u = torch.rand(flat.shape[0], generator=generator, dtype=torch.float64, device=items.device)
    return unseen_item(ptr, items, n_items, flat // n_neg, u)


def unseen_item(ptr: Tensor, items: Tensor, n_items: int, entries: Tensor, u: Tensor) -> Tensor:
    """For each of ``entries`` (positions into ``items``), the ``floor(u * free)``-th unseen item of its
    user (``u`` in [0, 1), ``free`` the user's unseen items), exactly and with no loop: the r-th unseen
    item of a user with sorted positives ``p_0 < p_1 < ...`` is ``r + #{j : p_j - j <= r}``, one
    ``searchsorted`` over every user's ``p_j - j`` keyed by user. Positives must be sorted within each
    user (as ``gather_users`` gives them), with at least one unseen item each."""
    device = items.device
    counts = ptr[1:] - ptr[:-1]
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=device), counts)
    adjusted = items - (torch.arange(items.shape[0], device=device) - ptr[:-1][owner])  # p_j - j
    width = n_items + 1
    keys = owner * width + adjusted  # sorted: users ascend, p_j - j does not decrease within a user
    user = owner[entries]
    free = n_items - counts[user]
    r = torch.minimum((u * free).long(), free - 1)
    return r + torch.searchsorted(keys, user * width + r, right=True) - ptr[user]
