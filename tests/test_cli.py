"""The fedrec command: JSON outputs, run directories, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.defenses import DEFENSES

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_stats_json_has_the_embedded_ml100k_row():
    res = invoke("data", "stats", "ml100k", "--json")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)["datasets"]
    assert (row["users"], row["items"], row["interactions"]) == (943, 1682, 100000)
    assert row["matches_paper"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("train", "--dataset", "movielens-1m", "--epochs", "1"), "movielens-1m"),
        (("train", "--dataset", "ml100k", "--set", "train.nope=1"), "unknown config key 'train.nope'"),
        (("train", "--dataset", "ml100k", "--mode", "sideways"), "train.mode='sideways'"),
        (("train", "--config", "no/such.yaml"), "no/such.yaml: config file not found"),
        (("data", "download", "nope"), "nope"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    res = invoke(*args, *(("--out", str(tmp_path)) if args[0] == "train" else ()))
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.output


def test_bad_data_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id:token\n1\t2\n3\tx3\t\n")
    res = invoke(
        "train", "--dataset", str(bad), "--mode", "centralized", "--model", "pop", "--out", str(tmp_path)
    )
    assert res.exit_code == 2
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert f"{bad}:3" in line


def test_centralized_pop_run_writes_a_run_directory(tmp_path):
    res = invoke(
        "train",
        "--dataset",
        "ml100k",
        "--mode",
        "centralized",
        "--model",
        "pop",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    run_dir = tmp_path / summary["run_dir"].split("/")[-1]
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.parquet", "summary.json"}
    m = pd.read_parquet(run_dir / "metrics.parquet")
    p5 = m[(m.metric == "precision") & (m.k == 5)].value.iloc[-1]
    assert p5 == pytest.approx(summary["metrics"]["precision"]["5"])
    report = invoke("report", str(run_dir), "--markdown")
    assert report.exit_code == 0 and "| ml100k | pop | centralized |" in report.stdout


def test_federated_run_and_resume(tmp_path):
    args = ["train", "--dataset", "ml100k", "--mode", "federated", "--rounds", "6", "--out", str(tmp_path)]
    args += ["--set", "federated.eval_every=3", "--set", "model.dim=8", "--json"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rounds"] == 6 and summary["clients_per_round"] == 9
    run_dir = tmp_path / summary["run_dir"].split("/")[-1]
    rounds = pd.read_parquet(run_dir / "rounds.parquet")
    assert len(rounds) == 6 * 9 and rounds.accepted.all()
    again = invoke("train", "--resume", str(run_dir), "--json")  # already finished: re-evaluates only
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["metrics"] == summary["metrics"]


def test_defenses_and_attacks_are_listed():
    d = json.loads(invoke("defenses", "--json").stdout)["defenses"]
    names = {x["name"]: x for x in d}
    assert names["a-rfrs"]["space"] == "gradient" and names["krum"]["space"] == "theta"
    from fedrec.attacks import ATTACKS

    a = {x["name"] for x in json.loads(invoke("attacks", "--json").stdout)["attacks"]}
    assert a == set(ATTACKS) and set(names) == set(DEFENSES)


def test_demo_camouflage_shows_theta_equal_and_gradients_apart():
    res = invoke("demo", "camouflage", "--rounds", "2", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)["round"]
    assert r["max_abs_theta_difference"] < 1e-5
    assert r["gradient_distance"] > 10 * r["honest_gradient_norm"]
    assert r["kept"]["none"]["byzantine_kept"] == r["byzantine"] > 0
    assert r["kept"]["a-rfrs"]["byzantine_kept"] == 0
    # the l-infinity variant rejects only the forged uploads: every honest one is kept
    linf = r["kept"]["a-rfrs-linf"]
    assert linf["byzantine_kept"] == 0 and linf["honest_kept"] == r["clients"] - r["byzantine"]
    # the verdict: one claim per finding, each decided by the figures it prints; the round-level ones
    # hold after two rounds already, the run-level ones are present with their rates
    res_json = json.loads(res.stdout)
    claims = {c["claim"].split(":")[0]: c for c in res_json["verdict"]}
    assert claims["theta equal"]["holds"] and claims["gradients apart"]["holds"]
    assert {"parameter Krum keeps them", "A-RFRS (gradient Krum) rejects them"} <= set(claims)
    assert set(res_json["runs"]) == {"clean", "none", "krum", "a-rfrs"}
    assert res_json["runs"]["clean"]["byzantine_rejected"] is None  # no Byzantine client: null, not NaN
    assert "Verdict" in invoke("demo", "camouflage", "--rounds", "2").stdout


def test_train_reports_what_the_attack_forged(tmp_path):
    args = ["train", "--dataset", "ml100k", "--mode", "federated", "--rounds", "4", "--out", str(tmp_path)]
    args += ["--attack", "gradient-ascent", "--byzantine", "0.4", "--defense", "a-rfrs-outliers"]
    res = invoke(*args, "--set", "federated.eval_every=4", "--set", "model.dim=8")
    assert res.exit_code == 0, res.output
    assert "defense a-rfrs-outliers vs gradient-ascent" in res.stdout
    # gradient ascent forges 2 |g| >= |g| on every Byzantine upload: all of them are substantial
    summary = json.loads(
        invoke(*args, "--set", "federated.eval_every=4", "--set", "model.dim=8", "--json").stdout
    )
    a = summary["detection"]["all_rounds"]
    assert a["substantial_byzantine"] == a["byzantine"] > 0
    assert "share of the forged gradient" in res.stdout


@pytest.mark.parametrize("where", ["--data-dir", "--dataset", "--out"])
def test_an_overlong_path_name_was_a_traceback(where, tmp_path):
    """A 300-character name: OSError [Errno 36] File name too long, with a traceback (only
    FileNotFoundError was caught); now one line naming the path, exit 2."""
    long = str(tmp_path / ("a" * 300))
    given = {"--data-dir": long, "--dataset": "ml100k", "--out": str(tmp_path)}
    if where == "--dataset":
        given["--dataset"] = long + ".inter"
    elif where == "--out":
        given["--out"], given["--data-dir"] = long, None
    args = [a for k, v in given.items() if v is not None for a in (k, v)]
    res = invoke("train", *args, "--mode", "centralized", "--model", "pop")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "File name too long" in lines[0] and "a" * 300 in lines[0], res.stderr
    assert "Traceback" not in res.output


def test_a_threshold_that_leaves_no_interaction_made_a_run_folder_then_crashed(tmp_path):
    """rating_threshold above every rating: a RuntimeError traceback in the recorder, after the run
    folder was made; now one line from the loader and no run folder."""
    out = tmp_path / "runs"
    res = invoke("train", "--dataset", "ml100k", "--mode", "federated", "--rounds", "2",
                 "--set", "data.rating_threshold=10", "--out", str(out))  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("INFO")]
    assert len(lines) == 1 and "no interactions left after rating_threshold=10" in lines[0], res.stderr
    assert not out.exists()


def test_report_of_a_summary_nested_past_the_parser_was_a_traceback(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("[" * 100_000 + "]" * 100_000)
    res = invoke("report", str(run))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"skipped {run / 'summary.json'}: not valid JSON (nested too deep)" in res.stderr


@pytest.mark.parametrize("mode", ["federated", "centralized"])
def test_a_catalog_smaller_than_the_largest_k_failed_after_the_run_folder(tmp_path, mode):
    """Four items and the default K up to 20: full ranking failed at the first evaluation, after the
    run directory was made; now one line naming eval.ks, exit 2, and no run directory."""
    data = tmp_path / "citeulike-a"
    data.mkdir()
    (data / "users.dat").write_text("2 0 1\n2 2 3\n3 0 1 2\n")
    out = tmp_path / "runs"
    length = ["--rounds", "2"] if mode == "federated" else ["--set", "centralized.epochs=1"]
    res = invoke(
        "train", "--dataset", "citeulike-a", "--data-dir", str(tmp_path), "--mode", mode, *length,
        "--out", str(out),
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "eval.ks" in res.output and "4 items" in res.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["plot", "fig1", "--round", "100000000000"], "--round 100000000000"),
        (["plot", "fig1", "--seed", "-1"], "--seed -1"),
        (["data", "download", "ml100k", "--cache-dir", "FILE"], "not a folder"),
    ],
    ids=["fig1 round 1e11", "fig1 negative seed", "cache-dir a file"],
)
def test_minor_options_that_crashed(tmp_path, args, needle):
    """plot fig1 --round 1e11 asked for 800 GB, --seed -1 was accepted (train refuses it), a --cache-dir
    that is a file gave a FileExistsError traceback: one line each, exit 2, nothing downloaded."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    res = invoke(
        *[str(a_file) if x == "FILE" else x for x in args],
        *(["--out", str(tmp_path)] if args[0] == "plot" else []),
    )
    assert res.exit_code == 2, res.output
    assert needle in res.output
