"""How sparse a run's rounds are for a flat coordinate-wise rule (issue 16).

A flat coordinate-wise median counts an unlisted row as a zero delta, so a row listed by fewer than
half of the round's uploads aggregates to the default. ``SparseRowsMonitor`` reads the share of such
rows that a flat rule records in ``Decision.info["rows_below_half"]``, warns once when most listed rows
are below half, and reports the measured share for summary.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class SparseRowsMonitor:
    """Per-round shares of listed rows that fewer than half of the uploads list (flat rules only).

    A running sum and minimum on the device (no per-round list: small long-lived allocations fragment
    the heap); one host read per round for the warning, only on flat coordinate-wise runs and only
    until it has warned. Not checkpointed: after a resume it covers the resumed rounds."""

    total: torch.Tensor | None = None
    low: torch.Tensor | None = None
    rounds: int = 0
    warned: bool = False

    def observe(self, outcome: Any, defense: str = "") -> None:
        share = outcome.decision.info.get("rows_below_half")
        if share is None:
            return
        share = share.detach()
        self.total = share if self.total is None else self.total + share
        self.low = share if self.low is None else torch.minimum(self.low, share)
        self.rounds += 1
        if not self.warned and float(share) > 0.5:
            self.warned = True
            log.warning(
                "defense %s is a flat coordinate-wise rule, but %.0f %% of the listed rows of round %d are "
                "listed by fewer than half of the clients: there it returns the default (the model barely "
                "learns); use the item-wise presets (item-median, item-trmean, grad-item-median)",
                defense, 100 * float(share), outcome.state.t,
            )  # fmt: skip

    def summary(self) -> dict[str, Any] | None:
        """The measured shares for summary.json (None when no round used a flat coordinate-wise rule)."""
        if self.total is None:
            return None
        return {
            "rows_below_half_mean": float(self.total) / self.rounds,
            "rows_below_half_min": float(self.low),
            "rounds_observed": self.rounds,
            "warned": self.warned,
        }
