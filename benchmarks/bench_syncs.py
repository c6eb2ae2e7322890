"""Host synchronizations a federated round makes on a CUDA GPU, and where in fedrec they come from.

A host sync (a ``.item()``, a boolean mask's ``nonzero``, a tensor's size read back to shape another)
stalls the CPU until the GPU drains its queue, so the round's kernel launches stop overlapping with
its arithmetic. torch's sync debug mode warns at every one; this script counts them over a few rounds
of paper settings (d = 64, e = 0.01, Adam) and prints the fedrec lines that caused them:

    python benchmarks/bench_syncs.py [--datasets ml100k lastfm] [--attack gradient-ascent --byzantine 0.4]
        [--defense a-rfrs] [--rounds 10]
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings

import torch
from bench_round import load

from fedrec.config import Config
from fedrec.data import split_per_user
from fedrec.federation.simulation import FederatedRun


def count(name: str, args) -> dict:
    inter, source = load(name)
    cfg = Config()
    cfg.federated.fraction, cfg.run.device, cfg.run.compile = 0.01, "cuda", args.compile == "on"
    cfg.attack.name, cfg.attack.fraction, cfg.defense.name = args.attack, args.byzantine, args.defense
    run = FederatedRun.create(cfg, split_per_user(inter, seed=0), torch.device("cuda"))
    for _ in range(3):  # past compilation and first-use allocations
        run.step()
    torch.cuda.synchronize()
    where: collections.Counter[str] = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(args.rounds):
                run.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            where[f"{w.filename.split('fedrec/')[-1]}:{w.lineno}"] += 1
    total = sum(where.values())
    return {
        "dataset": name, "data": source, "attack": args.attack, "defense": args.defense,
        "syncs_per_round": total / args.rounds, "top": where.most_common(args.top),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["ml100k"])
    p.add_argument("--attack", default="none")
    p.add_argument("--byzantine", type=float, default=0.0)
    p.add_argument("--defense", default="none")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--top", type=int, default=12, help="how many source lines to list")
    p.add_argument("--compile", choices=["on", "off"], default="on")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_syncs: torch sees no CUDA GPU")
    for name in args.datasets:
        res = count(name, args)
        if args.json:
            print(json.dumps(res))
            continue
        print(
            f"{name} ({res['data']}), {args.attack} / {args.defense}: {res['syncs_per_round']:.1f} host syncs a round"
        )
        for line, n in res["top"]:
            print(f"  {n / args.rounds:6.1f}  {line}")


if __name__ == "__main__":
    main()
