"""``fedrec evaluate RUN_DIR``: re-score a run's saved model at other K and on other users.

The run's config.yaml rebuilds the data, the split and (federated) the Byzantine set exactly as training
did; the model comes from the run's checkpoint.pt, verified (checksum, then that it belongs to this
config) before any data loads. User sets:

- ``benign``: the users training's own evaluation scores (federated: the non-Byzantine users; a
  centralized run has no Byzantine users), with at least one test item;
- ``all``: every user with at least one test item (Byzantine users included).

With the run's own K and ``benign`` the numbers equal summary.json's (same scorer, same evaluator, same
batches). Federated runs and centralized FISM / MF runs save their model; the other centralized
baselines (pop, implicit-bpr, recbole-bpr) keep none and cannot be re-scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedrec.config import ConfigError, load_config
from fedrec.eval import run_protocol

USER_SETS = ("benign", "all")


def evaluate_run(run_dir: str | Path, ks: list[int] | None = None, users: str = "benign") -> dict[str, Any]:
    """Metrics of the model in ``run_dir``'s checkpoint at ``ks`` (default: the run's eval.ks) over
    ``users`` (``benign`` or ``all``). Bad input raises ConfigError / FileNotFoundError (one line)."""
    run_dir = Path(run_dir)
    if users not in USER_SETS:
        raise ConfigError(f"--users {users!r}: expected one of {', '.join(USER_SETS)}")
    if ks is not None and (not ks or any(not isinstance(k, int) or k < 1 for k in ks)):
        raise ConfigError(f"--ks {ks}: expected positive integers")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (not a run directory)")
    cfg = load_config(run_dir / "config.yaml")
    ks = sorted(set(ks or cfg.eval.ks))
    from fedrec.federation.checkpoint import CHECKPOINT

    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"{ckpt}: no checkpoint, so no model to evaluate (pop, implicit-bpr and recbole-bpr runs save none)"
        )
    if cfg.train.mode == "federated":
        scorer, split, benign, device, t, total = _federated(cfg, ckpt)
    else:
        scorer, split, device = _centralized(cfg, ckpt)
        benign, t, total = None, None, None  # no Byzantine users: training scores every user
    res = run_protocol(
        cfg.eval.protocol, scorer, split.train, split.test, users=benign if users == "benign" else None,
        ks=ks, batch_size=cfg.eval.batch_size, device=device, seed=cfg.data.split_seed,
    )  # fmt: skip
    return {
        "run_dir": str(run_dir),
        "dataset": split.train.name,
        "model": cfg.model.name,
        "mode": cfg.train.mode,
        "round": t,
        "rounds": total,
        "users": users,
        "evaluated_users": res.n_users,
        "protocol": cfg.eval.protocol,
        "ks": ks,
        "metrics": {m: {str(k): v for k, v in by_k.items()} for m, by_k in res.metrics.items()},
    }


def _federated(cfg, ckpt: Path):
    from fedrec.federation.checkpoint import load_checkpoint, run_identity
    from fedrec.federation.runner import prepare_federated

    sd = load_checkpoint(ckpt, run_identity(cfg))  # checksum and identity before the data loads
    run = prepare_federated(cfg)
    run.restore_from(ckpt, sd)  # checked against this run's structure and values: one line naming the file
    return run.scorer(), run.split, run.benign_users(), run.device, run.server.t, run.total_rounds


def _centralized(cfg, ckpt: Path):
    """A centralized FISM / MF checkpoint is a bare ``torch.save`` of theta and the user vectors."""
    from fedrec.baselines.centralized import CentralizedModel
    from fedrec.data import load_dataset, split_per_user
    from fedrec.device import resolve_device
    from fedrec.federation.checkpoint import CheckpointError, load_checkpoint
    from fedrec.models import CSRTensors, TableLayout

    sd = load_checkpoint(ckpt, legacy=True)
    model = cfg.model.name
    if not isinstance(sd, dict) or not isinstance(sd.get("theta"), torch.Tensor):
        raise CheckpointError(f"{ckpt}: not a centralized FISM / MF checkpoint (no theta tensor)")
    # a crafted or foreign file: the type and dtype of every entry before the data loads, the shapes
    # once they are known (an int or bool theta, or user vectors that are no tensor, crashed the scorer)
    theta, users = sd["theta"], sd.get("user_vectors")
    if not _dense_float32(theta):
        raise CheckpointError(f"{ckpt}: theta is {_describe(theta)}, expected a dense torch.float32 tensor")
    if model == "mf" and not _dense_float32(users):
        raise CheckpointError(
            f"{ckpt}: user_vectors is {_describe(users)}, expected a dense torch.float32 tensor (MF)"
        )
    if model != "mf" and users is not None:
        raise CheckpointError(f"{ckpt}: user_vectors {_describe(users)} in a {model} checkpoint (MF only)")
    device = resolve_device(cfg.run.device)
    inter = load_dataset(cfg.data.dataset, cfg.data.data_dir, rating_threshold=cfg.data.rating_threshold)
    split = split_per_user(inter, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed)
    data = sd.get("data")  # absent from checkpoints written before it
    if data is not None and data != split.fingerprint:
        raise CheckpointError(
            f"{ckpt}: trained on other data ({data!r:.120}) than the dataset now gives "
            f"({split.fingerprint}): the data file changed since the run"
        )
    layout = TableLayout.for_model(model, split.train.n_items)
    for name, value, want in (
        ("theta", theta, (layout.n_rows, cfg.model.dim)),
        ("user_vectors", users, (split.train.n_users, cfg.model.dim)),
    ):
        if value is not None and tuple(value.shape) != want:
            raise CheckpointError(
                f"{ckpt}: {name} {tuple(value.shape)} does not fit this run ({model}, {want})"
            )
    state = CentralizedModel(
        layout, theta.to(device), None if users is None else users.to(device), cfg.model.gamma,
        CSRTensors.from_interactions(split.train, device),
    )  # fmt: skip
    return state.scorer(), split, device


def _dense_float32(value: Any) -> bool:
    """What centralized training saves: a dense float32 tensor (the scorer needs no other)."""
    return isinstance(value, torch.Tensor) and value.layout == torch.strided and value.dtype == torch.float32


def _describe(value: Any) -> str:
    return f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
