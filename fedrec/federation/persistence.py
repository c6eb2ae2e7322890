"""Checkpoint I/O of a federated run (DESIGN.md section 10): what ``resume`` needs, as tensors and plain
values only (read with ``torch.load(weights_only=True)``), checked against the run's own structure
before use, and the run directory's tables, each written atomically.

``RunCheckpointing`` is a base of ``FederatedRun``; it reads the run's ``server``, ``private``, ``saga``,
generators, ``metric_rows``, ``recorder``, ``seconds``, ``rule``, ``cfg``, ``device`` and ``total_rounds``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fedrec.federation.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    run_identity,
    save_checkpoint,
)
from fedrec.federation.clients import PrivateState
from fedrec.federation.deferred import server_state
from fedrec.federation.recorder import RoundRecorder
from fedrec.protocol import REASONS, THETA_MAX
from fedrec.runs import _atomic


def _upgrade_records(sd: Any) -> Any:
    """Round records of a checkpoint written before they grew: ``refused`` had fewer columns before
    reasons were appended to ``REASONS`` (the new reasons never occurred: zero columns; codes never
    move), and ``drawn`` (the member a randomised rule drew) did not exist (no rule drew: -1)."""
    records = sd.get("records") if isinstance(sd, dict) else None
    if not isinstance(records, dict):
        return sd
    refused = records.get("refused")
    if isinstance(refused, torch.Tensor) and refused.dim() == 2 and refused.shape[1] < len(REASONS):
        pad = refused.new_zeros(refused.shape[0], len(REASONS) - refused.shape[1])
        records = {**records, "refused": torch.cat([refused, pad], 1)}
    if "drawn" not in records and isinstance(refused, torch.Tensor) and refused.dim() == 2:
        records = {**records, "drawn": torch.full((refused.shape[0],), -1, dtype=torch.int64)}
    return {**sd, "records": records}


def _own(x, copy: bool = False):
    """``x``, or a copy of it when it is a view of a larger tensor (fedrec.federation.stacked) or
    ``copy``. The storage's size says it (an inference tensor's view, as a round makes, has no ``_base``)."""
    view = x._base is not None or x.untyped_storage().nbytes() > x.numel() * x.element_size()
    return x.clone() if view or copy else x


class RunCheckpointing:
    """State dict, checks, save / load and the tables of a run directory."""

    def state_dict(self) -> dict[str, Any]:
        """Everything ``resume`` needs, as tensors and plain Python values only: it must load with
        ``torch.load(weights_only=True)``, so a checkpoint can never carry code."""
        records, losses = self.recorder.state(self.server.t)
        return {
            "t": int(self.server.t),
            # a stacked run's tables are views of the stack's, which torch.save would store whole; a
            # deferred run's are written in place by its next round
            "theta": _own(self.server.theta, self.server.deferred is not None),
            "state": {k: _own(v, self.server.deferred is not None) for k, v in self.server.state.items()},
            "private": None if self.private is None else dict(vars(self.private)),
            "saga": None if self.saga is None else self.saga.state(),
            "sample_gen": self.sample_gen.get_state(),
            "neg_gen": self.neg_gen.get_state(),
            "attack_gen": self.attack_gen.get_state(),
            # plain int / str / float: a numpy scalar would need an unpickler that runs code
            "metric_rows": [
                {"t": int(r["t"]), "metric": str(r["metric"]), "k": int(r["k"]), "value": float(r["value"])}
                for r in self.metric_rows
            ],
            "records": records,
            "losses": losses,
            "seconds": float(self.seconds),
            "data": self.split.fingerprint,  # checked on resume and evaluate (None: written before it)
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        sd = _upgrade_records(sd)
        if isinstance(sd, dict) and "saga" not in sd:  # written before SAGA: no run of then had a table
            sd = {**sd, "saga": None}
        if isinstance(sd, dict) and "data" not in sd:  # written before the data's fingerprint: unchecked
            sd = {**sd, "data": None}
        self._check_state_dict(sd)
        # a deferred state writes its tables in place: it must own them (not share a state dict's)
        own = self.server.deferred is not None  # the run's choice (run.deferred, or unset: its size)
        state = {k: v.to(self.device, copy=own) for k, v in sd["state"].items()}
        self.server = server_state(sd["theta"].to(self.device, copy=own), state, sd["t"], self.rule, own)
        if sd["private"] is not None:
            p = sd["private"]
            self.private = PrivateState(
                u=p["u"].to(self.device), state={k: v.to(self.device) for k, v in p["state"].items()},
                steps=p["steps"].to(self.device),
            )  # fmt: skip
        if sd["saga"] is not None:
            self.saga.restore(sd["saga"], self.device)
        self.sample_gen.set_state(sd["sample_gen"])
        self.neg_gen.set_state(sd["neg_gen"])
        self.attack_gen.set_state(sd["attack_gen"])
        self.metric_rows = list(sd["metric_rows"])
        self.recorder.restore(sd["records"], sd["losses"], sd["t"])
        self.seconds = float(sd["seconds"])

    def _check_state_dict(self, sd: Any) -> None:
        """A checkpoint whose checksum and identity match is ours, but a crafted one can match too:
        check its structure against this run's, so a bad one is one line instead of a traceback."""

        def like(got: Any, want: Any, where: str, first_dim: int | None = None) -> None:
            if isinstance(want, torch.Tensor):
                shape = tuple(want.shape) if first_dim is None else (first_dim, *want.shape[1:])
                if not isinstance(got, torch.Tensor) or got.dtype != want.dtype or tuple(got.shape) != shape:
                    what = (
                        f"{got.dtype} {tuple(got.shape)}"
                        if isinstance(got, torch.Tensor)
                        else type(got).__name__
                    )
                    raise CheckpointError(f"checkpoint {where}: {what}, expected {want.dtype} {shape}")
            elif isinstance(want, dict):
                if not isinstance(got, dict) or set(got) != set(want):
                    raise CheckpointError(f"checkpoint {where}: keys do not match this run's")
                for k in want:
                    like(got[k], want[k], f"{where}.{k}", first_dim)
            elif want is not None and not isinstance(got, type(want)):
                raise CheckpointError(
                    f"checkpoint {where}: {type(got).__name__}, expected {type(want).__name__}"
                )

        template = self.state_dict()
        if not isinstance(sd, dict) or set(sd) != set(template):
            raise CheckpointError("checkpoint: not a federated run's state (keys do not match)")
        data = sd["data"]
        if data is not None and data != template["data"]:  # before the shapes: they differ for this reason
            raise CheckpointError(
                f"checkpoint: trained on other data ({data!r:.120}) than the dataset now gives "
                f"({template['data']}): the data file changed since the run"
            )
        t = sd["t"]
        if type(t) is not int or not 0 <= t <= self.total_rounds:
            raise CheckpointError(f"checkpoint: round {t!r} outside 0..{self.total_rounds}")
        for key in ("theta", "state", "private", "saga", "sample_gen", "neg_gen", "attack_gen"):
            like(sd[key], template[key], key)
        if (sd["private"] is None) != (template["private"] is None):
            raise CheckpointError("checkpoint: private client state does not match this run's model")
        if (sd["saga"] is None) != (template["saga"] is None):
            raise CheckpointError("checkpoint: the clients' SAGA table does not match this run's config")
        if not isinstance(sd["metric_rows"], list) or not isinstance(sd["records"], dict):
            raise CheckpointError("checkpoint: metric_rows or records malformed")
        if sd["losses"] is not None:
            # the template of a fresh run has no records yet: compare with freshly allocated ones
            fresh = RoundRecorder(self.recorder.rounds, self.recorder.per_round, self.recorder.device)
            fresh.allocate()
            like(sd["losses"], fresh.losses, "losses", t)
            like(sd["records"], fresh.records, "records", t)
        elif t > 0 or sd["records"]:
            raise CheckpointError(f"checkpoint: round {t} without its round records")
        self._check_values(sd, t)

    def _check_next_step(self, sd: dict[str, Any], t: int) -> None:
        """Finite but huge states (an m of 3e38) passed every check above, then overflowed in the next
        step's bias correction: every honest upload was non-finite from then on and nothing was ever
        accepted again. Refused unless the tables take round ``t + 1`` finite both ways: the default
        (zero-gradient) step and a client step at ``+-defense.max_grad`` in every coordinate."""
        g = float(self.cfg.defense.max_grad)
        parts = [("", sd["theta"], sd["state"], t + 1)]
        if sd["private"] is not None:  # a user's own step count may be 1: the largest bias correction
            parts.append(("private ", sd["private"]["u"], sd["private"]["state"], 1))
        for prefix, theta, state, step_t in parts:
            if not state or not theta.is_floating_point():
                continue
            prev = {"theta": theta, **state}
            full = torch.full_like(theta, g)
            steps = (
                self.rule.default_rows(prev, step_t),
                *(self.rule.client_step(prev, x, step_t) for x in (full, -full)),
            )
            for step in steps:
                bad = next((k for k, x in step.items() if not bool(torch.isfinite(x).all())), None)
                if bad is not None:
                    raise CheckpointError(
                        f"checkpoint {prefix}tables: values too large to take another step ({bad} would "
                        f"be infinite at step {step_t})"
                    )

    def _check_values(self, sd: dict[str, Any], t: int) -> None:
        """What a structurally sound but crafted checkpoint could still carry: non-finite or
        out-of-domain tables (a NaN model, or a negative second moment that makes every honest upload
        fail the rule check from then on), generator states torch refuses, malformed metric rows or
        clock, reason codes outside ``REASONS``. Each is one line, before anything is restored."""
        tables = {"theta": sd["theta"], **{f"state.{k}": v for k, v in sd["state"].items()}}
        if sd["private"] is not None:
            tables["private.u"] = sd["private"]["u"]
            tables.update({f"private.state.{k}": v for k, v in sd["private"]["state"].items()})
            tables["private.steps"] = sd["private"]["steps"]
        if sd["saga"] is not None:
            tables.update({f"saga.{k}": v for k, v in sd["saga"].items()})
        for where, x in tables.items():
            if type(x) is not torch.Tensor:
                raise CheckpointError(f"checkpoint {where}: a {type(x).__name__}, expected a plain tensor")
            if x.requires_grad:
                raise CheckpointError(f"checkpoint {where}: a tensor that requires grad")
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise CheckpointError(f"checkpoint {where}: values that are not finite")
        if "private.steps" in tables and bool((tables["private.steps"] < 0).any()):
            raise CheckpointError("checkpoint private.steps: negative step counts")
        for name in self.rule.nonnegative:
            for where in (f"state.{name}", f"private.state.{name}"):
                if where in tables and bool((tables[where] < 0).any()):
                    raise CheckpointError(f"checkpoint {where}: negative values (the rule keeps it >= 0)")
        for where in ("theta", "private.u"):
            if where in tables and bool((tables[where].abs() > THETA_MAX).any()):
                raise CheckpointError(
                    f"checkpoint {where}: values beyond {THETA_MAX:g} (a diverged model: the clients' scores overflow from it)"
                )
        self._check_next_step(sd, t)
        for key in ("sample_gen", "neg_gen", "attack_gen"):
            try:
                torch.Generator(device=getattr(self, key).device).set_state(sd[key])
            except (RuntimeError, ValueError, TypeError) as e:
                raise CheckpointError(f"checkpoint {key}: not a generator state ({e})") from None
        for row in sd["metric_rows"]:
            if not (
                isinstance(row, dict) and set(row) == {"t", "metric", "k", "value"}
                and type(row["t"]) is int and 0 <= row["t"] <= t and isinstance(row["metric"], str)
                and type(row["k"]) is int and 1 <= row["k"] < 2**31
                and (type(row["value"]) is float or (type(row["value"]) is int and abs(row["value"]) < 2**63))
            ):  # fmt: skip
                raise CheckpointError(f"checkpoint metric_rows: malformed row {row!r:.80}")
        seconds = sd["seconds"]
        if type(seconds) not in (int, float) or not 0 <= seconds < float("inf"):
            raise CheckpointError(f"checkpoint seconds: {seconds!r:.40}, expected a finite number >= 0")
        if sd["records"]:
            reason = sd["records"]["reason"]
            if bool(((reason < 0) | (reason >= len(REASONS))).any()):
                raise CheckpointError(f"checkpoint records.reason: codes outside 0..{len(REASONS) - 1}")
            if bool((sd["records"]["drawn"] < -1).any()):
                raise CheckpointError("checkpoint records.drawn: values below -1")

    def save(self, run_dir: Path) -> None:
        """Checkpoint, then the tables; each written atomically, so a kill leaves the previous version."""
        save_checkpoint(run_dir / CHECKPOINT, self.state_dict(), run_identity(self.cfg))
        self.write_tables(run_dir)

    def load(self, run_dir: Path) -> None:
        """Continue from ``run_dir``'s checkpoint, after checking its checksum, identity and contents."""
        path = run_dir / CHECKPOINT
        self.restore_from(path, load_checkpoint(path, run_identity(self.cfg)))

    def restore_from(self, path: Path, sd: dict[str, Any]) -> None:
        """``load_state_dict`` of the checkpoint read from ``path``: a refusal's line names the file."""
        try:
            self.load_state_dict(sd)
        except CheckpointError as e:  # the contents' checks name a key
            raise CheckpointError(f"{path}: {e}") from None

    def write_tables(self, run_dir: Path) -> None:
        metrics = pd.DataFrame(self.metric_rows, columns=["t", "metric", "k", "value"])
        _atomic(run_dir / "metrics.parquet", lambda p: metrics.to_parquet(p, index=False))
        rounds = self.rounds_frame()
        _atomic(run_dir / "rounds.parquet", lambda p: rounds.to_parquet(p, index=False))
