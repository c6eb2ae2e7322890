"""The worst-case table (issue 11, item 4): every defense against every attack, P@K as a fraction of
the attack-free, undefended run on the same dataset, and each defense's worst case with the attack
(and dataset, fraction) that achieves it.

Input: a results table in the schema of ``fedrec experiment``'s results.parquet (``data.dataset``,
``attack.name``, ``attack.fraction``, ``defense.name``, ``train.seed``, ``status``, ``precision@K``...),
e.g. from ``fedrec.experiments.plots.load_results``. Seeds are averaged per cell; the baseline is the
mean over seeds of the ``attack.name == "none"``, ``defense.name == "none"`` rows of each dataset.
No two settings are averaged as seeds: an attack or defense setting that varies in the table (an
``attack.*`` / ``defense.*`` column: ``attack.params.items``, ``defense.params.c``, ``defense.pre``) names
its own attack or defense (``spattack-l items=popular``; a missing value is the default, unnamed), and
any other setting that varies (``model.name``, ``train.lr``) is refused: a table per setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedrec.experiments.plots import NOT_RESULT, _missing, _new_figure, _text

KEYS = ["data.dataset", "attack.name", "attack.fraction", "defense.name"]
NAMED = ("attack.", "defense.")  # settings that name an attack / a defense variant when they vary


@dataclass
class WorstCase:
    relative: pd.DataFrame  # index: defense; columns: "dataset · attack fraction"; values: metric / baseline
    worst: pd.DataFrame  # per defense: worst, where, mean, cells (sorted best worst case first)
    # per defense (rows, in ``worst``'s order) and "dataset fraction" (columns): the worst relative
    # value over the attacks of that dataset and fraction, and the attack that achieves it
    by_setting: pd.DataFrame
    by_setting_attack: pd.DataFrame
    baselines: dict[str, float]
    metric: str
    seeds: int  # the most seeds any cell has
    without: tuple[str, ...] = ()  # attacks left out (a threat model without them)


def worst_case(
    results: pd.DataFrame, metric: str = "precision@5", without: tuple[str, ...] = ()
) -> WorstCase:
    """The relative table and each defense's worst case (ValueError naming what is missing).
    ``without``: attack names left out, with every variant of each (a threat model without them)."""
    missing = [c for c in [*KEYS, metric] if c not in results.columns]
    if missing:
        raise ValueError(f"the results table has no column {', '.join(missing)}")
    unknown = sorted(set(without) - set(results["attack.name"]) - {"none"})
    if unknown:
        present = ", ".join(sorted(set(results["attack.name"]) - {"none"}))
        raise ValueError(
            f"--without {', '.join(unknown)}: no attack of that name in the table (it has {present}; "
            "an attack's variants go with its name)"
        )
    if "none" in without:
        raise ValueError("--without none: the attack-free runs are the baseline; they cannot be left out")
    results = results[~results["attack.name"].isin(without)]
    if not _is_metric(results[metric]):  # a text column (status, cell, data.dataset) cannot be averaged
        numeric = [c for c in results.columns if "@" in str(c) and _is_metric(results[c])]
        raise ValueError(
            f"--metric {metric}: not a numeric metric column (the table has {', '.join(numeric) or 'none'})"
        )
    done = results if "status" not in results.columns else results[results["status"] == "done"]
    done = _checked_keys(done)
    done = done.assign(**{"attack.name": _labels(done, "attack."), "defense.name": _labels(done, "defense.")})
    for col in _config_columns(done):
        if not col.startswith(NAMED) and done[col].nunique() > 1:
            values = ", ".join(sorted(map(str, done[col].dropna().unique())))
            raise ValueError(f"the results mix {col} ({values}): select one (a table per setting)")
    clean = done[(done["attack.name"] == "none") & (done["defense.name"] == "none")]
    baselines = clean.groupby("data.dataset")[metric].mean().to_dict()
    attacked = done[done["attack.name"] != "none"]
    if attacked.empty:
        raise ValueError(
            f"no finished attacked run is left once --without {', '.join(without)} is applied"
            if without else "the results table has no attacked run"
        )  # fmt: skip
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
    cells = attacked.groupby(KEYS)[metric].agg(["mean", "count"]).reset_index()
    cells["relative"] = cells["mean"] / cells["data.dataset"].map(baselines)
    cells["column"] = [
        f"{ds} · {a} {_percent(fr)}"
        for ds, a, fr in zip(
            cells["data.dataset"], cells["attack.name"], cells["attack.fraction"], strict=True
        )
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
    by_setting, by_attack = _by_setting(cells, list(worst["defense"]))
    return WorstCase(
        relative, worst, by_setting, by_attack, baselines, metric, int(cells["count"].max()), tuple(without)
    )


def _checked_keys(done: pd.DataFrame) -> pd.DataFrame:
    """The table's keys as grouping needs them (ValueError, one line, otherwise): names are text,
    fractions finite numbers (a NaN key drops out of every group, a None name broke the labels); a
    list or mapping in another config column (a table written by hand) is compared as its text."""
    for col in ("data.dataset", "attack.name", "defense.name"):
        bad = done[col].map(lambda v: not isinstance(v, str) or not v)
        if bad.any():
            raise ValueError(f"the results table's {col} has {done[col][bad].iloc[0]!r}: expected a name")
    fraction = pd.to_numeric(done["attack.fraction"], errors="coerce")
    bad = ~np.isfinite(fraction.to_numpy(dtype=float)) | done["attack.fraction"].map(
        lambda v: isinstance(v, bool)
    )
    if bad.any():
        raise ValueError(
            f"the results table's attack.fraction has {done['attack.fraction'][bad].iloc[0]!r}: expected a number"
        )
    done = done.assign(**{"attack.fraction": fraction})
    unhashable = (list, dict, np.ndarray)
    for col in _config_columns(done):
        if done[col].map(lambda v: isinstance(v, unhashable)).any():
            done = done.assign(**{col: done[col].map(lambda v: str(v) if isinstance(v, unhashable) else v)})
    return done


def _percent(fraction: float) -> str:
    """0.2 -> "20%", 0.333 -> "33.3%": one label per fraction a grid would list."""
    return f"{fraction * 100:g}%"


def _by_setting(cells: pd.DataFrame, order: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each defense's worst case per dataset and attack fraction (what one deploys for a known data
    set and threat level), and the attack of each; NaN where a defense has no valued cell there.
    Columns "dataset fraction", by dataset, then fraction as a number."""
    valued = cells.dropna(subset=["relative"])
    keys = ["data.dataset", "attack.fraction"]
    worst = valued.loc[valued.groupby(["defense.name", *keys])["relative"].idxmin()]
    pairs = list(zip(worst["data.dataset"], worst["attack.fraction"], strict=True))
    worst = worst.assign(setting=[f"{ds} {_percent(fr)}" for ds, fr in pairs])
    settings = [f"{ds} {_percent(fr)}" for ds, fr in sorted(set(pairs))]
    value = worst.pivot(index="defense.name", columns="setting", values="relative")
    attack = worst.pivot(index="defense.name", columns="setting", values="attack.name")
    return value.reindex(index=order, columns=settings), attack.reindex(index=order, columns=settings)


def _config_columns(results: pd.DataFrame) -> list[str]:
    """The config columns that could tell two runs apart, but the table's keys and the seed."""
    skip = {*KEYS, "train.seed", *NOT_RESULT}
    return [c for c in results.columns if "." in str(c) and "@" not in str(c) and c not in skip]


def _labels(results: pd.DataFrame, prefix: str) -> pd.Series:
    """``attack.name`` (``prefix = "attack."``) or ``defense.name``, followed by each setting of that
    prefix that varies in the table and that the row sets: ``spattack-l items=popular``, ``krum c=3``,
    ``grad-geomed pre=resample`` (a missing value is the default, left unnamed)."""
    name = results[f"{prefix}name"].astype(str)
    for col in sorted(c for c in _config_columns(results) if c.startswith(prefix)):
        given = ~results[col].map(_missing).astype(bool)
        if results.loc[given, col].map(_text).nunique() + bool((~given).any()) < 2:
            continue  # one setting throughout: it names nothing
        short = col.removeprefix(prefix).removeprefix("params.")
        name = name.where(~given, name + f" {short}=" + results[col].map(_text))
    return name


def _is_metric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def markdown(wc: WorstCase) -> str:
    """Each defense's worst case, best first, as a Markdown table; then its worst case per dataset and
    attack fraction (the attack in parentheses, each column's best in bold)."""
    base = ", ".join(f"{ds} {v:.4f}" for ds, v in sorted(wc.baselines.items()))
    lines = [
        f"{wc.metric} as a fraction of the attack-free undefended run ({base}); up to {wc.seeds} seed(s) a cell"
        + (f"; without {', '.join(wc.without)}" if wc.without else ""),
        "",
        "| defense | worst case | attack (dataset · attack fraction) | mean over cells | cells |",
        "|---|---|---|---|---|",
    ]
    for r in wc.worst.itertuples():
        lines.append(f"| {r.defense} | {r.worst:.3f} | {r.where} | {r.mean:.3f} | {r.cells} |")
    settings = list(wc.by_setting.columns)
    if not settings:  # no attacked cell has a value
        return "\n".join(lines)
    lines += [
        "",
        "Each defense's worst case per dataset and attack fraction (the attack that achieves it); the best "
        "worst case of each column in bold",
        "",
        "| defense | " + " | ".join(settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    best = wc.by_setting.max()  # NaN-skipping: a column's best valued worst case
    for defense in wc.by_setting.index:
        shown = []
        for s in settings:
            v, attack = wc.by_setting.loc[defense, s], wc.by_setting_attack.loc[defense, s]
            text = "–" if pd.isna(v) else f"{v:.3f} ({attack})"
            shown.append(f"**{text}**" if not pd.isna(v) and v == best[s] else text)
        lines.append(f"| {defense} | " + " | ".join(shown) + " |")
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
        title
        or f"Worst case: {wc.metric} relative to attack-free training (≤ {wc.seeds} seeds a cell)"
        + (f"\nwithout {', '.join(wc.without)}" if wc.without else ""),
        fontsize=9,
    )
    return fig
