"""The Flower deployment (issue 12): the upload codec, the ServerApp's handling of replies, and a
Flower simulation that ends where the in-process engine ends.

The first tests run the ClientApp's and the ServerApp's own functions in one process (no Flower
runtime: records are plain objects); ``test_flower_simulation_equals_in_process`` runs Flower's
simulation engine (Ray). The deployment over a SuperLink and SuperNodes is tests/test_flower_deploy.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.federation.simulation import FederatedRun
from fedrec.flower.client_app import Node, node_round, node_users
from fedrec.flower.codec import (
    STYPE,
    UPLOAD,
    Undecodable,
    decode_batch,
    decode_reply,
    encode_batch,
    encode_state,
    encode_upload,
    to_array,
)
from fedrec.flower.server_app import Reply, round_from_replies
from fedrec.flower.settings import config_from_yaml, from_run_config
from fedrec.protocol import REASONS, Upload, UploadBatch

STATE_NAMES = ("m", "v")


def _batch(seed: int, n: int = 3, d: int = 4, dtype=torch.float32) -> UploadBatch:
    g = torch.Generator().manual_seed(seed)
    ups = []
    for i in range(n):
        k = int(torch.randint(0, 6, (1,), generator=g))
        rows = torch.randperm(20, generator=g)[:k].sort().values
        ups.append(
            Upload(
                client_id=10 * i + 1, rows=rows, theta=torch.randn(k, d, generator=g, dtype=dtype),
                state={s: torch.randn(k, d, generator=g, dtype=dtype) for s in STATE_NAMES}, n_examples=k + 1,
            )
        )  # fmt: skip
    return UploadBatch.from_uploads(ups, d, STATE_NAMES)


def _same(a: UploadBatch, b: UploadBatch) -> None:
    for k in ("client_ids", "ptr", "rows", "n_examples", "theta"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and torch.equal(x, y), k
    for k in STATE_NAMES:
        assert a.state[k].dtype == b.state[k].dtype and torch.equal(a.state[k], b.state[k]), k


# -- codec ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_codec_round_trip_is_exact(seed, dtype):
    batch = _batch(seed, dtype=dtype)
    back = decode_reply(RecordDict({UPLOAD: encode_batch(batch)}), STATE_NAMES)
    assert isinstance(back, UploadBatch)
    _same(batch, back)
    one = batch.upload(1)
    back1 = decode_batch(encode_upload(one), STATE_NAMES)
    _same(UploadBatch.from_uploads([one], 4, STATE_NAMES), back1)


def test_codec_decodes_without_copying():
    """The decoded tensors are views of the record's bytes: the only copy is the serialization."""
    rec = encode_batch(_batch(0, n=2, d=8))
    back = decode_batch(rec, STATE_NAMES)
    for key in ("theta", "m", "rows"):
        buf = np.frombuffer(rec[key].data, dtype=np.uint8)
        x = back.theta if key == "theta" else back.state[key] if key in STATE_NAMES else back.rows
        assert x.data_ptr() == buf.ctypes.data, key
    assert rec["theta"].stype == STYPE and rec["theta"].dtype == "float32"


def test_an_array_over_a_memoryview_of_items_is_sized_in_bytes():
    """In process an Array's data may be a memoryview whose items are not bytes (``len`` counts items):
    the size check reads bytes, so the same values decode as from ``bytes``."""
    from fedrec.flower.codec import from_array

    x = np.arange(12, dtype="<f4").reshape(3, 4)
    arr = _raw("float32", (3, 4), x.tobytes())
    arr.data = memoryview(x)  # Flower's constructor takes bytes; the field itself holds anything
    got = from_array(arr, ("float32",), 2)
    assert isinstance(got, torch.Tensor) and torch.equal(got, torch.from_numpy(x))


def _raw(dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    return Array(dtype=dtype, shape=shape, stype=STYPE, data=data)


def _malformed() -> dict[str, object]:
    good = encode_batch(_batch(1))
    cases: dict[str, object] = {}

    def edit(name: str, key: str, arr: Array | None) -> None:
        d = dict(good.items())
        if arr is None:
            del d[key]
        else:
            d[key] = arr
        cases[name] = ArrayRecord(d)

    edit("missing theta", "theta", None)
    edit("rows as int32", "rows", _raw("int32", (3,), b"\0" * 12))
    edit("theta as float16", "theta", _raw("float16", (1, 4), b"\0" * 8))
    edit("theta 1-D", "theta", _raw("float32", (4,), b"\0" * 16))
    edit("one byte short", "m", _raw("float32", (2, 4), b"\0" * 31))
    edit("huge claimed shape", "v", _raw("float32", (2**40, 2**20), b"\0" * 16))
    edit("numpy stype", "rows", Array(np.arange(3, dtype=np.int64)))
    edit("object dtype", "ptr", _raw("object", (1,), b"\0" * 8))
    extra = dict(good.items())
    extra["payload"] = _raw("float32", (1,), b"\0" * 4)
    cases["extra key"] = ArrayRecord(extra)
    cases["not a record"] = {"theta": 1}
    cases["config record"] = ConfigRecord({"theta": 1})
    cases["None"] = None
    return cases


@pytest.mark.parametrize("name", list(_malformed()))
def test_malformed_records_are_undecodable_with_a_reason(name):
    got = decode_batch(_malformed()[name], STATE_NAMES)
    assert isinstance(got, Undecodable) and got.why, name
    assert isinstance(decode_reply(RecordDict(), STATE_NAMES), Undecodable)
    assert isinstance(decode_reply("junk", STATE_NAMES), Undecodable)


KEYS = ["client_ids", "ptr", "rows", "n_examples", "theta", "m", "v", "x"]
DTYPES = ["int64", "float32", "float64", "int32", "float16", "uint8", "bool", "complex64", "<f4", ">f8", ""]


@st.composite
def arrays(draw) -> Array:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    size = math.prod(shape) * (np.dtype(dtype).itemsize if dtype in DTYPES[:-1] else 1)
    n = draw(st.sampled_from([size, size, max(0, size - 1), size + 3]))
    return _raw(dtype, shape, draw(st.binary(min_size=n, max_size=n)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), arrays(), max_size=8))
def test_fuzzed_records_never_raise(record):
    got = decode_batch(ArrayRecord(record), STATE_NAMES)
    assert isinstance(got, Undecodable | UploadBatch)


# -- the ServerApp's reply handling with the ClientApp's step, in one process -----------------------


def _cfg(attack: str, fraction: float = 0.25) -> Config:
    cfg = Config()
    cfg.train.mode, cfg.train.lr, cfg.model.dim = "federated", 0.01, 8
    cfg.federated.fraction, cfg.federated.rounds, cfg.federated.client_rng = 0.2, 8, "per-client"
    cfg.federated.eval_every = cfg.federated.checkpoint_every = 4
    cfg.attack.name, cfg.attack.fraction = attack, fraction if attack != "none" else 0.0
    cfg.defense.name, cfg.run.device, cfg.eval.ks = "a-rfrs", "cpu", [1, 5]
    return cfg


SPLIT = split_per_user(synthetic(60, 40, seed=3), seed=0)


def _nodes(cfg: Config, parts: int) -> list[Node]:
    out = []
    for pid in range(parts):
        run = FederatedRun.create(cfg, SPLIT, torch.device("cpu"))
        out.append(Node(run, node_users(run.byzantine, pid, parts)))
    return out


def local_collector(nodes: list[Node], tamper=None):
    """The ServerApp's collector with the transport replaced by direct calls of the ClientApp's step:
    the same encode -> node_round -> decode -> round_from_replies path, without Flower's runtime."""

    def collect(run, t, clients, byz):
        state = encode_state(run.server)
        replies = []
        for i, node in enumerate(nodes):
            asked = clients[torch.isin(clients, node.users)]
            if asked.numel():
                rnd = ConfigRecord({"t": t, "clients": asked.tolist(), "round-clients": clients.tolist()})
                replies.append(Reply(i, asked, node_round(node, t, asked, state, rnd)))
        if tamper is not None:
            replies = tamper(t, replies)
        return round_from_replies(run, clients, byz, replies)

    return collect


def _run(cfg: Config, collector=None) -> FederatedRun:
    run = FederatedRun.create(cfg, SPLIT, torch.device("cpu"))
    run.collector = collector
    run.run()
    return run


@pytest.mark.parametrize(
    "attack", ["alie", "camouflage", "label-flip", "noise", "spattack-o", "mixtailor-adaptive", "none"]
)
def test_client_app_step_through_the_codec_equals_in_process(attack):
    """Any attack (omniscient, rule-breaking, label-flip, none): the ClientApp's step on 3 nodes
    through the codec ends where the in-process loop ends, with the same records."""
    cfg = _cfg(attack)
    ref = _run(cfg)
    got = _run(cfg, local_collector(_nodes(cfg, 3)))
    assert torch.allclose(got.server.theta, ref.server.theta, rtol=1e-5, atol=1e-6)
    for k in ref.server.state:
        assert torch.allclose(got.server.state[k], ref.server.state[k], rtol=1e-5, atol=1e-7), k
    a, b = got.rounds_frame(), ref.rounds_frame()
    for col in ("client_id", "byzantine", "accepted", "reason"):
        assert a[col].equals(b[col]), col
    for col in ("grad_norm", "forged", "weight"):
        assert np.allclose(a[col], b[col], rtol=1e-5, atol=1e-6, equal_nan=True), col
    assert torch.allclose(got.losses, ref.losses, rtol=1e-5)
    if attack != "none":
        assert a.byzantine.any() and (a.reason == "filtered").any()  # the test has something to show


@pytest.mark.parametrize("fixed", [False, True], ids=["fresh-negatives", "fixed-negatives"])
def test_local_mini_batches_on_nodes_equal_in_process(fixed):
    """``federated.local_batch`` (and ``fixed_negatives``) on Flower: each client's batch is keyed by
    (seed, round, client), so 3 nodes holding parts of the clients draw what the in-process loop draws;
    label-flip's inverted loss follows the same batches."""
    cfg = _cfg("label-flip")
    cfg.federated.local_batch, cfg.federated.fixed_negatives = 3, fixed
    ref = _run(cfg)
    got = _run(cfg, local_collector(_nodes(cfg, 3)))
    assert torch.allclose(got.server.theta, ref.server.theta, rtol=1e-5, atol=1e-6)
    for k in ref.server.state:
        assert torch.allclose(got.server.state[k], ref.server.state[k], rtol=1e-5, atol=1e-7), k
    assert got.rounds_frame()["accepted"].equals(ref.rounds_frame()["accepted"])
    plain = _cfg("label-flip")
    assert not torch.allclose(_run(plain).server.theta, ref.server.theta)  # the batches mattered


def _reasons(run: FederatedRun) -> list[str]:
    return run.rounds_frame().reason.astype(str).tolist()


def test_bad_replies_are_rejected_with_their_reason_and_the_round_goes_on():
    """Per round one node's reply is replaced: garbage (undecodable), an error, nothing (no reply), or
    an upload speaking for another node's client. Its clients get that reason, no other client is
    touched, and the state is what the remaining replies give (the same whatever the fault)."""
    cfg = _cfg("none")
    cfg.federated.rounds = 4
    faults = {
        "undecodable": lambda r: Reply(
            r.node, r.asked, RecordDict({UPLOAD: ArrayRecord({"x": to_array(torch.ones(2))})})
        ),
        "node-error": lambda r: Reply(r.node, r.asked, error="ClientApp raised"),
        "no-reply": lambda r: Reply(r.node, r.asked),
    }
    states = {}
    for reason, fault in faults.items():

        def tamper(t, replies, fault=fault):
            return [fault(r) if r.node == 0 else r for r in replies]

        run = _run(cfg, local_collector(_nodes(cfg, 3), tamper))
        frame = run.rounds_frame()
        node0 = set(node_users(run.byzantine, 0, 3).tolist())
        on0 = frame.client_id.isin(node0)
        assert (frame.reason[on0].astype(str) == reason).all() and on0.any()
        assert (frame.reason[~on0].astype(str) == "").all() and frame.accepted[~on0].all()
        assert torch.isfinite(run.server.theta).all()
        states[reason] = run.server.theta
    assert torch.equal(states["undecodable"], states["node-error"])
    assert torch.equal(states["undecodable"], states["no-reply"])

    # node 1 also answers for node 0's clients with copies of its own uploads: refused, never admitted
    def impersonate(t, replies):
        r0 = next((r for r in replies if r.node == 0), None)
        r1 = next((r for r in replies if r.node == 1), None)
        if r0 is None or r1 is None:
            return [Reply(0, r.asked) if r.node == 0 else r for r in replies]
        batch = decode_reply(r1.content, STATE_NAMES)
        fake = batch.take(torch.zeros(r0.asked.shape[0], dtype=torch.int64))
        fake.client_ids = r0.asked.clone()
        both = RecordDict({UPLOAD: encode_batch(batch.cat(fake))})
        swap = {0: Reply(0, r0.asked), 1: Reply(1, r1.asked, both)}
        return [swap.get(r.node, r) for r in replies]

    run = _run(cfg, local_collector(_nodes(cfg, 3), impersonate))
    assert run.refused_counts().get("client-id", 0) > 0
    assert set(_reasons(run)) <= {"", "no-reply"}
    assert torch.equal(run.server.theta, states["no-reply"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), arrays(), max_size=8), st.integers(0, 2))
def test_fuzzed_replies_never_crash_the_server_or_touch_other_clients(record, node):
    cfg = _cfg("none")
    cfg.federated.rounds = 1
    nodes = _nodes(cfg, 3)
    ref = _run(
        cfg,
        local_collector(nodes, lambda t, rs: [Reply(r.node, r.asked) if r.node == node else r for r in rs]),
    )

    def tamper(t, replies):
        return [
            Reply(r.node, r.asked, RecordDict({UPLOAD: ArrayRecord(record)})) if r.node == node else r
            for r in replies
        ]

    run = _run(cfg, local_collector(nodes, tamper))
    assert torch.isfinite(run.server.theta).all()
    frame = run.rounds_frame()
    mine = frame.client_id.isin(node_users(run.byzantine, node, 3).tolist())
    assert frame.accepted[~mine].all()
    assert not frame.accepted[mine].any()
    assert torch.equal(run.server.theta, ref.server.theta)


def test_partitions_cover_every_user_once_with_the_coalition_last():
    byz = torch.zeros(50, dtype=torch.bool)
    byz[torch.tensor([3, 7, 20, 41])] = True
    for parts in (1, 2, 3, 5):
        held = torch.cat([node_users(byz, p, parts) for p in range(parts)])
        assert torch.equal(held.sort().values, torch.arange(50))
        if parts > 1:
            assert torch.equal(node_users(byz, parts - 1, parts), torch.tensor([3, 7, 20, 41]))
    with pytest.raises(ValueError):
        node_users(byz, 3, 3)


def test_run_config_maps_to_fedrec_keys():
    cfg, opts = from_run_config(
        {"federated.rounds": 7, "attack.name": "noise", "attack.fraction": 0.2, "attack.params.sigma": 2.0,
         "defense.name": "a-rfrs", "eval.ks": "1,5", "flower.round-timeout": 3.5, "flower.min-nodes": 2}
    )  # fmt: skip
    assert opts.partitions == 2  # num-partitions defaults to min-nodes
    assert from_run_config({"flower.min-nodes": 2, "flower.num-partitions": 5})[1].partitions == 5
    assert cfg.federated.rounds == 7 and cfg.attack.params == {"sigma": 2.0} and cfg.eval.ks == [1, 5]
    assert cfg.train.mode == "federated" and cfg.federated.client_rng == "per-client"
    assert opts.round_timeout == 3.5 and opts.min_nodes == 2
    back = config_from_yaml(cfg.to_yaml(), {"data.data_dir": "/nowhere"})
    assert back.to_dict() | {"data": {}, "run": {}} == cfg.to_dict() | {"data": {}, "run": {}}
    for bad in (
        {"federated.nope": 1},
        {"flower.nope": 1},
        {"other": 1},
        {"flower.round-timeout": -1},
        {"flower.num-partitions": -1},
    ):
        with pytest.raises(ValueError):
            from_run_config(bad)
    with pytest.raises(ValueError, match="may set only"):
        config_from_yaml(cfg.to_yaml(), {"train.lr": 1.0})


def test_reasons_are_appended_not_moved():
    assert REASONS.index("missing") == 13 and REASONS[-3:] == ("no-reply", "node-error", "undecodable")


# -- Flower's simulation engine ---------------------------------------------------------------------


def flower_run_config(out_dir, rounds: int, attack: str = "alie") -> dict:
    return {
        "data.dataset": "ml100k", "model.dim": 8, "train.lr": 0.01, "federated.fraction": 0.01,
        "federated.rounds": rounds, "federated.eval_every": 5, "federated.checkpoint_every": 5,
        "attack.name": attack, "attack.fraction": 0.2, "defense.name": "a-rfrs", "eval.ks": "1,5",
        "run.out_dir": str(out_dir), "run.device": "cpu", "flower.min-nodes": 3, "flower.round-timeout": 120,
    }  # fmt: skip


def test_flower_simulation_equals_in_process(tmp_path, monkeypatch):
    """A Flower simulation (3 SuperNodes: two honest, one the Byzantine coalition running ALIE, an
    omniscient attack; A-RFRS on the server) ends with the in-process run's theta, m, v, accepted sets
    and reasons, and writes the same run directory as ``fedrec train``."""
    import pandas as pd

    from fedrec.federation.checkpoint import load_checkpoint
    from fedrec.federation.runner import prepare_federated
    from fedrec.flower.simulate import simulate

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    # parity, not timing: on a machine busy with other jobs a node's first reply (worker start-up,
    # imports) can pass 120 s, and a no-reply round is a different round
    rc = {**flower_run_config(tmp_path / "flower", rounds=5), "flower.round-timeout": 600}
    got = simulate(rc, num_supernodes=3)
    run_dir = got["run_dir"]
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml", "rounds.parquet", "metrics.parquet", "checkpoint.pt", "summary.json", "detection.parquet"
    }  # fmt: skip
    cfg, _ = from_run_config(rc)
    ref = prepare_federated(cfg)
    ref.run()
    sd = load_checkpoint(run_dir / "checkpoint.pt")
    assert sd["t"] == 5
    assert torch.allclose(sd["theta"], ref.server.theta, rtol=1e-5, atol=1e-6)
    for k, v in ref.server.state.items():
        assert torch.allclose(sd["state"][k], v, rtol=1e-5, atol=1e-7), k
    flower, inproc = pd.read_parquet(run_dir / "rounds.parquet"), ref.rounds_frame()
    for col in ("client_id", "byzantine", "accepted"):
        assert flower[col].equals(inproc[col]), col
    assert flower.reason.astype(str).equals(inproc.reason.astype(str))
    assert flower.byzantine.any() and (flower.reason == "filtered").any()
    ref_metrics = ref.evaluate().metrics
    for m, by_k in ref_metrics.items():
        assert got["summary"]["metrics"][m] == pytest.approx({str(k): v for k, v in by_k.items()}, rel=1e-4)
    assert len(got["traffic"]) == 5 and all(tr.up > 0 and tr.down > 0 for tr in got["traffic"])


def test_a_run_stopped_mid_way_resumes_from_its_checkpoint(tmp_path):
    """The ServerApp's path (``run_federated`` / ``resume_federated`` with a node collector, what
    ``flower.resume`` runs): a run whose server dies in round 7 resumes from its round-6 checkpoint
    (a node that timed out in round 3 is in the records) and ends where an unbroken run ends."""
    from fedrec.federation.runner import prepare_federated, resume_federated, run_federated

    cfg, _ = from_run_config(
        {"data.dataset": "ml100k", "model.dim": 8, "federated.fraction": 0.01, "federated.rounds": 9,
         "federated.eval_every": 3, "federated.checkpoint_every": 3, "attack.name": "sign-flip",
         "attack.fraction": 0.2, "defense.name": "a-rfrs", "eval.ks": "1,5", "run.device": "cpu",
         "run.out_dir": str(tmp_path)}
    )  # fmt: skip
    base = prepare_federated(cfg)
    nodes = [Node(base, node_users(base.byzantine, p, 3)) for p in range(3)]

    class ServerDied(Exception):
        pass

    def faults(t, replies, die_at=None):
        if t == die_at:
            raise ServerDied
        return [Reply(r.node, r.asked) if (t == 3 and r.node == 0) else r for r in replies]

    _, whole_dir = run_federated(cfg, collector=local_collector(nodes, faults))
    with pytest.raises(ServerDied):
        run_federated(cfg, collector=local_collector(nodes, lambda t, rs: faults(t, rs, die_at=7)))
    (broken,) = [p for p in tmp_path.iterdir() if p != whole_dir]
    assert not (broken / "summary.json").exists()
    summary, _ = resume_federated(broken, collector=local_collector(nodes, faults))
    assert summary["rounds"] == 9
    from fedrec.federation.checkpoint import load_checkpoint

    a, b = load_checkpoint(broken / "checkpoint.pt"), load_checkpoint(whole_dir / "checkpoint.pt")
    assert torch.equal(a["theta"], b["theta"]) and all(
        torch.equal(a["state"][k], b["state"][k]) for k in b["state"]
    )
    import pandas as pd

    ra, rb = pd.read_parquet(broken / "rounds.parquet"), pd.read_parquet(whole_dir / "rounds.parquet")
    assert ra.equals(rb)
    assert (ra[ra.t == 3].reason.astype(str) == "no-reply").any()


class _UntouchedGrid:
    """A Grid that must not be used: a refused run fails before it waits for any node."""

    def get_node_ids(self):
        raise AssertionError("serve waited for nodes before refusing the run")

    send_and_receive = get_node_ids


@pytest.mark.parametrize(("key", "value"), [("model.name", "mf"), ("federated.client_rng", "shared")])
def test_resume_refuses_a_run_a_flower_run_could_not_have_been(tmp_path, key, value):
    """``flower.resume`` checks the resumed run's config.yaml (not the run config, which is FISM and
    per-client here): an MF run, or one begun in-process with shared draws, is refused naming the key."""
    from fedrec.config import ConfigError
    from fedrec.flower.server_app import serve
    from fedrec.flower.settings import FlowerOptions
    from fedrec.runs import write_config

    cfg, _ = from_run_config({"run.out_dir": str(tmp_path)})
    resumed, _ = from_run_config({"run.out_dir": str(tmp_path)})
    resumed.set(key, value)
    write_config(tmp_path, resumed.to_yaml())
    assert cfg.model.name == "fism" and cfg.federated.client_rng == "per-client"
    with pytest.raises(ConfigError, match=re.escape(f"config.yaml has {key}={value!r}")):
        serve(_UntouchedGrid(), cfg, FlowerOptions(resume=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"flower\.resume"):
        serve(_UntouchedGrid(), cfg, FlowerOptions(resume=str(tmp_path / "nowhere")))


def test_local_deployment_never_deletes_a_folder_it_did_not_make(tmp_path):
    """``python -m fedrec.flower.local --dir D``: a D that holds anything but lacks the tool's marker is
    refused (one line, non-zero exit, nothing touched, nothing started); in a marked D only what the
    tool made is cleared, never ``runs/`` (what ``flower.resume`` continues from)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import fedrec
    from fedrec.flower.local import MARKER, prepare_dir

    theirs = tmp_path / "checkout"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    env = {**os.environ, "PYTHONPATH": str(Path(fedrec.__file__).parents[1])}  # this checkout's fedrec
    res = subprocess.run(
        # --insecure, --timeout: should the refusal ever break, what starts is quick and torn down
        [sys.executable, "-m", "fedrec.flower.local", "--dir", str(theirs), "--insecure", "--timeout", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert res.returncode != 0 and res.stderr.count("\n") == 1 and MARKER in res.stderr, res.stderr
    assert sorted(p.name for p in theirs.iterdir()) == ["thesis.tex"]
    with pytest.raises(ValueError, match="not a directory"):
        prepare_dir(theirs / "thesis.tex")

    ours = tmp_path / "fresh" / "deep"
    prepare_dir(ours)  # a new folder is made and marked
    assert [p.name for p in ours.iterdir()] == [MARKER]
    for d in ("flwr-home", "certs", "runs/fism-20250101-000000"):
        (ours / d).mkdir(parents=True)
        (ours / d / "f").write_text("x")
    for f in ("state.db", "state.db-wal", "superlink.log", "node0.log", "node0", "node0.pub", "notes.txt"):
        (ours / f).write_text("x")
    prepare_dir(ours)
    assert sorted(p.name for p in ours.iterdir()) == [MARKER, "notes.txt", "runs"]
    assert (ours / "runs" / "fism-20250101-000000" / "f").read_text() == "x"


class _ClaimGrid:
    """The transport of the handshake without Flower's runtime: ``live`` node ids, each answering a
    query with its ``claims`` entry (records, as the ClientApp's ``query`` builds them, or anything)."""

    def __init__(self, claims: dict[int, object]) -> None:
        self.claims = claims
        self.live: set[int] = set()
        self.asked: list[int] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.live)

    @staticmethod
    def message(content, node: int, kind: str, t: int):
        from types import SimpleNamespace

        return SimpleNamespace(content=content, metadata=SimpleNamespace(dst_node_id=node, message_type=kind))

    def send_and_receive(self, msgs, timeout=None):
        from types import SimpleNamespace

        out = []
        for m in msgs:
            node = m.metadata.dst_node_id
            self.asked.append(node)
            meta = SimpleNamespace(src_node_id=node)
            out.append(SimpleNamespace(metadata=meta, content=self.claims[node], has_error=lambda: False))
        return out


def test_nodes_hold_only_the_partition_the_server_grants():
    """A node gets clients only for a partition of the run's ``num-partitions`` whose users it lists
    exactly, and no live node holds: claiming everyone (as a partition, or as the only partition),
    other partitions' users, a partition that is not there, or a held one gets nothing; honest nodes
    keep their users; a restarted node (a new id, or its own id back) gets its partition's users."""
    from fedrec.flower.client_app import claim
    from fedrec.flower.server_app import FlowerClients
    from fedrec.flower.settings import FlowerOptions

    run = FederatedRun.create(_cfg("alie"), SPLIT, torch.device("cpu"))
    byz, n = run.byzantine, int(run.byzantine.shape[0])
    part = [node_users(byz, p, 3) for p in range(3)]
    everyone = torch.arange(n)
    honest = {11: 0, 12: 1, 13: 2}
    claims: dict[int, object] = {nd: claim(part[p], p, 3) for nd, p in honest.items()}
    claims |= {  # ids below the honest ones: asked, and answering, first
        1: claim(everyone, 0, 3),  # partition 0, listing everyone
        2: claim(everyone, 0, 1),  # the only partition of 1
        3: claim(torch.cat([part[0], part[1]]).sort().values, 0, 3),  # 0's users and 1's
        4: claim(part[2], 7, 3),  # no such partition
        5: RecordDict({"users": ArrayRecord({"users": to_array(everyone)})}),  # no partition at all
        6: claim(part[1], 1, 3),  # a valid claim on a partition node 12 holds
        21: claim(part[1], 1, 3),  # node 12 restarted under a new id
        31: claim(part[0], 0, 3),  # node 11 restarted, its new id seen before the old one is dropped
    }
    grid = _ClaimGrid(claims)
    clients = FlowerClients(grid, FlowerOptions(min_nodes=3))
    clients._message = _ClaimGrid.message  # a flwr Message needs a run's identity: a stand-in

    def holds() -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for u, nd in sorted(clients.node_of.items()):
            out.setdefault(nd, []).append(u)
        return out

    def expect(owner: dict[int, int]) -> None:
        assert holds() == {nd: part[p].tolist() for nd, p in owner.items()}

    grid.live = {1, 2, 3, 4, 5, 11, 12, 13}
    clients.discover(run, 1)
    expect(honest)
    grid.live.add(6)
    clients.discover(run, 2)
    expect(honest)
    assert sorted(grid.asked) == sorted(grid.live)  # each node asked once
    grid.live -= {12, 6}
    grid.live.add(21)
    clients.discover(run, 3)
    expect({11: 0, 21: 1, 13: 2})
    grid.live -= {21}
    grid.live.add(12)  # node 12 back under its own id (a registered key): asked again
    clients.discover(run, 4)
    expect(honest)
    assert grid.asked.count(12) == 2
    grid.live.add(31)
    clients.discover(run, 5)
    expect(honest)
    grid.live.remove(11)
    clients.discover(run, 6)
    expect({31: 0, 12: 1, 13: 2})
    assert grid.asked.count(31) == 1  # granted once its partition was free, without asking again
