"""Issue 13 item 1 (defects 2 and 4): a newcomer's option is never ignored silently. Each case ran, on
4bd84a9, to exit 0 with an option dropped, or crashed with a traceback after the data had loaded; now
the mode follows from the options and a conflict is one line, exit 2, before any data loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.cli import _train_overrides, app
from fedrec.config import ConfigError, load_config


def _one_line_exit_2(args: list[str], needle: str, out: Path | None = None) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "INFO" not in ln]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.output
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), "a run directory was left behind"


def _mode(args: dict, config: Path | None = None) -> str:
    return load_config(config, _train_overrides(args, config)).train.mode


def test_a_federated_option_without_a_config_means_federated() -> None:
    """``fedrec train --dataset lastfm --attack camouflage --byzantine 0.4 --defense a-rfrs --rounds 100``
    trained centralized, attack-free, and exited 0."""
    assert _mode({"attack": "sign-flip", "byzantine": 0.4, "defense": "a-rfrs"}) == "federated"
    assert _mode({"rounds": 10}) == "federated"
    assert _mode({"dataset": "ml100k"}) == "centralized"  # no federated option: the default
    assert _mode({"rounds": 10, "mode": "federated"}) == "federated"


def test_a_config_file_mode_wins_and_a_conflict_is_an_error(tmp_path: Path) -> None:
    cen = tmp_path / "c.yaml"
    cen.write_text("train:\n  mode: centralized\n")
    assert _mode({"dataset": "ml100k"}, cen) == "centralized"
    with pytest.raises(ConfigError, match=r"^--rounds: only federated training reads it"):
        _train_overrides({"rounds": 10}, cen)
    assert _mode({"rounds": 10}, Path("configs/ml100k.yaml")) == "federated"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        # centralized on purpose, with federated options: they were dropped
        (["--mode", "centralized", "--attack", "sign-flip", "--byzantine", "0.4"], "--attack, --byzantine"),
        (["--mode", "centralized", "--rounds", "100"], "--rounds"),
        # an attack without Byzantine clients printed "Byzantine rejected nan%"
        (["--attack", "noise", "--rounds", "2"], "attack.name='noise' with attack.fraction=0.0"),
        (["--byzantine", "0.3", "--rounds", "2"], "attack.fraction=0.3 with attack.name='none'"),
        (["--byzantine", "-0.2", "--attack", "noise", "--rounds", "2"], "attack.fraction=-0.2"),
        # pop trains nothing: --epochs was accepted and ignored
        (["--model", "pop", "--epochs", "3"], "pop"),
    ],
)
def test_options_that_were_ignored_are_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "out"
    _one_line_exit_2(["train", "--dataset", "ml100k", *args, "--out", str(out)], needle, out)


def test_epochs_reach_the_centralized_baselines() -> None:
    """``--epochs`` for recbole-bpr (and implicit-bpr) was ignored: they read their own length keys."""
    cfg = load_config(None, _train_overrides({"model": "recbole-bpr", "epochs": 7}))
    assert cfg.centralized.recbole_epochs == 7
    cfg = load_config(None, _train_overrides({"model": "implicit-bpr", "epochs": 9}))
    assert cfg.centralized.implicit_iterations == 9


def test_resume_takes_no_other_option(tmp_path: Path) -> None:
    """``--resume DIR --rounds 2000`` resumed with the old length and said nothing."""
    _one_line_exit_2(["train", "--resume", str(tmp_path), "--rounds", "2000"], "--rounds cannot change it")


def test_out_that_is_a_file_is_refused_before_the_data_loads(tmp_path: Path) -> None:
    """``--out FILE`` crashed with FileExistsError after the dataset had loaded."""
    f = tmp_path / "a-file"
    f.write_text("")
    _one_line_exit_2(["train", "--dataset", "ml100k", "--rounds", "2", "--out", str(f)], "not a folder")


def test_resuming_a_centralized_run_says_so(tmp_path: Path) -> None:
    """``--resume`` on a centralized run raised KeyError 'state'."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(load_config(None, ["train.mode=centralized"]).to_yaml())
    _one_line_exit_2(["train", "--resume", str(run)], "a centralized run; only federated runs resume")


def test_run_directory_names_say_the_attack_and_the_defense(tmp_path: Path) -> None:
    """Run directories were all ``ml100k-fism-adam-federated-<time>``: a folder of a grid's runs could
    not be told apart without opening each config.yaml."""
    res = CliRunner().invoke(
        app,
        ["train", "--dataset", "ml100k", "--attack", "sign-flip", "--byzantine", "0.4", "--defense", "a-rfrs",
         "--rounds", "1", "--set", "model.dim=4", "--out", str(tmp_path), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (run,) = list(tmp_path.iterdir())
    assert run.name.startswith("ml100k-fism-adam-federated-sign-flip40-a-rfrs-"), run.name


def test_report_skips_unfinished_runs_and_says_so(tmp_path: Path) -> None:
    """``fedrec report runs/* --markdown`` aborted on the first unfinished directory."""
    done = tmp_path / "done"
    res = CliRunner().invoke(app, ["train", "--dataset", "ml100k", "--model", "pop", "--out", str(done)])
    assert res.exit_code == 0, res.output
    (run,) = list(done.iterdir())
    half = tmp_path / "half"
    half.mkdir()
    res = CliRunner().invoke(app, ["report", str(half), str(run), "--markdown"])
    assert res.exit_code == 0, res.output
    assert f"skipped {half}" in res.stderr and "| ml100k | pop | centralized | none | none |" in res.stdout
    res = CliRunner().invoke(app, ["report", str(half)])
    assert res.exit_code == 2 and "no finished run directory" in res.stderr
    testbed = tmp_path / "testbed-run"  # a testbed run's summary has accuracy, not P@K: it crashed report
    testbed.mkdir()
    (testbed / "summary.json").write_text('{"command": "testbed", "final_accuracy": 0.9}')
    res = CliRunner().invoke(app, ["report", str(testbed), str(run)])
    assert res.exit_code == 0 and f"skipped {testbed}" in res.stderr, res.output


def test_report_and_train_show_the_ks_the_run_evaluated(tmp_path: Path) -> None:
    """A run with ``eval.ks=[10,20]``: ``train`` printed an @1..@5 table of nan, ``report`` a KeyError
    '5' traceback (``--markdown``: KeyError '1' after the header rows had gone to stdout)."""
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--dataset",
            "ml100k",
            "--model",
            "pop",
            "--set",
            "eval.ks=[10,20]",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "@10" in res.stdout and "@20" in res.stdout and "@5" not in res.stdout and "nan" not in res.stdout
    (run,) = list(tmp_path.iterdir())
    p10 = f"{json.loads((run / 'summary.json').read_text())['metrics']['precision']['10']:.4f}"
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0 and "P@10" in res.stdout and p10 in res.stdout, res.output
    # next to a run evaluated at 1..5: K = 1..5 as before, and this run's own K too
    other = tmp_path / "k1-5"
    other.mkdir()
    summary = json.loads((run / "summary.json").read_text())
    summary["metrics"] = {m: {str(k): 0.5 for k in range(1, 6)} for m in ("precision", "recall")}
    (other / "summary.json").write_text(json.dumps(summary))
    res = CliRunner().invoke(app, ["report", str(run), str(other), "--markdown"])
    assert res.exit_code == 0, res.output
    head, _, mine, theirs = res.stdout.splitlines()
    assert "| P@1 | P@2 | P@3 | P@4 | P@5 | P@10 | P@20 | R@1 |" in head
    assert f"| – | – | – | – | – | {p10} |" in mine and "| 0.5000 | – | – | 0.5000 |" in theirs


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[1, 2]", "not a run summary (a JSON list, not an object)"),
        ('{"metrics": {"precision": {"5": 0.1}, "recall": {"5": 0.2}}}', "no dataset, model, mode, seconds"),
        ('{"metrics": ', "not valid JSON (Expecting value: line 1 column 13"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        ('{"metrics": {"precision": {"5": "high"}, "recall": {}}}', "precision@5 = 'high' is not a metric"),
    ],
)
def test_report_skips_a_malformed_summary_and_reports_the_rest(
    tmp_path: Path, text: str | bytes, why: str
) -> None:
    """A list summary was an AttributeError, one missing fields a KeyError, a truncated or non-UTF-8 one
    ended the command naming no file, and the good runs were not reported."""
    good = tmp_path / "good"
    good.mkdir()
    (good / "summary.json").write_text(json.dumps({
        "dataset": "ml100k", "model": "pop", "mode": "centralized", "seconds": 1.0,
        "metrics": {m: {str(k): 0.25 for k in range(1, 6)} for m in ("precision", "recall")},
    }))  # fmt: skip
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    for extra in ([], ["--markdown"], ["--json"]):
        res = CliRunner().invoke(app, ["report", str(bad), str(good), *extra])
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert line.startswith(f"skipped {bad / 'summary.json'}: ") and why in line, line
        assert "0.2500" in res.stdout or json.loads(res.stdout)["runs"][0]["run"] == "good"
    res = CliRunner().invoke(app, ["report", str(bad)])
    assert res.exit_code == 2 and "no finished run directory" in res.stderr


def test_attack_listing_shows_the_defaults_a_run_uses() -> None:
    """``fedrec attacks`` showed ``all_rows=True`` for camouflage while runs used False."""
    import json

    from fedrec.federation.simulation import make_attack_from

    res = CliRunner().invoke(app, ["attacks", "--json"])
    listed = {a["name"]: a["params"] for a in json.loads(res.stdout)["attacks"]}
    cfg = load_config(None, ["train.mode=federated", "attack.name=camouflage", "attack.fraction=0.4"])
    assert listed["camouflage"]["all_rows"] is False and make_attack_from(cfg).all_rows is False


def test_progress_reaches_a_non_terminal(tmp_path: Path) -> None:
    """``make demo`` printed nothing while stderr was not a terminal (a pipe, CI, a log file): now a
    plain line per tenth of the run."""
    res = CliRunner().invoke(
        app,
        ["train", "--dataset", "ml100k", "--rounds", "200", "--set", "model.dim=4", "--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("round ")]
    assert [ln.split()[1] for ln in lines] == [f"{t}/200" for t in range(20, 201, 20)], res.stderr
