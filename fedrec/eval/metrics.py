"""Top-K ranking metrics over a boolean hit matrix (DESIGN.md section 9, ANCHORS.md section 7.6).

The design follows RecBole's ``recbole/evaluator/metrics.py``: rank once into a hit matrix
``hits [U, K_max]`` (``hits[u, r]`` is true when the item ranked ``r + 1`` for user ``u`` is one of
the user's test items ``T_u``) plus ``n_pos [U] = |T_u|``; every metric is then a line over its
first ``K`` columns. With ``hits_u(K) = sum_{r < K} hits[u, r]``, per user:

- Precision@K = hits_u(K) / K
- Recall@K    = hits_u(K) / |T_u|
- NDCG@K      = DCG / IDCG, DCG = sum_{r < K} hits[u, r] / log2(r + 2), IDCG the same sum over
  min(|T_u|, K) hits in the first positions
- HR@K        = 1[hits_u(K) > 0]

and the reported value is the mean over users (macro average), as in RecBole. Every user passed
in must have ``n_pos >= 1``; the protocols skip users without test items.

Ranking is deterministic: equal scores are ordered toward the lower item index (``topk_items``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

Metric = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

# Float keys for the tie-breaking pass are exact integers only up to the mantissa width.
_FLOAT32_EXACT = 2**24


def _hits_at(hits: torch.Tensor, k: int) -> torch.Tensor:
    """hits_u(K): test items among each user's first K ranked items, as float64 [U]."""
    return hits[:, :k].sum(dim=1, dtype=torch.float64)


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    """1 / log2(r + 2) for ranks r = 0..k-1 (the DCG position weights)."""
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


def precision(hits: torch.Tensor, n_pos: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user Precision@K = hits_u(K) / K (RecBole ``Precision``)."""
    return _hits_at(hits, k) / k


def recall(hits: torch.Tensor, n_pos: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user Recall@K = hits_u(K) / |T_u| (RecBole ``Recall``)."""
    return _hits_at(hits, k) / n_pos.to(torch.float64)


def ndcg(hits: torch.Tensor, n_pos: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user NDCG@K with IDCG over min(|T_u|, K) ideal positions (RecBole ``NDCG``)."""
    disc = _discounts(k, hits.device)
    dcg = (hits[:, :k].to(torch.float64) * disc).sum(dim=1)
    idcg = disc.cumsum(0)[n_pos.clamp(max=k) - 1]
    return dcg / idcg


def hit(hits: torch.Tensor, n_pos: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user HR@K = 1[hits_u(K) > 0] (RecBole ``Hit``)."""
    return hits[:, :k].any(dim=1).to(torch.float64)


METRICS: dict[str, Metric] = {"precision": precision, "recall": recall, "ndcg": ndcg, "hit": hit}


def per_user_metrics(
    hits: torch.Tensor, n_pos: torch.Tensor, ks: Sequence[int], names: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Every named metric for every user: ``{name: float64 [U, len(ks)]}``, columns in ``ks`` order."""
    return {name: torch.stack([METRICS[name](hits, n_pos, k) for k in ks], dim=1) for name in names}


def mean_metrics(per_user: dict[str, torch.Tensor], ks: Sequence[int]) -> dict[str, dict[int, float]]:
    """Macro averages over users, ``{name: {k: value}}`` (one host transfer per metric)."""
    return {name: dict(zip(ks, vals.mean(dim=0).tolist(), strict=True)) for name, vals in per_user.items()}


def implicit_precision_at_k(hits: torch.Tensor, n_pos: torch.Tensor, k: int) -> float:
    """implicit's ``precision_at_k``: sum_u hits_u(K) / sum_u min(K, |T_u|) (micro average).

    Not RecBole's Precision@K: the truncated denominator makes it recall-like for users with
    |T_u| < K (ANCHORS.md section 7.6). Kept to document and test the difference.
    """
    return float(_hits_at(hits, k).sum() / n_pos.clamp(max=k).sum())


def _csr_rows(indptr: torch.Tensor, n_entries: int) -> torch.Tensor:
    """Row of every entry of a CSR slice, without a host sync (``indptr`` may start above 0)."""
    entries = torch.arange(n_entries, device=indptr.device) + indptr[0]
    return torch.searchsorted(indptr[1:], entries, right=True)


def masked_scores(
    scores: torch.Tensor,
    exclude_indptr: torch.Tensor | None = None,
    exclude_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """A copy of ``scores`` with NaN and the excluded items (a CSR slice, e.g. training items) at -inf.

    NaN becomes -inf so that a diverged model's NaN scores rank last rather than first (torch's
    top-k treats NaN as the largest value), and so that the tie handling in ``topk_items`` sees
    only comparable values. The input is not modified: scorers may return cached tensors.
    """
    if not scores.is_floating_point():
        scores = scores.float()
    out = torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    if exclude_indices is not None and exclude_indices.numel() > 0:
        assert exclude_indptr is not None
        cols = exclude_indices.to(out.device)
        rows = _csr_rows(exclude_indptr.to(out.device), cols.numel())
        out[rows, cols] = float("-inf")
    return out


def topk_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best items per row, best first; equal scores are ordered toward the lower item index.

    Exact and branch-free (no host sync): ``torch.topk`` gives the right set except at the
    boundary value v_k (the k-th largest score), where it picks among tied items arbitrarily.
    Items scoring strictly above v_k are all in its output; they are reordered by
    (score desc, index asc) with two stable sorts of the small [B, k] block. The remaining
    k - n_above places go to the lowest-index items scoring exactly v_k, found by a second
    top-k on a key that is the reversed item index for tied items and -1 elsewhere. Cost: two
    top-k passes plus one comparison pass over [B, n_items]. ``scores`` must not contain NaN
    (``masked_scores`` maps NaN to -inf).
    """
    n_items = scores.shape[1]
    vals, idx = scores.topk(k, dim=1)
    kth = vals[:, -1:]
    n_above = (vals > kth).sum(dim=1, keepdim=True)

    # Strictly-above items by (score desc, index asc): sort by index, then stable sort by score.
    by_index = idx.sort(dim=1).indices
    idx, vals = idx.gather(1, by_index), vals.gather(1, by_index)
    above = idx.gather(1, vals.sort(dim=1, descending=True, stable=True).indices)

    key_dtype = torch.float32 if n_items <= _FLOAT32_EXACT else torch.float64
    reversed_index = torch.arange(n_items - 1, -1, -1, device=scores.device, dtype=key_dtype)
    tie_key = torch.where(scores == kth, reversed_index, -1.0)
    tied = tie_key.topk(k, dim=1).indices  # lowest index first; at least k - n_above are real ties

    pos = torch.arange(k, device=scores.device)
    take = torch.where(pos < n_above, pos, pos - n_above + k)
    return torch.cat([above, tied], dim=1).gather(1, take)


def topk_hits(
    scores: torch.Tensor,
    test_indptr: torch.Tensor,
    test_indices: torch.Tensor,
    ks: int | Sequence[int],
    *,
    exclude_indptr: torch.Tensor | None = None,
    exclude_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """The hit matrix ``[B, max(ks)]`` of a batch of score rows, on the scores' device.

    ``test_indptr [B + 1]`` / ``test_indices`` are the batch's rows of the test CSR (``indptr``
    may start above 0; ``test_indices`` holds exactly those rows' items). The optional
    ``exclude_*`` CSR slice (the training items) is set to -inf before ranking. Membership is a
    binary search of the ranked (row, item) keys in the sorted test keys: no dense test mask.
    """
    k_max = ks if isinstance(ks, int) else max(ks)
    n_rows, n_items = scores.shape
    ranked = topk_items(masked_scores(scores, exclude_indptr, exclude_indices), k_max)
    device = ranked.device
    test_indices = test_indices.to(device)
    if test_indices.numel() == 0:
        return torch.zeros(n_rows, k_max, dtype=torch.bool, device=device)
    rows = _csr_rows(test_indptr.to(device), test_indices.numel())
    test_keys = (rows * n_items + test_indices).sort().values
    queries = torch.arange(n_rows, device=device).unsqueeze(1) * n_items + ranked
    found = torch.searchsorted(test_keys, queries).clamp_(max=test_keys.numel() - 1)
    return test_keys[found] == queries
