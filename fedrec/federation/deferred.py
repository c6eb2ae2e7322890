"""The server's default pass deferred (issue 14, the catalog item; ``run.deferred``): a round whose cost follows
the rows it touches, not the catalog.

Every round that aggregates, every row of the table takes the rule's zero-gradient step
(``default_rows``; Adam: ``m = b1 m``, ``v = b2 v``, theta moved by ``eta_t m / sqrt(v + eps)``,
paper 000 Eq. 2-6 with g = 0): a pass over the whole table (fedrec.federation.server), 98 % of a
79-client round at a million items. Deferred, each row keeps the number of passes applied to it
(``clock``) and the server the log of passes (their rounds and Adam step sizes); a row is caught up,
by replaying its skipped passes in order on that row alone, when the server next reads it: the rows
a round's clients read (their gather), the listed rows of the uploads (validation, the defense's
vectors, the aggregation), and every row before an evaluation, a checkpoint or anything else that
reads the whole table: ``theta`` / ``state`` of a ``DeferredState`` catch every row up, so nothing can
read a stale row. The stages of a round read ``ServerState.rows_at`` instead, which catches up only
those rows; so do the attacks (``AttackContext.prev``), except those that upload every row.

The tables are written in place, so the store refuses to go on from tables someone else wrote: it
keeps torch's in-place write counters of its tables as its own last write left them, and any other
write (an attack that updated ``ctx.server.theta`` by mistake) makes its next read or write raise
``ForeignWrite`` before a stale clock could be trusted.

Exactness. A caught-up row took the same steps in the same order as under the dense pass: Adam's
replay (fedrec.federation.replay) makes the IEEE operations of the compiled dense pass, so a deferred
run equals a run with ``run.compile`` bit for bit (tested over 150 rounds with rows frozen and
decayed), and the eager run to the eager square root's rounding; rows whose moments are +0 are
fixed points (skipped); theta stops at a bound that proves every later step rounds away (replay.py).
The other rules replay pass by pass with their own ``default_rows`` (bit for bit; ``max lag`` Python
steps, so meant for Adam's catalogs).

What it costs: the round's own rows only (``benchmarks/bench_catalog.py``); a row read after k skipped
rounds costs ~``min(k, 200)`` steps of arithmetic and k multiplications of m and v. An evaluation or
a checkpoint catches every row up (the benchmark prints it). Previous states: a round leaves the
state before it readable (the forged distances of the round record read it) through the values it
overwrote; an older one, or one read after a later round caught rows up, raises ``SupersededState``.
Runs stacked in one table (fedrec.federation.stacked) step densely.
"""

from __future__ import annotations

from typing import Any

import torch

from fedrec.federation.replay import catch_up_native, replay, round_rows_native
from fedrec.optim.adam import Adam
from fedrec.protocol import ServerState

Tensor = torch.Tensor


class SupersededState(RuntimeError):
    """A deferred state read after two later rounds overwrote its rows."""


class ForeignWrite(RuntimeError):
    """A deferred store's tables were written in place by something other than the store."""


class DeferredStore:
    """The tables of a deferred run, updated in place, with every row's pass count (``clock``) and the
    log of passes (``rounds[p - 1]``: the round of pass ``p``; ``eta[p - 1]`` its Adam step size). Shared
    by the run's successive ``DeferredState``s; ``epoch`` counts the rounds that wrote rows (a state is
    current while its epoch is the store's)."""

    def __init__(self, tables: dict[str, Tensor], rule: Any) -> None:
        theta = tables["theta"]
        # ordinary tensors even when made during a round (inference tensors have no write counter and
        # refuse in-place writes outside inference mode, where a caller's own aggregate may write them)
        with torch.inference_mode(False):
            self.tables = {k: x.clone() if x.is_inference() else x for k, x in tables.items()}
            self.clock = torch.zeros(theta.shape[0], dtype=torch.int64, device=theta.device)
            self._eta = torch.zeros(16, dtype=theta.dtype, device=theta.device)
        self.rule = rule
        self.rounds: list[int] = []
        self._eta_max = 0.0  # a bound on every logged step size (the C catch-up's freeze test)
        self.epoch = 0
        self.full_catch_ups = 0  # reads of the whole table (tests assert a round makes none)
        # the values the last write overwrote: (epoch, passes, rows, {key: values}) of the state before
        self.before: tuple[int, int, Tensor, dict[str, Tensor]] | None = None
        self._pending: dict[str, Tensor] = {}
        self.adam = type(rule) is Adam and set(tables) == {"theta", "m", "v"}
        self._head: Tensor | None = None  # write_terms' per-row scratch, all -1 between calls
        self._versions = self.versions()

    def versions(self) -> list[int]:
        """Torch's in-place write counters of the tables (a write through a raw pointer, as the C
        replay's, does not count: it is the store's own)."""
        return [x._version for x in self.tables.values()]

    def written_by_others(self) -> bool:
        """Whether the tables were written in place since the store last wrote them."""
        return self.versions() != self._versions

    def check_own(self) -> None:
        """Raise ``ForeignWrite`` when the tables were written since the store last wrote them."""
        if self.written_by_others():
            raise ForeignWrite(
                "the deferred tables were written in place outside their store (an attack or a stage "
                "that updated ctx.server / server.theta); the run's state cannot be trusted"
            )

    @property
    def passes(self) -> int:
        return len(self.rounds)

    def log_pass(self, t: int) -> None:
        """Pass ``passes + 1`` is round ``t``'s (every row takes it, now or when next read)."""
        p = self.passes
        if p >= self._eta.shape[0]:
            with torch.inference_mode(False):  # the store's own tensor: written outside rounds too
                grown = torch.zeros(2 * self._eta.shape[0], dtype=self._eta.dtype, device=self._eta.device)
            grown[:p] = self._eta
            self._eta = grown
        if self.adam:
            self._eta[p] = self.rule.step_size(t)  # rounded to the tables' dtype, as the pass rounds it
            # the stored value (a subnormal rounds up 2x); only the C catch-up, on the CPU, reads it
            if self._eta.device.type == "cpu":
                self._eta_max = max(self._eta_max, abs(float(self._eta[p])))
        self.rounds.append(t)

    # -- catching rows up ----------------------------------------------------------------------

    def catch_up(self, rows: Tensor | None, target: int | None = None) -> None:
        """Rows ``rows`` (any order, repeats allowed; None: every row) brought to ``target`` passes
        (default: all of them), in place. Rows already there are not touched."""
        self.check_own()
        target = self.passes if target is None else target
        if rows is None:
            self.full_catch_ups += 1
        if self.adam:  # the C loop, in place on the tables: no gathers, masks or copies
            every = torch.arange(self.clock.shape[0], device=self.clock.device) if rows is None else rows
            behind = catch_up_native(
                self.tables, self.clock, every, target, self._eta, self._eta_max, self.rule
            )
            if behind is not None:
                if behind and self.before is not None and target > self.before[1]:
                    self.before = None  # rows the last round did not write move past the state before it
                return
        if rows is None:
            stale = torch.nonzero(self.clock < target).flatten()
        else:
            rows = torch.unique(rows)
            stale = rows[self.clock.index_select(0, rows) < target]
        if stale.numel() == 0:
            return
        if self.before is not None and target > self.before[1]:
            self.before = None  # rows the last round did not write move past the state before it
        start = self.clock.index_select(0, stale)
        (self._adam_replay if self.adam else self._generic_replay)(stale, start, target)
        self.clock.index_fill_(0, stale, target)

    def _generic_replay(self, stale: Tensor, start: Tensor, target: int) -> None:
        """Pass by pass with the rule's own ``default_rows``: rows sorted by their pass count, pass ``p``
        applies to the prefix of rows with fewer than ``p`` passes."""
        order = torch.argsort(start, stable=True)
        start, rows = start.index_select(0, order), stale.index_select(0, order)
        work = {k: x.index_select(0, rows) for k, x in self.tables.items()}
        lo = int(start[0])
        counts = torch.searchsorted(start, torch.arange(lo + 1, target + 1, device=start.device)).tolist()
        for p, n in zip(range(lo + 1, target + 1), counts, strict=True):  # n: rows with fewer than p passes
            out = self.rule.default_rows({k: x[:n] for k, x in work.items()}, self.rounds[p - 1])
            for k, x in work.items():
                x[:n] = out[k]
        self._write(rows, work)

    def _adam_replay(self, stale: Tensor, start: Tensor, target: int) -> None:
        """Adam's replay (fedrec.federation.replay) of the rows that can move."""
        T = self.tables
        m, v = T["m"].index_select(0, stale), T["v"].index_select(0, stale)
        # rows whose m and v are +0 (never listed, or decayed to zero) are fixed points of the step:
        # theta - eta_t * (+0 / sqrt(+0 + eps)) is theta, bit for bit (-0 would not be: its bits differ)
        bits = _int_of(m.dtype)
        zero = torch.zeros((), dtype=bits, device=m.device)
        moving = ~((m.view(bits) == zero).all(-1) & (v.view(bits) == zero).all(-1))
        if not bool(moving.all()):
            stale, start, m, v = stale[moving], start[moving], m[moving], v[moving]
            if stale.numel() == 0:
                return
        th = T["theta"].index_select(0, stale)
        th, m, v = replay(th, m, v, target - start, start, self._eta[:target], self.rule, inplace=True)
        self._write(stale, {"theta": th, "m": m, "v": v})

    def _write(self, rows: Tensor, values: dict[str, Tensor]) -> None:
        self.check_own()
        for k, x in values.items():
            self.tables[k].index_copy_(0, rows, x)
        self._versions = self.versions()

    # -- writing a round -----------------------------------------------------------------------

    def gather_for_round(self, rows: Tensor, t: int) -> dict[str, Tensor]:
        """Round ``t``'s default values at ``rows`` (sorted unique): the rows caught up to the passes
        before the round (kept for the state before it), then stepped by the round's pass. Nothing is
        logged or written until ``write``: a round that fails in between leaves the store as it was."""
        self.catch_up(rows)
        before = {k: x.index_select(0, rows) for k, x in self.tables.items()}
        self._pending = before
        if not self.adam:
            out = self.rule.default_rows(before, t)
            # a rule that returned a tensor it was given would have the round write into ``before``
            return {k: x.clone() if x.data_ptr() == before[k].data_ptr() else x for k, x in out.items()}
        eta = torch.full((1,), self.rule.step_size(t), dtype=self._eta.dtype, device=rows.device)
        one = torch.ones(rows.shape[0], dtype=torch.int64, device=rows.device)
        first = torch.zeros_like(one)  # every row's one step is eta[0], the round's
        th, m, v = replay(before["theta"], before["m"], before["v"], one, first, eta, self.rule)
        return {"theta": th, "m": m, "v": v}

    def write_terms(
        self, t: int, idx: Tensor, owner: Tensor, w: Tensor, X: dict[str, Tensor], keep: Tensor | None = None
    ) -> bool:
        """Round ``t`` in one C loop (``replay.round_rows_native``), in place: at each row a kept upload
        lists (``keep``: bool per upload, None: all), the row caught up, its default for the round and
        the terms ``w_i (X_i - D)`` (fedrec.federation.server), what ``gather_for_round``, the terms and
        ``write`` give, with no gathers or copies; the round's pass logged for every other row. False
        (nothing done) where the loop does not apply; an index outside raises before any write."""
        if not self.adam:
            return False
        self.check_own()
        n = self.clock.shape[0]
        if self._head is None:
            with torch.inference_mode(False):
                self._head = torch.full((n,), -1, dtype=torch.int64, device=self.clock.device)
        target = self.passes
        out = round_rows_native(
            self.tables, self.clock, self._head, target, self._eta, self._eta_max, self.rule,
            self.rule.step_size(t), idx, owner, w, X, keep,
        )  # fmt: skip
        if out is None:
            return False
        rows, before = out
        self.before = (self.epoch, target, rows, before)
        self._pending = {}
        self.log_pass(t)
        self.epoch += 1
        return True

    def state(self, t: int) -> DeferredState:
        """The store's current state, at round ``t``."""
        return DeferredState(self, t)

    def write(self, rows: Tensor, values: dict[str, Tensor], t: int) -> None:
        """Round ``t``'s values at ``rows`` (``gather_for_round``'s rows), in place, and its pass logged
        for every other row; what they overwrite stays readable for the state before the round."""
        self.before = (self.epoch, self.passes, rows, self._pending)
        self._pending = {}
        self.log_pass(t)
        self._write(rows, values)
        self.clock.index_fill_(0, rows, self.passes)
        self.epoch += 1


def _int_of(dtype: torch.dtype) -> torch.dtype:
    """The integer dtype of a float's width (its bits)."""
    return {torch.float64: torch.int64, torch.float32: torch.int32}.get(dtype, torch.int16)


class DeferredState(ServerState):
    """A ``ServerState`` over a ``DeferredStore``: ``rows_at`` catches up only the rows it reads;
    ``theta`` / ``state`` catch every row up (a read of the whole table is always current). Reading a
    state two writes old raises ``SupersededState``."""

    def __init__(self, store: DeferredStore, t: int) -> None:
        self._store, self._epoch, self._passes, self.t = store, store.epoch, store.passes, t

    @classmethod
    def create(cls, theta: Tensor, state: dict[str, Tensor], t: int, rule: Any) -> DeferredState:
        return cls(DeferredStore({"theta": theta, **state}, rule), t)

    @property
    def deferred(self) -> DeferredStore:
        return self._store

    def _where(self) -> str:
        s = self._store
        if self._epoch == s.epoch:
            return "current"
        if s.before is not None and self._epoch == s.before[0]:
            return "before"
        raise SupersededState(
            f"the server state of round {self.t} was overwritten by later rounds (a deferred run keeps "
            "the state before the last round readable; clone a state to keep it)"
        )

    @property
    def theta(self) -> Tensor:  # type: ignore[override]
        return self._full()["theta"]

    @property
    def state(self) -> dict[str, Tensor]:  # type: ignore[override]
        full = self._full()
        return {k: x for k, x in full.items() if k != "theta"}

    def _full(self) -> dict[str, Tensor]:
        s = self._store
        if self._where() == "current":
            s.catch_up(None, self._passes)
            return s.tables
        _, passes, rows, vals = s.before
        s.catch_up(None, passes)  # rows the last round did not write are at most at its pass count
        out = {k: x.clone() for k, x in s.tables.items()}
        for k, x in out.items():
            x.index_copy_(0, rows, vals[k])
        return out

    def rows_at(self, rows: Tensor) -> dict[str, Tensor]:
        s = self._store
        if self._where() == "current":
            s.catch_up(rows, self._passes)
            return {k: x.index_select(0, rows) for k, x in s.tables.items()}
        _, passes, written, vals = s.before
        written, order = torch.sort(written)  # the C round lists its rows unsorted
        pos = torch.searchsorted(written, rows).clamp(max=max(written.shape[0] - 1, 0))
        hit = (
            written.index_select(0, pos) == rows
            if written.numel()
            else torch.zeros_like(rows, dtype=torch.bool)
        )
        s.catch_up(rows[~hit], passes)
        out = {k: x.index_select(0, rows) for k, x in s.tables.items()}
        if written.numel():
            at = order.index_select(0, pos[hit])
            for k, x in out.items():
                x[hit] = vals[k].index_select(0, at)
        return out

    def tables_for(self, rows: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        if self._where() == "current":  # the rows caught up in place: the caller gathers them itself
            return self.current_tables(rows), rows
        return self.rows_at(rows), torch.arange(rows.shape[0], device=rows.device)

    def current_tables(self, rows: Tensor) -> dict[str, Tensor]:
        """The store's tables with ``rows`` caught up: only those rows may be read (the client gather
        reads its rows from the whole table). The current state only."""
        if self._where() != "current":
            raise SupersededState("current_tables reads the current state only")
        self._store.catch_up(rows, self._passes)
        return self._store.tables

    @property
    def n_rows(self) -> int:
        return int(self._store.tables["theta"].shape[0])

    @property
    def dim(self) -> int:
        return int(self._store.tables["theta"].shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self._store.tables["theta"].dtype

    @property
    def device(self) -> torch.device:
        return self._store.tables["theta"].device

    def advanced(self, t: int) -> DeferredState:
        self.require_current()
        return DeferredState(self._store, t)

    def require_current(self) -> None:
        """Refuse to step from a state that is not the store's current one: a deferred round writes the
        tables in place, so a second round from the same state (a what-if round) would step the run
        itself. Such a round takes ``state.clone()``, a dense copy."""
        if self._where() != "current":
            raise SupersededState(
                f"a round from the server state of round {self.t}, which later rounds have moved: a "
                "deferred state steps once (clone() it for a what-if round)"
            )
        if self._passes != self._store.passes:
            raise SupersededState("a round from a deferred state behind its store (clone() it first)")

    def clone(self) -> ServerState:
        full = self._full()
        return ServerState(
            full["theta"].clone(), {k: x.clone() for k, x in full.items() if k != "theta"}, self.t
        )

    def __repr__(self) -> str:
        return f"DeferredState(t={self.t}, rows={self.n_rows}, passes={self._passes})"

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__


DEFER_BYTES = 8 << 20
"""``run.deferred`` unset: tables (theta and the states together) at least this large defer their pass.
Measured (docs/RESULTS.md section 27, one thread, the 2-core machine): ML-100K's 2.6 MB tables 0.97x the
dense round, Last.fm's 27 MB 1.36x faster, Citeulike-a's 26 MB 1.09x, Citeulike-t's 40 MB 1.25x; past
the caches the dense pass streams every row through memory, a deferred round only the rows it reads."""


def auto_deferred(rule: Any, fused: bool, n_rows: int, d: int, device: torch.device) -> bool:
    """What ``run.deferred`` unset chooses: deferred where it changes the time and nothing else. The
    deferred rows equal the dense ones bit for bit where the dense pass is Adam's C loop (``fused``, the
    CPU, float32; fedrec.optim.adam_pass) and the catch-up is the C one (fedrec.federation.replay); there,
    tables of at least ``DEFER_BYTES`` defer. A run whose rounds read the whole table (an attack that
    uploads every row) goes back to the dense pass after the first such round (FederatedRun)."""
    from fedrec.federation.replay import native as replay_native
    from fedrec.optim import adam_pass
    from fedrec.optim.fused import compiler_available

    tables = (1 + len(rule.state_names)) * n_rows * d * 4
    return (
        type(rule) is Adam
        and fused
        and torch.device(device).type == "cpu"
        and tables >= DEFER_BYTES
        and compiler_available()
        and adam_pass.native() is not None
        and replay_native() is not None
    )


def dense_state(server: ServerState) -> ServerState:
    """A deferred state's tables as a plain dense state, every row caught up: copies, so that a round
    stepped later from an older state of the store (a hook's what-if round) cannot write into the run's
    tables."""
    if server.deferred is None:
        return server
    with torch.inference_mode(False):  # called inside a round: the run's tables stay ordinary tensors
        return server.clone()


def server_state(theta: Tensor, state: dict[str, Tensor], t: int, rule: Any, deferred: bool) -> ServerState:
    """A run's global state: a ``DeferredState`` when ``run.deferred``, else the plain dense one."""
    if deferred:
        return DeferredState.create(theta, state, t, rule)
    return ServerState(theta=theta, state=state, t=t)
