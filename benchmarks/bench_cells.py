"""What a cell of paper 000's Figure 4 grid costs a round, with the server's default pass dense and
deferred (``run.deferred``, fedrec/federation/deferred.py), per dataset and defense, measured in one run.

The grid's settings (``configs/grids/figure4-converged.yaml``: FISM d = 64, Adam, e = 0.01, lr 0.01,
init N(0, 0.1^2), compiled rule check), gradient ascent at ``--byzantine``, each defense of the grid.
Each cell is stepped ``--warmup`` rounds (so that untouched rows have lagged as they do mid-run),
then timed over ``--rounds`` rounds; dense and deferred alternate ``--repeats`` times and the medians
are printed with their ratio. Both ways give the same run (the deferred one equals the compiled dense
one bit for bit; tests/test_deferred.py), which the script checks on the final tables.

    FEDREC_DATA_DIR=... python benchmarks/bench_cells.py [--datasets ml100k lastfm citeulike-a citeulike-t]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedrec.config import Config
from fedrec.data import DataError, load_dataset, split_per_user
from fedrec.federation.simulation import FederatedRun

DEFENSES = ["none", "a-rfrs", "krum", "rfa", "trmean"]


def cell_ms(split, defense: str, deferred: bool, args) -> tuple[float, torch.Tensor]:
    cfg = Config()
    cfg.federated.fraction, cfg.federated.rounds = 0.01, 10**6
    cfg.train.lr, cfg.model.init_std, cfg.run.compile, cfg.run.deferred = (
        args.lr,
        args.init_std,
        True,
        deferred,
    )
    cfg.attack.name, cfg.attack.fraction = args.attack, args.byzantine if args.attack != "none" else 0.0
    cfg.defense.name = defense
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    for _ in range(args.warmup):
        run.step()
    start = time.perf_counter()
    for _ in range(args.rounds):
        run.step()
    return (time.perf_counter() - start) / args.rounds * 1e3, run.server.theta.clone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "lastfm", "citeulike-a", "citeulike-t"])
    ap.add_argument("--defenses", nargs="+", default=DEFENSES)
    ap.add_argument("--attack", default="gradient-ascent")
    ap.add_argument("--byzantine", type=float, default=0.3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01, help="the paper's grid: 0.001")
    ap.add_argument("--init-std", type=float, default=0.1, help="the paper's grid: 1.0")
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); attack {args.attack} at "
        f"{args.byzantine:.0%}, lr {args.lr}, init N(0, {args.init_std}^2), {args.warmup} rounds of warm-up, {args.rounds} timed, medians of {args.repeats}"
    )
    print("dataset       rows     defense   dense ms  deferred ms  dense / deferred  same tables")
    for name in args.datasets:
        try:
            split = split_per_user(load_dataset(name), seed=0)
        except DataError as err:
            print(f"{name}: skipped ({err})")
            continue
        for defense in args.defenses:
            times: dict[bool, list[float]] = {False: [], True: []}
            tables: dict[bool, torch.Tensor] = {}
            for _ in range(args.repeats):
                for deferred in (False, True):
                    ms, tables[deferred] = cell_ms(split, defense, deferred, args)
                    times[deferred].append(ms)
            dense, lazy = statistics.median(times[False]), statistics.median(times[True])
            same = "yes" if torch.equal(tables[False], tables[True]) else "NO"
            print(
                f"{name:<12} {tables[False].shape[0]:>6}  {defense:<8} {dense:>9.2f} {lazy:>12.2f}"
                f" {dense / lazy:>16.2f}x  {same}",
                flush=True,
            )


if __name__ == "__main__":
    main()
