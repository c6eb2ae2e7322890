"""The round record (DESIGN.md section 10): one row per sampled client per round (plus ``drawn``, the
pool member of a randomised rule such as MixTailor, on runs that draw one), kept in buffers
preallocated for the whole run ([T, clients per round]) so a round allocates nothing long-lived (small
per-round allocations fragment the heap: RSS grew ~5 MB a round on Last.fm) and reads nothing back to
the host."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from fedrec.protocol import REASONS

ROUND_COLUMNS = (
    "t",
    "client_id",
    "byzantine",
    "accepted",
    "score",
    "reason",
    "weight",
    "grad_norm",
    "forged",
)


@dataclass
class RoundRecorder:
    """Per-round records of a run of ``rounds`` rounds with ``per_round`` sampled clients each."""

    rounds: int
    per_round: int
    device: torch.device
    records: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: torch.Tensor | None = None

    def allocate(self) -> None:
        if self.losses is not None:
            return
        T, n, dev = self.rounds, self.per_round, self.device
        self.losses = torch.zeros(T, dtype=torch.float64, device=dev)
        self.records = {
            "client_id": torch.zeros(T, n, dtype=torch.int64, device=dev),
            "byzantine": torch.zeros(T, n, dtype=torch.bool, device=dev),
            "accepted": torch.zeros(T, n, dtype=torch.bool, device=dev),
            "score": torch.zeros(T, n, dtype=torch.float64, device=dev),
            "reason": torch.zeros(T, n, dtype=torch.int64, device=dev),
            # |g| of the client's own gradient; |g~ - g| of its upload's gradient from it (0 when honest)
            "grad_norm": torch.zeros(T, n, dtype=torch.float64, device=dev),
            "forged": torch.zeros(T, n, dtype=torch.float64, device=dev),
            "weight": torch.zeros(T, n, dtype=torch.float64, device=dev),  # the aggregation weight
            # [T, len(REASONS)]: uploads that filled no slot (an unsampled or repeated id), by reason
            "refused": torch.zeros(T, len(REASONS), dtype=torch.int64, device=dev),
            # [T]: the pool member a randomised rule drew this round (MixTailor), -1 for none
            "drawn": torch.full((T,), -1, dtype=torch.int64, device=dev),
        }

    def record(self, t: int, clients, byzantine, outcome, grad_norm, forged, loss) -> None:
        """Round ``t``'s row per sampled client (``outcome``: the server's ``RoundOutcome``)."""
        self.allocate()
        self.losses[t - 1] = loss
        decision, row = outcome.decision, self.records
        row["refused"][t - 1] = outcome.refused
        row["client_id"][t - 1] = clients
        row["byzantine"][t - 1] = byzantine
        row["accepted"][t - 1] = decision.accepted
        row["score"][t - 1] = decision.scores
        row["reason"][t - 1] = decision.reasons
        row["weight"][t - 1] = decision.weights
        row["grad_norm"][t - 1] = grad_norm
        row["forged"][t - 1] = forged
        drawn = decision.info.get("drawn")
        if drawn is not None:
            row["drawn"][t - 1] = drawn

    def state(self, t: int) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The first ``t`` rounds' records and losses, on the CPU (for a checkpoint)."""
        losses = None if self.losses is None else self.losses[:t].cpu()
        return {k: v[:t].cpu() for k, v in self.records.items()}, losses

    def restore(self, records: dict[str, torch.Tensor], losses: torch.Tensor | None, t: int) -> None:
        self.losses, self.records = None, {}
        if losses is None:
            return
        self.allocate()
        self.losses[:t] = losses.to(self.device)
        for k, v in records.items():  # a checkpoint from before a record existed leaves it at its default
            self.records[k][:t] = v.to(self.device)

    def refused_counts(self, t: int) -> dict[str, int]:
        """Uploads that filled no client's slot over the first ``t`` rounds, by reason (those that occur)."""
        if not self.records or t == 0:
            return {}
        total = self.records["refused"][:t].sum(0).tolist()
        return {REASONS[i]: int(c) for i, c in enumerate(total) if c}

    def frame(self, t: int) -> pd.DataFrame:
        """rounds.parquet: one row per sampled client of the first ``t`` rounds."""
        if not self.records or t == 0:
            return pd.DataFrame(columns=list(ROUND_COLUMNS))
        cols = {k: self.records[k][:t].reshape(-1).cpu().numpy() for k in ROUND_COLUMNS[1:]}
        df = pd.DataFrame({"t": (torch.arange(t * self.per_round) // self.per_round + 1).numpy(), **cols})
        df["reason"] = pd.Categorical.from_codes(df["reason"], categories=list(REASONS))
        columns = list(ROUND_COLUMNS)
        drawn = self.records["drawn"][:t]
        if bool((drawn >= 0).any()):  # a randomised rule (MixTailor): the member drawn, on every row
            df["drawn"] = drawn.repeat_interleave(self.per_round).cpu().numpy()
            columns.append("drawn")
        return df[columns]
