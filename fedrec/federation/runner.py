"""One federated run end to end: data, split, rounds, evaluation, run directory; or its resumption."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Any

import torch

from fedrec.config import Config, ConfigError, load_config
from fedrec.data import load_dataset, split_per_user
from fedrec.device import resolve_device
from fedrec.federation.detection import detection_summary, per_round
from fedrec.federation.simulation import FederatedRun, Progress
from fedrec.runs import new_run_dir, write_config, write_summary

FEDERATED_MODELS = ("fism", "mf")


def _prepare(cfg: Config) -> FederatedRun:
    if cfg.model.name not in FEDERATED_MODELS:
        raise ConfigError(
            f"model.name={cfg.model.name!r}: federated models are {', '.join(FEDERATED_MODELS)}"
        )
    device = resolve_device(cfg.run.device)
    inter = load_dataset(cfg.data.dataset, cfg.data.data_dir, rating_threshold=cfg.data.rating_threshold)
    split = split_per_user(inter, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed)
    return FederatedRun.create(cfg, split, device)


def run_federated(cfg: Config, progress: Progress | None = None) -> tuple[dict[str, Any], Path]:
    """A fresh federated run of ``cfg``; returns the summary and the run directory."""
    run = _prepare(cfg)
    name = cfg.run.name or f"{run.split.train.name}-{cfg.model.name}-{cfg.train.optimizer}-federated"
    run_dir = new_run_dir(cfg.run.out_dir, name)
    write_config(run_dir, cfg.to_yaml())
    return _finish(run, run_dir, progress), run_dir


def resume_federated(run_dir: str | Path, progress: Progress | None = None) -> tuple[dict[str, Any], Path]:
    """Continue a killed run from its last checkpoint to the length its config asks for."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (not a run directory)")
    cfg = load_config(run_dir / "config.yaml")
    run = _prepare(cfg)
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.is_file():
        run.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False))
    return _finish(run, run_dir, progress), run_dir


def _finish(run: FederatedRun, run_dir: Path, progress: Progress | None) -> dict[str, Any]:
    final = run.run(run_dir, progress)
    if final is None:  # resumed a run that had already finished
        final = run.evaluate()
    run.save(run_dir)
    cfg = run.cfg
    rounds = run.rounds_frame()
    per_round(rounds).to_parquet(run_dir / "detection.parquet", index=False)
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
        "attack": {"name": cfg.attack.name, "fraction": cfg.attack.fraction, "mode": cfg.attack.mode},
        "defense": cfg.defense.name,
        "byzantine_clients": int(run.byzantine.sum()),
        "flat_coordinatewise_sparsity": run.sparsity.summary(),  # issue 16; None unless a flat cw rule
        "detection": detection_summary(rounds, run.f),
        "rejected": {str(k): int(v) for k, v in rounds.reason.astype(str).value_counts().items() if k},
        "refused_uploads": run.refused_counts(),  # uploads that filled no client's slot, by reason
        "server_limits": {
            k: v for k, v in dataclasses.asdict(run.limits).items() if k not in ("n_rows", "d")
        },
        "seconds": run.seconds,
        "rounds_per_second": run.server.t / run.seconds if run.seconds else None,
        "device": str(run.device),
        "torch": torch.__version__,
        "host": platform.node(),
        "run_dir": str(run_dir),
    }
    write_summary(run_dir, summary)
    return summary
