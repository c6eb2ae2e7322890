"""What ``torch.inference_mode`` saves a round (``FederatedRun.step`` runs under it): the same run stepped
with autograd's bookkeeping on (``run._step()`` called bare) and off (``run.step()``), alternating
within one run of this script, and the two runs' tables compared at the end (they must be equal).

    OMP_NUM_THREADS=1 FEDREC_DATA_DIR=... python benchmarks/bench_inference_mode.py [--datasets ml100k lastfm]
        [--rounds 300] [--repeats 3]

Paper settings (FISM, d = 64, Adam, e = 0.01, compiled default pass); real datasets through
FEDREC_DATA_DIR (ML-100K also from RecBole's embedded copy), else a synthetic stand-in of the same shape.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_round import load

from fedrec.config import Config
from fedrec.data import split_per_user
from fedrec.federation.simulation import FederatedRun


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "lastfm"])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ms a round, medians of {args.repeats}"
    )
    for name in args.datasets:
        data, kind = load(name)
        split = split_per_user(data, seed=0)
        cfg = Config()
        cfg.federated.fraction, cfg.federated.rounds, cfg.run.compile = 0.01, 10**6, True
        runs = {
            way: FederatedRun.create(cfg, split, torch.device("cpu")) for way in ("autograd on", "inference")
        }

        def step(way: str, run: FederatedRun) -> None:
            if way == "inference":
                run.step()
            else:
                with torch.enable_grad():
                    run._step()  # the round without step()'s inference mode

        times: dict[str, list[float]] = {way: [] for way in runs}
        for way, run in runs.items():  # warm-up
            for _ in range(20):
                step(way, run)
        for _ in range(args.repeats):
            for way, run in runs.items():
                start = time.perf_counter()
                for _ in range(args.rounds):
                    step(way, run)
                times[way].append((time.perf_counter() - start) / args.rounds * 1e3)
        on, off = (statistics.median(times[w]) for w in runs)
        same = torch.equal(runs["autograd on"].server.theta, runs["inference"].server.theta)
        print(
            f"{name} ({kind}): autograd on {on:.2f} ms, inference mode {off:.2f} ms, {on / off:.2f}x; same tables: {same}"
        )


if __name__ == "__main__":
    main()
