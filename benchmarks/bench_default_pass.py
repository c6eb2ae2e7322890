"""The server's default pass over the whole table (Adam's zero-gradient update of every row, every
round): eager torch against the compiled kernel (fedrec.optim.fused.DefaultPass, ``run.compile``), at
the table shapes of the four datasets (FISM, d = 64) and a million-item catalog, measured alternately
in one run:

    python benchmarks/bench_default_pass.py [--rows 3364 35264 33960 51950 2000000] [--seconds 1]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from fedrec.memory import keep_freed_memory
from fedrec.optim import make_rule
from fedrec.optim.fused import DefaultPass

ROWS = {"ml100k": 3364, "lastfm": 35264, "citeulike-a": 33960, "citeulike-t": 51950, "1e6 items": 2_000_000}


def per_call(fn, seconds: float) -> float:
    fn()
    reps, start = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=list(ROWS.values()))
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3, help="alternations; the median is printed")
    args = p.parse_args()
    keep_freed_memory()  # as a run does: no page faults on the table-sized temporaries
    rule, names = make_rule("adam"), {v: k for k, v in ROWS.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), Adam, d = {args.dim}")
    print("rows        table        eager ms  compiled ms  ratio")
    for n in args.rows:
        gen = torch.Generator().manual_seed(0)
        tables = {
            "theta": torch.randn(n, args.dim, generator=gen),
            "m": torch.randn(n, args.dim, generator=gen) * 1e-3,
            "v": torch.rand(n, args.dim, generator=gen) * 1e-6,
        }
        fused = DefaultPass(rule, fused=True)
        fused(tables, 5)  # compile
        if fused.mode != "compiled":
            raise SystemExit(f"the default pass did not compile: {fused.mode}")
        eager, comp = [], []
        for _ in range(args.repeats):
            eager.append(per_call(functools.partial(rule.default_rows, tables, 101), args.seconds))
            comp.append(per_call(functools.partial(fused, tables, 101), args.seconds))
        e, c = sorted(eager)[len(eager) // 2], sorted(comp)[len(comp) // 2]
        print(f"{n:>9,}  {names.get(n, ''):<11} {e * 1e3:>9.2f}  {c * 1e3:>11.2f}  {e / c:>5.2f}x")


if __name__ == "__main__":
    main()
