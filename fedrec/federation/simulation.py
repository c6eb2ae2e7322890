"""The federated round loop (paper 000 Algorithm 1, Option I), seeded, resumable, on one device.

Per round: sample a fraction e of the clients, every honest client takes one step (batched), the
server aggregates exactly and sparsely. Every ``eval_every`` rounds the benign users are evaluated;
every ``checkpoint_every`` rounds the whole run (state, private client state, RNG states, records) is
saved so ``resume`` continues to the same final model as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fedrec.attacks import AttackContext, byzantine_mask, inject_fake_users, make_attack
from fedrec.attacks.population import extend_users
from fedrec.config import Config, FederatedConfig
from fedrec.data import Split
from fedrec.defenses import Defense, assumed_f, make_defense
from fedrec.eval import run_protocol
from fedrec.federation.clients import (
    ClientRound,
    PrivateState,
    client_gradients,
    client_round,
    private_step,
    sample_clients,
)
from fedrec.federation.deferred import ForeignWrite, auto_deferred, dense_state, server_state
from fedrec.federation.forged import forged_distance, segment_sq_norms
from fedrec.federation.persistence import RunCheckpointing
from fedrec.federation.pipeline import ServerLimits, server_round
from fedrec.federation.recorder import RoundRecorder
from fedrec.federation.saga import SagaTable
from fedrec.federation.sparsity import SparseRowsMonitor
from fedrec.federation.validate import STRUCTURAL
from fedrec.memory import keep_freed_memory
from fedrec.models import CSRTensors, TableLayout, fism_scorer, gather_users, mf_scorer, round_key
from fedrec.optim import make_rule
from fedrec.optim.fused import compiler_available
from fedrec.protocol import ServerState, UploadBatch
from fedrec.threads import ThreadPolicy

log = logging.getLogger("fedrec.federation.simulation")

Progress = Callable[[dict[str, Any]], None]


def make_optimizer_rule(cfg: Config):
    """The optimizer rule named by ``train.optimizer`` with this config's hyper-parameters."""
    t, f = cfg.train, cfg.federated
    hyper: dict[str, dict[str, float]] = {
        "adam": {"eta": t.lr, "b1": t.beta1, "b2": t.beta2, "eps": t.eps},
        "sgd": {"eta": t.lr},
        "momentum": {"eta": t.lr, "b3": f.momentum},
        "adagrad": {"eta": t.lr},
        "rmsprop": {"eta": t.lr, "b4": f.rho},
    }
    if t.optimizer not in hyper:
        raise ValueError(f"train.optimizer={t.optimizer!r}: expected one of {', '.join(hyper)}")
    return make_rule(t.optimizer, **hyper[t.optimizer])


def make_attack_from(cfg: Config):
    """The attack named by ``attack.name`` with ``attack.params`` (None for ``none``)."""
    a = cfg.attack
    return None if a.name == "none" else make_attack(a.name, **a.params)


def with_byzantine(cfg: Config, split: Split) -> tuple[Split, torch.Tensor]:
    """The split and the Byzantine mask over its users: a seeded subset of the users keeping their own
    data (paper 000), or fake users appended to the training data (``attack.mode = inject``)."""
    a = cfg.attack
    if a.fraction <= 0 or a.name == "none":
        return split, torch.zeros(split.train.n_users, dtype=torch.bool)
    if a.mode == "own":
        return split, byzantine_mask(split.train.n_users, a.fraction, a.seed)
    if a.mode == "inject":
        train, mask = inject_fake_users(split.train, a.fraction, a.seed)
        test = extend_users(split.test, train.n_users)
        return Split(train, test, split.seed, split.test_fraction), mask
    raise ValueError(f"attack.mode={a.mode!r}: expected 'own' or 'inject'")


COMPILE_ROUNDS = 2000
"""``run.compile`` unset: runs this long compile the rule check (3-20 s once, then ~10 ms a round
saved on ML-100K; benchmarks/bench_round.py)."""


def fuse_verification(setting: bool | None, rounds: float) -> bool:
    """Whether the server's rule check is to be compiled (``run.compile``; fedrec.optim.fused). Asked
    for where no compiler is found, the check runs eager and summary.json's ``rule_check`` says why."""
    if setting is not None:
        return bool(setting)
    return rounds >= COMPILE_ROUNDS and compiler_available()


def compiles(cfg: Config) -> bool:
    """Whether a run of ``cfg`` compiles its rule check (a federated run; ``fuse_verification``)."""
    return cfg.train.mode == "federated" and fuse_verification(cfg.run.compile, asked_rounds(cfg.federated))


def asked_rounds(f: FederatedConfig) -> float:
    """``planned_rounds``, or inf where ``epochs / fraction`` overflows (refused by check_round_size)."""
    rounds = f.rounds if f.rounds is not None else f.epochs / f.fraction
    return math.ceil(rounds) if math.isfinite(rounds) else rounds


def planned_rounds(f: FederatedConfig) -> int:
    """``federated.rounds``, else ``epochs / fraction`` rounds (one epoch is 1/e rounds)."""
    return f.rounds if f.rounds is not None else math.ceil(f.epochs / f.fraction)


def clients_per_round(n_clients: int, fraction: float) -> int:
    """|S^t| = e * |S| (Algorithm 1), rounded, at least one."""
    if not 0 < fraction <= 1:
        raise ValueError(f"federated.fraction={fraction}: must be in (0, 1]")
    return max(1, round(fraction * n_clients))


@dataclass
class Collected:
    """What the sampled clients of a round sent, and what the driver knows about them.

    ``messages``: the uploads, authenticated ones first (the honest clients' batch), then the attack's.
    ``grad_norm [n]``: each sampled client's own gradient norm (NaN where unknown), ``loss``: the honest
    clients' summed loss (0-d). ``ctx``: the attack context, when this process ran the attack (the
    forged distances are then measured from it); else ``forged [n]`` as the driver measured it.
    ``absent``: ``(client ids, reason codes)`` of sampled clients whose upload never came (Flower: no
    reply, an error reply, an undecodable reply)."""

    messages: list[UploadBatch]
    grad_norm: torch.Tensor
    loss: torch.Tensor
    ctx: AttackContext | None = None
    g_user: torch.Tensor | None = None
    forged: torch.Tensor | None = None
    absent: tuple[torch.Tensor, torch.Tensor] | None = None
    client_loss: torch.Tensor | None = None  # [n] each client's loss at the global parameters


def keyed_streams(cfg: Config, t: int, device: torch.device | str = "cpu") -> tuple[int, torch.Generator]:
    """``federated.client_rng = per-client``: round ``t``'s key for the negatives (each client's keyed
    by its id, ``sample_negatives_keyed``) and the attacker's generator, seeded by ``(attack.seed, t)``.
    Functions of the config and the round only: any process holding any of the clients draws the same."""
    gen = torch.Generator(device=device)
    gen.manual_seed(round_key(cfg.attack.seed + 3, t) % 2**63)
    return round_key(cfg.train.seed + 2, t), gen


def local_batch_key(cfg: Config, t: int) -> int:
    """Round ``t``'s key for the clients' local mini-batches (``federated.local_batch``): a function of
    ``train.seed`` and ``t`` only, like the keyed negatives."""
    return round_key(cfg.train.seed + 4, t)


def client_settings(cfg: Config, t: int) -> dict[str, Any]:
    """``client_round``'s settings for round ``t`` from the config (every caller passes the same)."""
    f = cfg.federated
    return {
        "negatives": cfg.train.negatives, "gamma": cfg.model.gamma, "lam": cfg.train.weight_decay,
        "local_batch": f.local_batch, "batch_key": local_batch_key(cfg, t), "seed": cfg.train.seed,
        "fixed_negatives": f.fixed_negatives,
    }  # fmt: skip


def row_popularity(train: CSRTensors, layout: TableLayout) -> torch.Tensor:
    """``[n_rows]`` float64: every row's item's number of training interactions (every table of the
    layout), the public popularity that Spattack samples rows by."""
    counts = torch.bincount(train.indices, minlength=layout.n_items).to(torch.float64)
    pop = torch.zeros(layout.n_rows, dtype=torch.float64, device=train.indices.device)
    for lo, hi in layout.ranges.values():
        pop[lo:hi] = counts
    return pop


def attack_context(
    server: ServerState, rule, layout: TableLayout, train: CSRTensors, cfg: Config, t: int,
    cr: ClientRound, byz: torch.Tensor, attack, generator: torch.Generator, u: torch.Tensor | None = None,
    popularity: torch.Tensor | None = None,
) -> AttackContext:  # fmt: skip
    """The Byzantine clients' view: their own honest gradients (they keep their data), for an
    omniscient attack the honest clients' gradients of the round and, for an attack that
    ``needs_flipped`` (label-flip), their gradients on inverted BPR pairs (same rows and negatives); for
    one that ``needs_popularity`` (Spattack) the rows' popularity (``popularity``, else computed)."""
    clients, batch, grads, neg = cr.clients, cr.batch, cr.grads, cr.neg
    device = clients.device

    def part(mask: torch.Tensor) -> dict[str, torch.Tensor]:
        counts = batch.counts()[mask]
        entry_counts = (grads.ptr[1:] - grads.ptr[:-1])[mask]
        ptr = torch.zeros(entry_counts.shape[0] + 1, dtype=torch.int64, device=device)
        torch.cumsum(entry_counts, 0, out=ptr[1:])
        keep = mask[grads.owner]
        return {"client_ids": clients[mask], "n_examples": counts, "ptr": ptr,
                "rows": grads.rows[keep], "g": grads.g[keep]}  # fmt: skip

    extra = {}
    if attack.omniscient:
        extra = {f"honest_{k}": v for k, v in part(~byz).items()}
    if getattr(attack, "needs_popularity", False):
        extra["row_popularity"] = popularity if popularity is not None else row_popularity(train, layout)
    if getattr(attack, "needs_flipped", False):
        keep = byz[batch.owner]  # the Byzantine clients' entries: their items, their negatives
        # a local mini-batch: the flipped loss on the same samples, so on the same rows (under SAGA the
        # rows are every sample's: the full flipped gradient; the table is the honest loss's)
        local = (
            None if cr.local is None or cfg.federated.variance_reduction == "saga" else cr.local.subset(keep)
        )
        # the rows these clients touch (caught up by their honest step): all a deferred state reads
        theta = server.current_tables(grads.rows[byz[grads.owner]] if server.deferred else None)["theta"]
        flipped = client_gradients(
            theta, layout, gather_users(train, clients[byz]), neg[keep],
            gamma=cfg.model.gamma, lam=cfg.train.weight_decay,
            user_vectors=None if u is None else u[byz], flip=True, local=local,
        )  # fmt: skip
        extra["flipped_g"] = flipped.g
    return AttackContext(server=server, t=t, rule=rule, generator=generator, **part(byz), **extra)


def client_uploads(
    server: ServerState, rule, layout: TableLayout, train: CSRTensors, cfg: Config, clients: torch.Tensor,
    byz: torch.Tensor, t: int, *, neg: torch.Generator | int, attack, attack_gen: torch.Generator,
    user_vectors: torch.Tensor | None = None, popularity: torch.Tensor | None = None,
    saga: SagaTable | None = None,
) -> Collected:  # fmt: skip
    """What the clients ``clients`` (sorted; ``byz`` marks the Byzantine ones) send in round ``t``: every
    client's honest step (``client_round``), then the attack on the Byzantine ones' context. The
    in-process loop calls it for all sampled clients, a Flower ClientApp for the clients it holds.
    ``saga``: the clients' SAGA table, required by ``federated.variance_reduction: saga``."""
    if (cfg.federated.variance_reduction == "saga") != (saga is not None):
        raise ValueError("federated.variance_reduction=saga needs the clients' SAGA table (and only it)")
    cr = client_round(
        server, rule, layout, train, clients, t, neg, user_vectors=user_vectors, saga=saga,
        **client_settings(cfg, t),
    )  # fmt: skip
    return round_uploads(
        server, rule, layout, train, cfg, cr, byz, t, attack, attack_gen, user_vectors, popularity
    )


def round_uploads(
    server: ServerState, rule, layout: TableLayout, train: CSRTensors, cfg: Config, cr: ClientRound,
    byz: torch.Tensor, t: int, attack, attack_gen: torch.Generator, user_vectors: torch.Tensor | None = None,
    popularity: torch.Tensor | None = None,
) -> Collected:  # fmt: skip
    """What the clients of ``cr`` send once they stepped: the honest ones their step, the Byzantine
    ones (``byz``) what the attack makes of their context (``client_uploads``; a stack of runs,
    fedrec.federation.stacked, calls it per run)."""
    clients, grads = cr.clients, cr.grads
    grad_norm = segment_sq_norms(grads.owner, grads.g, clients.shape[0]).sqrt()
    messages: list[UploadBatch] = [cr.uploads.select(~byz)]
    ctx = None
    # a round that samples no Byzantine client gives the attack nothing to do
    if attack is not None and bool(byz.any()):
        ctx = attack_context(
            server, rule, layout, train, cfg, t, cr, byz, attack, attack_gen, user_vectors, popularity
        )
        messages.append(run_attack(attack, ctx))  # after the honest uploads: their ids are authenticated
    loss = (grads.loss * ~byz).sum()
    return Collected(messages, grad_norm, loss, ctx, grads.g_user, client_loss=grads.loss)


def run_attack(attack, ctx: AttackContext) -> UploadBatch:
    """``attack(ctx)``, refused when it wrote into the global state it was given to read: ``ctx.server``
    holds the server's own tensors (a copy every round would cost a pass over the tables), so an attack
    that updates them in place by mistake would change the model no defense saw. Torch counts in-place
    writes per tensor (views share the count), so checking costs nothing. A bug-catcher for in-process
    attack code, not a boundary: writes through ``.data``, numpy or the storage are not counted (an
    attack in another process, as under Flower, cannot reach the tables at all). The context gets its
    own ``ServerState`` (and state dict), so rebinding a field there leaves the run's untouched; a
    deferred state's view reads rows through its store, which itself refuses tables written by others
    (fedrec.federation.deferred)."""
    server = ctx.server
    store = server.deferred
    if store is None:
        view = ServerState(server.theta, dict(server.state), server.t)
        # a round's tables are ordinary tensors (server._aggregated makes them outside inference mode)
        tables = [x for x in (server.theta, *server.state.values()) if not x.is_inference()]
        before = [x._version for x in tables]
    else:
        view = server.advanced(server.t)  # the same store, an object of the attack's own
        store.check_own()
    name = getattr(attack, "name", type(attack).__name__)
    refused = RuntimeError(
        f"attack {name!r} wrote into the global state (ctx.server) in place; an attack reads the "
        "context and returns uploads (clone what it changes)"
    )
    try:
        # outside the round's inference mode, on copies of the context's own tensors (the round made
        # them inference tensors, which refuse in-place writes and autograd there): the attack may
        # change or differentiate what is its own, as it could before rounds ran in inference mode
        with torch.inference_mode(False):
            fields = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx) if f.name != "server"}
            own = {
                k: v.clone() for k, v in fields.items() if isinstance(v, torch.Tensor) and v.is_inference()
            }
            out = attack(dataclasses.replace(ctx, server=view, **own))
    except ForeignWrite as err:  # it wrote, then read rows through the store
        raise refused from err
    except RuntimeError as err:
        if "Inplace update to inference tensor" in str(err):
            raise refused from err
        raise
    if [x._version for x in tables] != before if store is None else store.written_by_others():
        raise refused
    return out


def check_round_budget(t: int, total_rounds: int) -> None:
    """Refuse round ``t`` past the run's length before anything moves: the round record is sized for
    ``total_rounds``, and a round that stepped the state but could not be recorded would leave the run
    half a round ahead of its record."""
    if t > total_rounds:
        raise RuntimeError(
            f"round {t} is past the run's {total_rounds} rounds (federated.rounds, or federated.epochs / "
            "federated.fraction): the run is complete"
        )


@dataclass
class FederatedRun(RunCheckpointing):
    """Everything a federated run holds between rounds: the loop (``step``, ``run``, ``evaluate``); the
    round records live in ``recorder`` (fedrec.federation.recorder), checkpoint I/O in the
    ``RunCheckpointing`` base (fedrec.federation.persistence)."""

    cfg: Config
    split: Split
    device: torch.device
    layout: TableLayout
    rule: Any
    server: ServerState
    private: PrivateState | None
    train: CSRTensors
    active: torch.Tensor  # clients with at least one training item
    sample_gen: torch.Generator
    neg_gen: torch.Generator
    attack_gen: torch.Generator
    byzantine: torch.Tensor  # bool [n_users] on device
    attack: Any
    defense: Defense
    metric_rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    # called after every round with (run, RoundOutcome): how tests and experiments observe rounds
    on_round: Callable[[Any, Any], None] | None = None
    # flat coordinate-wise rules: how many listed rows fewer than half the clients list (issue 16)
    sparsity: SparseRowsMonitor = field(default_factory=SparseRowsMonitor)
    # the clients' side of a round when it runs elsewhere: (run, t, clients, byzantine) -> Collected
    collector: Callable[[Any, int, torch.Tensor, torch.Tensor], Collected] | None = None
    # the clients' SAGA table (federated.variance_reduction: saga; fedrec.federation.saga)
    saga: SagaTable | None = None
    # perf_counter at the last clock_in (the loop's wall time goes to seconds)
    _clock: float = field(default=0.0, init=False, repr=False, compare=False)
    _warned_full_read: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def create(cls, cfg: Config, split: Split, device: torch.device) -> FederatedRun:
        keep_freed_memory()  # table-sized temporaries reuse the heap instead of page-faulting each round
        split, byzantine = with_byzantine(cfg, split)
        layout = TableLayout.for_model(cfg.model.name, split.train.n_items)
        rule = make_optimizer_rule(cfg)
        init_gen = torch.Generator().manual_seed(cfg.train.seed)
        theta = layout.init(cfg.model.dim, std=cfg.model.init_std, generator=init_gen, device=device)
        deferred = cfg.run.deferred
        if deferred is None:  # unset: where it pays and the tables stay those of the dense pass bit for bit
            fused = fuse_verification(cfg.run.compile, asked_rounds(cfg.federated))  # as ``limits``
            deferred = auto_deferred(rule, fused, layout.n_rows, cfg.model.dim, device)
        server = server_state(theta, rule.init_state(theta), 0, rule, deferred)
        private = None
        if cfg.model.name == "mf":
            u = (torch.randn(split.train.n_users, cfg.model.dim, generator=init_gen) * cfg.model.init_std).to(
                device
            )
            steps = torch.zeros(split.train.n_users, dtype=torch.int64, device=device)
            private = PrivateState(u=u, state=rule.init_state(u), steps=steps)
        train = CSRTensors.from_interactions(split.train, device)
        saga = None
        if cfg.federated.variance_reduction == "saga":
            saga = SagaTable.create(train, layout, cfg.model.dim, cfg.train.negatives, theta.dtype, device)
        return cls(
            cfg=cfg, split=split, device=device, layout=layout, rule=rule, server=server, private=private,
            train=train, active=torch.nonzero(train.counts() > 0).flatten().cpu(),
            sample_gen=torch.Generator().manual_seed(cfg.train.seed + 1),
            neg_gen=torch.Generator(device=device).manual_seed(cfg.train.seed + 2),
            attack_gen=torch.Generator(device=device).manual_seed(cfg.attack.seed + 3),
            byzantine=byzantine.to(device), attack=make_attack_from(cfg), defense=make_defense(cfg.defense.name, cfg.defense.params, cfg.defense.pre), saga=saga,
        )  # fmt: skip

    @functools.cached_property
    def row_popularity(self) -> torch.Tensor:
        """``[n_rows]``: the rows' popularity (``row_popularity``), computed once per run."""
        return row_popularity(self.train, self.layout)

    def _popularity(self) -> torch.Tensor | None:
        return self.row_popularity if getattr(self.attack, "needs_popularity", False) else None

    @functools.cached_property
    def recorder(self) -> RoundRecorder:
        """The round records (rounds.parquet), preallocated for the whole run."""
        return RoundRecorder(self.total_rounds, self.per_round, self.device)

    @property
    def records(self) -> dict[str, torch.Tensor]:
        return self.recorder.records

    @property
    def losses(self) -> torch.Tensor | None:
        return self.recorder.losses

    @functools.cached_property
    def limits(self) -> ServerLimits:
        """What the server accepts, from ``cfg.defense`` (built once, not every round)."""
        return ServerLimits.from_config(
            self.cfg.defense, self.layout.n_rows, self.cfg.model.dim, max_examples=self.layout.n_items,
            fused=fuse_verification(self.cfg.run.compile, self.total_rounds),
        )  # fmt: skip

    @property
    def total_rounds(self) -> int:
        return planned_rounds(self.cfg.federated)

    @property
    def per_round(self) -> int:
        return clients_per_round(self.active.shape[0], self.cfg.federated.fraction)

    @property
    def f(self) -> int:
        """The number of Byzantine uploads the defense assumes per round."""
        d = self.cfg.defense
        fraction = d.assumed_fraction if d.assumed_fraction is not None else self.cfg.attack.fraction
        return assumed_f(self.per_round, fraction, d.f)

    def round_streams(self, t: int) -> tuple[torch.Generator | int, torch.Generator]:
        """Round ``t``'s randomness on the client side: the negatives' source and the attacker's
        generator. ``federated.client_rng = shared``: the run's two generators, drawn in round order;
        ``per-client``: ``keyed_streams`` (what a Flower SuperNode draws for the same clients)."""
        if self.cfg.federated.client_rng == "per-client":
            return keyed_streams(self.cfg, t, self.device)
        return self.neg_gen, self.attack_gen

    def step(self) -> None:
        """One round of Algorithm 1: honest clients step (batched), Byzantine clients attack, the server
        validates, the defense decides (Option II; ``none`` is Option I) and the state is aggregated.
        The clients' side comes from ``collector`` when one is set (the Flower ServerApp's), else from
        this process (``collect``).

        The round runs under ``torch.inference_mode`` (no autograd bookkeeping on its ~350 small
        operations; benchmarks/bench_inference_mode.py). The tables it makes are ordinary tensors
        (fedrec.federation.server), attacks run outside it on copies of their context (``run_attack``);
        the round's own outputs (``on_round``'s uploads, gradients, decision) are inference tensors:
        ``clone()`` one to write into it or to differentiate it."""
        with torch.inference_mode():
            self._step()

    def _step(self) -> None:
        t = self.server.t + 1
        check_round_budget(t, self.total_rounds)
        store = self.server.deferred
        full_reads = store.full_catch_ups if store is not None else 0
        clients = sample_clients(self.active, self.per_round, self.sample_gen, self.device)
        byz = self.byzantine[clients]
        got = (
            self.collector(self, t, clients, byz)
            if self.collector is not None
            else self.collect(t, clients, byz)
        )
        out = server_round(
            self.server, got.messages, sampled=clients, rule=self.rule, defense=self.defense, t=t, f=self.f,
            limits=self.limits, seed=self.cfg.defense.seed, absent=got.absent,
        )  # fmt: skip
        self.conclude(t, clients, byz, got, out)
        if store is not None and store.full_catch_ups > full_reads:
            # a dense attack (every row uploaded) or defense read it all: such rounds cost more deferred
            if self.cfg.run.deferred is None:  # deferred for speed only: the dense pass from here on
                self.server = dense_state(self.server)
                log.info(
                    "run.deferred unset: round %d read the whole table (attack %s, defense %s); the run "
                    "goes on with the dense pass", t, self.cfg.attack.name, self.cfg.defense.name,
                )  # fmt: skip
            elif not self._warned_full_read:
                self._warned_full_read = True
                log.warning(
                    "run.deferred: round %d read the whole table (attack %s, defense %s); such rounds catch "
                    "every row up and cost more than the dense pass", t, self.cfg.attack.name, self.cfg.defense.name,
                )  # fmt: skip

    def conclude(self, t: int, clients: torch.Tensor, byz: torch.Tensor, got: Collected, out) -> None:
        """The end of round ``t``: the forged distances (from the state before the round), the new
        state, the round record, the sparsity monitor and the ``on_round`` hook."""
        forged = got.forged if got.forged is not None else torch.zeros_like(got.grad_norm)
        if got.ctx is not None:
            forged[byz] = self._forged(t, out, byz, got.ctx)
        self.server = out.state
        self.recorder.record(t, clients, byz, out, got.grad_norm, forged, got.loss)
        self.sparsity.observe(out, self.defense.name)
        if self.on_round is not None:
            self.on_round(self, out)

    def collect(self, t: int, clients: torch.Tensor, byz: torch.Tensor) -> Collected:
        """The sampled clients' uploads computed in this process (``client_uploads``); MF's honest
        clients then update their private user vectors."""
        u = None if self.private is None else self.private.u[clients]
        neg, attack_gen = self.round_streams(t)
        got = client_uploads(
            self.server, self.rule, self.layout, self.train, self.cfg, clients, byz, t,
            neg=neg, attack=self.attack, attack_gen=attack_gen, user_vectors=u, popularity=self._popularity(),
            saga=self.saga,
        )  # fmt: skip
        if self.private is not None:
            private_step(self.private, self.rule, clients[~byz], got.g_user[~byz])
        return got

    def _forged(self, t: int, out, byz: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """``|g~ - g|`` of each Byzantine slot's admitted upload from its client's own gradient; NaN
        where the upload was malformed (its rows say nothing)."""
        idx = torch.nonzero(byz).flatten()
        usable = ~torch.isin(out.decision.reasons[idx], torch.tensor(STRUCTURAL, device=idx.device))
        own = UploadBatch(
            client_ids=ctx.client_ids,
            ptr=ctx.ptr,
            rows=ctx.rows,
            theta=ctx.g,
            state={},
            n_examples=ctx.n_examples,
        ).select(usable)
        picked, up = idx[usable], out.uploads
        # the rule check's gradients where it reconstructed them all already
        rec = out.grads if out.grads is not None and bool(out.checked[picked].all()) else None
        made = forged_distance(
            self.server, self.rule, t, up, own.ptr, own.rows, own.theta, rec=rec, pick=picked
        )
        res = torch.full((idx.shape[0],), float("nan"), dtype=torch.float64, device=idx.device)
        res[usable] = made
        return res

    def client_round(self, clients: torch.Tensor, t: int, u: torch.Tensor | None = None) -> ClientRound:
        """The sampled clients' side of round ``t`` with this run's model and data (``client_round``), for
        inspection (figures, demos): the SAGA table is a copy, so looking leaves the run as it was."""
        return client_round(
            self.server, self.rule, self.layout, self.train, clients, t, self.round_streams(t)[0],
            user_vectors=u, saga=None if self.saga is None else self.saga.copy(), **client_settings(self.cfg, t),
        )  # fmt: skip

    def _attack_context(self, t: int, cr: ClientRound, byz: torch.Tensor, u=None) -> AttackContext:
        return attack_context(
            self.server, self.rule, self.layout, self.train, self.cfg, t, cr, byz, self.attack,
            self.round_streams(t)[1], u, popularity=self._popularity(),
        )  # fmt: skip

    def scorer(self):
        if self.layout.model == "fism":
            return fism_scorer(self.server.theta, self.layout, self.train, self.cfg.model.gamma)
        return mf_scorer(self.layout.view(self.server.theta, "P"), self.private.u)

    def benign_users(self):
        return torch.nonzero(~self.byzantine).flatten().cpu().numpy()

    def evaluate(self):
        """The benign users' held-out items by ``eval.protocol`` (full ranking: paper 000 Section 5)."""
        res = run_protocol(
            self.cfg.eval.protocol, self.scorer(), self.split.train, self.split.test, users=self.benign_users(),
            ks=sorted(set(self.cfg.eval.ks)), batch_size=self.cfg.eval.batch_size, device=self.device,
            seed=self.cfg.data.split_seed,
        )  # fmt: skip
        for metric, by_k in res.metrics.items():
            self.metric_rows.extend(
                {"t": self.server.t, "metric": metric, "k": k, "value": v} for k, v in by_k.items()
            )
        return res

    def refused_counts(self) -> dict[str, int]:
        """Uploads that filled no client's slot over the run, by reason (only the reasons that occur)."""
        return self.recorder.refused_counts(self.server.t)

    def rounds_frame(self) -> pd.DataFrame:
        """rounds.parquet as a frame: one row per sampled client per round so far."""
        return self.recorder.frame(self.server.t)

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, run_dir: Path | None = None, progress: Progress | None = None, progress_every: int = 20):
        """Rounds ``t+1 .. total_rounds``; evaluates, checkpoints and reports progress on schedule."""
        last = None
        self.threads = ThreadPolicy(self.cfg.run.threads, self.device)  # never oversubscribe the cores
        self._clock = time.perf_counter()
        while self.server.t < self.total_rounds:
            self.threads.tick()
            self.step()
            done = self.after_round(run_dir, progress, progress_every)
            last = done if done is not None else last
        self.clock_in()
        return last

    def clock_in(self) -> None:
        """Adds the wall time since the last call (or the loop's start) to ``seconds``."""
        now = time.perf_counter()
        self.seconds += now - self._clock
        self._clock = now

    def after_round(self, run_dir: Path | None, progress: Progress | None, progress_every: int = 20):
        """What follows round ``t`` on the run's schedule: the evaluation (returned when it ran), the
        checkpoint, the progress report."""
        f, T, t = self.cfg.federated, self.total_rounds, self.server.t
        event: dict[str, Any] | None = None
        result = None
        if t % f.eval_every == 0 or t == T:
            result = self.evaluate()
            event = {"P@5": result.metrics["precision"].get(5)}
        if run_dir is not None and (t % f.checkpoint_every == 0 or t == T):
            self.clock_in()  # saved with the checkpoint, so a resumed run keeps its total
            self.save(run_dir)
        if progress is not None and (event is not None or t % progress_every == 0 or t == T):
            self.clock_in()
            event = event or {}
            event.update(t=t, rounds=T, loss=float(self.losses[t - 1]), elapsed=self.seconds)
            progress(event)
        return result
