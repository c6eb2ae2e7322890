"""The server's rule check of Adam uploads three ways, measured in one run: the C loop
(fedrec.optim.adam_check, the default on the CPU), inductor's compiled kernel (``run.compile``, the
way before it) and the eager torch function. Paper settings: d = 64, float32 tables of ``--rows``
rows, ``K`` listed rows of honest uploads a round (ML-100K lists ~2,500, Citeulike-a ~6,000).

    python benchmarks/bench_rule_check.py [--K 2500 6000 20000] [--seconds 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from fedrec.optim import make_rule
from fedrec.optim.fused import RuleCheck, compiler_available


def problem(K: int, n_rows: int, d: int, seed: int = 0):
    rule = make_rule("adam")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_rows, d, generator=gen) * 0.1
    tables = {"theta": theta, **rule.init_state(theta)}
    for t in range(1, 4):
        tables = rule.client_step(tables, torch.randn(n_rows, d, generator=gen) * 1e-2, t)
    rows = torch.randint(0, n_rows, (K,), generator=gen).sort().values
    prev = {k: x.index_select(0, rows) for k, x in tables.items()}
    up = rule.client_step(prev, torch.randn(K, d, generator=gen) * 1e-2, 4)
    return rule, tables, rows, {k: x.contiguous() for k, x in up.items()}


def per_call(fn, seconds: float) -> float:
    fn()
    fn()
    reps, start = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, nargs="+", default=[2500, 6000, 20000])
    ap.add_argument("--rows", type=int, default=35_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), table {args.rows:,} x {args.dim}")
    print("K rows    C loop ms  compiled ms  eager ms  compiled / C  eager / C  same values")
    ways = {"C": RuleCheck(make_rule("adam"), fused=False)}
    if compiler_available():
        ways["compiled"] = RuleCheck(make_rule("adam"), fused=True, native=False)
    ways["eager"] = RuleCheck(make_rule("adam"), fused=False, native=False)
    for K in args.K:
        _, tables, rows, up = problem(K, args.rows, args.dim)
        call = (tables, rows, up, 4, 1e4, True)
        ms, outs = {}, {}
        for name, check in ways.items():
            outs[name] = check(*call)
            ms[name] = per_call(lambda c=check, a=call: c(*a), args.seconds) * 1e3
        assert ways["C"].mode == "native", ways["C"].mode
        same = all(torch.equal(a, b) for a, b in zip(outs["C"], outs["eager"], strict=True))
        comp = ms.get("compiled", float("nan"))
        print(
            f"{K:>6}  {ms['C']:>11.3f}  {comp:>11.3f}  {ms['eager']:>8.3f}  {comp / ms['C']:>11.2f}x"
            f"  {ms['eager'] / ms['C']:>8.2f}x  {'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
