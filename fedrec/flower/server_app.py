"""The Flower ServerApp: ``fedrec train``'s run loop with the clients' side over a Flower Grid.

The ServerApp builds the run exactly as ``fedrec train`` does (``run_federated`` / ``resume_federated``:
data, split, sampling, evaluation, round records, run directory, checkpoints) and plugs in
``FlowerClients`` as the run's collector: each round it sends the sampled clients' ids and the dense
global state to the SuperNodes that hold them, waits at most ``flower.round-timeout`` seconds, decodes
the replies (``fedrec.flower.codec``) and hands them to the same ``server_round`` as the in-process
engine (validate -> reconstruct -> verify -> decide -> aggregate). Nothing a node sends can raise here:

* an error reply (the ClientApp raised, the node went away) -> its clients are ``node-error``;
* a reply that does not decode -> ``undecodable``; no reply before the deadline -> ``no-reply``;
* an upload declaring a client the node was not asked for -> refused as ``client-id`` (ids are
  attributed by the transport: a node speaks only for the clients it was asked about);
* a node's claim to hold users is checked against the partition it declares (``FlowerClients``): a
  node gets one partition's users, exactly, and only while no other live node holds that partition;
* anything else malformed is ``fedrec.federation.validate``'s, as for any upload.

The round then goes on with the replies that came; the checkpoint is written on schedule, so a run
whose server stops resumes with ``flower.resume`` = its run directory.

One thing happens before any of this code sees a reply: Flower 1.41 inflates each Array from its
chunks inside ``Grid.send_and_receive``, and a chunk list may name one chunk many times (Flower's way of
sending equal chunks once), so a reply of a few megabytes can expand to gigabytes in this process (a
69 KB reply became an 84 MB array in a test; the codec then refuses or reads it by its declared
shape). Run the ServerApp under a memory limit (``ulimit -v``, a cgroup) where nodes are not trusted.

Evaluation stays on the server, as in ``fedrec train`` (the server loads the dataset to rank the
benign users' held-out items): a simulation and evaluation device. MF keeps private user vectors on
the devices, which a central evaluation cannot score, so this adapter runs FISM only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedrec.config import Config, ConfigError, load_config
from fedrec.federation.runner import resume_federated, run_federated
from fedrec.federation.simulation import Collected, FederatedRun
from fedrec.federation.validate import CODE
from fedrec.flower.client_app import DIAG, PARTITION, ROUND, USERS, node_users
from fedrec.flower.codec import STATE, Undecodable, decode_reply, encode_state, from_array
from fedrec.flower.settings import FlowerOptions, from_run_config
from fedrec.protocol import UploadBatch

log = logging.getLogger("fedrec.flower")


@dataclass
class Reply:
    """One node's answer to a round, as the transport delivered it: ``content`` (a ``RecordDict``) or
    ``error`` (the node's error reply); both None when nothing came."""

    node: int
    asked: torch.Tensor  # the sampled client ids this node was asked for (sorted)
    content: Any = None
    error: str | None = None


@dataclass
class Traffic:
    """Bytes of one round on the wire: the broadcast state to each asked node, the uploads back."""

    t: int
    nodes: int
    down: int
    up: int
    upload_rows: int
    seconds: float


def attribute(batch: UploadBatch, asked: torch.Tensor) -> UploadBatch:
    """``batch`` with every upload that declares a client its node was not asked for re-labelled -1, so
    ``admit`` refuses it (``client-id``) instead of letting it fill another node's client's slot."""
    ids = batch.client_ids
    if ids.dim() != 1:
        return batch
    return UploadBatch(
        client_ids=torch.where(torch.isin(ids, asked), ids, torch.full_like(ids, -1)),
        ptr=batch.ptr, rows=batch.rows, theta=batch.theta, state=batch.state, n_examples=batch.n_examples,
    )  # fmt: skip


def _diag(content: Any, asked: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A node's diagnostics per asked client: ``{name: (ids, values)}`` (empty when malformed: they are
    records only, never inputs to a decision)."""
    try:
        rec = content.array_records[DIAG]
        ids = from_array(rec["client_ids"], ("int64",), 1)
        if isinstance(ids, str):
            return {}
        out = {}
        for name in ("grad_norm", "loss", "forged"):
            v = from_array(rec[name], ("float64",), 1)
            if not isinstance(v, str) and v.shape == ids.shape:
                keep = torch.isin(ids, asked)
                out[name] = (ids[keep], v[keep])
        return out
    except Exception:  # diagnostics are optional: a node that sends none or garbage loses its records
        return {}


def round_from_replies(
    run: FederatedRun, clients: torch.Tensor, byz: torch.Tensor, replies: list[Reply]
) -> Collected:
    """What ``server_round`` gets from one round's replies: the decoded uploads (attributed to the
    asking), why each silent client is silent, and the records' diagnostics. Never raises."""
    n = clients.shape[0]
    device = clients.device
    grad_norm = torch.full((n,), float("nan"), dtype=torch.float64, device=device)
    client_loss = torch.full((n,), float("nan"), dtype=torch.float64, device=device)
    forged = torch.where(byz, float("nan"), 0.0).to(torch.float64)
    messages: list[UploadBatch] = []
    absent_ids: list[torch.Tensor] = []
    absent_codes: list[torch.Tensor] = []
    hosted = torch.zeros(n, dtype=torch.bool, device=device)
    for r in replies:
        asked = r.asked.to(device)
        hosted |= torch.isin(clients, asked)
        code = None
        if r.error is not None:
            code = "node-error"
        elif r.content is None:
            code = "no-reply"
        else:
            batch = decode_reply(r.content, run.rule.state_names)
            if isinstance(batch, Undecodable):
                log.warning(
                    "round %d: node %d's reply does not decode: %s", run.server.t + 1, r.node, batch.why
                )
                code = "undecodable"
            else:
                messages.append(attribute(batch, asked.cpu()))
                for name, (ids, v) in _diag(r.content, asked.cpu()).items():
                    pos = torch.searchsorted(clients, ids.to(device)).clamp(max=n - 1)
                    hit = clients[pos] == ids.to(device)
                    target = {"grad_norm": grad_norm, "loss": client_loss, "forged": forged}[name]
                    target[pos[hit]] = v.to(device)[hit]
        if code is not None:
            absent_ids.append(asked)
            absent_codes.append(torch.full_like(asked, CODE[code]))
    unhosted = clients[~hosted]  # no node holds them: nobody could answer
    absent_ids.append(unhosted)
    absent_codes.append(torch.full_like(unhosted, CODE["no-reply"]))
    honest_loss = torch.where(~byz & torch.isfinite(client_loss), client_loss, 0.0).sum()
    return Collected(
        messages=messages, grad_norm=grad_norm, loss=honest_loss, forged=forged,
        absent=(torch.cat(absent_ids), torch.cat(absent_codes)), client_loss=client_loss,
    )  # fmt: skip


@dataclass
class FlowerClients:
    """The clients' side of every round over a Flower ``Grid`` (``FederatedRun.collector``).

    Who speaks for whom is the server's call, not the nodes': a node declares its partition
    (``partition-id`` of ``num-partitions``) and the users it holds, and the server, which builds the
    same Byzantine set from the same config, accepts the claim only if ``num-partitions`` is the run's
    (``flower.num-partitions``), the users are exactly that partition's (``node_users``, as the
    ClientApp computes them), and no other live node holds the partition. A refused node is asked
    nothing. Partitions are not bound to node keys: a registered node can still take a free partition,
    or one whose holder went away, but never more than one, nor a live node's."""

    grid: Grid
    opts: FlowerOptions
    node_of: dict[int, int] = field(default_factory=dict)  # user id -> the node holding its partition
    holder: dict[int, int] = field(default_factory=dict)  # partition -> the live node holding it
    waiting: dict[int, int] = field(default_factory=dict)  # node -> its valid claim on a held partition
    queried: set[int] = field(default_factory=set)
    traffic: list[Traffic] = field(default_factory=list)

    def wait_for_nodes(self) -> list[int]:
        """The connected nodes once ``min_nodes`` are there (or ``node_wait`` seconds have passed)."""
        deadline = time.monotonic() + self.opts.node_wait
        while True:
            nodes = list(self.grid.get_node_ids())
            if len(nodes) >= self.opts.min_nodes or time.monotonic() > deadline:
                return nodes
            time.sleep(0.5)

    def _message(self, content: RecordDict, node: int, kind: str, t: int) -> Message:
        return Message(content=content, dst_node_id=node, message_type=kind, group_id=str(t))

    def check_claim(self, run: FederatedRun, node: int, content: Any) -> int | None:
        """The partition a node's query reply validly claims (None, logged, when it does not)."""
        parts = self.opts.partitions
        try:
            rec = content.config_records[PARTITION]
            pid, declared = rec["partition-id"], rec["num-partitions"]
            users = from_array(content.array_records[USERS][USERS], ("int64",), 1)
        except Exception:
            log.warning("node %d: no readable partition and user list: refused", node)
            return None
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (pid, declared)):
            log.warning("node %d: partition %r of %r is not a pair of integers: refused", node, pid, declared)
            return None
        if declared != parts or not 0 <= pid < parts:
            log.warning(
                "node %d declares partition %d of %d; this run has %d (flower.num-partitions, default "
                "flower.min-nodes): refused", node, pid, declared, parts,
            )  # fmt: skip
            return None
        if isinstance(users, str) or not torch.equal(users, node_users(run.byzantine, pid, parts)):
            log.warning(
                "node %d: its users are not partition %d's (another dataset or split?): refused", node, pid
            )
            return None
        return pid

    def discover(self, run: FederatedRun, t: int) -> None:
        """Follow the live nodes: a node that went away frees its partition (and is asked again should
        its id come back: a SuperNode with a registered key restarts under the same id); a new node is
        asked once which partition it holds; a valid claim on a free partition is granted, one on a
        held partition waits until its holder goes away (a restarted node whose new id showed up before
        the old one was dropped)."""
        live = set(self.grid.get_node_ids())
        gone = self.queried - live
        if gone:
            log.info("nodes %s went away", sorted(gone))
            self.queried -= gone
            self.holder = {pid: nd for pid, nd in self.holder.items() if nd in live}
            self.waiting = {nd: pid for nd, pid in self.waiting.items() if nd in live}
        new = sorted(live - self.queried)
        if new:
            cfg_text = run.cfg.to_yaml()
            msgs = [
                self._message(
                    RecordDict({ROUND: ConfigRecord({"config": cfg_text, "t": t})}), nd, MessageType.QUERY, t
                )
                for nd in new
            ]
            replies = self.grid.send_and_receive(msgs, timeout=self.opts.round_timeout)
            # asked once, whatever the outcome: a node that did not answer must not cost every later
            # round a wait (its clients are no-reply until a node that answers holds them)
            self.queried.update(new)
            for reply in replies:
                node = int(reply.metadata.src_node_id)
                if node not in new or reply.has_error():
                    continue
                pid = self.check_claim(run, node, reply.content)
                if pid is not None:
                    self.waiting[node] = pid
        granted = False
        for node, pid in list(self.waiting.items()):
            if pid not in self.holder:
                self.holder[pid] = node
                del self.waiting[node]
                granted = True
            elif node in new:
                log.warning(
                    "node %d claims partition %d, held by node %d: nothing", node, pid, self.holder[pid]
                )
        parts = self.opts.partitions
        if gone or granted:
            self.node_of = {
                u: nd
                for pid, nd in self.holder.items()
                for u in node_users(run.byzantine, pid, parts).tolist()
            }
        if gone or new:
            log.info(
                "%d of %d partitions held: %d of %d users",
                len(self.holder), parts, len(self.node_of), int(run.byzantine.shape[0]),
            )  # fmt: skip

    def __call__(self, run: FederatedRun, t: int, clients: torch.Tensor, byz: torch.Tensor) -> Collected:
        start = time.perf_counter()
        self.discover(run, t)
        by_node: dict[int, list[int]] = {}
        for c in clients.tolist():
            if c in self.node_of:
                by_node.setdefault(self.node_of[c], []).append(c)
        state = encode_state(run.server)
        cfg_text = run.cfg.to_yaml()
        extra: dict[str, Any] = {}
        if run.attack is not None and run.attack.omniscient:
            extra["round-clients"] = clients.tolist()  # the simulated omniscient adversary's knowledge
        msgs = []
        for node, ids in by_node.items():
            rnd = ConfigRecord({"t": t, "clients": ids, "config": cfg_text, **extra})
            msg = self._message(RecordDict({STATE: state, ROUND: rnd}), node, MessageType.TRAIN, t)
            msgs.append(msg)
        ids_of = {node: torch.tensor(ids, dtype=torch.int64) for node, ids in by_node.items()}
        replies: dict[int, Reply] = {node: Reply(node, ids_of[node]) for node in by_node}
        up = 0
        for reply in self.grid.send_and_receive(msgs, timeout=self.opts.round_timeout):
            node = int(reply.metadata.src_node_id)
            if node not in replies or replies[node].content is not None or replies[node].error is not None:
                continue  # not asked this round, or a second answer: the first one counts
            if reply.has_error():
                replies[node].error = f"{reply.error.code}: {reply.error.reason}"[:300]
            else:
                replies[node].content = reply.content
                up += _payload(reply.content)
        got = round_from_replies(run, clients, byz, list(replies.values()))
        self.traffic.append(
            Traffic(
                t=t, nodes=len(msgs), down=len(msgs) * sum(len(a.data) for a in state.values()), up=up,
                upload_rows=sum(int(m.rows.shape[0]) for m in got.messages if m.rows.dim() == 1),
                seconds=time.perf_counter() - start,
            )
        )  # fmt: skip
        silent = [r.node for r in replies.values() if r.content is None]
        if silent:
            log.warning("round %d: no usable reply from nodes %s", t, silent)
        return got


def _payload(content: Any) -> int:
    """Bytes of a reply's arrays (what an upload costs on the wire, without framing)."""
    try:
        return sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    except Exception:
        return 0


def resumed_config(run_dir: str | Path) -> Config:
    """The config of the run ``flower.resume`` names (its ``config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"flower.resume={str(run_dir)!r}: no config.yaml (not a run directory)")
    return load_config(path)


def check_flower_config(cfg: Config, resume: str = "") -> None:
    """What a Flower run needs of its config, new or resumed (``ConfigError``, one line, naming the key):
    FISM (MF's private user vectors stay on the devices, where the server's central evaluation cannot
    score them) and per-client randomness (a node sees only its own clients, so a draw shared by the
    round's sample is one it cannot make: a run begun in-process with ``shared`` would continue as
    neither engine's run)."""
    where = f"flower.resume={resume!r}: the run's config.yaml has " if resume else ""
    if cfg.model.name != "fism":
        raise ConfigError(f"{where}model.name={cfg.model.name!r}: the Flower adapter runs FISM only")
    if cfg.federated.variance_reduction != "none":
        raise ConfigError(
            f"{where}federated.variance_reduction={cfg.federated.variance_reduction!r}: the clients' SAGA "
            "tables would have to outlive a ClientApp's round; SAGA runs in-process only"
        )
    if cfg.federated.client_rng != "per-client":
        raise ConfigError(
            f"{where}federated.client_rng={cfg.federated.client_rng!r}: a Flower run draws per client "
            "('per-client'); a run begun with another setting cannot continue on Flower"
        )


def serve(
    grid: Grid, cfg: Config, opts: FlowerOptions, progress: Callable[[dict[str, Any]], None] | None = None
) -> tuple[dict[str, Any], Any, FlowerClients]:
    """A fedrec run whose clients are Flower SuperNodes; returns the summary, the run directory and the
    collector (its ``traffic`` says what went over the wire)."""
    # a resumed run is the run its config.yaml describes (the run config's fedrec keys do not apply), so
    # that is the config to check, before any node is waited for
    check_flower_config(resumed_config(opts.resume) if opts.resume else cfg, opts.resume)
    clients = FlowerClients(grid, opts)
    nodes = clients.wait_for_nodes()
    log.info("%d SuperNodes connected", len(nodes))
    if opts.resume:
        summary, run_dir = resume_federated(opts.resume, progress, collector=clients)
    else:
        summary, run_dir = run_federated(cfg, progress, collector=clients)
    return summary, run_dir, clients


def _progress(event: dict[str, Any]) -> None:
    log.info(
        "round %s/%s %s",
        event.get("t"),
        event.get("rounds"),
        {k: v for k, v in event.items() if k not in ("t", "rounds")},
    )


def make_server_app(
    overrides: dict[str, Any] | None = None, on_done: Callable[..., None] | None = None
) -> ServerApp:
    """A ServerApp whose run config is the app's merged with ``overrides`` (tests and benchmarks run it
    through Flower's Python simulation API, which passes no run config); ``on_done(summary, run_dir,
    clients)`` sees the result."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg, opts = from_run_config({**dict(context.run_config), **(overrides or {})})
        result = serve(grid, cfg, opts, _progress)
        log.info("run directory %s", result[1])
        if on_done is not None:
            on_done(*result)

    return server_app


app = make_server_app()
