"""Run directories (issue 9 item 7): a run never lands outside --out, and concurrent starts never
collide."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import ConfigError, load_config
from fedrec.runs import new_run_dir

UNSAFE_NAMES = ["../../x", "../x", "..", "/abs/path", "a/b", "a\\b", "", "   "]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_run_name_with_a_path_wrote_outside_out(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^run\.name="):
        load_config(None, [f"run.name={name!r}"])


@pytest.mark.parametrize("name", ["../../x", "ABSOLUTE"])
def test_new_run_dir_followed_a_path_in_its_name(tmp_path: Path, name: str) -> None:
    out = tmp_path / "a" / "b" / "out"
    if name == "ABSOLUTE":  # inside tmp_path, so the old code's escape stays in the test's folder
        name = str(tmp_path / "escape")
    with pytest.raises(ValueError, match=r"^run\.name="):
        new_run_dir(out, name)
    assert list(tmp_path.iterdir()) == []  # nothing created, inside --out or outside it


def test_cli_run_name_escape_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    args = ["train", "--dataset", "ml100k", "--mode", "centralized", "--model", "pop", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--set", "run.name=../../x"])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "run.name='../../x'" in lines[0], res.stderr
    assert not any(tmp_path.rglob("x-*")) and not out.exists()


def test_concurrent_new_run_dir_raised_file_exists(tmp_path: Path, monkeypatch) -> None:
    """256 threads start a run of the same name in the same second (the clock is pinned): each gets
    its own fresh directory. exists()-then-mkdir let two threads pick the same path."""
    n = 256
    monkeypatch.setattr("fedrec.runs.time.strftime", lambda fmt: "20260101-000000")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: widen any race window
    barrier = threading.Barrier(n)

    def start(_: int) -> Path:
        barrier.wait()
        return new_run_dir(tmp_path / "out", "race")

    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            paths = list(pool.map(start, range(n)))
    finally:
        sys.setswitchinterval(old)
    assert len(set(paths)) == n
    assert all(p.is_dir() and p.parent == tmp_path / "out" for p in paths)
    assert len(list((tmp_path / "out").iterdir())) == n


def test_summary_and_json_output_are_strict_json(tmp_path):
    """summary.json and --json wrote Python's NaN token (JSON.parse rejects it) on 4bd84a9."""
    import json
    import math

    import numpy as np

    from fedrec.runs import write_summary

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))

    summary = {"recall": math.nan, "rate": np.float64("inf"), "nested": [np.float32(0.5), {"x": -math.inf}]}
    write_summary(tmp_path, summary)
    back = strict((tmp_path / "summary.json").read_text())
    assert back == {"recall": None, "rate": None, "nested": [0.5, {"x": None}]}
    from fedrec.runs import dumps  # what the CLI's --json prints with

    assert strict(dumps({"a": float("nan")})) == {"a": None}
