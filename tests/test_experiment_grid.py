"""``fedrec experiment GRID.yaml`` (issue 13, Build item 3): a 2 x 2 x 2 grid on tiny synthetic data, run
whole, and run in a subprocess that is SIGKILLed midway and restarted, gives the same results table; a
bad grid is one line before anything runs; finished cells are skipped; an unusable checkpoint restarts
its cell."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import load_config
from fedrec.data import synthetic
from fedrec.experiments.grid import STANDARD_KEYS, GridError, load_grid
from fedrec.optim import adam_check, adam_pass
from fedrec.optim.fused import compiler_available

VOLATILE = ["wall_s", "run_dir"]  # what may differ between two runs of the same grid


def _write_inter(path: Path, seed: int) -> str:
    inter = synthetic(200, 100, mean_items=10, seed=seed)
    users = np.repeat(np.arange(inter.n_users), np.diff(inter.indptr))
    lines = [f"{u}\t{i}" for u, i in zip(users, inter.indices, strict=True)]
    path.write_text("user_id:token\titem_id:token\n" + "\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grid")
    doc = {
        "set": {
            "train.mode": "federated",
            "federated": {"rounds": 30, "fraction": 0.1, "eval_every": 10, "checkpoint_every": 5},
            "model.dim": 8,
            "eval.ks": [1, 5],
        },
        "grid": {
            "data.dataset": [_write_inter(root / "syn1.inter", 1), _write_inter(root / "syn2.inter", 2)],
            "attack.name": ["alie"],
            "attack.fraction": [0.2, 0.4],
            "defense.name": ["none", "a-rfrs"],
        },
        "out": str(root / "default-out"),
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _experiment(*args: str):
    return CliRunner().invoke(app, ["experiment", *map(str, args)])


@pytest.fixture(scope="module")
def uninterrupted(grid_file: Path) -> Path:
    """Dir A: the grid run whole, two cells at a time."""
    out = grid_file.parent / "A"
    res = _experiment(grid_file, "--out", out, "--jobs", 2, "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["cells"]) == 8
    return out


def _table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet").drop(columns=VOLATILE)


def test_the_table_has_the_promised_columns(uninterrupted: Path, grid_file: Path) -> None:
    df = pd.read_parquet(uninterrupted / "results.parquet")
    need = [*STANDARD_KEYS, "cell", "run_dir", "status", "error", "wall_s", "rounds", "byzantine_rejected",
            "honest_rejected", "precision@1", "precision@5", "recall@1", "recall@5"]  # fmt: skip
    assert set(need) <= set(df.columns), set(need) - set(df.columns)
    assert len(df) == 8 and (df.status == "done").all() and df.error.isna().all() and (df.rounds == 30).all()
    assert (
        df["cell"].is_unique
        and df["cell"].str.match(r"^syn[12]__alie__0\.[24]__(none|a-rfrs)__[0-9a-f]{8}$").all()
    )
    # the seven standard columns come from the resolved config even where the grid does not vary them
    assert (df["model.name"] == "fism").all() and (df["train.optimizer"] == "adam").all()
    assert (df["train.seed"] == 0).all()
    # detection: a-rfrs rejects uploads, no defense rejects none
    none = df[df["defense.name"] == "none"]
    assert (none.byzantine_rejected == 0).all() and (none.honest_rejected == 0).all()
    assert (df[df["defense.name"] == "a-rfrs"].honest_rejected > 0).all()
    # the rows carry each run's own summary
    for row in df.to_dict("records"):
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert row["precision@5"] == summary["metrics"]["precision"]["5"]
        assert row["recall@1"] == summary["metrics"]["recall"]["1"]
    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    assert [c["cell"] for c in manifest["cells"]] == list(df["cell"])
    assert (uninterrupted / "grid.yaml").read_text() == grid_file.read_text()


def test_killed_midway_and_restarted_gives_the_same_table(grid_file: Path, uninterrupted: Path) -> None:
    out = grid_file.parent / "B"
    # the checkpoint-write hook slows each cell to ~2 s, so the kill lands inside a cell, sometimes
    # inside a checkpoint write
    env = {**os.environ, "FEDREC_CHECKPOINT_WRITE_DELAY": "0.3"}
    cmd = [sys.executable, "-m", "fedrec", "experiment", str(grid_file), "--out", str(out), "--jobs", "1"]
    with open(grid_file.parent / "B.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        runs = out / "runs"
        while time.monotonic() < deadline and proc.poll() is None:
            done = list(runs.glob("*/summary.json"))
            midway = [p for p in runs.glob("*/checkpoint.pt") if not (p.parent / "summary.json").exists()]
            if done and midway:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the grid ended before it could be killed midway"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    half = pd.read_parquet(out / "results.parquet")  # a killed grid leaves a valid table
    assert 1 <= len(half) < 8 and (half.status == "done").all()
    interrupted = [p.parent for p in midway]

    res = _experiment(grid_file, "--out", out, "--jobs", 1)
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(_table(out), _table(uninterrupted), check_exact=True)
    # the interrupted cell continued from its checkpoint, to the same rounds and the same model
    (cell,) = interrupted
    assert "resuming at round" in (cell / "cell.log").read_text()
    same = uninterrupted / "runs" / cell.name
    for name in ("rounds.parquet", "metrics.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(cell / name), pd.read_parquet(same / name))


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}


def test_finished_cells_are_skipped(uninterrupted: Path, grid_file: Path) -> None:
    before = _mtimes(uninterrupted)
    res = _experiment(grid_file, "--out", uninterrupted)
    assert res.exit_code == 0, res.output
    assert "8 done, 0 to run" in res.stderr
    assert _mtimes(uninterrupted) == before, "a finished cell's run directory was rewritten"
    assert len(pd.read_parquet(uninterrupted / "results.parquet")) == 8


def test_a_grid_that_gains_a_key_reuses_its_runs_under_their_new_names(
    uninterrupted: Path, grid_file: Path, tmp_path: Path
) -> None:
    """A key added to the grid (here ``train.seed: [0]``, the default: the same runs) renames every cell;
    the finished runs are found by their identity and renamed, not run again."""
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    doc = yaml.safe_load(grid_file.read_text())
    doc["grid"]["train.seed"] = [0]
    wider = tmp_path / "wider.yaml"
    wider.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = _experiment(wider, "--out", out, "--dry-run", "--json")
    cells = json.loads(res.stdout)["cells"]
    assert {c["status"] for c in cells} == {"done"} and all("__s0__" in c["cell"] for c in cells)

    def summaries() -> dict[str, int]:  # by run identity: the hash that ends a cell's name
        return {p.parent.name[-8:]: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}

    before = summaries()
    res = _experiment(wider, "--out", out)
    assert res.exit_code == 0, res.output
    assert "8 done, 0 to run" in res.stderr
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(c["cell"] for c in cells)
    assert len(before) == 8 and summaries() == before  # nothing rewritten: the same summaries, moved
    new, old = _table(out).drop(columns=["cell"]), _table(uninterrupted).drop(columns=["cell"])
    pd.testing.assert_frame_equal(new[old.columns], old, check_exact=True)
    # a run that is not the cell's (another identity behind the same hash) is not adopted
    doc["grid"]["train.seed"] = [1]
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = _experiment(other, "--out", out, "--dry-run", "--json")
    assert {c["status"] for c in json.loads(res.stdout)["cells"]} == {"pending"}


def test_cells_of_one_identity_never_take_each_others_runs(tmp_path: Path) -> None:
    """Cells that differ only outside the run identity (``run.threads``) share its hash: a finished one
    is never renamed into its sibling's name."""
    from fedrec.experiments.grid import adopt_earlier_dirs, earlier_dirs

    doc = {"set": {"train.mode": "federated", "federated.rounds": 2}, "grid": {"run.threads": [1, 2]},
           "out": str(tmp_path / "out")}  # fmt: skip
    path = tmp_path / "threads.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    grid = load_grid(path)
    a, b = grid.cells
    assert a.digest == b.digest and a.name != b.name
    first = grid.run_dir(a)
    first.mkdir(parents=True)
    (first / "config.yaml").write_text(a.config.to_yaml())
    assert b.name not in earlier_dirs(grid)
    adopt_earlier_dirs(grid)
    assert first.is_dir() and not grid.run_dir(b).exists()


def test_an_unusable_checkpoint_restarts_its_cell(
    uninterrupted: Path, grid_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    cell = sorted((out / "runs").iterdir())[0]
    (cell / "summary.json").unlink()
    ckpt = cell / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    data[-10] ^= 0xFF  # a flipped byte: the checksum refuses it
    ckpt.write_bytes(bytes(data))
    res = _experiment(grid_file, "--out", out)
    assert res.exit_code == 0, res.output
    assert "7 done, 1 to run" in res.stderr
    assert "starting the cell again from round 0" in (cell / "cell.log").read_text()
    pd.testing.assert_frame_equal(_table(out), _table(uninterrupted), check_exact=True)


def test_dry_run_lists_the_cells_and_writes_nothing(
    grid_file: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    res = _experiment(grid_file, "--out", tmp_path / "new", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    cells = json.loads(res.stdout)["cells"]
    assert len(cells) == 8 and {c["status"] for c in cells} == {"pending"}
    assert cells[0]["values"]["attack.fraction"] == 0.2
    assert not (tmp_path / "new").exists()
    res = _experiment(grid_file, "--out", uninterrupted, "--dry-run")
    assert res.exit_code == 0 and res.stdout.count("done") == 8, res.output
    # out: in the grid file is the default folder
    assert load_grid(grid_file).out == grid_file.parent / "default-out"


def test_the_dry_run_projects_the_time_left_from_the_finished_cells(
    grid_file: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """A cell still to run costs what the finished cells of its defense, attack and dataset cost (any
    fraction or seed), else its dataset's mean; at --jobs J the sum over J, at least the longest."""
    out = tmp_path / "proj"
    shutil.copytree(uninterrupted, out)
    res = _experiment(grid_file, "--out", out, "--dry-run", "--json")
    assert json.loads(res.stdout)["projection"]["to_run"] == 0
    walls = {
        ("syn1", "none"): 10.0,
        ("syn1", "a-rfrs"): 20.0,
        ("syn2", "none"): 30.0,
        ("syn2", "a-rfrs"): 50.0,
    }
    for d in (out / "runs").iterdir():
        if "__0.2__" in d.name:
            shutil.rmtree(d)  # the 20 % cells are to run
        else:
            info = json.loads((d / "cell.json").read_text())
            key = next(k for k in walls if k[0] in d.name and f"__{k[1]}__" in d.name)
            (d / "cell.json").write_text(json.dumps({**info, "wall_s": walls[key]}))
    res = _experiment(grid_file, "--out", out, "--jobs", 2, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)["projection"]
    assert got["to_run"] == 4 and got["measured"] == 4
    assert got["cell_hours"] * 3600 == pytest.approx(110.0) and got["wall_hours"] * 3600 == pytest.approx(
        55.0
    )
    # syn2's a-rfrs never finished: its two cells take syn2's mean (30 s, the one finished syn2 cell)
    gone = next(d for d in (out / "runs").iterdir() if "syn2" in d.name and "__a-rfrs__" in d.name)
    shutil.rmtree(gone)
    got = json.loads(_experiment(grid_file, "--out", out, "--jobs", 8, "--dry-run", "--json").stdout)[
        "projection"
    ]
    assert got["to_run"] == 5 and got["measured"] == 3
    assert got["cell_hours"] * 3600 == pytest.approx(10 + 20 + 30 + 30 + 30)
    assert got["wall_hours"] * 3600 == pytest.approx(30.0)  # 8 jobs: the longest cell
    res = _experiment(grid_file, "--out", out, "--jobs", 2, "--dry-run")
    assert (
        "5 cells to run: ~2 min of cell time, ~1 min at --jobs 2 (from the wall times of 3 finished cells)"
        in res.stdout
    )
    for d in (out / "runs").iterdir():
        if "syn2" in d.name:
            shutil.rmtree(d)  # no syn2 cell finished: its 4 cells take the mean of all (15 s)
    got = json.loads(_experiment(grid_file, "--out", out, "--dry-run", "--json").stdout)["projection"]
    assert got["no_dataset_measured"] == 4 and got["cell_hours"] * 3600 == pytest.approx(10 + 20 + 4 * 15)
    assert (
        "4 of a dataset with none finished, given the mean of all"
        in _experiment(grid_file, "--out", out, "--dry-run").stdout
    )
    for d in (out / "runs").iterdir():  # finished cells without a usable wall time (a bool is no time)
        info = json.loads((d / "cell.json").read_text())
        (d / "cell.json").write_text(json.dumps({**info, "wall_s": True if "none" in d.name else "12"}))
    res = _experiment(grid_file, "--out", out, "--dry-run")
    assert "6 cells to run; no finished cell recorded its wall time" in res.stdout, res.stdout
    res = _experiment(grid_file, "--out", tmp_path / "empty", "--dry-run")
    assert "8 cells to run; no cell has finished yet" in res.stdout
    res = _experiment(grid_file, "--out", uninterrupted, "--dry-run")
    assert "nothing left to run" in res.stdout


def test_a_part_of_the_grid_keeps_the_other_parts_in_the_table(
    uninterrupted: Path, grid_file: Path, tmp_path: Path
) -> None:
    """Running a part (--set on a grid key) writes the whole grid's table and manifest: the cells other
    parts finished stay in results.parquet (they used to be dropped until the whole grid was rerun)."""
    out = tmp_path / "parts"
    shutil.copytree(uninterrupted, out)
    for d in (out / "runs").iterdir():
        if "__0.2__" in d.name:
            shutil.rmtree(d)  # the 20 % part is still to run; the 40 % part is done
    (out / "results.parquet").unlink()
    res = _experiment(grid_file, "--out", out, "--set", "attack.fraction=0.2")
    assert res.exit_code == 0, res.output
    assert "4 cells (a part of the grid's 8)" in res.stderr and "0 done, 4 to run" in res.stderr
    whole = _table(uninterrupted).sort_values("cell", ignore_index=True)
    pd.testing.assert_frame_equal(_table(out).sort_values("cell", ignore_index=True), whole)
    assert len(json.loads((out / "manifest.json").read_text())["cells"]) == 8
    # the copy of the grid file is the grid file, not the last --set (a loop variable once shadowed it)
    assert (out / "grid.yaml").read_text() == grid_file.read_text()


def test_set_narrows_a_grid_key_and_overrides_the_rest(grid_file: Path, uninterrupted: Path) -> None:
    """--set on a grid key runs a part of the grid (the same cells, by name: done ones are found);
    on another key it changes every cell, so none of the finished ones is reused."""
    res = _experiment(
        grid_file, "--out", uninterrupted, "--set", "attack.fraction=0.4", "--dry-run", "--json"
    )
    assert res.exit_code == 0, res.output
    part = json.loads(res.stdout)["cells"]
    assert len(part) == 4 and {c["status"] for c in part} == {"done"}
    assert {c["values"]["attack.fraction"] for c in part} == {0.4}
    res = _experiment(
        grid_file, "--out", uninterrupted, "--set", "federated.rounds=31", "--dry-run", "--json"
    )
    other = json.loads(res.stdout)["cells"]
    assert len(other) == 8 and {c["status"] for c in other} == {"pending"}
    _bad_grid_cli(grid_file, ["--set", "train.nope=1"], "unknown config key 'train.nope'")
    _bad_grid_cli(grid_file, ["--jobs", "0"], "--jobs 0: must be at least 1")
    (grid_file.parent / "a-file").write_text("")
    _bad_grid_cli(grid_file, ["--out", str(grid_file.parent / "a-file")], "exists and is not a folder")


def _bad_grid(tmp_path: Path, doc: dict, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    res = _experiment(path, "--out", out)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and str(path) in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert not out.exists(), "something ran"


def _bad_grid_cli(path: Path, args: list[str], needle: str) -> None:
    res = _experiment(path, "--out", path.parent / "never", *args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (path.parent / "never").exists()


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"grid": {"train.lrr": [0.1, 0.2]}}, "unknown config key 'train.lrr'"),
        ({"set": {"federated.roundz": 3}, "grid": {"train.seed": [0]}}, "unknown config key 'federated.roundz'"),
        ({"grid": {"train.seed": 3}}, "train.seed: expected a list of values"),
        ({"grid": {"train.seed": [0]}, "sweep": 1}, "unknown field 'sweep'"),
        ({"base": "no/such.yaml"}, "base='no/such.yaml': no such config file"),
        # every cell is validated before any runs: an attack without Byzantine clients
        ({"set": {"train.mode": "federated"}, "grid": {"attack.name": ["alie"], "train.seed": [0, 1]}},
         "cell attack.name='alie', train.seed=0: attack.name='alie' with attack.fraction=0.0"),
        # a key the cell's mode does not read is refused, not ignored
        ({"set": {"train.mode": "centralized", "federated.rounds": 5}, "grid": {"model.name": ["pop"]}},
         "does not read federated.rounds"),
        ({"grid": {"train.seed": [0, 0]}}, "are the same run"),
        ({"grid": {"run.name": ["x"]}}, "run.name: the grid names and places its run directories"),
    ],
)  # fmt: skip
def test_a_bad_grid_is_one_line_before_anything_runs(tmp_path: Path, doc: dict, needle: str) -> None:
    _bad_grid(tmp_path, doc, needle)


def test_grid_as_a_list_of_subgrids_and_failed_cells(tmp_path: Path, grid_file: Path) -> None:
    """Sub-grids: the attack-free cell beside the attacked one. A cell that fails at run time (a round
    too small for a-rfrs at 40 %, known only once the data is loaded) is a failed row with its error;
    the other cells still run, and the exit code is 1. Centralized cells run too."""
    data = yaml.safe_load(grid_file.read_text())["grid"]["data.dataset"][0]
    doc = {
        "set": {"data.dataset": data},
        "grid": [
            {"train.mode": ["federated"], "federated.rounds": [3], "federated.fraction": [0.02],
             "defense.name": ["none", "a-rfrs"], "attack.name": ["alie"], "attack.fraction": [0.4]},
            {"train.mode": ["federated"], "federated.rounds": [3]},
            {"train.mode": ["centralized"], "model.name": ["pop"]},
        ],
    }  # fmt: skip
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = _experiment(path, "--out", tmp_path / "out", "--json")
    assert res.exit_code == 1, res.output
    rows = {(r["train.mode"], r["attack.name"], r["defense.name"], r["model.name"]): r
            for r in json.loads(res.stdout)["cells"]}  # fmt: skip
    assert len(rows) == 4
    bad = rows[("federated", "alie", "a-rfrs", "fism")]
    assert bad["status"] == "failed" and "defense 'a-rfrs' needs f < n/2" in bad["error"]
    assert bad["precision@5"] is None  # strict JSON: null, not NaN
    assert rows[("federated", "alie", "none", "fism")]["status"] == "done"
    clean = rows[("federated", "none", "none", "fism")]
    assert clean["status"] == "done" and clean["byzantine_rejected"] is None  # NaN -> null
    pop = rows[("centralized", "none", "none", "pop")]
    assert pop["status"] == "done" and pop["rounds"] is None and pop["precision@5"] > 0
    assert "1 of 4 cells failed" in res.stderr
    assert "train.mode" in pd.read_parquet(tmp_path / "out" / "results.parquet").columns


def test_load_grid_names_cells_by_their_grid_keys(grid_file: Path) -> None:
    grid = load_grid(grid_file)
    assert grid.keys == ["data.dataset", "attack.name", "attack.fraction", "defense.name"]
    names = [c.name for c in grid.cells]
    assert names == [c.name for c in load_grid(grid_file).cells]  # deterministic
    assert names[0].startswith("syn1__alie__0.2__none__")
    with pytest.raises(GridError, match="grid file not found"):
        load_grid(grid_file.parent / "nope.yaml")
    saga = load_grid(Path(__file__).parents[1] / "configs" / "grids" / "saga-rec.yaml")
    assert any("__-5.0__" in c.name for c in saga.cells)  # sign flip c = -5: the name keeps the sign


@pytest.mark.parametrize(
    ("name", "cells"),
    [
        ("federated", 8),
        ("centralized", 20),
        ("figure4", 160),
        ("camouflage", 6),
        ("saga-rec", 90),
        ("figure4-converged", 320),
        ("figure3-8-converged", 100),
        ("figure9-10-converged", 640),
    ],
)
def test_the_shipped_grids_are_valid(name: str, cells: int) -> None:
    """configs/grids/ replaces the shell grids of experiments/: same cells (figure4.sh: per dataset and
    seed, the attack-free run and 3 fractions x 5 defenses)."""
    grid = load_grid(Path(__file__).parents[1] / "configs" / "grids" / f"{name}.yaml")
    assert len(grid.cells) == cells


def test_cell_digest_is_the_runs_identity_not_where_or_how_it_runs():
    """A cell's name must survive fedrec gaining a config key (defaulted to the old behaviour) and a
    change of threads or device; it must change with anything the run computes."""
    from fedrec.experiments.grid import config_digest

    base = load_config(None, ["train.mode=federated"])
    same = load_config(
        None, ["train.mode=federated", "run.threads=2", "run.device=cpu", "federated.client_rng=shared"]
    )
    assert config_digest(base) == config_digest(same)
    assert config_digest(base) != config_digest(load_config(None, ["train.mode=federated", "train.lr=0.5"]))
    per_client = load_config(None, ["train.mode=federated", "federated.client_rng=per-client"])
    assert config_digest(base) != config_digest(per_client)


def test_narrowing_keeps_only_cells_the_grid_has(tmp_path: Path) -> None:
    """--set on a grid key drops the sub-grids that do not list the value (it used to rewrite them,
    running cells the grid does not have), keeps the sub-grids without the key, and refuses a value
    the grid never lists."""
    doc = {
        "set": {"train.mode": "federated", "federated": {"rounds": 5}},
        "grid": [
            {"train.seed": [0, 1]},  # attack-free: no optimizer key
            {"train.optimizer": ["momentum"], "train.lr": [0.01], "train.seed": [0, 1]},
            {"train.optimizer": ["adagrad"], "train.lr": [0.3], "train.seed": [0, 1]},
        ],
        "out": str(tmp_path / "out"),
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    whole = {c.name for c in load_grid(path).cells}
    part = load_grid(path, overrides=["train.optimizer=adagrad", "train.seed=1"]).cells
    assert {c.name for c in part} <= whole
    assert sorted((c.config.train.optimizer, c.config.train.lr) for c in part) == [
        ("adagrad", 0.3),
        ("adam", 1e-3),
    ]
    with pytest.raises(GridError, match=r"train.seed=7.*lists train.seed as 0, 1 only"):
        load_grid(path, overrides=["train.seed=7"])


def _bomb(levels: int) -> str:
    """A YAML alias bomb: 10^levels values from a few hundred bytes."""
    rows = ["a0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(rows)


def test_an_alias_bomb_is_one_short_line(tmp_path: Path) -> None:
    """Aliases that expand to 10^8 values: refused while reading, in one short line (the error message
    used to print the expanded value: 800 MB on one line, 5.8 GB of memory)."""
    body = "\n".join("    " + ln for ln in _bomb(8).splitlines())
    grid = tmp_path / "bomb.yaml"
    grid.write_text(f"set:\n  attack.params:\n{body}\ngrid:\n  train.seed: [0]\n")
    t = time.perf_counter()
    _bad_grid_cli(grid, ["--dry-run"], "aliases are expanded")
    config = tmp_path / "bomb-config.yaml"
    config.write_text(f"attack:\n  params:\n{body}\n")
    res = CliRunner().invoke(app, ["train", "-c", str(config)])
    assert res.exit_code == 2 and "aliases are expanded" in res.stderr, res.output
    assert time.perf_counter() - t < 20 and len(res.stderr) < 300
    # a large value that is no bomb still fails in one short line
    config.write_text("train:\n  lr: [" + ", ".join(str(i) for i in range(500)) + "]\n")
    res = CliRunner().invoke(app, ["train", "-c", str(config)])
    assert res.exit_code == 2 and len(res.stderr) < 400 and "..." in res.stderr, res.output


def test_files_that_are_not_text_name_the_file(tmp_path: Path, grid_file: Path, uninterrupted: Path) -> None:
    """A base config that is not UTF-8 is one line naming it; a cell directory whose config.yaml is
    binary garbage is rewritten and run (unfinished) or passed over (a stray earlier directory)."""
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    grid = tmp_path / "g.yaml"
    grid.write_text(f"base: {binary}\ngrid:\n  train.seed: [0]\n")
    _bad_grid_cli(grid, ["--dry-run"], f"{binary}: not UTF-8 text")
    res = CliRunner().invoke(app, ["train", "-c", str(binary)])
    assert res.exit_code == 2 and f"{binary}: not UTF-8 text" in res.stderr, res.output

    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    cells = sorted((out / "runs").iterdir())
    stray = cells[0].with_name("older__" + cells[0].name[-8:])
    shutil.copytree(cells[0], stray)  # a stray directory with the identity of a done cell
    (stray / "config.yaml").write_bytes(b"\xff\xfe")
    (cells[1] / "summary.json").unlink()  # an unfinished cell, its config.yaml garbage
    (cells[1] / "config.yaml").write_bytes(b"\xff\xfe")
    assert _experiment(grid_file, "--out", out, "--dry-run").exit_code == 0
    res = _experiment(grid_file, "--out", out)
    assert res.exit_code == 0, res.output
    assert "7 done, 1 to run" in res.stderr
    assert len(pd.read_parquet(out / "results.parquet")) == 8


def test_what_would_fail_every_cell_is_one_line_before_any_runs(tmp_path: Path, grid_file: Path) -> None:
    """A dataset no searched folder holds, or a path the grid must write blocked by the wrong kind of
    file: one line before anything runs (the missing dataset used to fail its cells one by one)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    grid = tmp_path / "nodata.yaml"
    grid.write_text(f"set:\n  data.data_dir: {empty}\ngrid:\n  data.dataset: [lastfm]\n")
    _bad_grid_cli(grid, [], "dataset 'lastfm' not found")
    assert _experiment(grid, "--out", tmp_path / "never", "--dry-run").exit_code == 0  # lists it all the same
    grid.write_text(f"grid:\n  data.dataset: [{tmp_path / 'gone.inter'}]\n")
    _bad_grid_cli(grid, [], "gone.inter")

    out = tmp_path / "blocked"
    (out / "results.parquet").mkdir(parents=True)
    res = _experiment(grid_file, "--out", out)
    assert res.exit_code == 2 and "results.parquet: a folder where the grid writes a file" in res.stderr
    (out / "results.parquet").rmdir()
    cell = load_grid(grid_file, out=out).cells[0]
    (out / "runs").mkdir()
    (out / "runs" / cell.name).write_text("x")
    res = _experiment(grid_file, "--out", out)
    assert res.exit_code == 2 and f"a file where cell {cell.name}'s run directory goes" in res.stderr
    assert not list((out / "runs").glob("*/"))  # nothing ran


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("grid:\n  train.seed: [0]\n  train.seed: [1]\n", ":3: invalid YAML (key 'train.seed' appears twice"),
        (
            "set: {train: {lr: 0.5}, train.lr: 0.02}\ngrid: {train.seed: [0]}\n",
            "set: train.lr is given twice",
        ),
        ("grid:\n  model.dim: [true, 64]\n", "model.dim: cannot read True as int"),
        ("grid:\n  train.seed: [true, false]\n", "train.seed: cannot read True as int"),
        ("set: 0\ngrid: {train.seed: [0]}\n", "set: expected a mapping"),
    ],
)
def test_yaml_that_would_be_read_silently_otherwise_is_one_line(
    tmp_path: Path, text: str, needle: str
) -> None:
    """A key given twice, one key in nested and dotted form, a boolean for a number, a non-mapping
    set: each was read without a word (the last key won, true became 1, set: 0 was dropped)."""
    path = tmp_path / "g.yaml"
    path.write_text(text)
    _bad_grid_cli(path, ["--dry-run"], needle)


def test_a_grid_of_runs_that_would_be_the_same_is_refused(tmp_path: Path) -> None:
    """pop reads no training setting, so cells that differ only in one were the same run twice; a grid
    too large to build is refused by its count before any cell is built (10^6 cells used to hang)."""
    path = tmp_path / "pop.yaml"
    path.write_text("grid:\n  - {train.mode: [centralized], model.name: [pop], centralized.epochs: [1, 2]}\n")
    _bad_grid_cli(path, ["--dry-run"], "model.name='pop' trains nothing: it does not read centralized.epochs")
    res = CliRunner().invoke(
        app, ["train", "--mode", "centralized", "--model", "pop", "--set", "train.lr=0.2"]
    )
    assert res.exit_code == 2 and "train.lr: the most-popular baseline" in res.stderr, res.output
    res = CliRunner().invoke(app, ["train", "--mode", "centralized", "--model", "pop", "--seed", "3"])
    assert res.exit_code == 2 and "train.seed: the most-popular baseline" in res.stderr, res.output
    lists = "\n".join(f"  {k}: [{', '.join(str(i + 1) for i in range(10))}]"
                      for k in ("train.seed", "model.dim", "train.negatives", "federated.rounds", "data.split_seed", "eval.batch_size"))  # fmt: skip
    path.write_text(f"grid:\n{lists}\n")
    t = time.perf_counter()
    _bad_grid_cli(path, ["--dry-run"], "1,000,000 cells; a grid has at most 20,000")
    assert time.perf_counter() - t < 10


def test_parts_keep_failed_cells_and_narrow_by_the_grids_own_values(tmp_path: Path) -> None:
    """A cell that failed in one part stays in the table another part writes (as cell.json recorded
    it), a part's output lists only its own cells, and --set narrows by value (1 finds the grid's 1.0;
    true is no number)."""
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id:token\nnot a row\n")
    good = _write_inter(tmp_path / "good.inter", 1)
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({
        "set": {"train.mode": "federated", "federated": {"rounds": 4, "fraction": 0.1, "eval_every": 4,
                "checkpoint_every": 4}, "model.dim": 8, "eval.ks": [1, 5]},
        "grid": {"data.dataset": [str(bad), good], "train.lr": [1.0]},
    }))  # fmt: skip
    out = tmp_path / "out"
    res = _experiment(path, "--out", out, "--set", f"data.dataset={bad}", "--json")
    assert res.exit_code == 1 and [r["status"] for r in json.loads(res.stdout)["cells"]] == ["failed"]
    res = _experiment(path, "--out", out, "--set", f"data.dataset={good}", "--set", "train.lr=1", "--json")
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in json.loads(res.stdout)["cells"]] == ["done"]  # its own part only
    table = pd.read_parquet(out / "results.parquet")
    assert sorted(table["status"]) == ["done", "failed"] and table["train.lr"].tolist() == [1.0, 1.0]
    _bad_grid_cli(path, ["--set", "train.lr=true"], "train.lr: cannot read True as float")


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    """``<<: *anchor`` merges a mapping (a key of its own overrides a merged one); only a key written
    twice in the same mapping is refused."""
    path = tmp_path / "g.yaml"
    path.write_text(
        "set: {train.mode: federated}\ngrid:\n  - &g {data.dataset: [ml100k], train.seed: [0, 1]}\n"
        "  - <<: *g\n    train.seed: [2]\n    attack.name: [gradient-ascent]\n    attack.fraction: [0.2]\n"
    )
    cells = load_grid(path).cells
    assert [(c.values["train.seed"], c.values.get("attack.name")) for c in cells] == [
        (0, None), (1, None), (2, "gradient-ascent"),
    ]  # fmt: skip


@pytest.mark.skipif(not compiler_available(), reason="no C++ compiler or dynamo: cells run eager")
def test_cells_that_compile_run_compiled_from_the_warmed_forkserver(tmp_path: Path) -> None:
    """The forkserver loads the compiler stack once (fedrec.experiments.warm); the forked cells still
    compile their rule check and default pass, and give the table of the same grid run eager (to the
    table's float tolerance: the compiled default pass rounds theta differently in the last bits)."""
    tables = {}
    for compiled in (True, False):
        doc = {
            "set": {
                "train.mode": "federated", "run.compile": compiled, "model.dim": 8, "eval.ks": [5],
                "federated": {"rounds": 6, "fraction": 0.2, "eval_every": 6},
                "attack": {"name": "alie", "fraction": 0.2}, "defense.name": "a-rfrs",
            },
            "grid": {"data.dataset": [_write_inter(tmp_path / "syn.inter", 3)], "train.seed": [0, 1]},
        }  # fmt: skip
        path = tmp_path / f"compiled-{compiled}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out = tmp_path / f"out-{compiled}"
        res = _experiment(path, "--out", out, "--jobs", 2)
        assert res.exit_code == 0, res.output
        summaries = [json.loads(p.read_text()) for p in out.glob("runs/*/summary.json")]
        # Adam's default pass compiles; its float32 check is the C loop either way (fedrec.optim.adam_check)
        fused_pass = "native" if adam_pass.native() is not None else "compiled"  # fedrec.optim.adam_pass
        assert {s["default_pass"] for s in summaries} == {fused_pass if compiled else "eager"}
        check = "native" if adam_check.native() is not None else "compiled" if compiled else "eager"
        assert {s["rule_check"] for s in summaries} == {check}
        tables[compiled] = _table(out).drop(columns=["cell", "run.compile"], errors="ignore")
    pd.testing.assert_frame_equal(tables[True], tables[False])


WARM_CHECK = """
import multiprocessing, sys, threading
from fedrec.experiments.cell import PRELOAD
for name in PRELOAD:
    __import__(name)
threads = threading.active_count()
import fedrec.experiments.warm
from torch._inductor.cpu_vec_isa import valid_vec_isa_list
assert "torch._inductor.compile_fx" in sys.modules, "the compiler stack was not imported"
assert valid_vec_isa_list.cache_info().currsize == 1, "the CPU probe did not run"
assert threading.active_count() == threads, "a thread was started before the forks"
assert not multiprocessing.active_children(), "a child process was left behind"
"""


@pytest.mark.skipif(not compiler_available(), reason="no C++ compiler or dynamo: nothing to warm")
def test_the_warm_up_loads_the_compiler_and_leaves_the_forkserver_safe_to_fork() -> None:
    """What the forkserver imports (fedrec.experiments.warm): the compiler stack and the CPU probe's
    answer, and no thread or process a fork would copy half of."""
    done = subprocess.run([sys.executable, "-c", WARM_CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_forkserver_preload_compiles_every_c_loop_once() -> None:
    """fedrec.experiments.preload_native: the forkserver's preload leaves every C loop's ``native()``
    answered (loaded, or None without a compiler), so forked cells compile none of them again."""
    code = (
        "from fedrec.experiments.cell import PRELOAD\n"
        "for name in PRELOAD:\n    __import__(name)\n"
        "from fedrec.experiments.preload_native import LOOPS\n"
        "assert all(m.native.cache_info().currsize == 1 for m in LOOPS)\n"
        "import fedrec.native\n"
        "assert fedrec.native.library.cache_info().currsize == len(LOOPS)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # and LOOPS is every module that compiles one (a new loop must be added there)
    from fedrec.experiments.preload_native import LOOPS

    root = Path(__file__).resolve().parents[1] / "fedrec"
    compiling = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts)
        for p in root.rglob("*.py")
        if "from fedrec.native import load" in p.read_text()
    }
    assert compiling == {m.__name__ for m in LOOPS}


@pytest.mark.parametrize("compile_", [True, False])
def test_the_forkserver_is_warmed_exactly_when_a_cell_compiles(tmp_path: Path, monkeypatch, compile_) -> None:
    import fedrec.experiments.grid as grid_mod

    asked: list[bool] = []
    real = grid_mod._context
    monkeypatch.setattr(grid_mod, "_context", lambda warm: asked.append(warm) or real(warm))
    doc = {"set": {"train.mode": "federated", "run.compile": compile_, "model.dim": 4, "eval.ks": [5],
                   "federated": {"rounds": 2, "fraction": 0.2, "eval_every": 2}},
           "grid": {"data.dataset": [_write_inter(tmp_path / "syn.inter", 4)]}}  # fmt: skip
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = _experiment(path, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert asked == [compile_]  # asked for: warmed even where no compiler is found (warm() then does nothing)


def test_a_full_disk_while_writing_the_table_does_not_stop_the_grid(
    grid_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table is rewritten after every cell; a write that fails there (ENOSPC: the disk filled while
    a grid ran) is one line and the grid goes on; the next write succeeds. When the last write fails the
    command ends with one line (exit 2), not a traceback, and the finished cells keep their runs."""
    import fedrec.experiments.grid as grid_module

    real, calls = grid_module.write_results, []

    def flaky(path, rows):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, rows)

    monkeypatch.setattr(grid_module, "write_results", flaky)
    out = tmp_path / "full-disk"
    res = _experiment(grid_file, "--out", out, "--set", "attack.fraction=0.2", "--set", "defense.name=none")
    assert res.exit_code == 0, res.output
    assert "results.parquet not updated" in res.stderr and "No space left on device" in res.stderr
    assert "Traceback" not in res.output
    assert len(calls) >= 2 and set(_table(out)["status"]) == {"done"} and len(_table(out)) == 2
    assert not list(out.glob("results.parquet.*tmp"))

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(grid_module, "write_results", full)
    again = tmp_path / "full-disk-2"
    res = _experiment(grid_file, "--out", again, "--set", "attack.fraction=0.2", "--set", "defense.name=none")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "results.parquet not written" in res.stderr and len(res.stderr.strip().splitlines()[-1]) < 400
    assert len(list((again / "runs").glob("*/summary.json"))) == 2


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    from fedrec.runs import _atomic

    path = tmp_path / "table.txt"
    path.write_text("old")

    def half(p: Path) -> None:
        p.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    for unique in (False, True):
        with pytest.raises(OSError):
            _atomic(path, half, unique=unique)
        assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.txt"]


def test_one_tampered_cell_record_stopped_the_whole_grid(
    uninterrupted: Path, grid_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A summary.json with a text metric, nesting past the parser, a FIFO or a link to /dev/zero, or a
    cell.json with text where numbers go: the grid stopped (rc 2 or a traceback, the cells beside it
    terminated; every rerun the same) or hung. Now each is one warning line naming the file, the cell
    counts as not finished (its summary) or without a wall time (its cell.json), the rest runs, and
    results.parquet is written."""
    out = tmp_path / "tampered"
    shutil.copytree(uninterrupted, out)
    cells = sorted((out / "runs").iterdir())
    summary = json.loads((cells[0] / "summary.json").read_text())
    summary["metrics"]["precision"]["5"] = "abc"
    (cells[0] / "summary.json").write_text(json.dumps(summary))
    (cells[1] / "summary.json").write_text("[" * 100_000 + "]" * 100_000)
    (cells[2] / "cell.json").write_text('{"wall_s": "abc"}')
    (cells[3] / "cell.json").write_text('{"attempts": "x", "status": "failed"}')
    (cells[4] / "summary.json").unlink()
    os.mkfifo(cells[4] / "summary.json")
    (cells[5] / "summary.json").unlink()
    (cells[5] / "summary.json").symlink_to("/dev/zero")
    summary["metrics"]["precision"]["5"], summary["rounds"] = 0.5, "abc"
    (cells[6] / "summary.json").write_text(json.dumps(summary))
    res = _experiment(grid_file, "--out", out, "--dry-run")
    assert res.exit_code == 0, res.output
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedrec.experiments.cell"):
        res = _experiment(grid_file, "--out", out, "--jobs", 2)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    said = "\n".join(r.getMessage() for r in caplog.records)
    for cell, name in [
        (0, "summary"),
        (1, "summary"),
        (2, "cell"),
        (3, "cell"),
        (4, "summary"),
        (5, "summary"),
        (6, "summary"),
    ]:
        assert said.count(f"{cells[cell] / name}.json: ") == 1, said
    assert "3 done, 5 to run" in res.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 8 and set(table["status"]) == {"done"}
    assert np.isnan(table.set_index("cell").loc[cells[2].name, "wall_s"])  # its record was ignored


@pytest.mark.parametrize("wall", [1e308, 1.5e8, -1.0, float("nan"), True, "12"])
def test_a_cell_record_wall_time_must_be_seconds(wall) -> None:
    """A forged wall time (a 1e308 one printed a 300-digit projection) makes the record ignored."""
    from fedrec.experiments.grid import _cell_info_problem

    assert "wall_s" in _cell_info_problem({"wall_s": wall})
    assert _cell_info_problem({"wall_s": 3600.5, "attempts": 2, "status": "done"}) is None


def test_a_symlinked_cell_folder_was_written_through(
    uninterrupted: Path, grid_file: Path, tmp_path: Path
) -> None:
    """runs/<cell> linked to a run elsewhere: the grid rewrote its config and deleted its checkpoint.
    Now a linked cell folder, or one resolving outside OUT, is refused, one line, nothing written."""
    from fedrec.experiments.cell import run_cell

    out = tmp_path / "linked"
    shutil.copytree(uninterrupted, out)
    cell = sorted((out / "runs").iterdir())[0]
    victim = tmp_path / "victim"
    shutil.move(cell, victim)
    (victim / "config.yaml").write_text((victim / "config.yaml").read_text() + "# another run\n")
    (victim / "summary.json").unlink()
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    cell.symlink_to(victim)
    res = _experiment(grid_file, "--out", out)
    assert res.exit_code == 2 and f"{cell}: a symbolic link where a cell folder goes" in res.stderr
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before
    with pytest.raises(ValueError, match="a symbolic link"):
        run_cell(cell)
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before

    cell.unlink()
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / "runs", elsewhere)
    (out / "runs").symlink_to(elsewhere)
    res = _experiment(grid_file, "--out", out)
    assert res.exit_code == 2 and f"outside {out}" in res.stderr.replace("\n", "")


def test_another_grid_into_the_same_out_replaced_its_results(
    uninterrupted: Path, grid_file: Path, tmp_path: Path
) -> None:
    """A different grid run into a finished grid's folder replaced its results.parquet, grid.yaml and
    manifest.json without a word. Now it is refused (one line); the same grid file, edited so that no
    finished cell leaves it, still runs on."""
    out = tmp_path / "shared"
    shutil.copytree(uninterrupted, out)
    saved = {n: (out / n).read_bytes() for n in ("results.parquet", "grid.yaml", "manifest.json")}
    doc = yaml.safe_load(grid_file.read_text())
    doc["grid"]["attack.fraction"] = [0.3]
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = _experiment(other, "--out", out)
    assert res.exit_code == 2 and f"{out} holds another grid" in res.stderr
    assert {n: (out / n).read_bytes() for n in saved} == saved
    assert len(list((out / "runs").iterdir())) == 8

    edited = tmp_path / "edited.yaml"
    edited.write_text(grid_file.read_text() + "# a comment: the same cells\n")
    res = _experiment(edited, "--out", out)
    assert res.exit_code == 0, res.output
    assert "8 done, 0 to run" in res.stderr


def test_a_cell_that_cannot_start_still_leaves_the_finished_ones_recorded(
    grid_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grid starts the next cells before it records the ones that ended (their table write would
    delay the start); when starting one fails (a full disk while preparing its folder), the cell that
    ended is still recorded: its cell.json done with its wall time, its line printed."""
    import fedrec.experiments.grid as grid_module

    real, calls = grid_module._prepare_dir, []

    def flaky(grid, cell):
        calls.append(cell.name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(grid, cell)

    monkeypatch.setattr(grid_module, "_prepare_dir", flaky)
    out = tmp_path / "full-disk-start"
    res = _experiment(
        grid_file, "--out", out, "--set", "attack.fraction=0.2", "--set", "defense.name=none", "--jobs", 1
    )
    assert res.exit_code != 0 and len(calls) == 2
    first = json.loads((out / "runs" / calls[0] / "cell.json").read_text())
    assert first["status"] == "done" and first["wall_s"] > 0 and first["attempts"] == 1
    assert f"[1/2] {calls[0]}: P@5" in res.output


def test_a_value_with_dots_gives_cell_names_the_cells_accept(tmp_path: Path) -> None:
    """A data folder written with ``..`` became a cell name with ``..`` in it, which the cell's own
    config check refuses: every such cell failed."""
    from fedrec.runs import run_name_problem

    data = tmp_path / "data"
    data.mkdir()
    path = tmp_path / "dots.yaml"
    doc = {"set": {"train.mode": "federated", "federated.rounds": 2, "data.dataset": "ml100k"},
           "grid": {"data.data_dir": [f"{tmp_path}/../{tmp_path.name}/data", str(data)]}}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    grid = load_grid(path, tmp_path / "out")
    assert len(grid.cells) == 2
    for cell in grid.cells:
        assert ".." not in cell.name and run_name_problem(cell.name) is None, cell.name
        load_config(None, values={**cell.values, "run.name": cell.name, "run.out_dir": str(tmp_path / "o")})


def test_results_keep_an_integer_past_int64_as_text(tmp_path: Path) -> None:
    """Arrow refuses an int past int64 (OverflowError): the grid's table was never written."""
    from fedrec.experiments.grid import write_results

    rows = [{"cell": "a", "status": "done", "x": 2**70}, {"cell": "b", "status": "done", "x": 3}]
    write_results(tmp_path / "r.parquet", rows)
    assert pd.read_parquet(tmp_path / "r.parquet")["x"].tolist() == [str(2**70), "3"]
