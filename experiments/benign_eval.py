"""Evaluate a finished attack-free run on the benign users of an attacked population.

An attacked run reports P@K over its benign users only (paper 000 Section 5); to compare it with an
attack-free run, evaluate the attack-free model on the same users: the users that are not Byzantine
for ``attack.fraction`` and ``attack.seed`` (``byzantine_mask``, the attack's own population).

    FEDREC_DATA_DIR=... python experiments/benign_eval.py RUN_DIR [FRACTION] [ATTACK_SEED]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fedrec.attacks import byzantine_mask
from fedrec.config import load_config
from fedrec.data import load_dataset, split_per_user
from fedrec.federation.checkpoint import CHECKPOINT, load_checkpoint, run_identity
from fedrec.federation.simulation import FederatedRun


def main(run_dir: str, fraction: float, seed: int) -> None:
    cfg = load_config(Path(run_dir) / "config.yaml")
    if cfg.attack.name != "none":
        raise SystemExit(f"{run_dir}: expected an attack-free run, this one has attack {cfg.attack.name!r}")
    inter = load_dataset(cfg.data.dataset, cfg.data.data_dir, rating_threshold=cfg.data.rating_threshold)
    split = split_per_user(inter, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed)
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    # checksum and identity checked; runs from before checkpoint format 1 read with weights_only=True
    run.load_state_dict(load_checkpoint(Path(run_dir) / CHECKPOINT, run_identity(cfg), legacy=True))
    run.byzantine = byzantine_mask(split.train.n_users, fraction, seed)
    res = run.evaluate()
    p = res.metrics["precision"]
    print(f"{run_dir} at t={run.server.t} on the {int((~run.byzantine).sum())} users benign at fraction "
          f"{fraction}, attack seed {seed}: " + ", ".join(f"P@{k} {p[k]:.4f}" for k in sorted(p)))  # fmt: skip


if __name__ == "__main__":
    main(
        sys.argv[1],
        float(sys.argv[2]) if len(sys.argv) > 2 else 0.4,
        int(sys.argv[3]) if len(sys.argv) > 3 else 0,
    )
