"""The testbed loop (RESAM Algorithm 1 with every worker at every step) and its run directory.

Step t = 1..T: each worker draws a mini-batch from its shard (without replacement, one seeded
generator for all workers), computes its gradient at theta (``estimator = saga``: the SAGA estimate
from its per-sample table, ``fedrec.testbed.saga``; plus weight decay, then optional norm clipping) and updates its own momentum ``m_i = beta m_i + (1 - beta) g_i`` (m_0 = 0). Honest workers
send m_i; Byzantine workers keep their data and momentum but send the attack's vector, crafted from
their own momenta (and, for omniscient attacks, the honest ones). The server runs the rule on the n
messages and steps ``theta <- theta - lr F``. Test accuracy and loss at t = 0, every ``eval_every``
steps and after the last.

Every random draw comes from its own generator derived from ``seed`` (split, shards, init, batches,
placement of the Byzantine workers, the attacker, the rule), so a run is reproducible bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.runs import new_run_dir, write_config, write_summary
from fedrec.testbed.adversary import Adversary
from fedrec.testbed.config import TestbedConfig
from fedrec.testbed.data import N_CLASSES, load_digits, make_shards
from fedrec.testbed.model import Model
from fedrec.testbed.saga import SagaTables
from fedrec.testbed.server import lookup_rule, robust_aggregate

Tensor = torch.Tensor

STREAMS = ("split", "shards", "init", "batches", "placement", "attack", "rule")


def generators(seed: int) -> dict[str, torch.Generator]:
    """One independent torch generator per stream, derived from ``seed``."""
    states = np.random.SeedSequence(seed).generate_state(len(STREAMS), dtype=np.uint64)
    return {name: torch.Generator().manual_seed(int(s) >> 1) for name, s in zip(STREAMS, states, strict=True)}


@dataclass
class Result:
    """A finished simulation. ``metrics``: rows of (step, accuracy, loss); ``accepted``: ``[T, n]`` bool
    (None when the rule never says whom it accepted); ``byzantine``: ``[n]`` bool; ``theta``: the
    final parameters ``[P]``."""

    config: TestbedConfig
    metrics: list[dict[str, float]]
    accepted: Tensor | None
    byzantine: Tensor
    theta: Tensor
    seconds: float


def prepare(cfg: TestbedConfig):
    """Everything checked before any work (rule, parameters, attack): ValueError otherwise."""
    spec = lookup_rule(cfg.rule, cfg.rule_params, cfg.n, cfg.assumed_f, cfg.pre)
    adversary = Adversary(cfg.attack, cfg.attack_params, cfg.lr)
    return spec, adversary


def clip_rows(g: Tensor, c: float | None) -> Tensor:
    """Each row scaled to norm at most c (None: unchanged)."""
    if c is None:
        return g
    return g * (c / g.norm(dim=1, keepdim=True).clamp_min(c))


def simulate(cfg: TestbedConfig, progress: Callable[[int], None] | None = None) -> Result:
    spec, adversary = prepare(cfg)
    gens = generators(cfg.seed)
    data = load_digits(int(torch.randint(0, 2**31 - 1, (1,), generator=gens["split"])))
    shards = make_shards(
        data.y_train, cfg.n, cfg.shards, int(torch.randint(0, 2**31 - 1, (1,), generator=gens["shards"]))
    )
    s = shards.shape[1]
    if cfg.batch > s:
        raise ValueError(f"batch={cfg.batch}: larger than a worker's shard ({s} samples with n={cfg.n})")
    model = Model(cfg.model, cfg.hidden)
    theta = model.init(gens["init"])
    n, P, beta = cfg.n, theta.shape[0], cfg.momentum
    if cfg.byzantine == "first":
        byz_ids = torch.arange(cfg.f)
    else:
        byz_ids = torch.randperm(n, generator=gens["placement"])[: cfg.f].sort().values
    byz = torch.zeros(n, dtype=torch.bool)
    byz[byz_ids] = True
    honest_ids = (~byz).nonzero().reshape(-1)
    attacked = adversary.attack is not None

    m = torch.zeros(n, P, dtype=torch.float64)
    m_flip = torch.zeros(cfg.f, P, dtype=torch.float64) if adversary.needs_flipped else None
    metrics: list[dict[str, float]] = []
    accepted: list[Tensor] = []

    def evaluate(t: int) -> None:
        acc, loss = model.evaluate(theta, data.x_test, data.y_test)
        metrics.append({"step": t, "accuracy": acc, "loss": loss})

    def finish(g: Tensor) -> Tensor:
        if cfg.weight_decay:  # exact at the current theta: not part of SAGA's table
            g = g + cfg.weight_decay * theta
        return clip_rows(g, cfg.clip)

    def gradients(x: Tensor, y: Tensor) -> Tensor:
        return finish(model.worker_grads(theta, x, y)[0])

    def per_sample(x: Tensor, y: Tensor) -> Tensor:
        """``[n, b, P]``: every sample's own gradient at theta (a batch of one per sample)."""
        k, b = y.shape
        g, _ = model.worker_grads(theta, x.reshape(k * b, 1, -1), y.reshape(k * b, 1))
        return g.reshape(k, b, -1)

    # SAGA (paper 003 Algorithm 2): the full per-sample table at x^0, then one refresh per batch
    saga = (
        SagaTables(per_sample(data.x_train[shards], data.y_train[shards]))
        if cfg.estimator == "saga"
        else None
    )

    start = time.perf_counter()
    evaluate(0)
    for t in range(1, cfg.steps + 1):
        pick = torch.rand(n, s, generator=gens["batches"]).argsort(1)[:, : cfg.batch]
        idx = shards.gather(1, pick)
        x, y = data.x_train[idx], data.y_train[idx]
        g = gradients(x, y) if saga is None else finish(saga.step(pick, per_sample(x, y)))
        m.mul_(beta).add_(g, alpha=1 - beta)
        msgs = m
        if attacked:
            flipped = None
            if m_flip is not None:
                g_flip = gradients(x[byz_ids], N_CLASSES - 1 - y[byz_ids])
                m_flip.mul_(beta).add_(g_flip, alpha=1 - beta)
                flipped = m_flip
            ctx = adversary.context(
                theta, t, byz_ids, m[byz_ids], honest_ids, m[honest_ids], s, gens["attack"], flipped
            )
            msgs = m.clone()
            msgs[byz_ids] = adversary.messages(ctx).to(m.dtype)
        agg, acc = robust_aggregate(spec, msgs, cfg.assumed_f, cfg.rule_params, gens["rule"])
        theta = theta - cfg.lr * agg
        if acc is not None:
            accepted.append(acc.to(torch.bool).cpu())
        if t % cfg.eval_every == 0 or t == cfg.steps:
            evaluate(t)
            if progress is not None:
                progress(t)
    seconds = time.perf_counter() - start
    sel = torch.stack(accepted) if len(accepted) == cfg.steps else None
    return Result(cfg, metrics, sel, byz, theta, seconds)


def summarize(res: Result) -> dict[str, Any]:
    cfg = res.config
    acc = [r["accuracy"] for r in res.metrics]
    out: dict[str, Any] = {
        "command": "testbed",
        "rule": cfg.rule,
        "attack": cfg.attack,
        "n": cfg.n,
        "f": cfg.f,
        "momentum": cfg.momentum,
        "model": cfg.model,
        "shards": cfg.shards,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "estimator": cfg.estimator,
        "pre": cfg.pre,
        "final_accuracy": acc[-1],
        "max_accuracy": max((a for a in acc if not math.isnan(a)), default=float("nan")),
        "final_loss": res.metrics[-1]["loss"],
        "seconds": res.seconds,
        "ms_per_step": 1000 * res.seconds / cfg.steps,
        "byzantine_workers": res.byzantine.nonzero().reshape(-1).tolist(),
        # non-finite parameters: the loss is null and every prediction is class 0 (argmax of NaN)
        "diverged": not bool(torch.isfinite(res.theta).all()),
    }
    if res.accepted is not None:
        a = res.accepted.double()
        h, b = ~res.byzantine, res.byzantine
        # SignGuard Table II: the average share of honest (H) and Byzantine (M) messages the rule kept
        out["selection_rate_honest"] = float(a[:, h].mean()) if h.any() else float("nan")
        out["selection_rate_byzantine"] = float(a[:, b].mean()) if b.any() else float("nan")
    return out


def _parquet(path: Path, df: pd.DataFrame) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def write_run(res: Result, out_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """The run directory: config.yaml, metrics.parquet (step, accuracy, loss), selection.parquet (step,
    worker, byzantine, accepted; when the rule says whom it accepted) and summary.json (strict JSON)."""
    cfg = res.config
    run_dir = new_run_dir(out_dir, f"testbed-{cfg.rule}-{cfg.attack}")
    write_config(run_dir, cfg.to_yaml())
    _parquet(run_dir / "metrics.parquet", pd.DataFrame(res.metrics, columns=["step", "accuracy", "loss"]))
    if res.accepted is not None:
        steps, n = res.accepted.shape
        _parquet(
            run_dir / "selection.parquet",
            pd.DataFrame(
                {
                    "step": np.repeat(np.arange(1, steps + 1), n),
                    "worker": np.tile(np.arange(n), steps),
                    "byzantine": np.tile(res.byzantine.numpy(), steps),
                    "accepted": res.accepted.numpy().reshape(-1),
                }
            ),
        )
    summary = {**summarize(res), "run_dir": str(run_dir)}
    write_summary(run_dir, summary)
    return summary, run_dir


def run_testbed(
    cfg: TestbedConfig, out_dir: str | Path, progress: Callable[[int], None] | None = None
) -> tuple[dict[str, Any], Path]:
    """Simulate ``cfg`` and write its run directory under ``out_dir``: ``(summary, run_dir)``."""
    return write_run(simulate(cfg, progress), out_dir)
