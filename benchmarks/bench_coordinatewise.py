"""Seconds per server round of the coordinate-wise rules, flat against item-wise, as ratios to the
undefended server round on the same uploads (issue 16 asks for at most 3x on Citeulike-t); plus the
whole round (clients and server) with each defense. Paper settings (d = 64, e = 0.01, Adam). Every
ratio is measured in one run of this script:

    python benchmarks/bench_coordinatewise.py [--dataset citeulike-t] [--device cpu] [--seconds 2]

Real datasets are read through FEDREC_DATA_DIR when set; otherwise a synthetic dataset of the same
shape stands in, and the output says so.
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_round import SHAPES, load, timed

from fedrec.config import Config
from fedrec.data import split_per_user
from fedrec.defenses import assumed_f, make_defense
from fedrec.federation.clients import client_gradients, honest_uploads
from fedrec.federation.pipeline import server_round
from fedrec.federation.simulation import FederatedRun
from fedrec.models import gather_users, sample_negatives

DEFENSES = ("none", "cw-median", "item-median", "cw-trmean", "item-trmean", "grad-median", "grad-item-median")


def bench(name: str, device: torch.device, seconds: float, fraction: float) -> dict:
    inter, source = load(name)
    cfg = Config()
    cfg.federated.fraction, cfg.run.device = 0.01, str(device)
    run = FederatedRun.create(cfg, split_per_user(inter, seed=0), device)
    run.step()  # past round 1, so the state is not all zeros
    # one fixed round of honest uploads, served by every defense
    t = run.server.t + 1
    pick = torch.randperm(run.active.shape[0], generator=run.sample_gen)[: run.per_round]
    clients = run.active[pick].sort().values.to(device)
    batch = gather_users(run.train, clients)
    neg = sample_negatives(batch, run.layout.n_items, 1, run.neg_gen)
    grads = client_gradients(run.server.theta, run.layout, batch, neg, gamma=1.0, lam=1e-4)
    uploads = honest_uploads(run.server, run.rule, grads, batch, t)
    f = assumed_f(run.per_round, fraction)
    server = run.server  # the state the uploads were made from (run.step below moves run.server)
    _, listed = torch.unique(uploads.rows, return_counts=True)
    rows = []
    for d in DEFENSES:
        defense = make_defense(d)
        server_s = timed(
            lambda defense=defense: server_round(
                server,
                [uploads],
                sampled=clients,
                rule=run.rule,
                defense=defense,
                t=t,
                f=f,
                limits=run.limits,
            ),
            device,
            seconds,
        )
        run.defense = defense
        round_s = timed(run.step, device, seconds)
        accepted = server_round(
            server, [uploads], sampled=clients, rule=run.rule, defense=defense, t=t, f=f, limits=run.limits
        ).decision.reasons.eq(0)
        assert bool(accepted.all()), "the fixed uploads must pass validation (else the rule does no work)"
        rows.append({"defense": d, "server_ms": server_s * 1e3, "round_ms": round_s * 1e3})
    base = rows[0]
    for r in rows:
        r["server_ratio"] = r["server_ms"] / base["server_ms"]
        r["round_ratio"] = r["round_ms"] / base["round_ms"]
    return {
        "dataset": name,
        "source": source,
        "rows_x_d": list(run.server.theta.shape),
        "clients_per_round": run.per_round,
        "f": f,
        "listed_rows": int(listed.numel()),
        "rows_below_half": float((2 * listed < uploads.n).double().mean()),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="citeulike-t", choices=list(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timing window per measurement")
    ap.add_argument("--fraction", type=float, default=0.2, help="assumed Byzantine fraction (f for trmean)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    res = bench(args.dataset, device, args.seconds, args.fraction)
    if args.json:
        print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), **res}))
        return
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{res['dataset']} ({res['source']}), table {res['rows_x_d']}, {res['clients_per_round']} clients, "
        f"f = {res['f']}, {res['listed_rows']} listed rows, {100 * res['rows_below_half']:.1f} % below half"
    )
    print("defense            server ms  x none   round ms  x none")
    for r in res["rows"]:
        print(
            f"{r['defense']:<18} {r['server_ms']:>9.2f} {r['server_ratio']:>6.2f}x"
            f" {r['round_ms']:>9.2f} {r['round_ratio']:>6.2f}x"
        )


if __name__ == "__main__":
    main()
