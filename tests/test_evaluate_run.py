"""``fedrec evaluate RUN_DIR`` (issue 13, Build item 3): the saved model re-scored with the run's own K and
user set reproduces summary.json exactly; other K and every user are one option away; a missing or
corrupt checkpoint is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.baselines.runner import run_centralized
from fedrec.cli import app
from fedrec.config import load_config
from fedrec.data import synthetic
from fedrec.experiments.evaluate import evaluate_run
from fedrec.federation.runner import run_federated


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    inter = synthetic(200, 100, mean_items=10, seed=3)
    users = np.repeat(np.arange(inter.n_users), np.diff(inter.indptr))
    path = tmp_path_factory.mktemp("data") / "syn.inter"
    lines = [f"{u}\t{i}" for u, i in zip(users, inter.indices, strict=True)]
    path.write_text("user_id:token\titem_id:token\n" + "\n".join(lines) + "\n")
    return str(path)


def _federated(data: str, out: Path, model: str) -> Path:
    cfg = load_config(None, values={
        "data.dataset": data, "train.mode": "federated", "model.name": model, "model.dim": 8,
        "federated.rounds": 20, "federated.fraction": 0.1, "federated.eval_every": 10,
        "attack.name": "sign-flip", "attack.fraction": 0.3, "defense.name": "a-rfrs",
        "eval.ks": [1, 3, 5], "run.out_dir": str(out),
    })  # fmt: skip
    return run_federated(cfg)[1]


def _evaluate(*args: str):
    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


@pytest.mark.parametrize("model", ["fism", "mf"])
def test_the_runs_own_k_and_users_reproduce_its_summary(data: str, tmp_path: Path, model: str) -> None:
    run = _federated(data, tmp_path, model)
    summary = json.loads((run / "summary.json").read_text())
    res = _evaluate(run, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["metrics"] == summary["metrics"]  # exactly: the same scorer, split, users and batches
    assert got["evaluated_users"] == summary["evaluated_users"] and got["round"] == got["rounds"] == 20
    # other K (the rest of `--ks 1 5 10` arrives as extra arguments), and every user
    every = json.loads(_evaluate(run, "--ks", "5", "10", "--users", "all", "--json").stdout)
    assert every["ks"] == [5, 10] and set(every["metrics"]["precision"]) == {"5", "10"}
    byzantine = summary["byzantine_clients"]
    assert byzantine > 0 and every["evaluated_users"] > summary["evaluated_users"]
    assert every["metrics"]["precision"]["5"] != summary["metrics"]["precision"]["5"]
    # the same K as training, on the benign users, without --json: the table
    res = _evaluate(run, "--ks", "3")
    assert res.exit_code == 0 and f"{summary['metrics']['precision']['3']:.4f}" in res.stdout, res.output


def test_a_centralized_fism_run_is_rescored_too(data: str, tmp_path: Path) -> None:
    cfg = load_config(None, values={"data.dataset": data, "model.dim": 8, "centralized.epochs": 2,
                                    "eval.ks": [2, 5], "run.out_dir": str(tmp_path)})  # fmt: skip
    summary, run = run_centralized(cfg)
    got = evaluate_run(run)
    assert got["metrics"] == summary["metrics"] and got["round"] is None


def _one_line_exit_2(args: list[str], needle: str) -> None:
    res = _evaluate(*args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.output


def test_a_missing_or_corrupt_checkpoint_is_one_line(data: str, tmp_path: Path) -> None:
    run = _federated(data, tmp_path, "fism")
    ckpt = run / "checkpoint.pt"
    blob = ckpt.read_bytes()
    ckpt.write_bytes(blob[: len(blob) // 2])
    _one_line_exit_2([str(run)], "corrupt checkpoint (truncated")
    ckpt.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    _one_line_exit_2([str(run)], "corrupt checkpoint (sha256 mismatch)")
    ckpt.unlink()
    _one_line_exit_2([str(run)], "checkpoint.pt: no checkpoint, so no model to evaluate")
    _one_line_exit_2([str(tmp_path / "nope")], "no config.yaml (not a run directory)")
    _one_line_exit_2([str(run), "--users", "byzantine"], "--users 'byzantine': expected one of benign, all")
    _one_line_exit_2([str(run), "--ks", "0"], "--ks 0: expected positive integers")
    _one_line_exit_2([str(run), "7"], "unexpected argument '7'")


@pytest.mark.parametrize("model", ["fism", "mf"])
def test_a_crafted_centralized_checkpoint_is_one_line(data: str, tmp_path: Path, model: str) -> None:
    """An int64 or bool theta was a RuntimeError traceback, ``user_vectors: 5`` an AttributeError: the
    README promises one line and exit 2 for a crafted or foreign checkpoint."""
    import torch

    cfg = load_config(None, values={"data.dataset": data, "model.name": model, "model.dim": 8,
                                    "centralized.epochs": 1, "run.out_dir": str(tmp_path)})  # fmt: skip
    _, run = run_centralized(cfg)
    ckpt = run / "checkpoint.pt"
    good = torch.load(ckpt, weights_only=True)
    theta, users = good["theta"], good["user_vectors"]
    bad_users = "a dense torch.float32 tensor (MF)" if model == "mf" else "in a fism checkpoint (MF only)"
    cases = [
        ({"theta": torch.zeros(theta.shape, dtype=torch.int64)}, "theta is torch.int64"),
        ({"theta": torch.zeros(theta.shape, dtype=torch.bool)}, "theta is torch.bool"),
        ({"theta": theta.double()}, "expected a dense torch.float32 tensor"),
        ({"theta": theta, "user_vectors": 5}, bad_users),
        ({"theta": theta[:-1]}, f"theta {tuple(theta[:-1].shape)} does not fit this run"),
    ]
    if model == "mf":
        cases.append(({"theta": theta, "user_vectors": users[:, :4]}, "user_vectors (200, 4) does not fit"))
    for entries, needle in cases:
        torch.save({**good, **entries}, ckpt)
        _one_line_exit_2([str(run)], needle)
    torch.save(good, ckpt)
    assert _evaluate(run).exit_code == 0


@pytest.mark.parametrize("mode", ["federated", "centralized"])
def test_a_data_file_edited_after_training_is_refused(data: str, tmp_path: Path, mode: str) -> None:
    """The run reloads its dataset by path: a file edited since (100 interactions dropped, the catalog
    unchanged) gave another split and other P@K with no message, to evaluate and to resume."""
    own = tmp_path / "own.inter"
    own.write_text(Path(data).read_text())
    if mode == "federated":
        run = _federated(str(own), tmp_path / "out", "fism")
    else:
        cfg = load_config(None, values={"data.dataset": str(own), "model.dim": 8, "centralized.epochs": 1,
                                        "eval.ks": [2, 5], "run.out_dir": str(tmp_path / "out")})  # fmt: skip
        run = run_centralized(cfg)[1]
    assert evaluate_run(run)["metrics"]  # unchanged data: fine
    lines = own.read_text().splitlines()
    own.write_text("\n".join(lines[:1] + lines[101:]) + "\n")
    _one_line_exit_2([run], "the data file changed since the run")
    if mode == "federated":
        (run / "summary.json").unlink()  # a killed run: resuming would train on
        res = CliRunner().invoke(app, ["train", "--resume", str(run)])
        assert res.exit_code == 2 and "the data file changed since the run" in res.stderr, res.output


def test_a_relative_data_path_is_recorded_whole(data: str, tmp_path: Path, monkeypatch) -> None:
    """``--dataset rel.inter`` was written to config.yaml as given: evaluated from another folder, the
    run found no file (or another one of the same name)."""
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "rel.inter").write_text(Path(data).read_text())
    monkeypatch.chdir(tmp_path / "here")
    res = CliRunner().invoke(app, ["train", "--dataset", "rel.inter", "--mode", "federated", "--rounds", "2",
                                   "--set", "model.dim=4", "--out", str(tmp_path / "runs")])  # fmt: skip
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "runs").iterdir()
    assert load_config(run / "config.yaml").data.dataset == str(tmp_path / "here" / "rel.inter")
    monkeypatch.chdir(tmp_path)
    assert evaluate_run(run)["metrics"]
