"""Many runs of one dataset and model stepped together, as one tensor program (issue 14 item 3).

Runs that share a dataset, model and optimizer rule (seeds, Byzantine fractions, attacks, defenses)
keep their tables stacked: run ``r``'s rows are rows ``r * n_rows ..`` of ``theta [R * n_rows, d]``
and of every optimizer state, and each run's ``server`` is a view of its block. A round makes one
pass over every run where the work is per row or per client, the bulk of a round:

    the clients' gradients and steps     ``client_gradients`` / ``honest_uploads`` over all runs' clients
    the rule check                       ``check_rule`` over all runs' admitted uploads
    the default pass and the scatter     ``apply_decisions`` over the stacked tables

and loops over the runs where a stage belongs to one run: sampling and negatives (each run's own
generators), the attack (its run's context), receive / admit / validate (its ids and rows), the
weights and the defense's decision (on its block), the record. Every run's results are bit-identical
to the run stepped alone (tests/test_stacked.py): each stacked stage computes per row or per client,
and ``index_add_`` adds each row's terms in its run's own order.

Bit-identical on the CPU at one intra-op thread (the default; ``run.threads`` is shared by the stack):
with more threads torch splits a large element-wise op into chunks, each ending on the scalar path
(``fedrec.models.gradients.lanewise``), and CUDA's ``index_add_`` adds in no fixed order even alone.
Each run's ``server`` is a view of the stack's tables, as an attack context's is: attacks and defenses
read their run's rows and never write into the state (alone they would corrupt their own run).

Measured on the 2-core CPU with both cores busy (benchmarks/bench_stacked.py, docs/RESULTS.md section
20): no faster than the runs one by one on ML-100K (0.98x for 15 runs), slower on Last.fm (0.67x: the
stacked tables leave the core's cache), 1.4-1.6x on tables that stay in cache. The per-run stages are a
third of a stacked round and the stacked stages are not cheaper per run (the rule check is, by 30 %;
the clients' step and the aggregation are dearer), so ``fedrec experiment`` does not stack its cells.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedrec.federation.clients import (
    ClientGradients,
    ClientRound,
    client_gradients,
    draw_negatives,
    honest_uploads,
    private_step,
    sample_clients,
)
from fedrec.federation.pipeline import RoundOutcome, admitted_uploads, decide
from fedrec.federation.server import apply_decisions
from fedrec.federation.simulation import FederatedRun, Progress, check_round_budget, round_uploads
from fedrec.federation.validate import check_rule
from fedrec.models import UserBatch, gather_users
from fedrec.protocol import ServerState, UploadBatch
from fedrec.threads import ThreadPolicy

SHARED = (
    ("data", "dataset"), ("data", "rating_threshold"), ("model", "name"), ("model", "dim"),
    ("model", "gamma"), ("train", "optimizer"), ("train", "lr"), ("train", "beta1"), ("train", "beta2"),
    ("train", "eps"), ("train", "weight_decay"), ("train", "negatives"), ("federated", "momentum"),
    ("federated", "rho"), ("federated", "rounds"), ("federated", "epochs"), ("federated", "fraction"),
    ("run", "device"), ("run", "threads"),
)  # fmt: skip
"""The settings every run of a stack must share: one table shape, one optimizer rule, one round count."""


def stack_error(runs: Sequence[FederatedRun]) -> str:
    """Why these runs cannot step together, or ""."""
    if not runs:
        return "no runs to stack"
    first = runs[0]
    if len({id(run) for run in runs}) != len(runs):
        return "a run listed twice"
    for run in runs:
        cfg = run.cfg
        if cfg.federated.variance_reduction != "none" or cfg.federated.local_batch is not None:
            return "federated.variance_reduction / local_batch: stacked runs take one full-batch step"
        if run.collector is not None:
            return "a run whose clients run elsewhere (Flower) does not stack"
        if cfg.run.deferred:
            return "run.deferred: a deferred run steps alone (a stack takes the dense pass)"
        if run.server.t != first.server.t:
            return f"runs at rounds {first.server.t} and {run.server.t}: a stack steps from one round"
        for section, key in SHARED:
            a, b = getattr(getattr(first.cfg, section), key), getattr(getattr(cfg, section), key)
            if a != b:
                return f"{section}.{key}: {a!r} and {b!r} (a stack shares its tables' shape and rule)"
        if run.layout != first.layout or run.total_rounds != first.total_rounds:
            return "runs with different tables or lengths"
        for key in ("max_grad", "fused"):
            if getattr(run.limits, key) != getattr(first.limits, key):
                return f"the server's {key} differs (one rule check serves the stack)"
    return ""


def _cat_users(batches: list[UserBatch]) -> UserBatch:
    """One batch of every run's sampled users (local ids), owners numbered across the runs."""
    sizes = [b.size for b in batches]
    base = [sum(sizes[:r]) for r in range(len(batches))]
    ptr = [batches[0].ptr] + [b.ptr[1:] + b0 for b, b0 in zip(batches[1:], _ends(batches), strict=True)]
    return UserBatch(
        users=torch.cat([b.users for b in batches]),
        ptr=torch.cat(ptr),
        items=torch.cat([b.items for b in batches]),
        owner=torch.cat([b.owner + o for b, o in zip(batches, base, strict=True)]),
    )


def _ends(batches: list[UserBatch]) -> list[int]:
    """The entry count before each batch after the first (prefix sums of the batches' entries)."""
    total, out = 0, []
    for b in batches[:-1]:
        total += int(b.items.shape[0])
        out.append(total)
    return out


def _split_gradients(grads: ClientGradients, lo: int, hi: int, k0: int, k1: int, offset: int):
    """Clients ``lo:hi`` (entries ``k0:k1``) of a stacked ``ClientGradients``, in their run's rows."""
    return ClientGradients(
        owner=grads.owner[k0:k1] - lo,
        rows=grads.rows[k0:k1] - offset,
        ptr=grads.ptr[lo : hi + 1] - k0,
        g=grads.g[k0:k1],
        g_user=None if grads.g_user is None else grads.g_user[lo:hi],
        loss=grads.loss[lo:hi],
    )


@dataclass
class RunStack:
    """Runs that step together (``stack_error`` says which can); ``server`` holds their stacked tables."""

    runs: list[FederatedRun]
    server: ServerState

    @classmethod
    def of(cls, runs: Sequence[FederatedRun]) -> RunStack:
        bad = stack_error(runs)
        if bad:
            raise ValueError(f"runs cannot be stacked: {bad}")
        first = runs[0].server
        server = ServerState(
            theta=torch.cat([r.server.theta for r in runs]),
            state={k: torch.cat([r.server.state[k] for r in runs]) for k in first.state},
            t=first.t,
        )
        stack = cls(list(runs), server)
        for r, run in enumerate(stack.runs):
            run.server = stack.block(server, r)
        return stack

    @property
    def n_rows(self) -> int:
        return self.runs[0].layout.n_rows

    def _blocks(self) -> list[ServerState]:
        return [self.block(self.server, r) for r in range(len(self.runs))]

    def block(self, server: ServerState, r: int) -> ServerState:
        """Run ``r``'s view of stacked tables."""
        lo, hi = r * self.n_rows, (r + 1) * self.n_rows
        return ServerState(server.theta[lo:hi], {k: v[lo:hi] for k, v in server.state.items()}, server.t)

    # -- a round -----------------------------------------------------------------------------------

    def step(self) -> None:
        """One round of every run (``FederatedRun.step``, stacked; under ``torch.inference_mode`` as it)."""
        with torch.inference_mode():
            self._step()

    def _step(self) -> None:
        runs, t = self.runs, self.server.t + 1
        check_round_budget(t, runs[0].total_rounds)
        if any(
            run.server.theta.data_ptr() != b.theta.data_ptr()
            for run, b in zip(runs, self._blocks(), strict=True)
        ):
            raise RuntimeError("a run of the stack was stepped or loaded on its own; stack it anew")
        clients = [sample_clients(run.active, run.per_round, run.sample_gen, run.device) for run in runs]
        byz = [run.byzantine[c] for run, c in zip(runs, clients, strict=True)]
        streams = [run.round_streams(t) for run in runs]
        users = [
            None if run.private is None else run.private.u[c] for run, c in zip(runs, clients, strict=True)
        ]
        rounds = self.client_rounds(t, clients, [s[0] for s in streams], users)
        got = []
        for run, cr, b, (_, attack_gen), u in zip(runs, rounds, byz, streams, users, strict=True):
            g = round_uploads(
                run.server, run.rule, run.layout, run.train, run.cfg, cr, b, t, run.attack, attack_gen, u,
                run._popularity(),
            )  # fmt: skip
            if run.private is not None:
                private_step(run.private, run.rule, cr.clients[~b], g.g_user[~b])
            got.append(g)
        state, outs = self.server_round(t, [g.messages for g in got], clients)
        for run, out, g, c, b in zip(runs, outs, got, clients, byz, strict=True):
            run.conclude(t, c, b, g, out)  # its server becomes its block of the new state
        self.server = state

    def client_rounds(
        self, t: int, clients: list[torch.Tensor], negs: list, users: list[torch.Tensor | None]
    ) -> list[ClientRound]:
        """Every run's ``client_round`` of round ``t``: each run draws its negatives from its own
        source, then one gradient and one optimizer step over all runs' clients."""
        runs, n_rows = self.runs, self.n_rows
        run0 = runs[0]
        cfg, layout = run0.cfg, run0.layout
        batches = [gather_users(run.train, c) for run, c in zip(runs, clients, strict=True)]
        neg = []
        for run, b, src in zip(runs, batches, negs, strict=True):
            fixed = run.cfg.train.seed if run.cfg.federated.fixed_negatives else None
            neg.append(draw_negatives(b, layout, src, cfg.train.negatives, keyed_by=fixed))
        batch = _cat_users(batches)
        sizes = torch.tensor([b.size for b in batches], device=run0.device)
        offset = torch.repeat_interleave(torch.arange(len(runs), device=run0.device) * n_rows, sizes)
        u = None if users[0] is None else torch.cat(users)
        grads = client_gradients(
            self.server.theta, layout, batch, torch.cat(neg), gamma=cfg.model.gamma, lam=cfg.train.weight_decay,
            user_vectors=u, row_offset=offset,
        )  # fmt: skip
        up = honest_uploads(self.server, run0.rule, grads, batch, t)
        bounds = [0, *torch.cumsum(sizes, 0).tolist()]
        kb = grads.ptr[bounds].tolist()  # one host read a round: where each run's entries start
        out = []
        for r, (c, b, ng) in enumerate(zip(clients, batches, neg, strict=True)):
            lo, hi, k0, k1 = bounds[r], bounds[r + 1], kb[r], kb[r + 1]
            g = _split_gradients(grads, lo, hi, k0, k1, r * n_rows)
            mine = UploadBatch(
                client_ids=b.users, ptr=g.ptr, rows=g.rows, theta=up.theta[k0:k1],
                state={k: v[k0:k1] for k, v in up.state.items()}, n_examples=up.n_examples[lo:hi],
            )  # fmt: skip
            out.append(ClientRound(c, b, ng, g, mine))
        return out

    def server_round(
        self, t: int, messages: list[list[UploadBatch]], sampled: list[torch.Tensor]
    ) -> tuple[ServerState, list[RoundOutcome]]:
        """``server_round`` of every run: receive / admit / validate per run, one rule check over all
        runs' uploads (rows moved to their blocks), the weights and decisions per run, one
        aggregation. Returns the new stacked state and each run's outcome (its state a view)."""
        runs, n_rows = self.runs, self.n_rows
        rule = runs[0].rule
        front = [
            admitted_uploads(run.server, msgs, s, rule, run.limits)
            for run, msgs, s in zip(runs, messages, sampled, strict=True)
        ]
        checked = [codes == 0 for _, codes, _ in front]
        codes: list = [None] * len(runs)
        grads: list = [None] * len(runs)
        verify = [run.limits.verify or run.defense.verify for run in runs]
        for flag in sorted(set(verify)):  # one rule check per verify setting (usually one)
            idx = [r for r in range(len(runs)) if verify[r] == flag]
            stacked = _stack_uploads([front[r][0] for r in idx], [r * n_rows for r in idx])
            c, g = check_rule(
                self.server, stacked, rule, t, torch.cat([front[r][1] for r in idx]),
                max_grad=runs[0].limits.max_grad, verify=flag, fused=runs[0].limits.fused,
            )  # fmt: skip
            ends = [0, *torch.cumsum(torch.tensor([front[r][0].n for r in idx]), 0).tolist()]
            kb = stacked.ptr[ends].tolist()
            for j, r in enumerate(idx):
                codes[r] = c[ends[j] : ends[j + 1]]
                if g is not None and bool(checked[r].any()):
                    grads[r] = g[kb[j] : kb[j + 1]]
        parts, outs = [], []
        for r, (run, (admitted, _, refused)) in enumerate(zip(runs, front, strict=True)):
            g = grads[r]
            admitted, claimed, decision = decide(
                run.server, admitted, codes[r], g, rule, run.defense, t, run.f, run.limits, run.cfg.defense.seed,
            )  # fmt: skip
            parts.append((admitted, decision))
            outs.append((admitted, claimed, decision, refused, g, checked[r]))
        state = apply_decisions(self.server, parts, rule, t, n_rows, runs[0].limits.fused)
        return state, [
            RoundOutcome(self.block(state, r), d, a, c, ref, g, chk)
            for r, (a, c, d, ref, g, chk) in enumerate(outs)
        ]

    # -- the loop ----------------------------------------------------------------------------------

    def run(
        self, run_dirs: Sequence[Path | None] | None = None, progress: Sequence[Progress | None] | None = None
    ):
        """Every run to its end (``FederatedRun.run``, stacked): each evaluates, checkpoints and reports
        on its own schedule; a run's ``seconds`` is its share of the stack's wall time."""
        R = len(self.runs)
        run_dirs = list(run_dirs) if run_dirs is not None else [None] * R
        progress = list(progress) if progress is not None else [None] * R
        threads = ThreadPolicy(self.runs[0].cfg.run.threads, self.runs[0].device)
        for run in self.runs:
            run.threads = threads
        last: list = [None] * R
        T = self.runs[0].total_rounds
        start = time.perf_counter()
        while self.server.t < T:
            threads.tick()
            self.step()
            share = (time.perf_counter() - start) / R
            for r, run in enumerate(self.runs):
                run.seconds += share
                run._clock = time.perf_counter()  # its evaluation and checkpoint are its own time
                done = run.after_round(run_dirs[r], progress[r])
                run.clock_in()
                last[r] = done if done is not None else last[r]
            start = time.perf_counter()
        return last


def _stack_uploads(batches: list[UploadBatch], offsets: list[int]) -> UploadBatch:
    """The runs' admitted uploads as one batch, each run's rows moved to its block (``offsets``). The
    rows of a slot its run rejected may then name another run's rows: the rule check reads only the
    slots that passed validation, whose rows lie in their own block."""
    counts = [int(b.rows.shape[0]) for b in batches]
    base = [sum(counts[:r]) for r in range(len(batches))]
    first = batches[0]
    return UploadBatch(
        client_ids=torch.cat([b.client_ids for b in batches]),
        ptr=torch.cat([first.ptr] + [b.ptr[1:] + k for b, k in zip(batches[1:], base[1:], strict=True)]),
        rows=torch.cat([b.rows + o for b, o in zip(batches, offsets, strict=True)]),
        theta=torch.cat([b.theta for b in batches]),
        state={k: torch.cat([b.state[k] for b in batches]) for k in first.state},
        n_examples=torch.cat([b.n_examples for b in batches]),
    )
