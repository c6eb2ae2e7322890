"""One annotated heatmap (rows x columns of mean values, '–' where a cell has no run), as a PNG: the
picture of a rule x attack grid (experiments/testbed_grid.py --plot, experiments/papers_recsys.py --plot)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def heatmap(
    values: list[list[float]], rows: list[str], cols: list[str], title: str, path: Path, fmt: str = "{:.1f}",
    vmin: float | None = None, vmax: float | None = None, label: str = "",
) -> Path:  # fmt: skip
    """Draw ``values[r][c]`` (nan: no run) with the cell values written in; a higher value is greener."""
    a = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.6, 0.42 * len(rows) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(a), cmap="RdYlGn", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for r in range(len(rows)):
        for c in range(len(cols)):
            v = a[r, c]
            ax.text(c, r, "–" if math.isnan(v) else fmt.format(v), ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=label, fraction=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
