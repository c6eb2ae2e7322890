"""Why ℓ∞ separates camouflage uploads where ℓ2 does not, and where no distance separates them
(docs/RESULTS.md section 5).

Runs a defense (default A-RFRS) on Last.fm at 40 % camouflage and records per upload, from the
gradient the server reconstructs: its ℓ2 and ℓ∞ norms, its Krum scores on squared ℓ2 and squared
ℓ∞ distances (``n - f - 2`` neighbours), and its ℓ∞ norm in units of Adam's bias-corrected second
moment before the round, ``max_j |g_j| / sqrt(v_hat_j + delta^2)`` (a floor delta for fresh rows). Over the rounds with at most f Byzantine clients it prints

1. the quantiles of each norm's ratio to its round median for the substantial Byzantine uploads
   (|g~ - g| >= |g|) and for the honest ones;
2. per statistic (each as a ratio to its round median), the false-rejection rate that a threshold
   rejecting 99 / 95 / 90 % of the forging uploads (|g~ - g| > 1e-6 |g|) must accept, and the share
   of forging uploads a threshold at 1 % false rejections rejects: what any rule that thresholds that
   statistic can reach;
3. a profile of the forging uploads the defense kept: coordinates forged, |g~_j / g_j| on them.

    FEDREC_DATA_DIR=... OMP_NUM_THREADS=1 python experiments/camouflage_norms.py [ROUNDS] [DEFENSE]
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from fedrec.attacks.camouflage import camouflage_gradient
from fedrec.config import load_config
from fedrec.data import load_dataset, split_per_user
from fedrec.defenses.krum import krum_scores
from fedrec.defenses.spaces import space_vectors
from fedrec.defenses.vectors import DISTANCES
from fedrec.federation.simulation import FederatedRun

STD_FLOORS = (1e-4, 1e-3, 1e-2, 1e-1)


class Recorded:
    """The run's defense, recording statistics of the reconstructed gradients before it decides."""

    def __init__(self, defense, frames: list[pd.DataFrame]) -> None:
        self.defense, self.frames = defense, frames
        self.verify = defense.verify

    def decide(self, server, uploads, rule, t, codes, f):
        v = space_vectors("gradient", server, uploads, rule, t)
        own, vals = v.owner(), v.values.to(torch.float64)
        linf = torch.zeros(v.n, dtype=torch.float64).scatter_reduce(0, own, vals.abs().amax(1), "amax")
        l2 = torch.zeros(v.n, dtype=torch.float64).index_add(0, own, vals.pow(2).sum(1)).sqrt()
        krum = {f"krum_{d}": krum_scores(DISTANCES[d](v), f) for d in ("l2", "linf")}
        # each coordinate in units of Adam's bias-corrected second moment before the round, floored by delta
        v_hat = server.state["v"][uploads.rows].to(torch.float64) / (1 - rule.b2 ** max(t - 1, 1))
        std = {
            f"linf_adam_{delta:g}": torch.zeros(v.n, dtype=torch.float64).scatter_reduce(
                0, own, (vals.abs() / (v_hat + delta**2).sqrt()).amax(1), "amax"
            )
            for delta in STD_FLOORS
        }
        self.frames.append(
            pd.DataFrame({"t": t, "client_id": uploads.client_ids, "linf": linf, "l2": l2, **krum, **std})
        )
        return self.defense.decide(server, uploads, rule, t, codes, f)


class Profiled:
    """The run's camouflage attack, recording per Byzantine upload how many coordinates it forged and
    the median ratio g~_j / g_j over them (``camouflage_gradient`` is the attack's own root finder)."""

    omniscient = False

    def __init__(self, attack, frames: list[pd.DataFrame]) -> None:
        self.attack, self.frames = attack, frames

    def __call__(self, ctx):
        m, v = ctx.server.state["m"], ctx.server.state["v"]
        crafted, ok = camouflage_gradient(ctx.rule, m[ctx.rows], v[ctx.rows], ctx.g.to(m.dtype))
        owner = ctx.owner()
        ratio = (crafted.to(torch.float64) / ctx.g.to(torch.float64)).abs()
        rows = []
        for i in range(ctx.b):  # an analysis script: a loop over the round's few Byzantine clients is fine
            k = ok[owner == i]
            r = ratio[owner == i][k]
            rows.append({"n_forged": int(k.sum()), "n_coords": k.numel(),
                         "forged_ratio": float(r.median()) if r.numel() else float("nan")})  # fmt: skip
        self.frames.append(pd.DataFrame({"t": ctx.t, "client_id": ctx.client_ids, **pd.DataFrame(rows)}))
        return self.attack(ctx)


def separability(df: pd.DataFrame, cols: list[str]) -> None:
    """False rejections a threshold on each statistic needs to reach a recall on the forging uploads."""
    forging = (df.byzantine & (df.forged > 1e-6 * df.grad_norm)).to_numpy()
    honest = ~df.byzantine.to_numpy()
    print(f"forging Byzantine uploads: {int(forging.sum())}, honest uploads: {int(honest.sum())}")
    print(
        "| statistic (ratio to round median) | FRR at 99 % recall | at 95 % | at 90 % | recall at 1 % FRR |"
    )
    print("|---|---|---|---|---|")
    for col in cols:
        x = (df[col] / df.groupby("t")[col].transform("median")).to_numpy()
        frr = [(x[honest] >= np.quantile(x[forging], 1 - r)).mean() for r in (0.99, 0.95, 0.90)]
        recall = (x[forging] > np.quantile(x[honest], 0.99)).mean()
        print(f"| {col} | {frr[0]:.3f} | {frr[1]:.3f} | {frr[2]:.3f} | {recall:.3f} |")


def main(rounds: int, defense: str) -> None:
    overrides = [
        "attack.name=camouflage",
        "attack.fraction=0.4",
        f"defense.name={defense}",
        f"federated.rounds={rounds}",
    ]
    cfg = load_config("configs/lastfm.yaml", overrides)
    run = FederatedRun.create(cfg, split_per_user(load_dataset("lastfm"), seed=0), torch.device("cpu"))
    frames: list[pd.DataFrame] = []
    run.defense = Recorded(run.defense, frames)
    profiles: list[pd.DataFrame] = []
    run.attack = Profiled(run.attack, profiles)
    for _ in range(rounds):
        run.step()
    df = run.rounds_frame().merge(pd.concat(frames), on=["t", "client_id"])
    df = df.merge(pd.concat(profiles), on=["t", "client_id"], how="left")
    df = df.join(df.groupby("t").byzantine.sum().rename("b"), on="t")
    df = df[df.b <= run.f]
    for col in ("linf", "l2"):
        ratio = df[col] / df.groupby("t")[col].transform("median")
        sub = df.byzantine & (df.forged >= df.grad_norm)
        q_sub = ratio[sub].quantile([0.001, 0.01, 0.05]).round(3).tolist()
        q_hon = ratio[~df.byzantine].quantile([0.99, 0.999, 1.0]).round(3).tolist()
        print(f"{col}: substantial Byzantine ({int(sub.sum())}) ratio to round median, 0.1/1/5 % quantiles {q_sub}; "
              f"honest 99/99.9/100 % quantiles {q_hon}")  # fmt: skip
    forging = df.byzantine & (df.forged > 1e-6 * df.grad_norm)
    missed = df[forging & df.accepted]
    x = df.linf / df.groupby("t").linf.transform("median")
    print(f"{defense} kept {len(missed)} of {int(forging.sum())} forging uploads: median forged coordinates "
          f"{missed.n_forged.median():.0f} of {missed.n_coords.median():.0f}, median |g~_j / g_j| "
          f"{missed.forged_ratio.median():.2f}, linf ratio to round median {x[missed.index].min():.2f}-"
          f"{x[missed.index].max():.2f} (median {x[missed.index].median():.2f}); honest median "
          f"{x[~df.byzantine].median():.2f}, 99 % {x[~df.byzantine].quantile(0.99):.2f}")  # fmt: skip
    separability(df, ["l2", "linf", "krum_l2", "krum_linf", *(f"linf_adam_{d:g}" for d in STD_FLOORS)])


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, sys.argv[2] if len(sys.argv) > 2 else "a-rfrs")
