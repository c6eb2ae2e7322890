"""The worst-case table (issue 11, item 4): every defense against every attack, P@K as a fraction of
the attack-free, undefended run on the same dataset, and each defense's worst case with the attack
(and dataset, fraction) that achieves it.

Input: a results table in the schema of ``fedrec experiment``'s results.parquet (``data.dataset``,
``attack.name``, ``attack.fraction``, ``defense.name``, ``train.seed``, ``status``, ``precision@K``...),
e.g. from ``fedrec.experiments.plots.load_results``. Seeds are averaged per cell; the baseline is the
mean over seeds of the ``attack.name == "none"``, ``defense.name == "none"`` rows of each dataset.
An attack run with parameters that the grid varies (``attack.params.NAME`` columns) is its own attack,
named with them (``spattack-l items=popular``), never averaged with the attack's default as a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedrec.experiments.plots import _new_figure

KEYS = ["data.dataset", "attack.name", "attack.fraction", "defense.name"]
PARAMS = "attack.params."
ONE_SETTING = ["model.name", "train.optimizer"]  # a table mixing these would average unlike runs


@dataclass
class WorstCase:
    relative: pd.DataFrame  # index: defense; columns: "dataset · attack fraction"; values: metric / baseline
    worst: pd.DataFrame  # per defense: worst, where, mean, cells (sorted best worst case first)
    baselines: dict[str, float]
    metric: str
    seeds: int  # the most seeds any cell has


def worst_case(results: pd.DataFrame, metric: str = "precision@5") -> WorstCase:
    """The relative table and each defense's worst case (ValueError naming what is missing)."""
    missing = [c for c in [*KEYS, metric] if c not in results.columns]
    if missing:
        raise ValueError(f"the results table has no column {', '.join(missing)}")
    if not _is_metric(results[metric]):  # a text column (status, cell, data.dataset) cannot be averaged
        numeric = [c for c in results.columns if "@" in str(c) and _is_metric(results[c])]
        raise ValueError(
            f"--metric {metric}: not a numeric metric column (the table has {', '.join(numeric) or 'none'})"
        )
    done = results if "status" not in results.columns else results[results["status"] == "done"]
    for col in ONE_SETTING:
        if col in done.columns and done[col].nunique() > 1:
            values = ", ".join(sorted(map(str, done[col].dropna().unique())))
            raise ValueError(f"the results mix {col} ({values}): select one (a table per setting)")
    clean = done[(done["attack.name"] == "none") & (done["defense.name"] == "none")]
    baselines = clean.groupby("data.dataset")[metric].mean().to_dict()
    attacked = done[done["attack.name"] != "none"].assign(attack=attack_labels)
    if attacked.empty:
        raise ValueError("the results table has no attacked run")
    lacking = sorted(set(attacked["data.dataset"]) - set(baselines))
    if lacking:
        raise ValueError(
            f"no attack-free undefended run (attack none, defense none) for {', '.join(lacking)}"
        )
    # every cell is divided by its dataset's baseline: 0 would make it inf, NaN (no value) makes it NaN
    bad = {ds: baselines[ds] for ds in sorted(set(attacked["data.dataset"])) if not baselines[ds] > 0}
    if bad:
        shown = ", ".join(f"{ds} ({metric} = {v:g})" for ds, v in bad.items())
        raise ValueError(
            f"the attack-free undefended run is 0 or has no value for {shown}: no baseline to divide by"
        )
    keys = ["data.dataset", "attack", "attack.fraction", "defense.name"]
    cells = attacked.groupby(keys)[metric].agg(["mean", "count"]).reset_index()
    cells["relative"] = cells["mean"] / cells["data.dataset"].map(baselines)
    cells["column"] = [
        f"{ds} · {a} {fr:.0%}"
        for ds, a, fr in zip(cells["data.dataset"], cells["attack"], cells["attack.fraction"], strict=True)
    ]
    relative = cells.pivot(index="defense.name", columns="column", values="relative")
    relative = relative[sorted(relative.columns)]
    rows = []
    for defense, group in cells.groupby("defense.name"):
        valued = group.dropna(subset=["relative"])  # a cell whose every run has no value is NaN
        w = valued.loc[valued["relative"].idxmin()] if len(valued) else None
        rows.append(
            {
                "defense": defense,
                "worst": np.nan if w is None else float(w["relative"]),
                "where": "no value" if w is None else w["column"],
                "mean": float(group["relative"].mean()),
                "cells": len(group),
            }
        )
    worst = pd.DataFrame(rows).sort_values("worst", ascending=False, ignore_index=True)
    relative = relative.loc[list(worst["defense"])]
    return WorstCase(relative, worst, baselines, metric, int(cells["count"].max()))


def attack_labels(results: pd.DataFrame) -> pd.Series:
    """``attack.name`` followed by each attack parameter the row sets (``attack.params.NAME`` columns,
    blank where the run keeps the attack's default): ``spattack-l items=popular``."""
    label = results["attack.name"].astype(str)
    for col in sorted(c for c in results.columns if str(c).startswith(PARAMS)):
        given = results[col].notna()
        named = label + f" {col.removeprefix(PARAMS)}=" + results[col].astype(str)
        label = label.where(~given, named)
    return label


def _is_metric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def markdown(wc: WorstCase) -> str:
    """Each defense's worst case, best first, as a Markdown table."""
    base = ", ".join(f"{ds} {v:.4f}" for ds, v in sorted(wc.baselines.items()))
    lines = [
        f"{wc.metric} as a fraction of the attack-free undefended run ({base}); up to {wc.seeds} seed(s) a cell",
        "",
        "| defense | worst case | attack (dataset · attack fraction) | mean over cells | cells |",
        "|---|---|---|---|---|",
    ]
    for r in wc.worst.itertuples():
        lines.append(f"| {r.defense} | {r.worst:.3f} | {r.where} | {r.mean:.3f} | {r.cells} |")
    return "\n".join(lines)


def heatmap_figure(wc: WorstCase, title: str | None = None) -> Figure:
    """Attack cells (rows, grouped by dataset, under a first row of each defense's worst case) x
    defenses (columns, best worst case first): a grid of some 60 cells reads down, with its labels
    level, where as columns it would be a metre wide."""
    table = wc.relative.copy()
    table.insert(0, "worst case", wc.worst.set_index("defense")["worst"])
    a = table.to_numpy(dtype=float).T
    rows, defenses = list(table.columns), list(table.index)
    fig = _new_figure(0.55 * len(defenses) + 3.4, 0.24 * len(rows) + 2.2)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(a), cmap="RdYlGn", vmin=0.0, vmax=1.2, aspect="auto")
    ax.xaxis.tick_top()  # the defenses' names above their columns, the colour bar beside
    ax.set_xticks(range(len(defenses)), defenses, rotation=40, ha="left", rotation_mode="anchor", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            v = a[r, c]
            ax.text(c, r, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=6)
    ax.axhline(0.5, color="black", linewidth=1.2)
    datasets = [row.split(" · ")[0] for row in rows[1:]]
    for r in range(1, len(datasets)):  # a line between two datasets' cells
        if datasets[r] != datasets[r - 1]:
            ax.axhline(r + 0.5, color="black", linewidth=0.8)
    fig.colorbar(im, ax=ax, label=f"{wc.metric} / attack-free", shrink=0.6)
    ax.set_title(
        title or f"Worst case: {wc.metric} relative to attack-free training (≤ {wc.seeds} seeds a cell)",
        fontsize=9,
    )
    return fig
