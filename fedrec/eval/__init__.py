"""Evaluation: ranking metrics over a hit matrix and the full-ranking / leave-one-out protocols."""

from fedrec.eval.metrics import (
    METRICS,
    hit,
    implicit_precision_at_k,
    masked_scores,
    mean_metrics,
    ndcg,
    per_user_metrics,
    precision,
    recall,
    topk_hits,
    topk_items,
)
from fedrec.eval.protocols import (
    LOO_NEGATIVES,
    PROTOCOLS,
    EvalResult,
    Scorer,
    full_ranking,
    leave_one_out,
    run_protocol,
)

__all__ = [
    "LOO_NEGATIVES",
    "METRICS",
    "PROTOCOLS",
    "EvalResult",
    "Scorer",
    "full_ranking",
    "hit",
    "implicit_precision_at_k",
    "leave_one_out",
    "masked_scores",
    "mean_metrics",
    "ndcg",
    "per_user_metrics",
    "precision",
    "recall",
    "run_protocol",
    "topk_hits",
    "topk_items",
]
