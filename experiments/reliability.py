"""Reliability figures of docs/RESULTS.md (issue 9): what the server's limits cost honest clients and
what they deny an attacker, on the real datasets.

    FEDREC_DATA_DIR=../shared/data python experiments/reliability.py bounds ROUNDS [DATASET ...]
        honest clients only (paper settings): the largest reconstructed |g| coordinate, the largest
        verifier violation, the honest uploads the limits reject, and the share of honest uploads
        whose n_i the median clip cuts (defense.weight_clip = 20)
    python experiments/reliability.py weights ROUNDS
        ML-100K, 20 % Byzantine gradient ascent: the Byzantine share of the aggregation weight with
        honest claims, claims = listed rows, a dense upload claiming the catalog, a sparse one claiming
        it, under each weighting and defense
    python experiments/reliability.py accuracy ROUNDS
        ML-100K attack-free at eta = 0.01: P@5 under each weighting (what clipping costs heavy users)
    python experiments/reliability.py poison ROUNDS
        ML-100K, 20 % Byzantine: each poison kind x defense; finite state, Byzantine accepted, rounds
        with an honest upload accepted, reasons
"""

from __future__ import annotations

import os
import sys
import time

import pandas as pd
import torch

from fedrec.attacks import make_attack
from fedrec.attacks.poison import KINDS
from fedrec.config import load_config
from fedrec.data import load_dataset, split_per_user
from fedrec.defenses.spaces import rows_of, uploaded
from fedrec.federation.simulation import FederatedRun

DATA = os.environ.get("FEDREC_DATA_DIR")


def _run(
    dataset: str, rounds: int, *, attack=None, fraction: float = 0.0, defense: str = "none", lr=None, **dkw
):
    cfg = load_config(f"configs/{dataset}.yaml")
    cfg.train.lr = lr or cfg.train.lr
    cfg.data.data_dir = DATA
    cfg.federated.rounds, cfg.federated.eval_every = rounds, rounds
    if attack is not None:
        cfg.attack.name, cfg.attack.fraction = "gradient-ascent", fraction
    cfg.defense.name = defense
    for k, v in dkw.items():
        setattr(cfg.defense, k, v)
    split = split_per_user(
        load_dataset(dataset, DATA), test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed
    )
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    if attack is not None:
        object.__setattr__(run, "attack", attack)
    return run


def bounds(rounds: int, datasets: list[str]) -> pd.DataFrame:
    rows = []
    for ds in datasets:
        run = _run(ds, rounds)
        stats = {"max_abs_g": 0.0, "max_violation": 0.0, "uploads": 0, "clipped": 0}
        prev = {}

        def observe(r, out, stats=stats, prev=prev):
            server, t = prev["server"], out.state.t
            p = rows_of(server, out.uploads.rows)
            g, viol = r.rule.reconstruct_and_verify(p, uploaded(out.uploads), t)
            stats["max_abs_g"] = max(stats["max_abs_g"], float(g.abs().max()))
            stats["max_violation"] = max(stats["max_violation"], float(viol.max()))
            stats["uploads"] += out.uploads.n
            stats["clipped"] += int((out.uploads.n_examples < out.claimed).sum())

        run.on_round = observe
        start = time.perf_counter()
        while run.server.t < rounds:
            prev["server"] = run.server
            run.step()
        df = run.rounds_frame()
        rows.append({
            "dataset": ds, "rounds": rounds, **stats,
            "honest_rejected": int((~df.accepted).sum()),
            "clipped_share": stats["clipped"] / stats["uploads"], "seconds": round(time.perf_counter() - start, 1),
        })  # fmt: skip
    return pd.DataFrame(rows)


def weights(rounds: int) -> pd.DataFrame:
    rows = []
    claims = {"honest": make_attack("gradient-ascent")}
    claims.update({k: make_attack("poison", kind=f"inflate-{k}") for k in ("rows", "dense", "catalog")})
    for weighting, clip in [("claimed", 20.0), ("clipped", 20.0), ("clipped", 5.0), ("uniform", 20.0)]:
        for defense in ("none", "rfa", "a-rfrs"):
            for claim, attack in claims.items():
                kw = {"weighting": weighting, "weight_clip": clip}
                run = _run("ml100k", rounds, attack=attack, fraction=0.2, defense=defense, **kw)
                run.run()
                df = run.rounds_frame()
                rows.append({
                    "weighting": weighting if weighting != "clipped" else f"clipped {clip:g}", "defense": defense,
                    "claim": claim,
                    "byzantine_weight_share": float(df[df.byzantine].weight.sum() / df.weight.sum()),
                    "byzantine_uploads": int(df.byzantine.sum()), "uploads": len(df),
                    "byzantine_accepted": int((df.byzantine & df.accepted).sum()),
                })  # fmt: skip
    return pd.DataFrame(rows)


def accuracy(rounds: int) -> pd.DataFrame:
    rows = []
    for weighting, clip in [("claimed", 20.0), ("clipped", 20.0), ("clipped", 5.0), ("uniform", 20.0)]:
        run = _run("ml100k", rounds, lr=0.01, weighting=weighting, weight_clip=clip)
        res = run.run()
        rows.append({"weighting": weighting if weighting != "clipped" else f"clipped {clip:g}",
                     "P@5": res.metrics["precision"][5], "R@5": res.metrics["recall"][5], "seconds": round(run.seconds, 1)})  # fmt: skip
    return pd.DataFrame(rows)


def poison(rounds: int) -> pd.DataFrame:
    rows = []
    for kind in KINDS:
        for defense in ("none", "a-rfrs", "krum", "rfa", "trmean", "cw-median"):
            run = _run(
                "ml100k", rounds, attack=make_attack("poison", kind=kind), fraction=0.2, defense=defense
            )
            run.run()
            df = run.rounds_frame()
            honest, byz = df[~df.byzantine], df[df.byzantine]
            finite = bool(torch.isfinite(run.server.theta).all()) and all(
                bool(torch.isfinite(s).all()) for s in run.server.state.values()
            )
            rows.append({
                "kind": kind, "defense": defense, "finite": finite,
                "byzantine_accepted": int(byz.accepted.sum()), "byzantine": len(byz),
                "rounds_with_honest_accepted": f"{int(honest.groupby('t').accepted.any().sum())}/{rounds}",
                "honest_rejected_by_validation": int((~honest.reason.astype(str).isin(["", "filtered"])).sum()),
                "reasons": ",".join(sorted(set(byz.reason.astype(str)))),
            })  # fmt: skip
    return pd.DataFrame(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    what, n = sys.argv[1], int(sys.argv[2])
    start = time.perf_counter()
    if what == "bounds":
        out = bounds(n, sys.argv[3:] or ["ml100k", "lastfm", "citeulike-a", "citeulike-t"])
    elif what == "weights":
        out = weights(n)
    elif what == "accuracy":
        out = accuracy(n)
    elif what == "poison":
        out = poison(n)
    else:
        raise SystemExit(f"unknown {what!r}: bounds | weights | poison")
    print(out.to_markdown(index=False))
    print(f"\n{what} {n} rounds: {time.perf_counter() - start:.0f} s wall")
