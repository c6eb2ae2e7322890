"""The Flower ClientApp: fedrec's client step for the users a SuperNode holds.

A SuperNode holds the users of its partition (``node_users``: node config ``partition-id`` and
``num-partitions``, set by Flower's simulation engine or by ``flower-supernode --node-config``). With
an attack on, the last partition holds every Byzantine user (the colluding coalition, which is what
the in-process engine's attacks see: one context over all Byzantine clients of a round) and the other
partitions share the honest users round-robin; with one partition a node holds everyone.

Per round the node gets the dense global state, the round number, the server's resolved config and
the ids it is asked for; it runs ``fedrec.federation.simulation.client_uploads`` (the same function
the in-process loop runs) on those of them it holds, and replies with one upload batch
(``fedrec.flower.codec``) and its diagnostics (each client's gradient norm and loss; for Byzantine
clients the forged distance). Randomness is keyed by ``(seed, round, client)``
(``federated.client_rng = per-client``), so a node draws exactly what the in-process engine draws for
the same clients.

Omniscient attacks (ALIE, IPM, min-max, ...) need the round's honest gradients. The attacker node
recomputes them itself from the dataset it loaded (the simulation's threat model: the adversary knows
every client's data) for the ids the server lists in ``round-clients``, which the server sends only
when the configured attack is omniscient. A real server would not reveal its sample, and a real
attacker would not hold the honest users' data: this is an evaluation device, not a deployment mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedrec.federation.forged import forged_distance
from fedrec.federation.runner import prepare_federated
from fedrec.federation.simulation import FederatedRun, client_uploads, keyed_streams
from fedrec.federation.validate import batch_error
from fedrec.flower.codec import STATE, UPLOAD, decode_state, encode_batch, to_array
from fedrec.flower.settings import config_from_yaml

ROUND = "round"  # the ConfigRecord of a train / query message
DIAG = "diag"  # the reply's diagnostics ArrayRecord
USERS = "users"  # the query reply's ArrayRecord
PARTITION = "partition"  # the query reply's ConfigRecord: the partition the node declares


def node_users(byzantine: torch.Tensor, partition_id: int, num_partitions: int) -> torch.Tensor:
    """The users partition ``partition_id`` of ``num_partitions`` holds (sorted): every Byzantine user
    on the last partition when there are any and more than one partition, the honest users round-robin
    over the others; otherwise all users round-robin."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} outside 0..{num_partitions - 1}")
    ids = torch.arange(byzantine.shape[0])
    byz = byzantine.cpu()
    if num_partitions > 1 and bool(byz.any()):
        if partition_id == num_partitions - 1:
            return ids[byz]
        return ids[~byz][partition_id :: num_partitions - 1]
    return ids[partition_id::num_partitions]


@dataclass
class Node:
    """What a SuperNode builds once per config: the run as fedrec builds it (data, split, Byzantine set,
    layout, rule, attack; the same ``prepare_federated`` as ``fedrec train``) and the users it holds."""

    run: FederatedRun
    users: torch.Tensor


_NODES: dict[tuple[str, int, int, str], Node] = {}  # per process: Ray actors and SuperNodes reuse it


def _local(node_config: dict[str, Any]) -> dict[str, Any]:
    local: dict[str, Any] = {"run.device": str(node_config.get("device", "cpu"))}
    if node_config.get("data-dir"):
        local["data.data_dir"] = str(node_config["data-dir"])
    return local


def partition(node_config: dict[str, Any]) -> tuple[int, int]:
    """The node's ``(partition-id, num-partitions)`` (a lone node without them holds everyone)."""
    return int(node_config.get("partition-id", 0)), int(node_config.get("num-partitions", 1))


def node_for(config_text: str, node_config: dict[str, Any]) -> Node:
    pid, parts = partition(node_config)
    local = _local(node_config)
    key = (hashlib.sha256(config_text.encode()).hexdigest(), pid, parts, repr(sorted(local.items())))
    if key not in _NODES:
        run = prepare_federated(config_from_yaml(config_text, local))
        _NODES.clear()  # one run at a time per process: drop the previous run's data
        _NODES[key] = Node(run, node_users(run.byzantine, pid, parts))
    return _NODES[key]


def _ids(values: Any) -> torch.Tensor:
    ids = torch.tensor([int(v) for v in (values or [])], dtype=torch.int64)
    return ids.unique()  # sorted, unique


def node_round(node: Node, t: int, asked: torch.Tensor, state: ArrayRecord, rnd: ConfigRecord) -> RecordDict:
    """The reply to round ``t``'s train message: the uploads of the asked clients this node holds."""
    run = node.run
    cfg = run.cfg
    server = decode_state(state, rnd, run.rule.state_names, run.device)
    if tuple(server.theta.shape) != tuple(run.server.theta.shape):
        raise ValueError(
            f"global table {tuple(server.theta.shape)}, this node's model {tuple(run.server.theta.shape)}"
        )
    mine = asked[torch.isin(asked, node.users)].to(run.device)
    own_byz = mine[run.byzantine[mine]]
    clients = mine
    if run.attack is not None and run.attack.omniscient and own_byz.numel():
        others = _ids(rnd.get("round-clients"))
        others = others[(others >= 0) & (others < run.byzantine.shape[0])].to(run.device)
        clients = torch.cat([mine, others]).unique()
    byz = torch.isin(clients, own_byz)
    neg, gen = keyed_streams(cfg, t, run.device)
    got = client_uploads(
        server,
        run.rule,
        run.layout,
        run.train,
        cfg,
        clients,
        byz,
        t,
        neg=neg,
        attack=run.attack,
        attack_gen=gen,
    )
    own = torch.isin(clients, mine)
    honest = got.messages[0]
    batch = honest.select(torch.isin(honest.client_ids, mine))
    forged = torch.zeros(clients.shape[0], dtype=torch.float64)
    if len(got.messages) > 1:
        attack = got.messages[1]
        batch = batch.cat(attack)
        ctx = got.ctx
        n_rows, d = server.theta.shape
        # a malformed attack upload has nothing to measure; checked first, since on a GPU a bad index
        # is a device-side assert that ends the process's CUDA context, not an exception to catch
        malformed = batch_error(attack, d, run.rule.state_names, server.theta.device) or bool(
            ((attack.rows < 0) | (attack.rows >= n_rows)).any()
        )
        forged[byz] = float("nan")
        if not malformed:
            try:  # what the in-process engine records: |g~ - g| of each Byzantine upload
                forged[byz] = forged_distance(server, run.rule, t, attack, ctx.ptr, ctx.rows, ctx.g).cpu()
            except (RuntimeError, ValueError, IndexError):
                forged[byz] = float("nan")
    diag = ArrayRecord(
        {
            "client_ids": to_array(clients[own]),
            "grad_norm": to_array(got.grad_norm[own].double()),
            "loss": to_array(got.client_loss[own].double()),
            "forged": to_array(forged[own.cpu()]),
        }
    )
    return RecordDict({UPLOAD: encode_batch(batch), DIAG: diag})


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    rnd = msg.content.config_records[ROUND]
    node = node_for(str(rnd["config"]), dict(context.node_config))
    content = node_round(node, int(rnd["t"]), _ids(rnd.get("clients")), msg.content.array_records[STATE], rnd)
    return Message(content=content, reply_to=msg)


def claim(users: torch.Tensor, partition_id: int, num_partitions: int) -> RecordDict:
    """The query reply: the partition this node declares and the users it holds (the server accepts
    the claim only if they are that partition's users)."""
    return RecordDict(
        {
            USERS: ArrayRecord({USERS: to_array(users)}),
            PARTITION: ConfigRecord({"partition-id": partition_id, "num-partitions": num_partitions}),
        }
    )


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The handshake: which partition this node holds, and its users."""
    rnd = msg.content.config_records[ROUND]
    node = node_for(str(rnd["config"]), dict(context.node_config))
    return Message(content=claim(node.users, *partition(dict(context.node_config))), reply_to=msg)
