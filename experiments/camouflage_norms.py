"""Why ℓ∞ separates camouflage uploads where ℓ2 does not (docs/RESULTS.md section 5).

Runs A-RFRS on Last.fm at 40 % camouflage, records per upload the ℓ∞ and ℓ2 norms of the gradient the
server reconstructs, and prints, over the rounds with at most f Byzantine clients, the quantiles of each
norm's ratio to its round median for the substantial Byzantine uploads (|g~ - g| >= |g|) and for the
honest ones.

    FEDREC_DATA_DIR=... OMP_NUM_THREADS=1 python experiments/camouflage_norms.py [ROUNDS]
"""

from __future__ import annotations

import sys

import pandas as pd
import torch

from fedrec.config import load_config
from fedrec.data import load_dataset, split_per_user
from fedrec.defenses.spaces import space_vectors
from fedrec.federation.simulation import FederatedRun


class Recorded:
    """The run's defense, recording the reconstructed gradients' norms before it decides."""

    def __init__(self, defense, frames: list[pd.DataFrame]) -> None:
        self.defense, self.frames = defense, frames

    def decide(self, server, uploads, rule, t, codes, f):
        v = space_vectors("gradient", server, uploads, rule, t)
        own, vals = v.owner(), v.values.to(torch.float64)
        linf = torch.zeros(v.n, dtype=torch.float64).scatter_reduce(0, own, vals.abs().amax(1), "amax")
        l2 = torch.zeros(v.n, dtype=torch.float64).index_add(0, own, vals.pow(2).sum(1)).sqrt()
        self.frames.append(pd.DataFrame({"t": t, "client_id": uploads.client_ids, "linf": linf, "l2": l2}))
        return self.defense.decide(server, uploads, rule, t, codes, f)


def main(rounds: int) -> None:
    overrides = [
        "attack.name=camouflage",
        "attack.fraction=0.4",
        "defense.name=a-rfrs",
        f"federated.rounds={rounds}",
    ]
    cfg = load_config("configs/lastfm.yaml", overrides)
    run = FederatedRun.create(cfg, split_per_user(load_dataset("lastfm"), seed=0), torch.device("cpu"))
    frames: list[pd.DataFrame] = []
    run.defense = Recorded(run.defense, frames)
    for _ in range(rounds):
        run.step()
    df = run.rounds_frame().merge(pd.concat(frames), on=["t", "client_id"])
    df = df.join(df.groupby("t").byzantine.sum().rename("b"), on="t")
    df = df[df.b <= run.f]
    for col in ("linf", "l2"):
        ratio = df[col] / df.groupby("t")[col].transform("median")
        sub = df.byzantine & (df.forged >= df.grad_norm)
        q_sub = ratio[sub].quantile([0.001, 0.01, 0.05]).round(3).tolist()
        q_hon = ratio[~df.byzantine].quantile([0.99, 0.999, 1.0]).round(3).tolist()
        print(f"{col}: substantial Byzantine ({int(sub.sum())}) ratio to round median, 0.1/1/5 % quantiles {q_sub}; "
              f"honest 99/99.9/100 % quantiles {q_hon}")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
