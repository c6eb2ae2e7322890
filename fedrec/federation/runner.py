"""One federated run end to end: data, split, rounds, evaluation, run directory; or its resumption."""

from __future__ import annotations

import dataclasses
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.config import (
    FEDERATED_MODELS,
    Config,
    ConfigError,
    check_eval_ks,
    check_memory,
    check_population,
    check_round_size,
    load_config,
    validate,
)
from fedrec.data import load_dataset, split_per_user
from fedrec.device import resolve_device
from fedrec.federation.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, run_identity
from fedrec.federation.detection import detection_summary, per_round
from fedrec.federation.simulation import FederatedRun, Progress, clients_per_round
from fedrec.optim.fused import default_pass, rule_check
from fedrec.runs import _atomic, new_run_dir, read_summary, write_config, write_summary

Collector = Any  # (run, t, clients, byzantine) -> Collected: see FederatedRun.collector

log = logging.getLogger(__name__)


def prepare_federated(cfg: Config) -> FederatedRun:
    """Validate ``cfg``, load and split its data, and build the run at round 0 (no directory yet)."""
    if cfg.model.name not in FEDERATED_MODELS:
        raise ConfigError(
            f"model.name={cfg.model.name!r}: federated models are {', '.join(FEDERATED_MODELS)}"
        )
    validate(cfg, mode="federated")  # a Config built in code has not been through load_config
    device = resolve_device(cfg.run.device)
    inter = load_dataset(cfg.data.dataset, cfg.data.data_dir, rating_threshold=cfg.data.rating_threshold)
    split = split_per_user(inter, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed)
    check_eval_ks(cfg, split.train.n_items, split.train.name, split.most_seen())
    train = split.train
    users = check_population(cfg, train.n_users, train.name)
    per_round = clients_per_round(users, cfg.federated.fraction)
    largest = int(np.sort(train.counts())[-per_round:].sum()) if train.n_users else 0
    check_memory(
        cfg, "federated", n_users=users, n_items=train.n_items, n_train=train.nnz, round_entries=largest,
        n_fake=users - train.n_users,
    )  # fmt: skip
    run = FederatedRun.create(cfg, split, device)
    check_round_size(cfg, run.per_round, run.f)  # n is known only now; still before any run directory
    return run


def run_federated(
    cfg: Config, progress: Progress | None = None, collector: Collector | None = None
) -> tuple[dict[str, Any], Path]:
    """A fresh federated run of ``cfg``; returns the summary and the run directory. ``collector``: the
    clients' side of every round when it runs elsewhere (``FederatedRun.collector``: Flower)."""
    run = prepare_federated(cfg)
    run.collector = collector
    threat = ""
    if cfg.attack.name != "none":
        threat += f"-{cfg.attack.name}{round(100 * cfg.attack.fraction)}"
    if cfg.defense.name != "none":
        threat += f"-{cfg.defense.name}"
    # the attack and the defense in the name: a folder of runs reads like the grid it is
    base = f"{run.split.train.name}-{cfg.model.name}-{cfg.train.optimizer}-federated"
    name = cfg.run.name or (base + threat).replace("+", "-")
    run_dir = new_run_dir(cfg.run.out_dir, name)
    write_config(run_dir, cfg.to_yaml())
    return _finish(run, run_dir, progress), run_dir


class RunFinished(Exception):
    """``resume`` of a run that already finished: nothing to do. ``summary`` is its stored summary."""

    def __init__(self, run_dir: Path, summary: dict[str, Any]):
        super().__init__(f"{run_dir}: run already finished at round {summary.get('rounds')}; nothing to do")
        self.summary = summary


def resume_federated(
    run_dir: str | Path, progress: Progress | None = None, collector: Collector | None = None
) -> tuple[dict[str, Any], Path]:
    """Continue a killed run from its last checkpoint to the length its config asks for.

    The checkpoint is verified (checksum, then that config.yaml still describes the run that wrote it)
    before anything is built or written; a run that already finished raises :class:`RunFinished`."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (not a run directory)")
    cfg = load_config(run_dir / "config.yaml")
    if cfg.train.mode != "federated":
        raise ConfigError(f"{run_dir}: a {cfg.train.mode} run; only federated runs resume (rerun it instead)")
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file() and (run_dir / "summary.json").is_file():
        raise CheckpointError(f"{ckpt}: missing, but summary.json says the run finished; nothing resumed")
    sd = load_checkpoint(ckpt, run_identity(cfg)) if ckpt.is_file() else None
    run = prepare_federated(cfg)
    run.collector = collector
    if sd is not None:
        run.restore_from(ckpt, sd)
        if run.server.t >= run.total_rounds and (run_dir / "summary.json").is_file():
            summary = _readable_summary(run_dir)
            if summary is not None:
                raise RunFinished(run_dir, summary)
            log.warning("%s: summary.json unreadable; writing it again from the checkpoint", run_dir)
        log.info("%s: resuming at round %d of %d", run_dir, run.server.t, run.total_rounds)
    return _finish(run, run_dir, progress), run_dir


def _readable_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json as a mapping, or None where it is not one (damaged, edited, not JSON): a finished
    run's summary is derived from its checkpoint, so resuming writes it again instead of failing."""
    try:
        summary = read_summary(run_dir)
    except (ValueError, RecursionError, OSError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return summary if isinstance(summary, dict) else None


def _finish(run: FederatedRun, run_dir: Path, progress: Progress | None) -> dict[str, Any]:
    final = run.run(run_dir, progress)
    if final is None:
        # killed after the last checkpoint, before summary.json: the final evaluation is already in
        # metric_rows, so evaluate again for the summary without recording it twice
        rows = list(run.metric_rows)
        final = run.evaluate()
        run.metric_rows = rows
        run.save(run_dir)  # otherwise the loop saved at its last round already
    cfg = run.cfg
    rounds = run.rounds_frame()
    detection = per_round(rounds)
    _atomic(run_dir / "detection.parquet", lambda p: detection.to_parquet(p, index=False))
    summary = {
        "dataset": run.split.train.name,
        "model": cfg.model.name,
        "mode": "federated",
        "optimizer": cfg.train.optimizer,
        "rounds": run.server.t,
        "clients_per_round": run.per_round,
        "epochs": run.server.t * run.per_round / max(1, run.active.shape[0]),
        "seed": cfg.train.seed,
        "split_seed": cfg.data.split_seed,
        "metrics": {m: {str(k): v for k, v in by_k.items()} for m, by_k in final.metrics.items()},
        "evaluated_users": final.n_users,
        "protocol": cfg.eval.protocol,  # full | loo (fedrec.eval.run_protocol)
        "attack": {
            "name": cfg.attack.name,
            "fraction": cfg.attack.fraction,
            "mode": cfg.attack.mode,
            "params": dict(cfg.attack.params),
        },
        "defense": cfg.defense.name,
        "defense_params": dict(cfg.defense.params),  # with attack.params: what tells two variants apart
        "byzantine_clients": int(run.byzantine.sum()),
        "flat_coordinatewise_sparsity": run.sparsity.summary(),  # issue 16; None unless a flat cw rule
        "detection": detection_summary(rounds, run.f, detection),
        "rejected": {str(k): int(v) for k, v in rounds.reason.astype(str).value_counts().items() if k},
        "refused_uploads": run.refused_counts(),  # uploads that filled no client's slot, by reason
        "server_limits": {
            k: v for k, v in dataclasses.asdict(run.limits).items() if k not in ("n_rows", "d")
        },
        "seconds": run.seconds,
        "rounds_per_second": run.server.t / run.seconds if run.seconds else None,
        "device": str(run.device),
        "threads": run.threads.summary() if getattr(run, "threads", None) else None,
        "rule_check": rule_check(
            run.rule, run.limits.fused
        ).mode,  # native | compiled | eager (fedrec.optim.fused)
        "default_pass": (
            "deferred"  # fedrec.federation.deferred: rows caught up when read
            if run.server.deferred is not None
            else default_pass(run.rule, run.limits.fused).mode
        ),
        "torch": torch.__version__,
        "host": platform.node(),
        "run_dir": str(run_dir),
    }
    summary["warnings"] = run_warnings(rounds)
    write_summary(run_dir, summary)
    return summary


# accepted, or turned down by the rule's own choice (too-few-uploads is no choice)
RULE_REASONS = ("", "filtered")


def run_warnings(rounds: pd.DataFrame) -> list[str]:
    """What a finished run's numbers hide: a server whose checks rejected most honest uploads trained
    little or nothing, yet its P@K table looked like any other (``defense.max_grad=1e-12``, a diverged
    model whose every honest upload is non-finite). Counted over the honest uploads and the server's
    checks only: a Krum that keeps one upload a round turns the others down by design."""
    honest = rounds[~rounds.byzantine.astype(bool)]
    reasons = honest.reason.astype(str)
    checked = reasons[~reasons.isin(RULE_REASONS)]
    if len(honest) == 0 or len(checked) <= len(honest) / 2:
        return []
    rate = len(checked) / len(honest)
    top = ", ".join(f"{k} {v}" for k, v in checked.value_counts().head(3).items())
    what = "every honest upload was" if rate >= 1 else f"{rate:.0%} of the honest uploads were"
    moved = "never moved" if rate >= 1 else "barely trained"
    return [f"{what} rejected by the server's checks ({top}): the model {moved}"]
