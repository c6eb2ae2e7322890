"""The data of paper 000 Figure 1: every upload of one round, in parameter space and in gradient space.

The paper trains matrix factorization with Adam, 58 benign and 32 Byzantine clients, and projects the
90 clients' parameters (left) and gradients (right) at round 24 onto two principal components: the
Byzantine clients hide among the benign ones in parameter space and stand apart in gradient space.

Here: a federated run of ``model`` in which every round samples ``honest + byzantine`` clients (so the
state at round ``t`` is what that many clients per round built) under ``attack`` with no defense; at
round ``t`` the round's clients are drawn with exactly ``honest`` benign and ``byzantine`` Byzantine
ones, every client computes its upload (``client_round``; the Byzantine ones then run the attack), and
each upload is read in the two spaces a defense can look at (``fedrec.defenses.spaces``): the
parameters as deltas from the zero-gradient default (PCA is translation-invariant, so this is the PCA of
the full parameter vectors) and the gradients the server reconstructs from the uploaded moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.attacks import ATTACKS
from fedrec.config import Config
from fedrec.data import Split, load_dataset, split_per_user
from fedrec.defenses.spaces import space_vectors
from fedrec.defenses.vectors import ClientVectors
from fedrec.federation.simulation import FederatedRun, run_attack
from fedrec.protocol import UploadBatch


@dataclass
class Figure1Data:
    """One round's uploads, one row per client (honest first, then Byzantine)."""

    params: np.ndarray  # [n, D] uploaded parameters (deltas from the zero-gradient default)
    grads: np.ndarray  # [n, D] gradients reconstructed from the uploaded moments
    byzantine: np.ndarray  # [n] bool
    clients: np.ndarray  # [n] client ids
    round: int
    dataset: str
    model: str
    attack: str
    # how far each Byzantine upload is from the honest upload the same client would have sent
    max_param_gap: float  # max |theta_byzantine - theta_honest| over every coordinate
    grad_gap: float  # mean over Byzantine clients of ||g~ - g|| / ||g||


def figure1_config(
    dataset: str = "ml100k", *, model: str = "mf", attack: str = "camouflage", honest: int = 58,
    byzantine: int = 32, round: int = 24, seed: int = 0, lr: float = 1e-3, data_dir: str | None = None,
) -> Config:  # fmt: skip
    """Paper 000 Appendix G settings (Adam, d = 64, eta = 1e-3), ``honest + byzantine`` clients a round
    (``federated.fraction`` is set from the data by :func:`figure1_data`), no defense."""
    if honest < 2 or byzantine < 1:
        raise ValueError(
            f"figure 1 needs at least 2 honest and 1 Byzantine client, got {honest} and {byzantine}"
        )
    if round < 2:
        raise ValueError(f"--round {round}: the attack needs a round with history (round >= 2)")
    # what can be checked without the data, before it loads (the run's own checks come after it)
    if attack not in ATTACKS:
        raise ValueError(
            f"--attack {attack!r}: expected one of {', '.join(ATTACKS)} (figure 1 needs an attack)"
        )
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr {lr:g}: must be a finite number > 0")
    cfg = Config()
    cfg.data.dataset, cfg.data.data_dir = dataset, data_dir
    cfg.model.name = model
    cfg.train.mode, cfg.train.optimizer, cfg.train.lr, cfg.train.seed = "federated", "adam", lr, seed
    cfg.federated.rounds = round
    cfg.federated.eval_every = cfg.federated.checkpoint_every = round
    cfg.attack.name, cfg.attack.fraction, cfg.attack.seed = attack, byzantine / (honest + byzantine), seed
    cfg.defense.name = "none"
    return cfg


def figure1_data(cfg: Config, honest: int, byzantine: int, split: Split | None = None) -> Figure1Data:
    """Train ``cfg.federated.rounds - 1`` rounds, then read round ``cfg.federated.rounds``'s uploads."""
    if cfg.attack.name == "none":
        raise ValueError("figure 1 compares Byzantine with honest uploads: choose an attack")
    if split is None:
        split = split_per_user(load_dataset(cfg.data.dataset, cfg.data.data_dir), seed=cfg.data.split_seed)
    n = honest + byzantine
    active = int((torch.from_numpy(split.train.counts()) > 0).sum())
    if n > active:
        raise ValueError(f"figure 1 asks for {n} clients a round; {split.train.name} has {active} with data")
    cfg.federated.fraction = n / active  # every round samples n clients, as in the paper's federation
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    t = cfg.federated.rounds
    for _ in range(t - 1):
        run.step()

    # round t: exactly `honest` benign and `byzantine` Byzantine clients, drawn from the active ones
    gen = torch.Generator().manual_seed(cfg.train.seed + 24)
    is_byz = run.byzantine[run.active]
    pools = run.active[~is_byz], run.active[is_byz]
    if pools[0].numel() < honest or pools[1].numel() < byzantine:
        raise ValueError(
            f"figure 1 needs {honest} honest and {byzantine} Byzantine clients; the run has "
            f"{pools[0].numel()} and {pools[1].numel()} (attack.fraction {cfg.attack.fraction:.3f})"
        )
    pick = [
        p[torch.randperm(p.numel(), generator=gen)[:k]]
        for p, k in zip(pools, (honest, byzantine), strict=True)
    ]
    clients = torch.cat(pick).sort().values
    u = None if run.private is None else run.private.u[clients]
    cr = run.client_round(clients, t, u)
    byz = run.byzantine[clients]
    attack = run_attack(run.attack, run._attack_context(t, cr, byz, u))
    honest_up, own_up = cr.uploads.select(~byz), cr.uploads.select(byz)

    def dense(space: str, uploads: UploadBatch) -> torch.Tensor:
        v: ClientVectors = space_vectors(space, run.server, uploads, run.rule, t)
        return v.to_dense().to(torch.float64)  # [clients, n_rows, d]

    spaces = {}
    for space in ("theta", "gradient"):
        spaces[space] = [dense(space, up) for up in (honest_up, attack, own_up)]
    params = torch.cat(spaces["theta"][:2])
    grads = torch.cat(spaces["gradient"][:2])
    # only the rows some upload lists: the others are 0 for every client and carry no variance
    listed = (params != 0).any(2).any(0) | (grads != 0).any(2).any(0)
    g_byz, g_own = spaces["gradient"][1], spaces["gradient"][2]
    own_norm = g_own.flatten(1).norm(dim=1).clamp_min(1e-30)
    return Figure1Data(
        params=params[:, listed].flatten(1).numpy(),
        grads=grads[:, listed].flatten(1).numpy(),
        byzantine=np.r_[np.zeros(honest, bool), np.ones(byzantine, bool)],
        clients=torch.cat([clients[~byz], clients[byz]]).numpy(),
        round=t,
        dataset=split.train.name,
        model=cfg.model.name,
        attack=cfg.attack.name,
        max_param_gap=float((spaces["theta"][1] - spaces["theta"][2]).abs().max()),
        grad_gap=float(((g_byz - g_own).flatten(1).norm(dim=1) / own_norm).mean()),
    )
