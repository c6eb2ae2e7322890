"""Byzantine-robust rules over sparse client vectors (DESIGN.md section 6): pure functions over tensors.

Selectors return a ``Selection`` (accepted clients and their scores) and the round is aggregated over
the accepted clients (DESIGN.md section 5): Krum / Multi-Krum (n - f - 2 neighbours), RESAM's Krum* /
Multi-Krum*_q (n - f - 1), and paper 000's norm-based Trmean (``norm_trim``). Robust aggregators return
the aggregate over the union of listed rows: coordinate-wise median, trimmed mean and MeaMed; the
geometric median (RFA) returns its convex weights, the median being ``weighted_sum(v, beta)``.
"""

from __future__ import annotations

from fedrec.defenses.geomed import geometric_median, weiszfeld_gram
from fedrec.defenses.krum import (
    krum,
    krum_scores,
    krum_star,
    krum_star_scores,
    multi_krum,
    multi_krum_star,
)
from fedrec.defenses.trimmed import coordinate_median, meamed, norm_trim, trimmed_mean
from fedrec.defenses.vectors import (
    BLOCK_ELEMENTS,
    ClientVectors,
    Selection,
    default_block_rows,
    dense_blocks,
    gram,
    select_lowest,
    sq_distances,
    sq_distances_from_gram,
    sq_norms,
    weighted_sum,
)

__all__ = [
    "BLOCK_ELEMENTS",
    "ClientVectors",
    "Selection",
    "coordinate_median",
    "default_block_rows",
    "dense_blocks",
    "geometric_median",
    "gram",
    "krum",
    "krum_scores",
    "krum_star",
    "krum_star_scores",
    "meamed",
    "multi_krum",
    "multi_krum_star",
    "norm_trim",
    "select_lowest",
    "sq_distances",
    "sq_distances_from_gram",
    "sq_norms",
    "trimmed_mean",
    "weighted_sum",
    "weiszfeld_gram",
]

# the rule registry, filled by the rule modules on import (the catalogue imports every module of this
# package first: a new rule is one module plus one catalogue line, nothing to add here), and the presets
from fedrec.defenses.base import RULES, RuleResult, RuleSpec, register_rule
from fedrec.defenses.catalogue import DEFENSES, make_defense
from fedrec.defenses.defense import Defense, assumed_f

__all__ += [
    "DEFENSES",
    "RULES",
    "Defense",
    "RuleResult",
    "RuleSpec",
    "assumed_f",
    "make_defense",
    "register_rule",
]
