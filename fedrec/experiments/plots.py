"""Figures from run directories and grid results (issue 13 Build item 4; paper 000 Figures 1-4, 6-10).

Two kinds of functions: loaders (``load_run``, ``load_results``) that turn files into data and raise
:class:`PlotInputError` (one line) on bad input, and figure builders that take data and return a
``matplotlib.figure.Figure``. Figures are made with ``Figure()`` directly, never with pyplot, so no
figure is registered in pyplot's global state (nothing leaks between calls, no GUI backend is touched);
:func:`save` renders them with Agg.
"""

from __future__ import annotations

import itertools
import math
import textwrap
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedrec.config import load_yaml
from fedrec.experiments.cell import RecordError, read_record, read_small, summary_problem
from fedrec.experiments.grid import STANDARD_KEYS
from fedrec.federation.checkpoint import NOT_IDENTITY

KS = (1, 2, 3, 4, 5)  # paper 000 plots every metric at K = 1..5
PAPER_NAMES = {
    "lastfm": "Last.fm",
    "ml100k": "ML100K",
    "citeulike-a": "Citeulike-a",
    "citeulike-t": "Citeulike-t",
}
DEFENSE_NAMES = {"none": "No defense", "krum": "Krum", "rfa": "RFA", "trmean": "Trmean"}
# paper 000 names its gradient-space defense after the optimizer: A-RFRS (Adam), S-RFRS (SGD with
# momentum, Appendix C), AG-RFRS (AdaGrad, D), R-RFRS (RMSProp, E)
RFRS_NAMES = {
    "adam": "A-RFRS",
    "momentum": "S-RFRS",
    "adagrad": "AG-RFRS",
    "rmsprop": "R-RFRS",
    "sgd": "SGD-RFRS",
}
MODEL_NAMES = {"fism": "A-FRS", "mf": "FMF"}
OPTIMIZER_NAMES = {"adam": "Adam", "sgd": "SGD", "momentum": "SGD with momentum", "adagrad": "AdaGrad",
                   "rmsprop": "RMSProp"}  # fmt: skip
OURS = "tab:red"  # paper 000 draws its own method in red
COLORS = ["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan", "black"]  # fmt: skip
# what a results row says of its run's setting: fedrec experiment's standard columns but the seed
RESULT_CONFIG = tuple(k for k in STANDARD_KEYS if k != "train.seed")

# config columns that do not change a run's result: never a reason to split a figure's lines
NOT_RESULT = (*NOT_IDENTITY, "federated.checkpoint_every", "federated.eval_every")
HAD = "_columns"  # load_results of several tables: the dotted columns each row's own table has
SHORT = dict(
    zip(RESULT_CONFIG, ("dataset", "model", "optimizer", "attack", "fraction", "defense"), strict=True)
)


class PlotInputError(ValueError):
    """Input a figure cannot be made from; ``str`` is one line naming the file and what is wrong."""


# ------------------------------------------------------------------------------------------ run dirs


@dataclass
class RunData:
    """What the figures read from one run directory."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: pd.DataFrame  # t, metric, k, value
    rounds: pd.DataFrame | None = None  # one row per sampled client per round
    losses: np.ndarray | None = None  # [T] summed training loss of the round's honest clients

    def get(self, dotted: str, default: Any = None) -> Any:
        section, _, key = dotted.partition(".")
        return (self.config.get(section) or {}).get(key, default)

    @property
    def attack(self) -> str:
        name, frac = self.get("attack.name", "none"), self.get("attack.fraction", 0.0) or 0.0
        return "no attack" if name == "none" or not frac else f"{name} {frac:.0%}"

    @property
    def defense(self) -> str:
        return str(self.get("defense.name", "none"))


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise PlotInputError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None


def load_run(path: str | Path, *, rounds: bool = False, losses: bool = False) -> RunData:
    """A finished run directory (``fedrec train ... --out``); ``rounds``/``losses``: also read
    rounds.parquet / the per-round loss from checkpoint.pt (absent from old runs: then None)."""
    p = Path(path)
    if not p.exists():
        raise PlotInputError(f"{p}: no such run directory")
    if not p.is_dir():
        raise PlotInputError(f"{p}: a file, not a run directory (expected a folder with config.yaml)")
    if not (p / "config.yaml").is_file():
        raise PlotInputError(f"{p}: not a run directory (no config.yaml)")
    if not (p / "summary.json").is_file():
        raise PlotInputError(f"{p}: unfinished run (no summary.json yet); resume it or wait for it to end")
    try:  # read_small: a FIFO or a link to /dev/zero is refused, not read forever
        config = load_yaml(read_small(p / "config.yaml").decode()) or {}
        summary = read_record(p / "summary.json")
    except RecordError as e:
        raise PlotInputError(str(e)) from None
    except (yaml.YAMLError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise PlotInputError(f"{p}: unreadable config.yaml or summary.json ({type(e).__name__})") from None
    if not isinstance(config, dict) or not isinstance(summary, dict):
        raise PlotInputError(f"{p}: config.yaml or summary.json is not a mapping")
    if bad := next((k for k, v in config.items() if not isinstance(v, dict | None)), None):
        raise PlotInputError(f"{p / 'config.yaml'}: section {bad!r} is not a mapping")
    fraction = (config.get("attack") or {}).get("fraction", 0.0)
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, int | float)):
        raise PlotInputError(f"{p / 'config.yaml'}: attack.fraction={fraction!r} is not a number")
    if summary.get("mode") != "federated":
        raise PlotInputError(
            f"{p}: a {summary.get('mode', 'non-federated')} run; these figures need federated runs"
        )
    if not (p / "metrics.parquet").is_file():
        raise PlotInputError(f"{p}: no metrics.parquet")
    metrics = _read_parquet(p / "metrics.parquet")
    if missing := {"t", "metric", "k", "value"} - set(metrics.columns):
        raise PlotInputError(f"{p / 'metrics.parquet'}: missing column(s) {', '.join(sorted(missing))}")
    _check_dtypes(p / "metrics.parquet", metrics, {"t": "integer", "k": "integer", "value": "number"})
    run = RunData(path=p, config=config, summary=summary, metrics=metrics)
    if rounds or losses:
        if not (p / "rounds.parquet").is_file():
            raise PlotInputError(f"{p}: no rounds.parquet")
        run.rounds = _read_parquet(p / "rounds.parquet")
        if missing := {"t", "byzantine", "accepted"} - set(run.rounds.columns):
            raise PlotInputError(f"{p / 'rounds.parquet'}: missing column(s) {', '.join(sorted(missing))}")
        # 'False' as text is True to astype(bool): a flag column must be stored as booleans
        _check_dtypes(
            p / "rounds.parquet", run.rounds, {"t": "integer", "byzantine": "bool", "accepted": "bool"}
        )
    if losses:
        run.losses = _checkpoint_losses(p / "checkpoint.pt")
    return run


_DTYPES: dict[str, Callable[[Any], bool]] = {
    "integer": lambda c: pd.api.types.is_integer_dtype(c) and not pd.api.types.is_bool_dtype(c),
    "number": lambda c: pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c),
    "bool": pd.api.types.is_bool_dtype,
}


def _check_dtypes(path: Path, table: pd.DataFrame, kinds: dict[str, str]) -> None:
    """Each column of ``kinds`` stored as that kind (a table fedrec writes always is)."""
    for column, kind in kinds.items():
        if not _DTYPES[kind](table[column]):
            raise PlotInputError(f"{path}: column {column} holds {table[column].dtype}, not {kind} values")


def _checkpoint_losses(path: Path) -> np.ndarray | None:
    """The per-round loss the checkpoint keeps (it is in no table); None when it cannot be read."""
    if not path.is_file():
        return None
    from fedrec.federation.checkpoint import CheckpointError, load_checkpoint

    try:
        losses = load_checkpoint(path).get("losses")
    except (CheckpointError, OSError):
        return None
    return None if losses is None else losses.numpy()


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """``defense vs attack``, plus whatever else differs between the runs, unique per run."""
    labels = [
        f"{_line_label('defense.name', r.defense, r.get('train.optimizer'))} · {r.attack}" for r in runs
    ]
    for key in ("data.dataset", "model.name", "model.init_std", "train.optimizer", "train.lr",
                "train.weight_decay", "federated.fraction", "train.seed"):  # fmt: skip
        values = [r.get(key) for r in runs]
        if len({str(v) for v in values}) > 1:
            short = "model" if key == "model.name" else key.split(".")[1]
            labels = [f"{lab} · {short} {v}" for lab, v in zip(labels, values, strict=True)]
    if len(set(labels)) < len(labels):  # same settings twice: the directory names tell them apart
        labels = [f"{lab} ({r.path.name})" for lab, r in zip(labels, runs, strict=True)]
    return labels


def _labels_for(runs: Sequence[RunData], labels: Sequence[str] | None) -> list[str]:
    if labels and len(labels) != len(runs):
        raise PlotInputError(f"{len(labels)} labels for {len(runs)} runs")
    return list(labels) if labels else run_labels(runs)


def metric_curve(run: RunData, metric: str, k: int) -> pd.DataFrame:
    """``t, value`` of ``metric@k`` over the run's evaluations."""
    m = run.metrics
    curve = m[(m.metric == metric) & (m.k == k)].sort_values("t")[["t", "value"]]
    if curve.empty:
        have = sorted(m.k[m.metric == metric].unique().tolist())
        raise PlotInputError(f"{run.path}: no {metric}@{k} in metrics.parquet (it has K = {have or 'none'})")
    return curve.reset_index(drop=True)


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)  # renders without pyplot
    return fig


def curves_figure(
    runs: Sequence[RunData], *, metric: str = "precision", k: int = 5, labels: Sequence[str] | None = None,
    loss_window: int = 50,
) -> Figure:  # fmt: skip
    """``metric@k`` over rounds, one line per run; a second panel with the training loss (per honest
    client, rolling mean over ``loss_window`` rounds) when any run recorded it."""
    if not runs:
        raise PlotInputError("no run directory given")
    if loss_window < 1:
        raise PlotInputError(f"--window {loss_window}: must be at least 1")
    labels = _labels_for(runs, labels)
    with_loss = any(r.losses is not None and len(r.losses) for r in runs)
    fig = _new_figure(11 if with_loss else 6.5, 4)
    axes = fig.subplots(1, 2 if with_loss else 1, squeeze=False)[0]
    short = {"precision": "P", "recall": "R"}.get(metric, metric)
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        c = metric_curve(run, metric, k)
        axes[0].plot(c.t, c.value, marker="o", ms=3, label=label, color=COLORS[i % len(COLORS)])
        if with_loss and run.losses is not None and run.rounds is not None:
            loss = per_client_loss(run.losses, run.rounds)
            axes[1].plot(loss.index, loss.rolling(min(loss_window, max(1, len(loss))), min_periods=1).mean(), label=label,
                         color=COLORS[i % len(COLORS)])  # fmt: skip
    axes[0].set(xlabel="round", ylabel=f"{short}@{k}", title=f"{short}@{k} over rounds (benign users)")
    axes[0].legend(fontsize=8)
    if with_loss:
        axes[1].set(xlabel="round", ylabel="BPR loss per honest client",
                    title=f"training loss (rolling mean, {loss_window} rounds)")  # fmt: skip
        axes[1].legend(fontsize=8)
    return fig


def per_client_loss(losses: np.ndarray, rounds: pd.DataFrame) -> pd.Series:
    """The round's summed honest loss over its number of honest clients, indexed by round."""
    honest = (~rounds.byzantine.astype(bool)).groupby(rounds.t).sum()
    t = np.arange(1, len(losses) + 1)
    n = honest.reindex(t).to_numpy(dtype=float)
    return pd.Series(losses / np.where(n > 0, n, np.nan), index=pd.Index(t, name="t"))


def detection_rates(rounds: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per round: the share of the sampled Byzantine / honest uploads rejected, pooled over the last
    ``window`` rounds (a rolling sum of counts, not a mean of per-round shares: rounds with one
    Byzantine client would otherwise weigh as much as rounds with five)."""
    if window < 1:
        raise PlotInputError(f"--window {window}: must be at least 1")
    r = rounds.assign(rej=~rounds.accepted.astype(bool), byz=rounds.byzantine.astype(bool))
    g = (
        r.assign(rb=r.rej & r.byz, rh=r.rej & ~r.byz, hon=~r.byz)
        .groupby("t")[["byz", "hon", "rb", "rh"]]
        .sum()
    )
    roll = g.rolling(
        min(window, max(1, len(g))), min_periods=1
    ).sum()  # wider than the run: all of it (no int64 overflow)
    return pd.DataFrame(
        {
            "byzantine_rejected": roll.rb / roll.byz.where(roll.byz > 0),
            "honest_rejected": roll.rh / roll.hon.where(roll.hon > 0),
        }
    )


def detection_figure(
    runs: Sequence[RunData], *, window: int = 100, labels: Sequence[str] | None = None
) -> Figure:
    """Byzantine rejected and honest rejected per round (rolling window), one line per run."""
    if not runs:
        raise PlotInputError("no run directory given")
    labels = _labels_for(runs, labels)
    fig = _new_figure(11, 4)
    axes = fig.subplots(1, 2)
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        if run.rounds is None or run.rounds.empty:
            raise PlotInputError(f"{run.path}: rounds.parquet has no rounds")
        d = detection_rates(run.rounds, window)
        for ax, col in zip(axes, ("byzantine_rejected", "honest_rejected"), strict=True):
            ax.plot(d.index, 100 * d[col], label=label, color=COLORS[i % len(COLORS)])
    for ax, what in zip(axes, ("Byzantine", "honest"), strict=True):
        ax.set(xlabel="round", ylabel=f"{what} uploads rejected (%)", ylim=(-3, 103),
               title=f"{what} rejected (last {window} rounds)")  # fmt: skip
        ax.legend(fontsize=8)
    return fig


def fig2_figure(clean: RunData, attacked: Sequence[RunData], *, k: int = 5) -> Figure:
    """Paper 000 Figure 2 (right): P@K over rounds without attack (blue) and under the camouflage
    attack (red; other defenses in other colours)."""
    if clean.get("attack.name", "none") != "none" and (clean.get("attack.fraction") or 0) > 0:
        raise PlotInputError(
            f"{clean.path}: the clean run has attack {clean.attack}; expected an attack-free run"
        )
    if not attacked:
        raise PlotInputError("no camouflage run given")
    for r in attacked:
        if r.get("attack.name") != "camouflage" or not r.get("attack.fraction"):
            raise PlotInputError(f"{r.path}: attack {r.attack}, expected a camouflage run")
    fig = _new_figure(6.5, 4)
    ax = fig.subplots()
    c = metric_curve(clean, "precision", k)
    ax.plot(c.t, c.value, color="tab:blue", marker="o", ms=3, label="A-FRS, no attack")
    others = itertools.cycle(COLORS[1:])
    for r in attacked:
        c = metric_curve(r, "precision", k)
        color = OURS if r.defense == "none" and not (r.get("attack.params") or {}) else next(others)
        defense = "no defense" if r.defense == "none" else DEFENSE_NAMES.get(r.defense, r.defense)
        if r.defense == "a-rfrs":
            defense = RFRS_NAMES.get(str(r.get("train.optimizer")), "a-rfrs")
        params = r.get("attack.params") or {}  # e.g. all_rows: two camouflage runs must not look alike
        how = "".join(f", {k}={v}" for k, v in sorted(params.items()))
        ax.plot(c.t, c.value, color=color, marker="o", ms=3,
                label=f"camouflage {r.attack.split()[-1]}{how}, {defense}")  # fmt: skip
    ax.set(xlabel="round", ylabel=f"Precision@{k}", title="Camouflage attack vs clean training")
    ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------------------------------------ figure 1


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``x`` on their first two principal components, and the variance ratio of each."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, svd_solver="full")
    return pca.fit_transform(np.asarray(x, dtype=np.float64)), pca.explained_variance_ratio_


def frame_limits(z: np.ndarray, reach: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the 5th-95th percentile range widened by ``reach`` times itself on each side: a
    frame that a handful of extreme points (a camouflage root near Adam's asymptote, a heavy user)
    cannot shrink the other points of the panel to a dot."""
    lo, hi = np.percentile(z, [5, 95], axis=0)
    pad = reach * np.maximum(hi - lo, 1e-12 * np.maximum(np.abs(hi), 1.0))
    return np.maximum(lo - pad, z.min(0)), np.minimum(hi + pad, z.max(0))


def fig1_figure(
    params: np.ndarray, grads: np.ndarray, byzantine: np.ndarray, *, title: str = "", frame: bool = True
) -> Figure:
    """Paper 000 Figure 1: the clients' uploaded parameters (left) and gradients (right) on their first
    two principal components; benign clients blue dots, Byzantine clients orange triangles.

    ``frame``: zoom each panel to :func:`frame_limits`; points beyond it are drawn hollow on its edge
    and counted in the legend (the PCA itself is over every client)."""
    byzantine = np.asarray(byzantine, dtype=bool)
    if not (len(params) == len(grads) == len(byzantine)) or byzantine.all() or not byzantine.any():
        raise PlotInputError("figure 1 needs one parameter and one gradient row per client, of both kinds")
    fig = _new_figure(10, 4.6)
    axes = fig.subplots(1, 2)
    kinds = ((~byzantine, "benign", "tab:blue", "o", 22), (byzantine, "Byzantine", "tab:orange", "^", 30))
    for ax, x, what in zip(axes, (params, grads), ("model parameters", "gradients"), strict=True):
        z, ratio = pca_2d(x)
        lo, hi = frame_limits(z) if frame else (z.min(0), z.max(0))
        out = ((z < lo) | (z > hi)).any(axis=1)
        shown = np.clip(z, lo, hi)
        for mask, name, color, marker, size in kinds:
            inside, beyond = mask & ~out, mask & out
            label = f"{name} ({int(mask.sum())})" + (
                f", {int(beyond.sum())} beyond the frame" if beyond.any() else ""
            )
            ax.scatter(
                shown[inside, 0], shown[inside, 1], c=color, marker=marker, s=size, alpha=0.8, label=label
            )
            if beyond.any():  # on the frame's edge, hollow: where they lie, not how far
                ax.scatter(shown[beyond, 0], shown[beyond, 1], facecolors="none", edgecolors=color,
                           marker=marker, s=size * 1.6, linewidths=1.2)  # fmt: skip
        ax.set(title=what, xlabel=f"PC 1 ({ratio[0]:.0%} of variance)", ylabel=f"PC 2 ({ratio[1]:.0%})")
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ------------------------------------------------------------------------------------- grid results


def results_from_summaries(summaries: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """A results table (the schema of ``fedrec experiment``'s results.parquet) from run summaries
    (summary.json contents, e.g. experiments/results/papers_recsys/DATASET/*.json): one row per run."""
    rows = []
    for i, s in enumerate(summaries):
        if (problem := _run_summary_problem(s)) is not None:
            raise PlotInputError(f"run summary {i + 1}: {problem}")
        attack = s.get("attack") or {}
        det = ((s.get("detection") or {}).get("all_rounds")) or {}
        row = {
            "data.dataset": s.get("dataset"), "model.name": s.get("model"), "train.optimizer": s.get("optimizer"),
            "attack.name": attack.get("name", "none"), "attack.fraction": float(attack.get("fraction") or 0.0),
            "defense.name": s.get("defense", "none"), "train.seed": s.get("seed"),
            "run_dir": s.get("run_dir"), "status": "done", "wall_s": s.get("wall_s", s.get("seconds")),
            "rounds": s.get("rounds"), "byzantine_rejected": det.get("recall"),
            "honest_rejected": det.get("false_rejection_rate"),
        }  # fmt: skip
        for prefix, params in (("attack", attack.get("params")), ("defense", s.get("defense_params"))):
            for name, v in (params if isinstance(params, dict) else {}).items():
                row[f"{prefix}.params.{name}"] = v if isinstance(v, str | int | float | bool) else str(v)
        for metric, by_k in (s.get("metrics") or {}).items():
            for k, v in by_k.items():
                row[f"{metric}@{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def _run_summary_problem(s: Any) -> str | None:
    """Why a parsed summary cannot be a results row (None when it can): the fields
    ``results_from_summaries`` reads, of the types a run writes."""
    if (problem := summary_problem(s)) is not None:
        return problem
    attack = s.get("attack")
    if not isinstance(attack, dict | None):
        return "attack is not a mapping"
    fraction = (attack or {}).get("fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, int | float)):
        return "attack.fraction is not a number"
    for key in ("dataset", "model", "optimizer", "defense"):
        if not isinstance(s.get(key), str | None):
            return f"{key} is not text"
    if not isinstance((attack or {}).get("name"), str | None):
        return "attack.name is not text"
    seed = s.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return "seed is not an integer"
    return None


def load_results(
    paths: str | Path | Sequence[str | Path], say: Callable[[str], None] | None = None
) -> pd.DataFrame:
    """One grid results table from results.parquet files and folders of run summaries: ``*.json``
    summaries (experiments/results/...) or run directories (``*/summary.json``; federated runs only,
    unfinished ones have none and are left out). A summary without P@K (a testbed run's) is skipped,
    with a line to ``say``. A grid cell listed by several of the tables is kept once: its last finished
    row in the order given, else its last row (with a line to ``say``)."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    if not paths:
        raise PlotInputError("no results table given")
    frames = [_load_table(Path(p), say) for p in paths]
    if len(frames) == 1:
        return frames[0]
    # which config columns each row's own table has: there a missing value is a setting (a grid's
    # `defense.pre: [null, resample]`, a default), elsewhere the table just did not record the key
    frames = [f.assign(**{HAD: [frozenset(c for c in f.columns if "." in str(c))] * len(f)}) for f in frames]
    with warnings.catch_warnings():
        # a column that is all-NA in one table (no detection rates in an attack-free folder) must not
        # decide the dtype: the behaviour pandas deprecates is the one wanted here
        warnings.simplefilter("ignore", FutureWarning)
        table = pd.concat(frames, ignore_index=True)
    if "cell" not in table:
        return table
    # a grid cell in two tables (a part rerun into a new folder) is one run, not two seeds: counted
    # twice it would shrink the std and tilt the mean. The last finished row wins (a rerun that failed
    # does not hide the run that finished), else the last row
    done = table["status"].eq("done") if "status" in table else pd.Series(True, index=table.index)
    order = table.assign(_done=done.astype(int)).sort_values("_done", kind="stable").index
    again = table["cell"].notna() & table.loc[order, "cell"].duplicated(keep="last").reindex(table.index)
    if again.any():
        if say is not None:
            say(
                f"{int(again.sum())} grid cell(s) in more than one table: the last finished row of each "
                "is used (the table given last first)"
            )
        table = table[~again].reset_index(drop=True)
    return table


def _load_table(p: Path, say: Callable[[str], None] | None = None) -> pd.DataFrame:
    if not p.exists():
        raise PlotInputError(f"{p}: no such results table")
    if not p.is_dir():
        return _read_parquet(p)
    files = sorted(p.glob("*.json")) + sorted(p.glob("*/summary.json"))
    summaries, skipped = [], []
    for f in files:
        try:  # read_record: no FIFO, no /dev/zero, no nesting past the parser
            s = read_record(f)
        except RecordError as e:  # names the file: not JSON, not a regular file, too large
            raise PlotInputError(f"{e} (expected a JSON run summary)") from None
        except OSError as e:  # e.g. a folder named summary.json
            raise PlotInputError(f"{f}: cannot be read ({e.strerror or type(e).__name__})") from None
        if not isinstance(s, dict):
            raise PlotInputError(f"{f}: not a run summary (a JSON {type(s).__name__}, not an object)")
        if not isinstance(s.get("metrics"), dict):  # a testbed run: accuracy, not P@K
            skipped.append(f"skipped {f}: no P@K / R@K in it (a testbed run?)")
        elif s.get("mode", "federated") == "federated":
            if (problem := _run_summary_problem(s)) is not None:
                raise PlotInputError(f"{f}: {problem}")
            summaries.append(s)
    if not summaries:
        none = f"; {len(skipped)} without P@K (testbed runs?)" if skipped else ""
        raise PlotInputError(
            f"{p}: no federated run summary in it (*.json, or run directories with summary.json){none}"
        )
    if say is not None:
        for line in skipped:
            say(line)
    return results_from_summaries(summaries)


@dataclass(frozen=True)
class GridFigure:
    """How a paper figure reads the results table: fixed column values, which column draws the lines,
    which columns make the panel rows and columns (every panel has metric@K over K = 1..5)."""

    number: int
    metric: str  # precision | recall
    lines: str
    where: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rows: str | None = None
    cols: str = "data.dataset"
    caption: str = ""


# Figures 3 and 6: A-FRS is Algorithm 1 Option I, no attack and no filter
CLEAN = {"attack.name": ("none",), "defense.name": ("none",), "train.optimizer": ("adam",)}
ATTACKED = {"attack.name": ("gradient-ascent",), "model.name": ("fism",)}
GRID_FIGURES = {
    3: GridFigure(3, "precision", "model.name", CLEAN,
                  caption="Precision@K of FRSs (A-FRS vs FMF)"),
    6: GridFigure(6, "recall", "model.name", CLEAN,
                  caption="Recall@K of FRSs (A-FRS vs FMF)"),
    4: GridFigure(4, "precision", "defense.name", {**ATTACKED, "train.optimizer": ("adam",)}, rows="attack.fraction",
                  caption="Precision@K of the defenses (Adam)"),
    7: GridFigure(7, "recall", "defense.name", {**ATTACKED, "train.optimizer": ("adam",)}, rows="attack.fraction",
                  caption="Recall@K of the defenses (Adam)"),
    8: GridFigure(8, "precision", "train.optimizer", {"model.name": ("fism",), "train.optimizer": ("adam", "sgd")},
                  caption="Precision@K of FRS based on Adam and SGD"),
    9: GridFigure(9, "precision", "defense.name", {**ATTACKED, "train.optimizer": ("momentum",)},
                  rows="attack.fraction", caption="Precision@K of the defenses, SGD with momentum"),
    10: GridFigure(10, "precision", "defense.name", {**ATTACKED, "train.optimizer": ("adagrad",)},
                   rows="attack.fraction", caption="Precision@K of the defenses, AdaGrad"),
}  # fmt: skip


def _missing(v: Any) -> bool:
    """No value in a table cell: None, or NaN (a float column's None)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _text(v: Any) -> str:
    """A cell value as the command line writes it (0.4, not 0.4000000001; 1, not 1.0)."""
    if isinstance(v, float | np.floating):
        return f"{float(v):g}"
    return str(v)


def _is_number(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def _line_label(column: str, value: str, optimizer: str | None) -> str:
    if column == "defense.name":
        if value == "a-rfrs":
            return RFRS_NAMES.get(optimizer or "adam", "A-RFRS")
        return DEFENSE_NAMES.get(value, value)
    if column == "model.name":
        return MODEL_NAMES.get(value, value)
    if column == "train.optimizer":
        return OPTIMIZER_NAMES.get(value, value)
    return f"{column.split('.')[-1]} {value}"


def _panel_title(column: str, value: str) -> str:
    if column == "data.dataset":
        return PAPER_NAMES.get(value, value)
    if column == "attack.fraction":
        return f"{float(value):.0%} Byzantine"
    if column == "attack.name":
        return f"attack {value}"
    return f"{column.split('.')[-1]} {value}"


def _is_ours(column: str, value: str) -> bool:
    return (column, value) in {
        ("defense.name", "a-rfrs"),
        ("model.name", "fism"),
        ("train.optimizer", "adam"),
    }


def select_results(
    table: pd.DataFrame, spec: GridFigure, *, where: dict[str, tuple[str, ...]] | None = None,
    rows: str | None = None, partial: bool = False,
) -> tuple[pd.DataFrame, GridFigure]:  # fmt: skip
    """The finished rows a figure draws, and its spec with the overrides applied. Raises
    :class:`PlotInputError` naming a missing column, or (unless ``partial``) a missing or failed cell:
    a (panel, line) combination of the selected values with no finished run."""
    chosen = {**spec.where, **(where or {})}
    if rows is not None and rows not in (where or {}):
        chosen.pop(rows, None)  # panels by a column: all of its values, unless --where picks some
    spec = GridFigure(spec.number, spec.metric, spec.lines, chosen, rows if rows is not None else spec.rows,
                      spec.cols, spec.caption)  # fmt: skip
    keys = [spec.cols, spec.lines, *([spec.rows] if spec.rows else []), *spec.where]
    need = list(dict.fromkeys(keys)) + [f"{spec.metric}@{k}" for k in KS]
    if missing := [c for c in need if c not in table.columns]:
        raise PlotInputError(f"figure {spec.number}: the results table has no column(s) {', '.join(missing)}")
    t = table.copy()
    for c in keys:
        t[c] = t[c].map(_text)
    for c, allowed in spec.where.items():
        t = t[t[c].isin(allowed)]
    if t.empty:
        wanted = ", ".join(f"{c} in {{{', '.join(v)}}}" for c, v in spec.where.items())
        have = "; ".join(f"{c}: {', '.join(sorted(table[c].map(_text).unique()))}" for c in spec.where)
        raise PlotInputError(f"figure {spec.number}: no row with {wanted} (the table has {have})")
    status = t["status"] if "status" in t else pd.Series("done", index=t.index)
    done = t[(status == "done") & t[[f"{spec.metric}@{k}" for k in KS]].notna().all(axis=1)]
    panel = [spec.rows, spec.cols] if spec.rows else [spec.cols]
    expected = pd.MultiIndex.from_product([sorted(t[c].unique()) for c in [*panel, spec.lines]])
    have = set(done.groupby([*panel, spec.lines]).size().index)
    have = {h if isinstance(h, tuple) else (h,) for h in have}
    absent = [e for e in expected if (e if isinstance(e, tuple) else (e,)) not in have]
    if absent and not partial:
        names = [*panel, spec.lines]
        shown = "; ".join(
            " ".join(f"{n}={v}" for n, v in zip(names, cell, strict=True)) for cell in absent[:4]
        )
        more = f" (and {len(absent) - 4} more)" if len(absent) > 4 else ""
        raise PlotInputError(
            f"figure {spec.number}: {len(absent)} cell(s) missing or failed: {shown}{more}; "
            "rerun them, or draw what there is with --partial"
        )
    if done.empty:
        raise PlotInputError(f"figure {spec.number}: no finished run among the selected rows")
    return done, spec


def grid_stats(done: pd.DataFrame, spec: GridFigure, at_k: int | None = None) -> pd.DataFrame:
    """Mean, std (over seeds; 0 for one) and count of ``metric@K`` per panel and line, K = 1..5 (or only
    ``at_k``); the line key adds any other setting (a dotted config column: the standard ones and
    whatever else a grid varies or sets, such as train.lr) that still varies within a panel, so no two
    settings are ever averaged together."""
    panel = [spec.rows, spec.cols] if spec.rows else [spec.cols]
    optimizers = spec.where.get("train.optimizer", ("adam",))  # names the x-RFRS line
    optimizer = optimizers[0] if len(optimizers) == 1 else None
    config = [c for c in done.columns if "." in c and "@" not in c and c not in NOT_RESULT]
    extra = [c for c in config if c not in (*panel, spec.lines, "train.seed")]
    done = done.copy()
    had = done[HAD] if HAD in done else pd.Series([None] * len(done), index=done.index)
    for c in extra:  # no value in a column the row's own table has is a setting: the default (a grid's
        # `defense.pre: [null, resample]`, Spattack-L without items= beside items=popular); in a column
        # only another table has it is missing, not a value of its own
        done[c] = [
            (None if cols is not None and c not in cols else "default") if _missing(v) else _text(v)
            for v, cols in zip(done[c], had, strict=True)
        ]
    varies = [c for c in extra if (done.groupby(panel)[c].nunique() > 1).any()]
    out = []
    for key, g in done.groupby([*panel, spec.lines, *varies], sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip([*panel, spec.lines, *varies], key, strict=True))
        row["_extra"] = ", ".join(f"{SHORT.get(c, c.rpartition('.')[2])} {row[c]}" for c in varies)
        row["label"] = _line_label(spec.lines, row[spec.lines], optimizer) + (
            f" ({row['_extra']})" if row["_extra"] else ""
        )
        for k in KS if at_k is None else (at_k,):
            v = g[f"{spec.metric}@{k}"].astype(float)
            out.append({**row, "k": k, "mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else 0.0,
                        "n": len(v)})  # fmt: skip
    return pd.DataFrame(out)


def _line_order(stats: pd.DataFrame, spec: GridFigure) -> list[str]:
    """The lines' values in drawing (and column) order: the paper's own method last, on top."""
    return sorted(stats[spec.lines].unique(), key=lambda v: (_is_ours(spec.lines, v), v))


def grid_figure(
    table: pd.DataFrame, figure: int, *, where: dict[str, tuple[str, ...]] | None = None,
    rows: str | None = None, at_k: int | None = None, partial: bool = False, title: str | None = None,
) -> Figure:  # fmt: skip
    """Paper 000 Figure ``figure`` from a results table: one panel per dataset (and per value of
    ``rows``, e.g. the Byzantine fraction), metric@K over K = 1..5 with one line per method, mean and
    std over seeds. ``at_k``: instead one panel per dataset with metric@``at_k`` over the ``rows``
    values (e.g. P@5 against the Byzantine fraction). ``title``: the first title line instead of the
    paper's caption (say so when the selection is not the paper's)."""
    if figure not in GRID_FIGURES:
        raise PlotInputError(f"--figure {figure}: expected one of {', '.join(map(str, GRID_FIGURES))}")
    done, spec = select_results(table, GRID_FIGURES[figure], where=where, rows=rows, partial=partial)
    if at_k is not None and (at_k not in KS or spec.rows is None):
        raise PlotInputError(
            f"--at-k {at_k}: needs K in 1..5 and a figure with panel rows (4, 7, 9, 10 or --rows)"
        )
    stats = grid_stats(done, spec, at_k)
    xs: dict[str, float] = {}  # at_k: the x of each rows value (its number, or its place for names)
    if at_k is not None:
        names = sorted(stats[spec.rows].unique())
        numeric = all(_is_number(v) for v in names)
        xs = {v: float(v) if numeric else float(i) for i, v in enumerate(names)}
    col_vals = sorted(stats[spec.cols].unique())
    row_vals = sorted(stats[spec.rows].unique()) if spec.rows and at_k is None else [None]
    line_vals = _line_order(stats, spec)
    colors = {
        v: OURS if _is_ours(spec.lines, v) else COLORS[i % len(COLORS)] for i, v in enumerate(line_vals)
    }
    extras = sorted(stats["_extra"].unique())
    styles = dict(zip(extras, ["-", "--", ":", "-."] * (len(extras) // 4 + 1), strict=False))
    panels = [(rv, cv) for rv in row_vals for cv in col_vals]
    # one column of panels (one dataset) wraps into rows of three, so a long list of panels stays readable
    ncols = min(3, len(panels)) if len(col_vals) == 1 else len(col_vals)
    nrows = math.ceil(len(panels) / ncols)
    panel_w = max(3.3, 0.55 * len(xs))  # named x values (attacks) need room for their labels
    fig = _new_figure(panel_w * ncols + 1.8, 2.8 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    short = {"precision": "Precision", "recall": "Recall"}[spec.metric]
    for ax, (rv, cv) in zip(axes, panels, strict=False):
        sel = stats[stats[spec.cols] == cv]
        if rv is not None:
            sel = sel[sel[spec.rows] == rv]
        for lv in line_vals:  # the paper's own method last: drawn on top
            for extra in extras:
                s = sel[(sel[spec.lines] == lv) & (sel["_extra"] == extra)]
                if s.empty:
                    continue
                s = s.assign(x=s[spec.rows].map(xs) if at_k is not None else s.k).sort_values("x")
                x, y, e = (s[c].to_numpy(dtype=float) for c in ("x", "mean", "std"))
                ax.errorbar(x, y, yerr=e, color=colors[lv], ls=styles[extra], marker="o", ms=3,
                            capsize=2, label=s["label"].iloc[0])  # fmt: skip
        where = _panel_title(spec.cols, cv) + ("" if rv is None else f", {_panel_title(spec.rows, rv)}")
        ax.set_title(where, fontsize=9)
        if at_k is not None:
            ax.set(xlabel=SHORT.get(spec.rows, spec.rows), ylabel=f"{short}@{at_k}")
            if not numeric:
                ax.set_xticks(list(xs.values()), list(xs), rotation=30, ha="right")
        else:
            ax.set(xlabel="K", ylabel=f"{short}@K", xticks=list(KS))
        ax.grid(alpha=0.3)
    seen: dict[str, Any] = {}
    for ax in axes:  # a line can be absent from the first panel (--partial)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="outside right center", fontsize=8)
    caption = title or f"Figure {spec.number}: {spec.caption}"
    if at_k is not None and not title:
        caption = caption.replace("@K", f"@{at_k}")
    width = int(fig.get_figwidth() * 13)  # characters of 9-point text across the figure
    lines = [textwrap.fill(line, width) for line in (caption, _selection(done, spec, stats))]
    fig.suptitle("\n".join(lines), fontsize=9)
    return fig


def grid_markdown(
    table: pd.DataFrame, figure: int, *, where: dict[str, tuple[str, ...]] | None = None,
    rows: str | None = None, at_k: int | None = None, partial: bool = False,
) -> str:  # fmt: skip
    """The numbers behind :func:`grid_figure` as a Markdown table: metric@``at_k`` (default 5), mean ±
    std over seeds, one row per panel and one column per line; the best mean of each row in bold."""
    if figure not in GRID_FIGURES:
        raise PlotInputError(f"--figure {figure}: expected one of {', '.join(map(str, GRID_FIGURES))}")
    done, spec = select_results(table, GRID_FIGURES[figure], where=where, rows=rows, partial=partial)
    k = 5 if at_k is None else at_k
    if k not in KS:
        raise PlotInputError(f"--at-k {k}: needs K in 1..5")
    stats = grid_stats(done, spec, k)
    panel = [spec.cols, *([spec.rows] if spec.rows else [])]
    order = _line_order(stats, spec)
    lines = list(dict.fromkeys(stats.sort_values(spec.lines, key=lambda c: c.map(order.index))["label"]))
    short = {"precision": "P", "recall": "R"}[spec.metric]
    out = [
        f"Figure {spec.number}: {short}@{k}, {_selection(done, spec, stats)}",
        "",
        "| " + " | ".join([*(SHORT.get(c, c) for c in panel), *lines]) + " |",
        "|" + "---|" * (len(panel) + len(lines)),
    ]
    for key, g in stats.groupby(panel, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        by = g.set_index("label")
        best = by["mean"].max()
        cells = []
        for ln in lines:
            if ln not in by.index:
                cells.append("–")
                continue
            r = by.loc[ln]
            # one seed has no spread: its "± 0.0000" would claim one
            text = f"{r['mean']:.4f} ± {r['std']:.4f}" if r["n"] > 1 else f"{r['mean']:.4f}"
            cells.append(f"**{text}**" if r["mean"] == best and len(by) > 1 else text)
        names = [_panel_title(c, v) for c, v in zip(panel, key, strict=True)]
        out.append("| " + " | ".join([*names, *cells]) + " |")
    return "\n".join(out)


def _selection(done: pd.DataFrame, spec: GridFigure, stats: pd.DataFrame) -> str:
    """What the panels share (the settings with one value), and the seeds averaged."""
    panel = {spec.cols, spec.lines, *([spec.rows] if spec.rows else [])}
    fixed = [
        f"{SHORT[c]} {done[c].map(_text).iloc[0]}"
        for c in RESULT_CONFIG
        if c in done and c not in panel and done[c].map(_text).nunique() == 1
    ]
    seeds = sorted(done["train.seed"].map(_text).unique(), key=str) if "train.seed" in done else []
    if "rounds" in done and done["rounds"].nunique() == 1 and pd.notna(done["rounds"].iloc[0]):
        fixed.append(f"{int(done['rounds'].iloc[0])} rounds")
    lo, hi = int(stats.n.min()), int(stats.n.max())
    per_cell = f"{lo}" if lo == hi else f"{lo}-{hi}"
    over = "one seed a cell" if hi == 1 else f"mean ± std over {per_cell} seed(s) a cell"
    return ", ".join(fixed) + f"; {over}" + (f" ({', '.join(seeds)})" if seeds else "")


# ------------------------------------------------------------------------------------------ output


def save(fig: Figure, out_dir: str | Path, stem: str, *, svg: bool = False, dpi: int = 130) -> list[Path]:
    """Write ``stem.png`` (and ``stem.svg``) into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PlotInputError(f"--out {out}: a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{stem}.png"] + ([out / f"{stem}.svg"] if svg else [])
        for p in paths:
            fig.savefig(p, dpi=dpi)
    except OSError as e:
        raise PlotInputError(f"--out {out}: cannot write ({e.strerror or e})") from None
    return paths
