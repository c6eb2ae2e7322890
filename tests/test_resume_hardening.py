"""``fedrec train --resume`` against crafted, corrupt and mismatched checkpoints, finished runs, and
SIGKILL (issue 9, items 1 and 5): no code runs, every refusal is one line and exit 2 with nothing in
the run directory touched, and a killed run resumes to the uninterrupted run's exact state."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fedrec.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 12-round federated run directory (ML-100K, dim 8)."""
    out = tmp_path_factory.mktemp("runs")
    res = invoke(
        "train", "--dataset", "ml100k", "--mode", "federated", "--rounds", "12", "--device", "cpu",
        "--out", str(out), "--json", "--set", "model.dim=8", "--set", "federated.eval_every=4",
        "--set", "federated.checkpoint_every=4", "--set", "eval.ks=[1,5]",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return Path(json.loads(res.stdout)["run_dir"])


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def load_script(name: str):
    """experiments/NAME.py as a module (registered, so its dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def one_error_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


class _Marker:
    """Unpickling this creates ``path``: what an attacker's checkpoint would do instead."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- item 1: no code runs on resume --------------------------------------------------------------------


def test_crafted_pickle_checkpoint_runs_no_code(run_dir, tmp_path):
    import torch

    marker = tmp_path / "pwned"
    torch.save({"t": 4, "theta": _Marker(marker)}, run_dir / "checkpoint.pt")
    before = snapshot(run_dir)
    res = invoke("train", "--resume", str(run_dir))
    assert not marker.exists(), "unpickling the checkpoint ran code"
    line = one_error_line(res)
    assert "not a fedrec checkpoint" in line
    assert snapshot(run_dir) == before


def test_crafted_payload_under_a_valid_checksum_runs_no_code(run_dir, tmp_path):
    """An attacker who knows the format can compute the checksum; weights_only=True still refuses."""
    from fedrec.config import load_config
    from fedrec.federation.checkpoint import run_identity, save_checkpoint

    marker = tmp_path / "pwned"
    identity = run_identity(load_config(run_dir / "config.yaml"))
    save_checkpoint(run_dir / "checkpoint.pt", {"theta": _Marker(marker)}, identity)
    before = snapshot(run_dir)
    res = invoke("train", "--resume", str(run_dir))
    assert not marker.exists(), "unpickling the checkpoint ran code"
    line = one_error_line(res)
    assert "weights_only=True" in line
    assert snapshot(run_dir) == before


def _nan_theta(sd):
    sd["theta"] = torch.full_like(sd["theta"], float("nan"))


def _negative_v(sd):
    sd["state"]["v"] = -sd["state"]["v"] - 1


def _grad_theta(sd):
    sd["theta"] = torch.nn.Parameter(sd["theta"].clone())


def _garbage_generator(sd):
    sd["sample_gen"] = torch.full_like(sd["sample_gen"], 255)


def _no_records(sd):
    sd["losses"], sd["records"] = None, {}


def _bad_reason(sd):
    sd["records"]["reason"] = torch.full_like(sd["records"]["reason"], 999)


def _huge_theta(sd):  # finite, but the model's scores overflow: every honest upload was non-finite
    sd["theta"] = torch.full_like(sd["theta"], 3e38)


def _huge_m(sd):  # finite, but the next step's bias correction overflows (the same stall)
    sd["state"]["m"] = torch.full_like(sd["state"]["m"], 3.4e38)


def _setter(key, value):
    def set_(sd):
        sd[key] = value

    return set_


@pytest.mark.parametrize(
    ("craft", "needle"),
    [
        (_nan_theta, "theta: values that are not finite"),
        (_negative_v, "state.v: negative values"),
        (_grad_theta, "theta: a Parameter"),
        (_garbage_generator, "sample_gen: not a generator state"),
        (_no_records, "without its round records"),
        (_bad_reason, "records.reason: codes outside"),
        (_setter("metric_rows", [{"x": 1}]), "metric_rows: malformed row"),
        (_setter("metric_rows", [{"t": 0, "metric": "x", "k": 2**80, "value": 1.0}]), "malformed row"),
        (_setter("metric_rows", [{"t": 0, "metric": "x", "k": 1, "value": 2**80}]), "malformed row"),
        (_huge_theta, "theta: values beyond 1e+15"),
        (_huge_m, "tables: values too large to take another step"),
        (_setter("seconds", "abc"), "seconds: 'abc'"),
        (_setter("t", True), "round True outside"),
    ],
    ids=[
        "nan-theta",
        "negative-v",
        "parameter",
        "generator",
        "no-records",
        "reason",
        "metric-row",
        "metric-k-past-int64",
        "metric-value-past-int64",
        "huge-theta",
        "huge-m",
        "clock",
        "bool-t",
    ],
)
def test_crafted_values_under_a_valid_checksum_are_one_line(run_dir, craft, needle):
    """A checkpoint whose checksum, identity and structure match can still carry a NaN model, a negative
    second moment (every honest upload would then fail the rule check for the rest of the run), or
    generator bytes torch refuses: each is refused by name before anything is restored or written."""
    from fedrec.config import load_config
    from fedrec.federation.checkpoint import load_checkpoint, run_identity, save_checkpoint

    (run_dir / "summary.json").unlink()  # a killed run, so resuming would write
    identity = run_identity(load_config(run_dir / "config.yaml"))
    sd = load_checkpoint(run_dir / "checkpoint.pt", identity)
    craft(sd)
    save_checkpoint(run_dir / "checkpoint.pt", sd, identity)
    before = snapshot(run_dir)
    line = one_error_line(invoke("train", "--resume", str(run_dir)))
    assert needle in line and "checkpoint.pt" in line, line
    assert snapshot(run_dir) == before


def test_benign_eval_runs_no_code(run_dir, tmp_path):
    import torch

    benign_eval = load_script("benign_eval")
    marker = tmp_path / "pwned"
    torch.save({"t": 4, "theta": _Marker(marker)}, run_dir / "checkpoint.pt")
    with pytest.raises(Exception) as err:  # any type: the marker is checked first
        benign_eval.main(str(run_dir), 0.4, 0)
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert isinstance(err.value, ValueError) and "weights_only=True" in str(err.value)


def test_legacy_checkpoint_is_readable_for_evaluation_but_not_resumed(run_dir):
    """A bare torch.save checkpoint (fedrec before format 1) has no checksum: benign_eval may read it
    with weights_only=True, a resume refuses it."""
    import torch

    from fedrec.federation.checkpoint import load_checkpoint

    ckpt = run_dir / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    torch.save(state, ckpt)
    assert load_checkpoint(ckpt, legacy=True)["t"] == state["t"] == 12
    assert "not a fedrec checkpoint" in one_error_line(invoke("train", "--resume", str(run_dir)))
    load_script("benign_eval").main(str(run_dir), 0.4, 0)


# -- item 5: resume trusts nothing it finds --------------------------------------------------------------


def _flip64(data: bytes) -> bytes:
    b, rng = bytearray(data), random.Random(0)
    for i in rng.sample(range(len(b) // 10, len(b)), 64):  # past the header: in the state itself
        b[i] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: b"", "empty"),
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:-1], "truncated"),
        (_flip64, "sha256 mismatch"),
    ],
    ids=["empty", "half", "last-byte-missing", "64-flipped-bytes"],
)
def test_corrupt_checkpoint_is_one_line_exit_2_and_touches_nothing(run_dir, damage, needle):
    (run_dir / "summary.json").unlink()  # a killed run, so resuming would write
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    before = snapshot(run_dir)
    line = one_error_line(invoke("train", "--resume", str(run_dir)))
    assert needle in line and "checkpoint.pt" in line
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("key", "value"),
    [("data.dataset", "lastfm"), ("model.dim", 16), ("train.seed", 1), ("data.split_seed", 1)],
)
def test_edited_config_is_refused_naming_the_key(run_dir, key, value):
    (run_dir / "summary.json").unlink()
    doc = yaml.safe_load((run_dir / "config.yaml").read_text())
    section, name = key.split(".")
    doc[section][name] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    before = snapshot(run_dir)
    line = one_error_line(invoke("train", "--resume", str(run_dir)))
    assert "another run" in line and key in line and repr(value) in line
    assert snapshot(run_dir) == before


def test_resuming_a_finished_run_is_a_noop(run_dir):
    before = snapshot(run_dir)
    res = invoke("train", "--resume", str(run_dir))
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "already finished at round 12" in lines[0], res.output
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("text", ["[]", "null", '"x"', "[" * 100_000, "{", "\udcff"])
def test_a_finished_run_with_a_damaged_summary_writes_it_again(run_dir, finished, text):
    """Resuming a finished run whose summary.json was not a JSON object raised AttributeError (or
    RecursionError) with a traceback; the summary comes from the checkpoint, so it is written again."""
    (run_dir / "summary.json").write_text(text, errors="surrogateescape")
    res = invoke("train", "--resume", str(run_dir), "--json")
    assert res.exit_code == 0, res.output
    want = json.loads((finished / "summary.json").read_text())["metrics"]
    assert json.loads((run_dir / "summary.json").read_text())["metrics"] == want


def test_killed_before_summary_finishes_without_duplicate_rows(run_dir, finished):
    (run_dir / "summary.json").unlink()
    (run_dir / "detection.parquet").unlink()
    res = invoke("train", "--resume", str(run_dir), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 12
    for table in ("metrics.parquet", "rounds.parquet", "detection.parquet"):
        assert pd.read_parquet(run_dir / table).equals(pd.read_parquet(finished / table)), table
    want = json.loads((finished / "summary.json").read_text())["metrics"]
    assert json.loads(res.stdout)["metrics"] == want


# -- kill -9 -------------------------------------------------------------------------------------------


def test_sigkill_anywhere_resumes_bit_identical(tmp_path):
    """Two SIGKILLs, one at a random time and one halfway through a checkpoint write, each resumed by
    ``python -m fedrec train --resume``; the short form of experiments/kill_campaign.py."""
    kc = load_script("kill_campaign")
    trials = kc.campaign(tmp_path, kills=2, seed=0, rounds=30, checkpoint_every=4, eval_every=5, dim=8)
    print(kc.table(trials))
    assert any("ckpt write" in t.landed for t in trials), kc.table(trials)
    assert all(t.ok for t in trials), kc.table(trials)


def test_a_checkpoint_with_an_evaluation_at_round_0_resumes():
    """``evaluate()`` before the first round (a notebook's baseline) records metric rows at t = 0."""
    from fedrec.config import Config
    from fedrec.data import split_per_user, synthetic
    from fedrec.federation.simulation import FederatedRun

    cfg = Config()
    cfg.model.dim, cfg.federated.fraction, cfg.federated.rounds = 4, 0.3, 2
    split = split_per_user(synthetic(30, 20, seed=1), seed=0)
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    run.evaluate()
    run.step()
    fresh = FederatedRun.create(cfg, split, torch.device("cpu"))
    fresh.load_state_dict(run.state_dict())
    assert fresh.server.t == 1 and fresh.metric_rows == run.metric_rows


@pytest.mark.parametrize(
    ("craft", "needle"),
    [
        (
            lambda sd: sd["saga"][next(k for k in sd["saga"] if k.startswith("share."))].fill_(float("nan")),
            "saga.share.",
        ),
        (lambda sd: sd["private"]["steps"].fill_(-3), "private.steps: negative"),
        (lambda sd: sd["private"]["u"].fill_(float("inf")), "private.u: values that are not finite"),
    ],
    ids=["nan-saga-share", "negative-mf-steps", "inf-user-vectors"],
)
def test_the_clients_tables_of_a_checkpoint_are_checked_too(craft, needle):
    """MF's private state and the clients' SAGA table are restored from the checkpoint as well: a NaN
    share or a negative step count made the next rounds' honest uploads non-finite."""
    from fedrec.config import Config
    from fedrec.data import split_per_user, synthetic
    from fedrec.federation.checkpoint import CheckpointError
    from fedrec.federation.simulation import FederatedRun

    cfg = Config()
    cfg.model.name, cfg.model.dim = "mf", 4
    cfg.federated.fraction, cfg.federated.rounds, cfg.federated.eval_every = 0.3, 4, 4
    cfg.federated.variance_reduction, cfg.federated.local_batch = "saga", 2
    split = split_per_user(synthetic(30, 20, seed=1), seed=0)
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    for _ in range(2):
        run.step()
    sd = run.state_dict()
    sd = {
        **sd,
        "saga": {k: v.clone() for k, v in sd["saga"].items()},
        "private": {
            "u": sd["private"]["u"].clone(),
            "state": sd["private"]["state"],
            "steps": sd["private"]["steps"].clone(),
        },
    }
    craft(sd)
    fresh = FederatedRun.create(cfg, split, torch.device("cpu"))
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        fresh.load_state_dict(sd)
    assert fresh.server.t == 0
