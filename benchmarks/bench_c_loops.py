"""fedrec's C loops against the torch ways they replace, measured in one run, with a check that each
gives the same values: the server's rule check of Adam uploads (fedrec.optim.adam_check; against
inductor's compiled kernel, the way before it, and the eager function), the aggregation's scatter
(fedrec.federation.scatter; against ``index_select`` / sub / mul / ``index_add_``) and a deferred
store's catch-up (fedrec.federation.replay; against the torch replay).

Paper settings: d = 64, float32 tables of ``--rows`` rows (Last.fm's 35,264 by default), ``K`` listed
rows a round (ML-100K lists ~2,500, Citeulike-a ~6,000) spread over ``K / 100`` uploads.

    python benchmarks/bench_c_loops.py [--K 2500 6000 20000] [--seconds 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import fedrec.federation.replay as replay_mod
import fedrec.federation.scatter as scatter_mod
from fedrec.federation.deferred import DeferredStore
from fedrec.optim import make_rule
from fedrec.optim.fused import RuleCheck, compiler_available


def problem(K: int, n_rows: int, d: int, seed: int = 0):
    rule = make_rule("adam")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_rows, d, generator=gen) * 0.1
    tables = {"theta": theta, **rule.init_state(theta)}
    for t in range(1, 4):
        tables = rule.client_step(tables, torch.randn(n_rows, d, generator=gen) * 1e-2, t)
    n_up = max(1, K // 100)
    counts = torch.full((n_up,), K // n_up)
    counts[-1] += K - int(counts.sum())
    rows = torch.cat([torch.randperm(n_rows, generator=gen)[: int(c)].sort().values for c in counts])
    owner = torch.repeat_interleave(torch.arange(n_up), counts)
    prev = {k: x.index_select(0, rows) for k, x in tables.items()}
    up = rule.client_step(prev, torch.randn(K, d, generator=gen) * 1e-2, 4)
    w = torch.rand(n_up, generator=gen)
    return rule, tables, rows, owner, {k: x.contiguous() for k, x in up.items()}, w / w.sum()


def per_call(fn, seconds: float) -> float:
    fn()
    reps, start = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def rule_check(K, tables, rows, up, seconds) -> str:
    ways = {"C": RuleCheck(make_rule("adam"), fused=False)}
    if compiler_available():
        ways["compiled"] = RuleCheck(make_rule("adam"), fused=True, native=False)
    ways["eager"] = RuleCheck(make_rule("adam"), fused=False, native=False)
    call = (tables, rows, up, 4, 1e4, True)
    ms, outs = {}, {}
    for name, check in ways.items():
        outs[name] = check(*call)
        ms[name] = per_call(lambda c=check, a=call: c(*a), seconds) * 1e3
    same = ways["C"].mode == "native" and all(
        torch.equal(a, b) for a, b in zip(outs["C"], outs["eager"], strict=True)
    )
    comp = ms.get("compiled", float("nan"))
    return (
        f"rule check  {K:>6}  C {ms['C']:7.3f} ms  compiled {comp:7.3f} ms ({comp / ms['C']:5.2f}x)"
        f"  eager {ms['eager']:7.3f} ms ({ms['eager'] / ms['C']:5.2f}x)  same values: {'yes' if same else 'NO'}"
    )


def scatter(K, tables, rows, owner, up, w, seconds) -> str:
    D0 = tables["theta"]

    def torch_way(D):
        D.index_add_(0, rows, (up["theta"] - D.index_select(0, rows)) * w[owner][:, None])

    def c_way(D):
        assert scatter_mod.scatter_terms(D, rows, owner, w, up["theta"])

    Dt, Dc = D0.clone(), D0.clone()
    torch_way(Dt)
    c_way(Dc)
    same = torch.equal(Dt, Dc)
    # timed in place on one table each (every call moves the listed rows towards the uploads)
    t_ms = per_call(lambda: torch_way(Dt), seconds) * 1e3
    c_ms = per_call(lambda: c_way(Dc), seconds) * 1e3
    return (
        f"scatter     {K:>6}  C {c_ms:7.3f} ms  torch {t_ms:7.3f} ms ({t_ms / c_ms:5.2f}x)"
        f"  same values: {'yes' if same else 'NO'}"
    )


def catch_up(K, tables, rows, seconds, lag: int = 40) -> str:
    rule = make_rule("adam")

    def store():
        s = DeferredStore({k: x.clone() for k, x in tables.items()}, rule)
        for t in range(4, 4 + lag):
            s.log_pass(t)
        return s

    def run(native: bool):
        saved = replay_mod.native
        if not native:
            replay_mod.native = lambda: None
        try:
            s = store()
            start = time.perf_counter()
            s.catch_up(rows)
            return time.perf_counter() - start, s
        finally:
            replay_mod.native = saved

    c_s, c_store = min((run(True) for _ in range(3)), key=lambda r: r[0])
    t_s, t_store = min((run(False) for _ in range(3)), key=lambda r: r[0])
    same = all(torch.equal(c_store.tables[k], t_store.tables[k]) for k in ("m", "v"))
    return (
        f"catch-up    {K:>6}  C {c_s * 1e3:7.3f} ms  torch {t_s * 1e3:7.3f} ms ({t_s / c_s:5.2f}x)"
        f"  {lag} passes behind; m, v the same: {'yes' if same else 'NO'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, nargs="+", default=[2500, 6000, 20000])
    ap.add_argument("--rows", type=int, default=35_264)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), table {args.rows:,} x {args.dim}")
    for K in args.K:
        _, tables, rows, owner, up, w = problem(K, args.rows, args.dim)
        print(rule_check(K, tables, rows, up, args.seconds))
        print(scatter(K, tables, rows, owner, up, w, args.seconds))
        print(catch_up(K, tables, rows, args.seconds))


if __name__ == "__main__":
    main()
