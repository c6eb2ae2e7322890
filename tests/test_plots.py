"""`fedrec plot` (issue 13 Build item 4): every command on tiny synthetic runs and hand-made results
tables writes a PNG whose plotted data are the input's (read back from the returned Figure), and bad
input ends in one line and exit code 2."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import load_config
from fedrec.data import synthetic
from fedrec.experiments import plots
from fedrec.experiments.plots import PlotInputError

PNG = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def write_inter(path: Path, n_users: int = 40, n_items: int = 30, seed: int = 1) -> Path:
    inter = synthetic(n_users, n_items, mean_items=6, d=4, seed=seed)
    users = np.repeat(np.arange(inter.n_users), np.diff(inter.indptr))
    lines = ["user_id:token\titem_id:token"] + [
        f"{u}\t{i}" for u, i in zip(users, inter.indices, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three 30-round runs on 40 synthetic users (10 a round): clean, camouflage without defense,
    camouflage with A-RFRS; evaluated every 10 rounds."""
    from fedrec.federation.runner import run_federated

    tmp = tmp_path_factory.mktemp("plots")
    data = write_inter(tmp / "tiny.inter")
    common = [f"data.dataset={data}", "train.mode=federated", "model.dim=8", "federated.fraction=0.25",
              "federated.rounds=30", "federated.eval_every=10", "federated.checkpoint_every=30",
              "train.lr=0.01", "eval.ks=[1,2,3,4,5]", f"run.out_dir={tmp / 'runs'}"]  # fmt: skip
    camo = ["attack.name=camouflage", "attack.fraction=0.3"]
    out = {}
    for name, extra in {"clean": [], "camo": camo, "camo-arfrs": [*camo, "defense.name=a-rfrs"]}.items():
        _, out[name] = run_federated(load_config(None, [*common, *extra, f"run.name={name}"]))
    out["data"] = data
    return out


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img


def assert_one_line_error(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_no_pyplot_figures_leak(runs) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.curves_figure([plots.load_run(runs["clean"])])
    assert plt.get_fignums() == before


# ------------------------------------------------------------------------------------------ curves


def test_curves_plot_the_recorded_p_at_k_and_loss(runs, tmp_path) -> None:
    loaded = [plots.load_run(runs[n], losses=True) for n in ("clean", "camo")]
    fig = plots.curves_figure(loaded, k=3, loss_window=1)
    ax_p, ax_loss = fig.axes[:2]
    for line, run in zip(ax_p.lines, loaded, strict=True):
        m = pd.read_parquet(run.path / "metrics.parquet")
        want = m[(m.metric == "precision") & (m.k == 3)].sort_values("t")
        np.testing.assert_array_equal(line.get_xdata(), want.t.to_numpy())
        np.testing.assert_allclose(line.get_ydata(), want.value.to_numpy())
    assert [t.get_text() for t in ax_p.get_legend().get_texts()] == [
        "No defense · no attack",
        "No defense · camouflage 30%",
    ]
    # the loss panel: the checkpoint's per-round loss over the round's honest clients (window 1)
    rounds = pd.read_parquet(runs["camo"] / "rounds.parquet")
    honest = (~rounds.byzantine).groupby(rounds.t).sum().to_numpy()
    np.testing.assert_allclose(ax_loss.lines[1].get_ydata(), loaded[1].losses / honest)
    assert len(loaded[1].losses) == 30

    res = invoke("plot", "curves", runs["clean"], runs["camo"], "--out", tmp_path, "--svg", "--name", "c")
    assert res.exit_code == 0, res.output
    assert_png(tmp_path / "c.png")
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")


def test_curves_missing_k_is_one_line(runs, tmp_path) -> None:
    assert_one_line_error(
        invoke("plot", "curves", runs["clean"], "--k", "7", "--out", tmp_path), "precision@7"
    )
    # was pandas' "min_periods 1 must be <= window 0", naming no option
    assert_one_line_error(
        invoke("plot", "curves", runs["clean"], "--window", "0", "--out", tmp_path),
        "--window 0: must be at least 1",
    )


def test_a_name_outside_out_is_refused(runs, tmp_path) -> None:
    """``--name ../escaped`` wrote the figure outside --out."""
    out = tmp_path / "out"
    for name in ("../escaped", "sub/fig", str(tmp_path / "abs")):
        for cmd in ("curves", "detection"):
            res = invoke("plot", cmd, runs["clean"], "--name", name, "--out", out)
            assert_one_line_error(res, f"--name {name!r}")
    assert not out.exists() and not list(tmp_path.glob("*.png"))


# --------------------------------------------------------------------------------------- detection


def test_detection_rates_pool_counts_over_the_window() -> None:
    # round 1: 1 Byzantine (rejected), 2 honest (1 rejected); round 2: 3 Byzantine (1 rejected), 1 honest
    rounds = pd.DataFrame({
        "t": [1, 1, 1, 2, 2, 2, 2],
        "byzantine": [True, False, False, True, True, True, False],
        "accepted": [False, False, True, False, True, True, True],
    })  # fmt: skip
    d = plots.detection_rates(rounds, window=2)
    np.testing.assert_allclose(d.byzantine_rejected, [1.0, 2 / 4])  # pooled counts, not mean(1, 1/3)
    np.testing.assert_allclose(d.honest_rejected, [1 / 2, 1 / 3])
    with pytest.raises(PlotInputError):
        plots.detection_rates(rounds, window=0)
    # a window wider than the run pools all of it (10^20 was "Buffer dtype mismatch" from pandas)
    pd.testing.assert_frame_equal(plots.detection_rates(rounds, window=10**20), d)


def test_detection_plots_each_runs_rejections(runs, tmp_path) -> None:
    loaded = [plots.load_run(runs[n], rounds=True) for n in ("camo", "camo-arfrs")]
    fig = plots.detection_figure(loaded, window=5)
    for ax, col in zip(fig.axes[:2], ("byzantine_rejected", "honest_rejected"), strict=True):
        for line, run in zip(ax.lines, loaded, strict=True):
            want = 100 * plots.detection_rates(run.rounds, 5)[col].to_numpy()
            np.testing.assert_allclose(line.get_ydata(), want)
    # A-RFRS (Multi-Krum, keeps n - f) rejects uploads every round; no defense almost never does
    arfrs = [np.nanmean(ax.lines[1].get_ydata()) for ax in fig.axes[:2]]
    none = [np.nanmean(ax.lines[0].get_ydata()) for ax in fig.axes[:2]]
    assert sum(arfrs) > sum(none) + 10
    res = invoke("plot", "detection", runs["camo"], runs["camo-arfrs"], "--window", "5", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert_png(tmp_path / "detection.png")


# -------------------------------------------------------------------------------------------- fig2


def test_fig2_draws_clean_blue_and_camouflage_red(runs, tmp_path) -> None:
    clean, camo = plots.load_run(runs["clean"]), plots.load_run(runs["camo"])
    fig = plots.fig2_figure(clean, [camo], k=5)
    blue, red = fig.axes[0].lines
    assert blue.get_color() == "tab:blue" and red.get_color() == plots.OURS
    np.testing.assert_allclose(red.get_ydata(), plots.metric_curve(camo, "precision", 5).value)
    np.testing.assert_allclose(blue.get_ydata(), plots.metric_curve(clean, "precision", 5).value)
    res = invoke("plot", "fig2", runs["clean"], runs["camo"], runs["camo-arfrs"], "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert_png(tmp_path / "fig2-camouflage.png")


def test_fig2_refuses_swapped_runs(runs, tmp_path) -> None:
    assert_one_line_error(
        invoke("plot", "fig2", runs["camo"], runs["camo"], "--out", tmp_path), "attack-free"
    )
    assert_one_line_error(
        invoke("plot", "fig2", runs["clean"], runs["clean"], "--out", tmp_path), "camouflage"
    )


# -------------------------------------------------------------------------------------------- fig1


def test_fig1_camouflage_hides_in_parameters_not_in_gradients(runs, tmp_path) -> None:
    from fedrec.experiments.figure1 import figure1_config, figure1_data

    cfg = figure1_config(str(runs["data"]), honest=6, byzantine=4, round=5, seed=0)
    d = figure1_data(cfg, 6, 4)
    assert d.byzantine.tolist() == [False] * 6 + [True] * 4 and len(set(d.clients)) == 10
    assert d.params.shape == d.grads.shape and d.params.shape[0] == 10
    assert d.max_param_gap < 1e-6  # each Byzantine upload carries its client's honest parameters
    assert d.grad_gap > 0.01  # and another gradient
    fig = plots.fig1_figure(d.params, d.grads, d.byzantine, frame=False)
    for ax, x in zip(fig.axes[:2], (d.params, d.grads), strict=True):
        z, _ = plots.pca_2d(x)
        honest, byz = ax.collections[0].get_offsets(), ax.collections[1].get_offsets()
        np.testing.assert_allclose(honest, z[~d.byzantine])
        np.testing.assert_allclose(byz, z[d.byzantine])
    args = ["--dataset", runs["data"], "--honest", 6, "--byzantine", 4, "--round", 5, "--out", tmp_path]
    res = invoke("plot", "fig1", *args)
    assert res.exit_code == 0, res.output
    assert_png(tmp_path / "fig1-pca-tiny.png")


def test_fig1_frame_keeps_outliers_on_its_edge() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    x[-1] *= 1e4  # one client far out: without the frame every other point collapses into a dot
    byz = np.arange(40) >= 30
    fig = plots.fig1_figure(x, x, byz)
    ax = fig.axes[0]
    z, _ = plots.pca_2d(x)
    lo, hi = plots.frame_limits(z)
    beyond = ax.collections[-1].get_offsets()  # the Byzantine points beyond the frame, on its edge
    assert len(beyond) == 1 and np.all((beyond >= lo - 1e-9) & (beyond <= hi + 1e-9))
    assert "1 beyond the frame" in ax.get_legend().get_texts()[1].get_text()


def test_fig1_bad_setting_is_one_line(runs, tmp_path) -> None:
    args = ["--dataset", runs["data"], "--honest", 30, "--byzantine", 20, "--round", 3, "--out", tmp_path]
    assert_one_line_error(invoke("plot", "fig1", *args), "50 clients")
    assert_one_line_error(invoke("plot", "fig1", "--attack", "none", "--out", tmp_path), "attack")
    # the attack's name and the step size are checked before the data loads (a missing file here)
    missing = ["--dataset", tmp_path / "missing.inter", "--out", tmp_path]
    assert_one_line_error(
        invoke("plot", "fig1", *missing, "--attack", "bogus"), "--attack 'bogus': expected one of"
    )
    assert_one_line_error(
        invoke("plot", "fig1", *missing, "--lr", "-1"), "--lr -1: must be a finite number > 0"
    )


# ------------------------------------------------------------------------------------------- grid


def results_table() -> pd.DataFrame:
    """2 datasets x 2 fractions x 3 defenses x 2 seeds under gradient ascent, plus attack-free FISM and
    MF rows; P@K = a value that identifies the cell, + 0.01 * seed^2 (mean and median differ)."""
    rows = []
    for ds_i, ds in enumerate(("lastfm", "ml100k")):
        for fr_i, frac in enumerate((0.2, 0.4)):
            for d_i, defense in enumerate(("none", "krum", "a-rfrs")):
                for seed in (0, 1, 2):
                    base = 0.1 * ds_i + 0.02 * fr_i + 0.05 * d_i + 0.01 * seed**2
                    rows.append({"attack.name": "gradient-ascent", "attack.fraction": frac, "defense.name": defense,
                                 "model.name": "fism", "data.dataset": ds, "train.seed": seed, "base": base})  # fmt: skip
        for m_i, model in enumerate(("fism", "mf")):
            rows.append({"attack.name": "none", "attack.fraction": 0.0, "defense.name": "none", "model.name": model,
                         "data.dataset": ds, "train.seed": 0, "base": 0.3 + 0.1 * ds_i - 0.1 * m_i})  # fmt: skip
    df = pd.DataFrame(rows)
    df["train.optimizer"], df["status"], df["wall_s"], df["rounds"] = "adam", "done", 1.0, 100
    df["cell"] = range(len(df))
    df["run_dir"] = [f"runs/{i}" for i in range(len(df))]
    df["byzantine_rejected"], df["honest_rejected"] = 0.5, 0.1
    for k in range(1, 6):
        df[f"precision@{k}"] = df.base / k
        df[f"recall@{k}"] = df.base * k / 10
    return df.drop(columns="base")


def test_grid_figure4_mean_and_std_over_seeds(tmp_path) -> None:
    table = results_table()
    fig = plots.grid_figure(table, 4)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "Last.fm, 20% Byzantine", "ML100K, 20% Byzantine", "Last.fm, 40% Byzantine", "ML100K, 40% Byzantine",
    ]  # fmt: skip
    assert fig.get_suptitle().splitlines() == [
        "Figure 4: Precision@K of the defenses (Adam)",
        "model fism, optimizer adam, attack gradient-ascent, 100 rounds; mean ± std over 3 seed(s) a cell (0, 1, 2)",
    ]
    ax = panels[3]  # ml100k, 40 %
    labels = [c.get_label() for c in ax.containers]
    assert labels == ["Krum", "No defense", "A-RFRS"]  # A-RFRS last, drawn on top, in red
    arfrs = ax.containers[2]
    line = arfrs.lines[0]
    assert line.get_color() == plots.OURS
    cell = table[(table["data.dataset"] == "ml100k") & (table["attack.fraction"] == 0.4)
                 & (table["defense.name"] == "a-rfrs") & (table["attack.name"] == "gradient-ascent")]  # fmt: skip
    means = [cell[f"precision@{k}"].mean() for k in range(1, 6)]
    stds = [cell[f"precision@{k}"].std() for k in range(1, 6)]
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(line.get_ydata(), means)
    # the error bar spans mean - std .. mean + std
    segs = arfrs.lines[2][0].get_segments()
    np.testing.assert_allclose([s[1][1] - s[0][1] for s in segs], [2 * s for s in stds])
    offsets = np.array([0.0, 0.01, 0.04])  # 0.01 * seed^2
    assert all(math.isclose(s, offsets.std(ddof=1) / k) for k, s in enumerate(stds, 1))

    path = tmp_path / "r.parquet"
    table.to_parquet(path)
    res = invoke("plot", "grid", path, "--figure", 4, "--out", tmp_path, "--svg")
    assert res.exit_code == 0, res.output
    assert_png(tmp_path / "fig4.png")
    assert (tmp_path / "fig4.svg").is_file()


def test_grid_figure3_a_frs_against_fmf_and_figure7_recall(tmp_path) -> None:
    table = results_table()
    fig = plots.grid_figure(table, 3)
    ax = fig.axes[1]  # ml100k
    fmf, afrs = ax.containers
    assert (fmf.get_label(), afrs.get_label()) == ("FMF", "A-FRS")
    np.testing.assert_allclose(afrs.lines[0].get_ydata(), [0.4 / k for k in range(1, 6)])
    np.testing.assert_allclose(fmf.lines[0].get_ydata(), [0.3 / k for k in range(1, 6)])
    fig7 = plots.grid_figure(table, 7)
    assert fig7.axes[0].get_ylabel() == "Recall@K"
    krum = fig7.axes[0].containers[0]  # lastfm, 20 %: mean(0.05, 0.06, 0.09) * k / 10
    np.testing.assert_allclose(krum.lines[0].get_ydata(), [(0.2 / 3) * k / 10 for k in range(1, 6)])


def test_grid_at_k_plots_p5_over_fractions() -> None:
    fig = plots.grid_figure(results_table(), 4, at_k=5)
    ax = fig.axes[0]  # lastfm
    arfrs = ax.containers[2].lines[0]
    np.testing.assert_allclose(arfrs.get_xdata(), [0.2, 0.4])
    np.testing.assert_allclose(arfrs.get_ydata(), [(0.1 + 0.05 / 3) / 5, (0.12 + 0.05 / 3) / 5])


def test_grid_never_averages_two_settings_together() -> None:
    table = results_table()
    other = table[table["attack.name"] == "gradient-ascent"].assign(
        **{"train.optimizer": "adam", "model.name": "mf"}
    )
    fig = plots.grid_figure(pd.concat([table, other]), 4, where={"model.name": ("fism", "mf")})
    labels = {c.get_label() for c in fig.axes[0].containers}
    assert "A-RFRS (model fism)" in labels and "A-RFRS (model mf)" in labels


def test_grid_missing_cell_column_and_bad_table(tmp_path) -> None:
    table = results_table()
    gone = (
        (table["data.dataset"] == "lastfm")
        & (table["attack.fraction"] == 0.4)
        & (table["defense.name"] == "krum")
    )
    table.loc[gone & (table["train.seed"] == 0), "status"] = "failed"
    table = table[~(gone & (table["train.seed"] >= 1))]
    path = tmp_path / "r.parquet"
    table.to_parquet(path)
    res = invoke("plot", "grid", path, "--figure", 4, "--out", tmp_path)
    assert_one_line_error(
        res, "1 cell(s) missing or failed", "data.dataset=lastfm", "defense.name=krum", "0.4"
    )
    assert invoke("plot", "grid", path, "--figure", 4, "--partial", "--out", tmp_path).exit_code == 0

    table.drop(columns="recall@3").to_parquet(path)
    assert_one_line_error(invoke("plot", "grid", path, "--figure", 6, "--out", tmp_path), "recall@3")
    assert_one_line_error(invoke("plot", "grid", path, "--figure", 9, "--out", tmp_path), "momentum")
    assert_one_line_error(invoke("plot", "grid", path, "--figure", 5, "--out", tmp_path), "--figure 5")
    assert_one_line_error(
        invoke("plot", "grid", path, "--figure", 4, "--where", "x", "--out", tmp_path), "--where"
    )
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert_one_line_error(
        invoke("plot", "grid", tmp_path / "bad.parquet", "--figure", 4, "--out", tmp_path), "Parquet"
    )
    assert_one_line_error(
        invoke("plot", "grid", tmp_path / "none.parquet", "--figure", 4, "--out", tmp_path), "no such"
    )


def test_results_from_committed_summaries() -> None:
    folder = REPO / "experiments" / "results" / "papers_recsys" / "ml100k"
    table = plots.load_results(folder)
    path = folder / "a-rfrs__alie__s0.json"
    s = json.loads(path.read_text())
    row = table[
        (table["defense.name"] == "a-rfrs") & (table["attack.name"] == "alie") & (table["train.seed"] == 0)
    ]
    assert len(row) == 1
    row = row.iloc[0]
    assert (
        row["precision@5"] == s["metrics"]["precision"]["5"]
        and row["recall@1"] == s["metrics"]["recall"]["1"]
    )
    assert row["attack.fraction"] == 0.4 and row["status"] == "done"
    assert row["byzantine_rejected"] == s["detection"]["all_rounds"]["recall"]
    fig = plots.grid_figure(table, 4, rows="attack.name", where={"attack.name": ("alie", "ipm"),
                                                                 "defense.name": ("none", "a-rfrs")})  # fmt: skip
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()][:2] == [
        "ML100K, attack alie",
        "ML100K, attack ipm",
    ]
    # the compact view: P@5 per attack, one line per defense, attack names on the x axis
    attacks = ("alie", "ipm", "none")
    fig = plots.grid_figure(table, 4, rows="attack.name", at_k=5, where={"attack.name": attacks})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(attacks)
    assert fig.get_suptitle().startswith("Figure 4: Precision@5 of the defenses")
    titled = plots.grid_figure(
        table, 4, rows="attack.name", at_k=5, where={"attack.name": attacks}, title="T"
    )
    assert titled.get_suptitle().splitlines()[0] == "T"
    (line,) = [c.lines[0] for c in ax.containers if c.get_label() == "A-RFRS"]
    arfrs = table[table["defense.name"] == "a-rfrs"]
    want = [arfrs[arfrs["attack.name"] == a]["precision@5"].mean() for a in attacks]
    np.testing.assert_allclose(line.get_ydata(), want)


# -------------------------------------------------------------------------------------- bad input


def test_bad_run_directories_are_one_line(runs, tmp_path) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((runs["clean"] / "config.yaml").read_text())
    (tmp_path / "file.txt").write_text("x")
    cases = {
        tmp_path / "missing": "no such run directory",
        tmp_path / "file.txt": "not a run directory",
        tmp_path: "no config.yaml",
        unfinished: "unfinished run",
    }
    for path, why in cases.items():
        for cmd in ("curves", "detection"):
            assert_one_line_error(invoke("plot", cmd, path, "--out", tmp_path / "o"), str(path), why)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.yaml", "summary.json"):
        (broken / f).write_text((runs["clean"] / f).read_text())
    (broken / "metrics.parquet").write_text("truncated")
    assert_one_line_error(invoke("plot", "curves", broken, "--out", tmp_path / "o"), "metrics.parquet")
    (broken / "metrics.parquet").write_bytes((runs["clean"] / "metrics.parquet").read_bytes())
    assert_one_line_error(invoke("plot", "detection", broken, "--out", tmp_path / "o"), "no rounds.parquet")
    assert not (tmp_path / "o").exists()  # nothing written


def test_out_that_is_a_file_is_one_line(runs, tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    assert_one_line_error(invoke("plot", "curves", runs["clean"], "--out", tmp_path / "f"), "--out")
    res = invoke("plot", "curves", runs["clean"], runs["camo"], "--label", "only one", "--out", tmp_path)
    assert_one_line_error(res, "--label")


def test_results_from_run_directories(runs, tmp_path) -> None:
    """A folder of run directories is a results table: one row per finished federated run."""
    folder = runs["clean"].parent
    table = plots.load_results([folder, REPO / "experiments" / "results" / "papers_recsys" / "ml100k"])
    mine = table[table["data.dataset"] == "tiny"].set_index("run_dir")
    assert len(mine) == 3 and set(mine["defense.name"]) == {"none", "a-rfrs"}
    clean = json.loads((runs["clean"] / "summary.json").read_text())
    row = mine.loc[clean["run_dir"]]
    assert row["attack.name"] == "none" and row["precision@2"] == clean["metrics"]["precision"]["2"]
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        invoke("plot", "grid", tmp_path / "empty", "--figure", 3), "no federated run summary"
    )


def test_a_testbed_summary_is_skipped_and_an_unreadable_one_is_one_line(runs, tmp_path) -> None:
    """A testbed run in the folder aborted with "not a run summary (no metrics)" (centralized runs were
    skipped); a folder named summary.json was an IsADirectoryError traceback."""
    folder = tmp_path / "runs"
    for name in ("clean", "camo", "camo-arfrs"):
        (folder / name).mkdir(parents=True)
        (folder / name / "summary.json").write_text((runs[name] / "summary.json").read_text())
    (folder / "testbed").mkdir()
    (folder / "testbed" / "summary.json").write_text('{"command": "testbed", "final_accuracy": 0.9}')
    res = invoke("plot", "worstcase", folder, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert line == f"skipped {folder / 'testbed' / 'summary.json'}: no P@K / R@K in it (a testbed run?)"
    assert "| a-rfrs |" in res.stdout and (tmp_path / "o" / "worstcase.png").is_file()
    only = tmp_path / "only-testbed"
    (only / "t").mkdir(parents=True)
    (only / "t" / "summary.json").write_text('{"final_accuracy": 0.9}')
    res = invoke("plot", "grid", only, "--figure", 4, "--out", tmp_path / "o")
    assert_one_line_error(res, "no federated run summary in it", "1 without P@K")
    (folder / "x" / "summary.json").mkdir(parents=True)
    res = invoke("plot", "grid", folder, "--figure", 4, "--out", tmp_path / "o")
    assert_one_line_error(res, f"{folder / 'x' / 'summary.json'}: cannot be read (Is a directory)")


def test_grid_markdown_has_the_figures_numbers(tmp_path) -> None:
    table = results_table()
    text = plots.grid_markdown(table, 4)
    lines = text.splitlines()
    assert lines[0].startswith("Figure 4: P@5, model fism")
    assert lines[2] == "| dataset | fraction | Krum | No defense | A-RFRS |"
    cell = table[(table["data.dataset"] == "ml100k") & (table["attack.fraction"] == 0.4)
                 & (table["defense.name"] == "a-rfrs")]  # fmt: skip
    mean, std = cell["precision@5"].mean(), cell["precision@5"].std()
    row = next(ln for ln in lines if ln.startswith("| ML100K | 40% Byzantine"))
    assert row.endswith(f"| **{mean:.4f} ± {std:.4f}** |")  # the best of its row, in bold
    assert row.count("**") == 2
    recall = plots.grid_markdown(table, 7, at_k=2).splitlines()
    assert recall[0].startswith("Figure 7: R@2")
    # one seed: the mean alone (a "± 0.0000" would claim a spread that one run cannot show)
    one = plots.grid_markdown(table[table["train.seed"] == 2], 4).splitlines()
    assert "one seed a cell (2)" in one[0] and "±" not in "\n".join(one)
    assert next(ln for ln in one if ln.startswith("| ML100K | 40% Byzantine")).endswith(
        f"| **{cell[cell['train.seed'] == 2]['precision@5'].iloc[0]:.4f}** |"
    )
    # the command prints the same table next to the figure
    path = tmp_path / "r.parquet"
    table.to_parquet(path)
    res = invoke("plot", "grid", path, "--figure", 4, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert text in res.output
    assert_one_line_error(
        invoke("plot", "grid", path, "--figure", 4, "--at-k", 9, "--out", tmp_path), "--at-k"
    )


def test_a_cell_in_two_tables_counts_once(tmp_path) -> None:
    """A part of a grid rerun into a second folder lists some cells in both tables: read together they
    were averaged as two seeds (a smaller std, a tilted mean); the table given last wins, with a note."""
    table = results_table()
    table["cell"] = [f"c{i}" for i in range(len(table))]
    first = table[table["train.seed"] <= 1]
    rerun = table[table["train.seed"] >= 1].copy()
    ks = [c for c in table if c.startswith(("precision@", "recall@"))]
    rerun.loc[rerun["train.seed"] == 1, ks] += 0.5  # the rerun of seed 1 differs from its first run
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    first.to_parquet(paths[0])
    rerun.to_parquet(paths[1])
    said: list[str] = []
    got = plots.load_results(paths, say=said.append)
    n_twice = int((table["train.seed"] == 1).sum())
    assert len(got) == len(table) and got["cell"].is_unique
    assert said == [
        f"{n_twice} grid cell(s) in more than one table: the last finished row of each is used "
        "(the table given last first)"
    ]
    want = pd.concat([table[table["train.seed"] == 0], rerun], ignore_index=True)
    pd.testing.assert_frame_equal(
        got.drop(columns=plots.HAD).sort_values("cell", ignore_index=True),
        want.sort_values("cell", ignore_index=True),
    )
    assert plots.grid_markdown(got, 4) == plots.grid_markdown(want, 4)
    res = invoke("plot", "grid", *paths, "--figure", 4, "--out", tmp_path)
    assert res.exit_code == 0 and "in more than one table" in res.output, res.output
    # a rerun that failed does not hide the run that finished, whichever table comes last
    failed = rerun.copy()
    failed["status"] = "done"
    failed.loc[failed["train.seed"] == 1, "status"] = "failed"
    failed.loc[failed["train.seed"] == 1, ks] = float("nan")
    failed.to_parquet(paths[1])
    table.assign(status="done")[table["train.seed"] <= 1].to_parquet(paths[0])
    for order in (paths, paths[::-1]):
        got = plots.load_results(order)
        assert len(got) == len(table) and got["cell"].is_unique
        seed1 = got[got["train.seed"] == 1].sort_values("cell")
        assert (seed1["status"] == "done").all()
        want1 = table[table["train.seed"] == 1].sort_values("cell")
        assert np.allclose(seed1[ks].to_numpy(), want1[ks].to_numpy())


def test_grid_lines_split_by_any_setting_that_varies() -> None:
    """Two tables read together (Figure 8: Adam from one grid, SGD at several steps from another): a
    config column outside the standard ones (train.lr) that varies within a panel splits the lines."""
    table = results_table()
    clean = table[(table["attack.name"] == "none") & (table["model.name"] == "fism")].assign(
        **{"train.lr": 0.01}
    )
    sgd = [
        clean.assign(**{"train.optimizer": "sgd", "train.lr": lr, "precision@1": p})
        for lr, p in ((0.01, 0.05), (1.0, 0.25))
    ]
    fig = plots.grid_figure(pd.concat([clean, *sgd]), 8, where={"attack.name": ("none",)})
    lines = {c.get_label(): c.lines[0].get_ydata()[0] for c in fig.axes[1].containers}  # ml100k
    assert lines == {"SGD (lr 0.01)": 0.05, "SGD (lr 1)": 0.25, "Adam (lr 0.01)": pytest.approx(0.4)}


def test_grid_lines_split_an_attack_parameter_from_the_attacks_default() -> None:
    """One grid runs an attack with its default and with a parameter (Spattack-L dense and
    items=popular): rows without the parameter ran the default, a setting of their own, never averaged
    with the others as extra seeds."""
    table = results_table()
    table = table[table["attack.name"] == "gradient-ascent"].assign(**{"attack.params.items": None})
    popular = table.assign(**{"attack.params.items": "popular", "precision@1": 0.9})
    fig = plots.grid_figure(pd.concat([table, popular]), 4)
    labels = sorted(c.get_label() for c in fig.axes[3].containers)
    assert labels == ["A-RFRS (items default)", "A-RFRS (items popular)", "Krum (items default)",
                      "Krum (items popular)", "No defense (items default)", "No defense (items popular)"]  # fmt: skip
    by = {c.get_label(): c.lines[0].get_ydata()[0] for c in fig.axes[3].containers}
    assert by["Krum (items popular)"] == pytest.approx(0.9)
    assert by["Krum (items default)"] < 0.9


def test_grid_lines_ignore_columns_a_table_lacks_and_settings_that_change_no_result(tmp_path) -> None:
    """An old table without the set: columns read beside a new one, and settings that do not change a
    run's algorithm (run.compile: float rounding only; federated.eval_every), never split a line; a missing value in a column
    the row's own table has is a setting (the default), and splits."""
    table = results_table()
    new = table[table["train.seed"] == 2].assign(
        **{"train.lr": 0.01, "run.compile": True, "federated.eval_every": 9}
    )
    old = table[table["train.seed"] < 2].assign(**{"run.compile": False})
    paths = [tmp_path / "old.parquet", tmp_path / "new.parquet"]
    old.to_parquet(paths[0])
    new.to_parquet(paths[1])
    fig = plots.grid_figure(plots.load_results(paths), 4)
    assert [c.get_label() for c in fig.axes[3].containers] == ["Krum", "No defense", "A-RFRS"]
    arfrs = fig.axes[3].containers[2].lines[0]  # ml100k, 40 %: all three seeds in one mean
    cell = table[
        (table["data.dataset"] == "ml100k")
        & (table["attack.fraction"] == 0.4)
        & (table["defense.name"] == "a-rfrs")
    ]
    np.testing.assert_allclose(arfrs.get_ydata(), [cell[f"precision@{k}"].mean() for k in range(1, 6)])
    # one table in which some runs leave train.lr unset (the default) and others set it: two lines
    pd.concat([old.assign(**{"train.lr": np.nan}), new], ignore_index=True).to_parquet(paths[0])
    labels = [c.get_label() for c in plots.grid_figure(plots.load_results(paths[0]), 4).axes[3].containers]
    assert "A-RFRS (lr default)" in labels and "A-RFRS (lr 0.01)" in labels


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_flags_stored_as_text_read_as_true(runs, tmp_path) -> None:
    """rounds.parquet with byzantine/accepted as 'True'/'False' text: astype(bool) made every 'False'
    True, and the detection figure was drawn wrong without a word; text t/value in metrics.parquet
    likewise. Now the column's kind is checked: one line naming the file."""
    cases = {
        ("rounds.parquet", "byzantine"): lambda c: c.map(lambda b: "True" if b else "False"),
        ("rounds.parquet", "accepted"): lambda c: c.map(lambda b: "True" if b else "False"),
        ("metrics.parquet", "t"): lambda c: c.astype(str),
        ("metrics.parquet", "value"): lambda c: c.astype(str),
    }
    for i, ((table, column), change) in enumerate(cases.items()):
        run = _copy_run(runs["camo"], tmp_path / f"run{i}")
        df = pd.read_parquet(run / table)
        df[column] = change(df[column])
        df.to_parquet(run / table, index=False)
        with pytest.raises(PlotInputError, match=r"(rounds|metrics)\.parquet") as info:
            plots.load_run(run, rounds=True)
        assert str(info.value).startswith(f"{run / table}: column {column} holds object")
        assert_one_line_error(invoke("plot", "detection", run, "--out", tmp_path / "o"), str(run / table))


def test_wrong_types_in_a_run_or_a_summary_crashed_the_loaders(runs, tmp_path) -> None:
    """A config section that is not a mapping (AttributeError in RunData.get), a text attack.fraction
    (TypeError), summary.json nested past the parser (RecursionError), a summary's attack / metrics /
    detection of the wrong type (AttributeError in results_from_summaries): each is now one line
    naming the file."""
    bad_config = _copy_run(runs["clean"], tmp_path / "bad-config")
    config = yaml.safe_load((bad_config / "config.yaml").read_text())
    (bad_config / "config.yaml").write_text(yaml.safe_dump({**config, "attack": 5}))
    with pytest.raises(PlotInputError, match=r"config\.yaml: section 'attack' is not a mapping"):
        plots.load_run(bad_config)
    (bad_config / "config.yaml").write_text(yaml.safe_dump({**config, "attack": {"fraction": "abc"}}))
    with pytest.raises(PlotInputError, match=r"attack\.fraction='abc' is not a number"):
        plots.load_run(bad_config)
    deep = _copy_run(runs["clean"], tmp_path / "deep")
    (deep / "summary.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PlotInputError, match=r"summary\.json: not valid JSON"):
        plots.load_run(deep)

    good = json.loads((runs["clean"] / "summary.json").read_text())
    for i, change in enumerate(
        [{"attack": "alie"}, {"metrics": {"precision": [0.1]}}, {"detection": "x"}, {"dataset": None}]
    ):
        folder = tmp_path / f"sums{i}"
        folder.mkdir()
        (folder / "s.json").write_text(json.dumps({**good, **change}))
        expect = "" if change == {"dataset": None} else str(folder / "s.json")
        if expect:
            with pytest.raises(PlotInputError, match=re.escape(str(folder / "s.json"))):
                plots.load_results(folder)
            with pytest.raises(PlotInputError, match="run summary 1: "):
                plots.results_from_summaries([{**good, **change}])
        else:  # None where a name goes is a missing value, not a crash here
            assert len(plots.load_results(folder)) == 1


def test_a_fifo_or_dev_zero_summary_hung_plot_grid(runs, tmp_path) -> None:
    """A summary.json that is a FIFO blocked `fedrec plot grid DIR` forever, a link to /dev/zero ate
    memory: refused, one line naming the file."""
    import os

    for i, make in enumerate([os.mkfifo, lambda p: p.symlink_to("/dev/zero")]):
        folder = tmp_path / f"grid{i}"
        (folder / "run").mkdir(parents=True)
        make(folder / "run" / "summary.json")
        with pytest.raises(PlotInputError, match=r"run/summary\.json: not a regular file"):
            plots.load_results(folder)
