"""The thread policy (fedrec/threads.py, issue 14 item 1): one thread unless told otherwise, the
caller's OMP_NUM_THREADS respected, ``auto`` follows the cores other processes leave free."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fedrec import threads as th
from fedrec.config import ConfigError, load_config


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_one_thread_or_the_callers_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    p = th.ThreadPolicy(None)
    assert (p.mode, p.threads, torch.get_num_threads()) == ("fixed", 1, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    p = th.ThreadPolicy(None)
    assert (p.mode, p.threads, torch.get_num_threads()) == ("env", 2, 2)
    p = th.ThreadPolicy("3")  # an explicit run.threads wins over the environment
    assert (p.mode, p.threads, torch.get_num_threads()) == ("fixed", 3, 3)


@pytest.mark.parametrize(
    "others, cores, want",
    [(0.0, 2, 2), (0.2, 2, 2), (0.5, 2, 1), (0.9, 2, 1), (1.0, 2, 1), (3.0, 2, 1), (1.0, 8, 7), (2.6, 8, 5)],
)
def test_choose_uses_the_free_cores_with_a_margin_and_at_least_one(others, cores, want):
    p = th.ThreadPolicy("1")
    p.cores = cores
    assert p.choose(others) == want


def test_auto_drops_to_one_thread_when_another_process_takes_a_core_and_comes_back(monkeypatch):
    """A fake clock and /proc/stat: another process busy on one core for a while, then gone."""
    state = {"wall": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(th, "_busy_seconds", lambda: state["busy"])
    monkeypatch.setattr(th.time, "monotonic", lambda: state["wall"])
    monkeypatch.setattr(th.time, "process_time", lambda: state["own"])
    p = th.ThreadPolicy("auto", interval=1.0)
    p.cores = 2
    assert (p.mode, p.threads) == ("auto", 1)

    def second(others: float, own: float) -> None:
        state["wall"] += 1.0
        state["own"] += own
        state["busy"] += own + others
        p.tick()

    second(others=0.0, own=1.0)  # idle machine: both cores
    assert p.threads == torch.get_num_threads() == 2
    second(others=1.0, own=1.0)  # one busy competitor: back to one thread
    assert p.threads == torch.get_num_threads() == 1
    second(others=0.1, own=1.0)
    assert p.threads == 2
    state["wall"] += 0.5  # no look before the interval has passed
    state["busy"] += 2.0
    p.tick()
    assert p.threads == 2
    assert sum(p.summary()["rounds_at"].values()) == 4


def test_run_threads_is_checked_and_recorded_in_the_summary(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match=r"run\.threads"):
            load_config(None, [f"run.threads={bad}"])
    from typer.testing import CliRunner

    from fedrec.cli import app

    args = ["train", "--dataset", "ml100k", "--rounds", "3", "--out", str(tmp_path), "--json"]
    args += ["--set", "model.dim=4", "--set", "federated.eval_every=3", "--set", "run.threads=2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["threads"] == {
        "policy": "fixed",
        "cores": th.usable_cores(),
        "threads": 2,
        "rounds_at": {"2": 3},
    }


def test_grid_cells_get_one_thread_unless_the_caller_says(monkeypatch):
    from fedrec.experiments.grid import threads_per_job

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads_per_job(j) for j in (1, 2, 4)] == [1, 1, 1]  # never oversubscribes a loaded machine
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert [threads_per_job(j) for j in (1, 2, 4)] == [3, 2, 1]  # asked for, within cores // jobs
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert threads_per_job(1) == 1


@pytest.mark.parametrize("env", ["²", "100000000", "0", "-2", "two"])
def test_an_omp_num_threads_it_cannot_use_means_one_thread(monkeypatch, env):
    """ "²".isdigit() is True and int("²") raises; 10^8 threads would take torch's pool down."""
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    p = th.ThreadPolicy(None)
    assert (p.mode, p.threads, torch.get_num_threads()) == ("fixed", 1, 1)
