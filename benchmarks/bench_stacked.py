"""Runs stepped together (``fedrec.federation.stacked.RunStack``) against the same runs one by one.

15 runs by default: 5 seeds x 3 Byzantine fractions of one dataset, attack and defense (issue 14 item
3), paper settings (d = 64, e = 0.01, Adam). Both ways take the same rounds from the same start; the
script times them alternately in one run, checks that every run ends bit-identical both ways, and
prints the ratio:

    python benchmarks/bench_stacked.py [--datasets ml100k lastfm] [--attack gradient-ascent]
        [--defense none] [--seeds 5] [--fractions 0.2 0.3 0.4] [--rounds 30] [--stack 15] [--dim 64]

``--datasets synthetic:900x300 --dim 16`` runs on a table small enough to stay in cache.

Real datasets are read through FEDREC_DATA_DIR when set (ML-100K also from RecBole's embedded copy);
otherwise a synthetic dataset of the same shape stands in, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_round import load, sync

from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.federation.simulation import FederatedRun
from fedrec.federation.stacked import RunStack


def configs(args) -> list[Config]:
    out = []
    for seed in range(args.seeds):
        for fraction in args.fractions:
            cfg = Config()
            cfg.federated.fraction, cfg.federated.rounds = 0.01, 10_000
            cfg.train.seed, cfg.attack.seed = seed, seed
            cfg.attack.name, cfg.attack.fraction = args.attack, fraction
            cfg.defense.name = args.defense
            cfg.run.compile = args.compile
            cfg.model.dim = args.dim
            out.append(cfg)
    return out


def dataset(name: str):
    """A dataset by name, or ``synthetic:USERSxITEMS`` (50 items a user): a table small enough that
    every run's rows stay in cache, which isolates what stacking saves in dispatch."""
    if name.startswith("synthetic:"):
        users, items = map(int, name.split(":", 1)[1].split("x"))
        return synthetic(users, items, mean_items=50, seed=0), "synthetic"
    return load(name)


def bench(name: str, args) -> dict:
    inter, source = dataset(name)
    split = split_per_user(inter, seed=0)
    cfgs = configs(args)
    device = torch.device(args.device)
    alone = [FederatedRun.create(c, split, device) for c in cfgs]
    together = [FederatedRun.create(c, split, device) for c in cfgs]
    size = args.stack or len(together)
    stacks = [RunStack.of(together[i : i + size]) for i in range(0, len(together), size)]

    def step_stacks() -> None:
        for stack in stacks:
            stack.step()
        sync(device)

    def step_alone() -> None:
        for run in alone:
            run.step()
        sync(device)

    for run in alone:  # warm-up (the compiled rule check, caches), the same round both ways
        run.step()
    step_stacks()
    one_by_one = stacked = 0.0
    for _ in range(args.rounds):  # alternate, so both see the same load
        start = time.perf_counter()
        step_alone()
        one_by_one += time.perf_counter() - start
        start = time.perf_counter()
        step_stacks()
        stacked += time.perf_counter() - start
    same = all(
        torch.equal(a.server.theta, b.server.theta)
        and all(torch.equal(a.server.state[k], b.server.state[k]) for k in a.server.state)
        and all(torch.equal(a.records[k].nan_to_num(-7), b.records[k].nan_to_num(-7)) for k in a.records)
        for a, b in zip(alone, together, strict=True)
    )
    gap = max(
        float((a.server.theta - b.server.theta).abs().max()) for a, b in zip(alone, together, strict=True)
    )
    R = len(cfgs)
    return {
        "dataset": name, "data": source, "runs": R, "per_stack": size, "attack": args.attack, "defense": args.defense,
        "rounds": args.rounds, "one_by_one_ms": 1e3 * one_by_one / args.rounds,
        "stacked_ms": 1e3 * stacked / args.rounds, "speedup": one_by_one / stacked, "bit_identical": same, "max_theta_gap": gap, "device": str(device),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["ml100k"])
    p.add_argument("--attack", default="gradient-ascent")
    p.add_argument("--defense", default="none")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.3, 0.4])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--stack", type=int, default=0, help="runs per stack (default: all in one)")
    p.add_argument("--compile", choices=["on", "off"], default="on")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on cuda the runs agree to round-off)")
    p.add_argument("--json", action="store_true", help="one JSON object per dataset")
    args = p.parse_args()
    args.compile = args.compile == "on"
    for name in args.datasets:
        res = bench(name, args)
        if args.json:
            print(json.dumps(res))
            continue
        print(
            f"{name} ({res['data']}), {res['runs']} runs in stacks of {res['per_stack']}, {args.attack} / {args.defense}: one by one "
            f"{res['one_by_one_ms']:.1f} ms a round of all runs, stacked {res['stacked_ms']:.1f} ms: "
            f"{res['speedup']:.2f}x; bit-identical: {res['bit_identical']} (largest theta gap {res['max_theta_gap']:.1e})"
        )


if __name__ == "__main__":
    main()
