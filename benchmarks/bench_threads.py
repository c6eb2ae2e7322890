"""Rounds per second of one ML-100K run under each thread setting, on an idle machine and next to one
competing busy process (issue 14: "no collapse under load"). Ratios are to the idle one-thread figure,
all measured in this one run; run it on an otherwise idle machine.

    python benchmarks/bench_threads.py [--rounds 300] [--repeats 3]

Settings: ``default`` (run.threads unset: one thread unless OMP_NUM_THREADS is exported, so unset it),
``2`` (torch's own default on 2 cores) and ``auto`` (fedrec/threads.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.pop("OMP_NUM_THREADS", None)  # the default must be measured as a user gets it

import torch

from fedrec.config import load_config
from fedrec.federation.runner import prepare_federated
from fedrec.threads import ThreadPolicy, usable_cores


def rounds_per_second(setting: str | None, rounds: int) -> float:
    cfg = load_config("configs/demo.yaml", [f"federated.rounds={rounds}"])
    run = prepare_federated(cfg)
    policy = ThreadPolicy(setting, run.device, interval=0.5)
    for _ in range(20):  # warm-up: allocator, first-touch pages
        policy.tick()
        run.step()
    start = time.perf_counter()
    for _ in range(rounds - 20):
        policy.tick()
        run.step()
    return (rounds - 20) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    settings: list[tuple[str, str | None]] = [("default", None), ("2 threads", "2"), ("auto", "auto")]
    print(
        f"ML-100K (configs/demo.yaml), {args.rounds} rounds, {usable_cores()} usable cores, torch {torch.__version__}"
    )
    results: dict[tuple[str, str], list[float]] = {}
    for _rep in range(args.repeats):
        for load in ("idle", "loaded"):
            hog = None
            if load == "loaded":  # one competing busy process, as a browser or another run would be
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(1.5)  # let auto's first look see it
            try:
                for name, setting in settings:
                    results.setdefault((load, name), []).append(rounds_per_second(setting, args.rounds))
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    base = statistics.median(results[("idle", "default")])
    print(
        f"{'machine':8} {'setting':10} {'rounds/s (median of ' + str(args.repeats) + ')':>26} {'x idle 1 thread':>16}"
    )
    for (load, name), values in results.items():
        med = statistics.median(values)
        print(f"{load:8} {name:10} {med:26.1f} {med / base:16.2f}")


if __name__ == "__main__":
    main()
