"""One centralized run, end to end: load, split, train, evaluate, write the run directory."""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedrec.baselines.centralized import train_centralized
from fedrec.baselines.implicit_bpr import train_implicit_bpr
from fedrec.baselines.popularity import most_popular
from fedrec.baselines.recbole_bpr import train_recbole_bpr
from fedrec.config import CENTRALIZED_MODELS, Config, ConfigError, check_eval_ks, check_memory
from fedrec.data import load_dataset, split_per_user
from fedrec.device import resolve_device
from fedrec.eval import run_protocol
from fedrec.runs import new_run_dir, write_config, write_metrics, write_summary
from fedrec.threads import ThreadPolicy

# progress(event) with event keys: epoch, epochs, loss, and "P@5" once evaluated
Progress = Callable[[dict[str, Any]], None]


def run_centralized(
    cfg: Config, progress: Progress | None = None, run_dir: Path | None = None
) -> tuple[dict[str, Any], Path]:
    """Train ``cfg.model.name`` centrally on ``cfg.data.dataset`` and evaluate on the held-out 20 %.
    ``run_dir``: an existing directory to write into (a grid cell's), instead of a fresh one in
    ``run.out_dir``; a centralized run has no checkpoint to resume from, so it always starts over."""
    model = cfg.model.name
    if model not in CENTRALIZED_MODELS:
        raise ConfigError(f"model.name={model!r}: centralized models are {', '.join(CENTRALIZED_MODELS)}")
    device = resolve_device(cfg.run.device)
    threads = ThreadPolicy(cfg.run.threads, device)  # set once: epochs are few and long
    inter = load_dataset(cfg.data.dataset, cfg.data.data_dir, rating_threshold=cfg.data.rating_threshold)
    split = split_per_user(inter, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed)
    check_eval_ks(cfg, split.train.n_items, inter.name, split.most_seen())
    train = split.train
    check_memory(
        cfg, "centralized", n_users=train.n_users, n_items=train.n_items, n_train=train.nnz, round_entries=0
    )
    if model == "recbole-bpr" and train.n_users:
        seen = int(train.counts().max())
        if train.n_items - seen < max(1, train.n_items // 50):  # RecBole's sampler redraws without a limit
            raise ConfigError(
                f"model.name='recbole-bpr': a user of {inter.name} holds {seen} of its {train.n_items} "
                "training items, too few unseen ones for RecBole's negative sampler (it hung)"
            )
    if run_dir is not None:  # a grid cell's: the grid records a failure beside it
        return _run(cfg, split, inter.name, run_dir, device, threads, progress)
    run_dir = new_run_dir(cfg.run.out_dir, cfg.run.name or f"{inter.name}-{model}-centralized")
    try:
        return _run(cfg, split, inter.name, run_dir, device, threads, progress)
    except BaseException:  # nothing to resume (no checkpoint is kept mid-training): leave no half folder
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _run(
    cfg: Config, split, name: str, run_dir: Path, device, threads, progress
) -> tuple[dict[str, Any], Path]:
    model = cfg.model.name
    write_config(run_dir, cfg.to_yaml())
    ks = sorted(set(cfg.eval.ks))
    c = cfg.centralized

    def evaluate(scorer):
        return run_protocol(
            cfg.eval.protocol, scorer, split.train, split.test, ks=ks, batch_size=cfg.eval.batch_size,
            device=device, seed=cfg.data.split_seed,
        )  # fmt: skip

    rows: list[dict[str, Any]] = []

    def record(t: int, result) -> None:
        for metric, by_k in result.metrics.items():
            rows.extend({"t": t, "metric": metric, "k": k, "value": v} for k, v in by_k.items())

    start = time.perf_counter()
    info: dict[str, Any] = {}
    epochs = 0
    if model in ("fism", "mf"):
        epochs = c.epochs

        def on_epoch(epoch: int, loss: float, state) -> None:
            event: dict[str, Any] = {"epoch": epoch, "epochs": epochs, "loss": loss}
            if epoch % c.eval_every == 0 and epoch < epochs:
                res = evaluate(state.scorer())
                record(epoch, res)
                event["P@5"] = res.metrics["precision"].get(5)
            if progress is not None:
                progress(event)

        t = cfg.train
        trained = train_centralized(
            split, model=model, dim=cfg.model.dim, gamma=cfg.model.gamma, init_std=c.init_std, lr=c.lr,
            betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay, negatives=t.negatives,
            epochs=epochs, batch_users=c.batch_users, seed=t.seed, device=device, on_epoch=on_epoch,
        )  # fmt: skip
        scorer = trained.model.scorer()
        info["final_loss"] = trained.losses[-1] if trained.losses else None
        torch.save(
            {
                "theta": trained.model.theta.cpu(),
                "user_vectors": trained.model.user_vectors,
                "config": cfg.to_dict(),
                "data": split.fingerprint,  # fedrec evaluate refuses another dataset
            },
            run_dir / "checkpoint.pt",
        )
    elif model == "implicit-bpr":
        epochs = c.implicit_iterations
        scorer, info = train_implicit_bpr(
            split.train, factors=cfg.model.dim, learning_rate=c.implicit_lr, regularization=c.implicit_reg,
            iterations=epochs, seed=cfg.train.seed,
        )  # fmt: skip
    elif model == "recbole-bpr":
        epochs = c.recbole_epochs
        scorer, info = train_recbole_bpr(
            split.train, embedding_size=cfg.model.dim, epochs=epochs, learning_rate=c.recbole_lr,
            seed=cfg.train.seed,
        )  # fmt: skip
    else:
        scorer = most_popular(split.train)
    train_seconds = time.perf_counter() - start
    final = evaluate(scorer)
    record(epochs, final)
    write_metrics(run_dir, rows)
    summary = {
        "dataset": name,
        "model": model,
        "mode": "centralized",
        "epochs": epochs,
        "seed": cfg.train.seed,
        "split_seed": cfg.data.split_seed,
        "metrics": {m: {str(k): v for k, v in by_k.items()} for m, by_k in final.metrics.items()},
        "evaluated_users": final.n_users,
        "protocol": cfg.eval.protocol,  # full | loo (fedrec.eval.run_protocol)
        "seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,
        "device": str(device),
        "threads": threads.summary(),
        "torch": torch.__version__,
        "host": platform.node(),
        "info": {k: v for k, v in info.items() if isinstance(v, int | float | str | None)},
        "run_dir": str(run_dir),
    }
    write_summary(run_dir, summary)
    return summary, run_dir
