"""Reference recommenders trained on a train ``Interactions``; each returns a scorer.

A scorer maps a ``LongTensor[B]`` of users to float32 scores ``[B, n_items]`` (higher is better) on
the device of its input; the evaluator masks training items itself.
"""

from fedrec.baselines.centralized import CentralizedModel, CentralizedResult, train_centralized
from fedrec.baselines.implicit_bpr import train_implicit_bpr
from fedrec.baselines.popularity import most_popular
from fedrec.baselines.recbole_bpr import RecBoleBPRFit, fit_recbole_bpr, train_recbole_bpr

__all__ = [
    "CentralizedModel",
    "CentralizedResult",
    "RecBoleBPRFit",
    "fit_recbole_bpr",
    "most_popular",
    "train_centralized",
    "train_implicit_bpr",
    "train_recbole_bpr",
]
