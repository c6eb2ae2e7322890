"""Where a federated round's time goes: milliseconds per phase and torch operations dispatched per
round, per dataset, with the server's rule check eager and compiled (``run.compile``), measured in one
run of this script (issue 14, item 5):

    OMP_NUM_THREADS=1 FEDREC_DATA_DIR=... python benchmarks/bench_phases.py [--datasets ml100k ...]
        [--rounds 200] [--defense none] [--attack none --byzantine 0.4] [--json]

Phases are the functions of the round's pipeline (fedrec.federation.pipeline / clients), timed by
wrapping them for the measurement; ``round`` is the whole ``FederatedRun.step`` and ``other`` what no
listed phase covers (sampling, the attack, the round record). Paper settings (d = 64, e = 0.01, Adam).
Real datasets through FEDREC_DATA_DIR (ML-100K also from RecBole's embedded copy), else a synthetic
stand-in of the same shape, and the output says so.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from collections.abc import Callable

import torch
from bench_round import load
from torch.utils._python_dispatch import TorchDispatchMode

import fedrec.federation.clients as clients_mod
import fedrec.federation.pipeline as pipeline_mod
import fedrec.federation.simulation as sim_mod
from fedrec.config import Config
from fedrec.data import split_per_user

PHASES: list[tuple[object, str, str]] = [  # (module, function, label), inner phases after outer ones
    (clients_mod, "client_gradients", "client gradients"),
    (clients_mod, "honest_uploads", "client step"),
    (pipeline_mod, "receive", "receive + admit"),
    (pipeline_mod, "admit", "receive + admit"),
    (pipeline_mod, "validate", "validate"),
    (pipeline_mod, "check_rule", "rule check"),
    (pipeline_mod, "apply_decision", "aggregate"),
]


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def timed_phases(run, rounds: int) -> tuple[float, dict[str, float]]:
    """Seconds per round of ``run.step`` and per phase (wrapped for the measurement only)."""
    spent: collections.Counter[str] = collections.Counter()
    saved: list[tuple[object, str, Callable]] = []

    def wrap(mod: object, name: str, label: str) -> None:
        fn = getattr(mod, name)
        saved.append((mod, name, fn))

        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.perf_counter() - start

        setattr(mod, name, timed)

    for mod, name, label in PHASES:
        wrap(mod, name, label)
    decide = run.defense.decide

    def timed_decide(*a, **k):
        start = time.perf_counter()
        try:
            return decide(*a, **k)
        finally:
            spent["defense"] += time.perf_counter() - start

    object.__setattr__(run.defense, "decide", timed_decide)
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            run.step()
        total = time.perf_counter() - start
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
        object.__setattr__(run.defense, "decide", decide)
    per = {k: v / rounds for k, v in spent.items()}
    per["other"] = total / rounds - sum(per.values())
    return total / rounds, per


def measure(
    name: str, defense: str, compile_: bool, rounds: int, attack: str = "none", byz: float = 0.0
) -> dict:
    inter, source = load(name)
    cfg = Config()
    cfg.federated.fraction, cfg.defense.name, cfg.run.compile = 0.01, defense, compile_
    byz = byz if attack != "none" else 0.0
    cfg.attack.name, cfg.attack.fraction = attack, byz
    run = sim_mod.FederatedRun.create(cfg, split_per_user(inter, seed=0), torch.device("cpu"))
    for _ in range(10):  # past round 1 (states not zero) and, compiled, past the compilation
        run.step()
    counter = OpCounter()
    if not compile_:  # a dispatch mode would make the compiled kernel fall back to eager
        with counter:
            for _ in range(3):
                run.step()
    seconds, phases = timed_phases(run, rounds)
    return {
        "dataset": name, "source": source, "defense": defense, "attack": attack, "byzantine": byz, "compiled": compile_,
        "rows_x_d": list(run.server.theta.shape), "clients_per_round": run.per_round,
        "ms_per_round": seconds * 1e3, "rounds_per_s": 1 / seconds, "ops_per_round": counter.count / 3 if not compile_ else None,
        "ms_per_phase": {k: v * 1e3 for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "lastfm", "citeulike-a", "citeulike-t"])
    ap.add_argument("--defense", default="none")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--attack", default="none", help="an attack of `fedrec attacks` (its default parameters)")
    ap.add_argument("--byzantine", type=float, default=0.4, help="share of Byzantine clients with --attack")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [
        measure(d, args.defense, c, args.rounds, args.attack, args.byzantine)
        for d in args.datasets
        for c in (False, True)
    ]
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}))
        return
    attack = f"{args.attack} at {args.byzantine:.0%}" if args.attack != "none" else "none"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), defense {args.defense}, attack {attack}"
    )
    for eager, comp in zip(rows[::2], rows[1::2], strict=True):
        print(
            f"\n{eager['dataset']} ({eager['source']}; {eager['rows_x_d'][0]} rows, {eager['clients_per_round']}"
            f" clients, {eager['ops_per_round']:.0f} torch ops a round eager): eager {eager['ms_per_round']:.2f} ms,"
            f" compiled rule check {comp['ms_per_round']:.2f} ms ({eager['ms_per_round'] / comp['ms_per_round']:.2f}x)"
        )
        for phase in eager["ms_per_phase"]:
            e, c = eager["ms_per_phase"][phase], comp["ms_per_phase"].get(phase, float("nan"))
            print(f"  {phase:<18} {e:8.2f} ms  {c:8.2f} ms")


if __name__ == "__main__":
    main()
