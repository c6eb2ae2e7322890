"""The most that stepping runs together could gain on this machine (issue 14, item 4): a round's time
alone against the time it spends in its C loops, the arithmetic every run does over its own rows
however runs are stacked.

A stack of R runs still runs each run's rule check, BPR gradients, client step and server pass over
that run's rows and tables; what stacking can remove is the rest of the round (Python, the dispatch of
torch's small operations, the ctypes calls). With ``T`` the round of one run alone and ``C`` its time
inside C loops, R runs stacked take at least ``R C + (T - C)``, so over one by one they are at most

    R T / (R C + T - C)   (< T / C, whatever R)

times faster. The bound is generous: the torch kernels that are also per-run arithmetic (a square root,
a sort, the random draws) count as removable, and section 20 of docs/RESULTS.md measured stacked
tables that leave the cache making each element dearer, not cheaper. Measured in one run per dataset:
``T`` over ``--rounds`` rounds as they run, then ``C`` over as many with every exported function of
fedrec's C loops (``fedrec.experiments.preload_native.LOOPS``) wrapped by a timer; the three dearest are
printed under each row.

    OMP_NUM_THREADS=1 FEDREC_DATA_DIR=... python benchmarks/bench_stack_bound.py [--datasets ml100k ...]
        [--attack gradient-ascent --byzantine 0.3] [--defense none] [--stack 15] [--rounds 400] [--json]

Paper settings (d = 64, e = 0.01, Adam); Real datasets through FEDREC_DATA_DIR (ML-100K also from
RecBole's embedded copy), else a synthetic stand-in of the same shape, and the output says so.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time

import torch
from bench_round import load

from fedrec.config import Config
from fedrec.data import split_per_user
from fedrec.experiments.preload_native import LOOPS
from fedrec.federation.simulation import FederatedRun

EXPORTED = re.compile(r"\bfedrec_\w+")  # every name; macro-made ones (fedrec_catchup_f32) appear in full too


def wrap_loops(spent: collections.Counter) -> list[tuple[object, str, object]]:
    """Every exported C function of every loop module timed into ``spent[name]``; returns what to undo."""
    saved = []
    for module in LOOPS:
        lib = module.native()
        if lib is None:
            continue
        for name in sorted(set(EXPORTED.findall(module._C))):
            fn = getattr(lib, name, None)  # None: a macro's prefix (fedrec_catchup_), not a symbol
            if fn is None:
                continue

            def timed(*a, _fn=fn, _name=name):
                start = time.perf_counter()
                try:
                    return _fn(*a)
                finally:
                    spent[_name] += time.perf_counter() - start

            saved.append((lib, name, fn))
            setattr(lib, name, timed)
    return saved


def measure(name: str, args) -> dict:
    inter, source = load(name)
    cfg = Config()
    cfg.federated.fraction, cfg.federated.rounds = 0.01, 10**6
    cfg.defense.name, cfg.attack.name = args.defense, args.attack
    cfg.attack.fraction = args.byzantine if args.attack != "none" else 0.0
    cfg.train.lr, cfg.model.init_std = args.lr, args.init_std
    run = FederatedRun.create(cfg, split_per_user(inter, seed=0), torch.device("cpu"))
    for _ in range(args.warmup):
        run.step()
    start = time.perf_counter()
    for _ in range(args.rounds):
        run.step()
    alone = (time.perf_counter() - start) / args.rounds
    spent: collections.Counter = collections.Counter()
    saved = wrap_loops(spent)
    try:
        start = time.perf_counter()
        for _ in range(args.rounds):
            run.step()
        wrapped = (time.perf_counter() - start) / args.rounds
    finally:
        for lib, fname, fn in saved:
            setattr(lib, fname, fn)
    c = min(sum(spent.values()) / args.rounds, alone)
    top = {k: v / args.rounds * 1e3 for k, v in spent.most_common(3)}
    R = args.stack
    return {
        "dataset": name, "source": source, "attack": args.attack, "defense": args.defense,
        "clients_per_round": run.per_round, "ms_round_alone": alone * 1e3, "ms_round_timed": wrapped * 1e3,
        "ms_in_c_loops": c * 1e3, "ms_top_c_loops": top, "c_share": c / alone, "stack": R,
        "bound_for_stack": R * alone / (R * c + alone - c), "bound_any_stack": alone / c if c > 0 else None,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "lastfm", "citeulike-a", "citeulike-t"])
    ap.add_argument("--attack", default="gradient-ascent")
    ap.add_argument("--byzantine", type=float, default=0.3)
    ap.add_argument("--defense", default="none")
    ap.add_argument("--lr", type=float, default=0.001, help="train.lr (the Figure 4 grid's)")
    ap.add_argument("--init-std", type=float, default=1.0, help="model.init_std (the Figure 4 grid's)")
    ap.add_argument("--stack", type=int, default=15, help="runs per stack for the bound")
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(d, args) for d in args.datasets]
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), attack {args.attack}, defense {args.defense}"
    )
    print(
        f"dataset       source      clients  round ms  in C ms  C share  bound, stack of {args.stack}  bound, any stack"
    )
    for r in rows:
        print(
            f"{r['dataset']:<13} {r['source'][:10]:<10} {r['clients_per_round']:>8} {r['ms_round_alone']:>9.2f}"
            f" {r['ms_in_c_loops']:>8.2f} {r['c_share']:>8.0%} {r['bound_for_stack']:>17.2f}x"
            f" {r['bound_any_stack']:>16.2f}x"
        )
        print(
            "  "
            + ", ".join(f"{k.removeprefix('fedrec_')} {v:.2f} ms" for k, v in r["ms_top_c_loops"].items())
        )


if __name__ == "__main__":
    main()
