"""The Flower simulation against the in-process engine on the same config, in one run: seconds per
round, bytes per round on the wire against the sparse lower bound, and whether both end in the same
state (theta, m, v, accepted sets: the issue 12 parity check).

    python benchmarks/bench_flower.py [--rounds 30] [--nodes 3] [--attack alie] [--defense a-rfrs]
                                      [--dim 64] [--fraction 0.01] [--out /tmp/bench_flower]

ML-100K (RecBole's embedded copy), FISM, Adam. The in-process engine is ``fedrec train`` on the Flower
run's own config.yaml (``run_federated``). Bytes: per round, ``up`` is the payload of the nodes'
replies (upload batches and diagnostics), ``down`` the dense state broadcast to each asked node;
``bound`` is the sparse lower bound of the uploads, ``sum_i k_i * (d * 3 * 4 + 8)`` (theta, m, v in
float32 plus an int64 row id per listed row). gRPC / protobuf framing is not counted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from fedrec.config import load_config
from fedrec.federation.checkpoint import load_checkpoint
from fedrec.federation.runner import run_federated


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--attack", default="alie")
    p.add_argument("--defense", default="a-rfrs")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--out", default="/tmp/bench_flower")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    from fedrec.flower.simulate import simulate

    rc = {
        "data.dataset": "ml100k", "model.dim": args.dim, "train.lr": 0.01, "federated.fraction": args.fraction,
        "federated.rounds": args.rounds, "federated.eval_every": args.rounds,
        "federated.checkpoint_every": args.rounds, "defense.name": args.defense, "eval.ks": "1,5",
        "run.out_dir": str(out / "flower"), "run.device": "cpu", "flower.min-nodes": args.nodes,
    }  # fmt: skip
    if args.attack != "none":
        rc.update({"attack.name": args.attack, "attack.fraction": 0.2})
    start = time.perf_counter()
    flower = simulate(rc, num_supernodes=args.nodes)
    flower_wall = time.perf_counter() - start
    run_dir = Path(flower["run_dir"])

    # fedrec train on the Flower run's resolved config (per-client draws, same seeds)
    cfg = load_config(run_dir / "config.yaml", [f"run.out_dir={out / 'inprocess'}"])
    start = time.perf_counter()
    summary, ref_dir = run_federated(cfg)
    inproc_wall = time.perf_counter() - start

    a, b = load_checkpoint(run_dir / "checkpoint.pt"), load_checkpoint(ref_dir / "checkpoint.pt")
    diff = {"theta": float((a["theta"] - b["theta"]).abs().max())}
    diff.update({k: float((a["state"][k] - v).abs().max()) for k, v in b["state"].items()})
    fr, ir = pd.read_parquet(run_dir / "rounds.parquet"), pd.read_parquet(ref_dir / "rounds.parquet")
    same_accepted = bool(fr.client_id.equals(ir.client_id) and fr.accepted.equals(ir.accepted))

    traffic = flower["traffic"]
    d = args.dim
    bound = [tr.upload_rows * (d * 3 * 4 + 8) for tr in traffic]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    report = {
        "config": {k: v for k, v in rc.items() if not k.startswith("run.")} | {"nodes": args.nodes},
        "parity": {"max_abs_diff": diff, "same_accepted_sets": same_accepted, "rounds": int(a["t"])},
        "seconds_per_round": {
            "flower_round_trip": mean([tr.seconds for tr in traffic]),
            "flower_run": flower["summary"]["seconds"] / args.rounds,
            "in_process_run": summary["seconds"] / args.rounds,
        },
        "wall_seconds": {"flower_simulation_total": flower_wall, "in_process_total": inproc_wall},
        "bytes_per_round": {
            "up_payload": mean([tr.up for tr in traffic]),
            "up_sparse_bound": mean(bound),
            "up_over_bound": sum(tr.up for tr in traffic) / max(1, sum(bound)),
            "down_dense_state": mean([tr.down for tr in traffic]),
            "nodes_asked": mean([tr.nodes for tr in traffic]),
        },
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
