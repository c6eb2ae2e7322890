"""Recommendation models (FISM, MF) and the BPR loss (DESIGN.md section 8)."""

from fedrec.models.batch import (
    CSRTensors,
    UserBatch,
    gather_users,
    round_key,
    sample_negatives,
    sample_negatives_keyed,
)
from fedrec.models.bpr import bpr_loss_per_user, l2_per_user, touched_rows
from fedrec.models.fism import fism_pair_scores, fism_scorer, fism_user_vectors
from fedrec.models.layout import TableLayout
from fedrec.models.mf import mf_pair_scores, mf_scorer
from fedrec.models.objective import RowLookup, bpr_objective

__all__ = [
    "CSRTensors",
    "RowLookup",
    "TableLayout",
    "UserBatch",
    "bpr_loss_per_user",
    "bpr_objective",
    "fism_pair_scores",
    "fism_scorer",
    "fism_user_vectors",
    "gather_users",
    "l2_per_user",
    "mf_pair_scores",
    "mf_scorer",
    "round_key",
    "sample_negatives",
    "sample_negatives_keyed",
    "touched_rows",
]
