"""Stacked shared tables: one ``[n_rows, d]`` tensor with named row ranges (DESIGN.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TableLayout:
    """Where each shared table lives inside the stacked table.

    FISM: P at rows ``0..I-1``, Q at rows ``I..2I-1``. MF: P only (the user vectors are private to
    the clients and are not part of the shared table).
    """

    model: str
    n_items: int
    ranges: dict[str, tuple[int, int]]

    @classmethod
    def for_model(cls, model: str, n_items: int) -> TableLayout:
        if model == "fism":
            return cls(model, n_items, {"P": (0, n_items), "Q": (n_items, 2 * n_items)})
        if model == "mf":
            return cls(model, n_items, {"P": (0, n_items)})
        raise ValueError(f"unknown model {model!r}: expected 'fism' or 'mf'")

    @property
    def n_rows(self) -> int:
        return max(hi for _, hi in self.ranges.values())

    def row(self, table: str, items: torch.Tensor) -> torch.Tensor:
        """Row ids in the stacked table of ``items`` of ``table``."""
        return items + self.ranges[table][0]

    def view(self, theta: torch.Tensor, table: str) -> torch.Tensor:
        lo, hi = self.ranges[table]
        return theta[lo:hi]

    def init(self, d: int, *, std: float, generator: torch.Generator, device: str | torch.device = "cpu"):
        """theta^0 ~ N(0, std^2) (paper 000 Section 2: standard Gaussian, std = 1)."""
        theta = torch.randn(self.n_rows, d, generator=generator) * std
        return theta.to(device)
