"""fedrec's C loops against the torch ways they replace, measured in one run, with a check that each
gives the same values: the server's rule check of Adam uploads (fedrec.optim.adam_check; against
inductor's compiled kernel, the way before it, and the eager function), the aggregation's scatter
(fedrec.federation.scatter; against ``index_select`` / sub / mul / ``index_add_``), a deferred
store's catch-up (fedrec.federation.replay; against the torch replay), Adam's default pass over the
table (fedrec.optim.adam_pass; against inductor's kernel and eager), Adam's client step at the listed
rows (fedrec.optim.adam_step), the upload value checks (fedrec.federation.validate_native), and, on a
synthetic batch of ``K / 100`` FISM clients, the BPR gradient (fedrec.models.bpr_native; the same to
float32 rounding: the largest difference is printed) and the negatives' rejection rounds
(fedrec.models.negatives_native); and the default pass with the scatter folded in, its tables written
with streaming and with plain stores (fedrec.optim.adam_pass), and the forged distances
(fedrec.federation.forged_native).

Paper settings: d = 64, float32 tables of ``--rows`` rows (Last.fm's 35,264 by default), ``K`` listed
rows a round (ML-100K lists ~2,500, Citeulike-a ~6,000) spread over ``K / 100`` uploads.

    python benchmarks/bench_c_loops.py [--K 2500 6000 20000] [--seconds 1]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
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


def default_pass(tables, seconds) -> str:
    from fedrec.optim.fused import DefaultPass

    rule = make_rule("adam")
    ways = {"C": DefaultPass(rule, True)}
    if compiler_available():
        ways["compiled"] = DefaultPass(rule, True, native=False)
    ways["eager"] = DefaultPass(rule, False)
    outs = {name: p(tables, 9) for name, p in ways.items()}
    # every way once through the timing loop first: a fresh process's first tables of this size are new
    # pages from the kernel (~13 ms of page faults for 27 MB) until the allocator reuses freed ones
    for p in ways.values():
        per_call(lambda p=p: p(tables, 9), seconds / 4)
    ms = {name: per_call(lambda p=p: p(tables, 9), seconds) * 1e3 for name, p in ways.items()}
    ref = outs.get("compiled")
    same = (
        ways["C"].mode == "native" and ref is not None and all(torch.equal(outs["C"][k], ref[k]) for k in ref)
    )
    comp = ms.get("compiled", float("nan"))
    return (
        f"default pass {tables['theta'].shape[0]:>6} rows  C {ms['C']:7.3f} ms  compiled {comp:7.3f} ms"
        f" ({comp / ms['C']:5.2f}x)  eager {ms['eager']:7.3f} ms ({ms['eager'] / ms['C']:5.2f}x)"
        f"  the compiled kernel's values: {'yes' if same else 'NO'}"
    )


def pass_with_terms(K, tables, rows, owner, up, w, seconds) -> str:
    """The default pass with the scatter folded in (fedrec.optim.adam_pass.adam_pass_with_terms), its
    tables written with streaming stores and with plain ones, against the pass and then the C scatter."""
    from fedrec.optim import adam_pass
    from fedrec.optim.fused import DefaultPass

    rule = make_rule("adam")
    pass_ = DefaultPass(rule, True)
    saved = adam_pass.STREAM_BYTES

    def fused(stream: bool):
        adam_pass.STREAM_BYTES = 0 if stream else 1 << 62
        try:
            return pass_.with_terms(tables, 9, rows, owner, w, up)
        finally:
            adam_pass.STREAM_BYTES = saved

    def two_steps():
        out = pass_(tables, 9)
        for k, D in out.items():
            assert scatter_mod.scatter_terms(D, rows, owner, w, up[k])
        return out

    ways = {
        "fused, streamed": lambda: fused(True),
        "fused, plain": lambda: fused(False),
        "pass + scatter": two_steps,
    }
    outs = {name: fn() for name, fn in ways.items()}
    same = all(torch.equal(o[k], outs["pass + scatter"][k]) for o in outs.values() for k in o)
    for fn in ways.values():  # the allocator's pages warm for every way (see default_pass)
        per_call(fn, seconds / 4)
    ms = {name: per_call(fn, seconds) * 1e3 for name, fn in ways.items()}
    base = ms["pass + scatter"]
    cells = "  ".join(f"{name} {v:7.3f} ms ({base / v:4.2f}x)" for name, v in ms.items())
    return f"pass + terms {K:>6}  {cells}  same values: {'yes' if same else 'NO'}"


def forged(K, rows, owner, up, seconds) -> str:
    """The forged distances (fedrec.federation.forged_native) against the torch sums, a client's own
    rows every other row of its upload's, the others moved by one."""
    from fedrec.federation import forged_native
    from fedrec.federation.forged import torch_distance

    n_up = int(owner.max()) + 1
    counts = torch.bincount(owner, minlength=n_up)
    uptr = torch.zeros(n_up + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=uptr[1:])
    n_rows = int(rows.max()) + 2
    segs = []
    for i in range(n_up):
        mine = rows[uptr[i] : uptr[i + 1]]
        alt = torch.arange(mine.shape[0]) % 2 == 1
        segs.append(torch.where(alt, (mine + 1) % n_rows, mine).unique())  # sorted, unique
    own_rows = torch.cat(segs)
    own_counts = torch.tensor([x.shape[0] for x in segs], dtype=torch.int64)
    optr = torch.zeros(n_up + 1, dtype=torch.int64)
    torch.cumsum(own_counts, 0, out=optr[1:])
    g = up["m"][: own_rows.shape[0]].contiguous()
    rec = up["theta"]

    def c_way():
        return forged_native.distances(uptr, rows, rec, optr, own_rows, g)

    def torch_way():
        return torch_distance(n_up, n_rows, owner, rows, rec, optr, own_rows, g)

    diff = float((c_way() - torch_way()).abs().max() / torch_way().abs().max())
    c_ms, t_ms = per_call(c_way, seconds) * 1e3, per_call(torch_way, seconds) * 1e3
    return (
        f"forged      {K:>6}  C {c_ms:7.3f} ms  torch {t_ms:7.3f} ms ({t_ms / c_ms:5.2f}x)"
        f"  largest relative difference {diff:.1e}"
    )


def client_step(K, tables, rows, seconds) -> str:
    from fedrec.optim import adam_step

    rule = make_rule("adam")
    g = torch.randn(K, tables["theta"].shape[1], generator=torch.Generator().manual_seed(1)) * 1e-2

    def torch_way():
        return rule.client_step({k: x.index_select(0, rows) for k, x in tables.items()}, g, 5)

    def c_way():
        return adam_step.adam_client_step(rule, tables, rows, g, 5)

    a, b = torch_way(), c_way()
    same = all(torch.equal(a[k], b[k]) for k in a)
    t_ms, c_ms = per_call(torch_way, seconds) * 1e3, per_call(c_way, seconds) * 1e3
    return (
        f"client step {K:>6}  C {c_ms:7.3f} ms  torch {t_ms:7.3f} ms ({t_ms / c_ms:5.2f}x)"
        f"  same values: {'yes' if same else 'NO'}"
    )


def value_checks(K, rows, owner, up, seconds) -> str:
    import fedrec.federation.validate as validate_mod
    from fedrec.protocol import UploadBatch

    n_up = int(owner.max()) + 1
    ptr = torch.zeros(n_up + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(owner, minlength=n_up), 0, out=ptr[1:])
    batch = UploadBatch(torch.arange(n_up), ptr, rows, up["theta"], {"m": up["m"], "v": up["v"]},
                        torch.full((n_up,), 10, dtype=torch.int64))  # fmt: skip
    tables = [batch.theta, *batch.state.values()]

    def c_way():
        code = torch.zeros(n_up, dtype=torch.int64)
        assert validate_mod.value_checks(
            code, ptr, rows, tables, batch.n_examples, 10**6, 10**6, validate_mod.VALUE_CODES
        )
        return code

    def torch_way():
        code = torch.zeros(n_up, dtype=torch.int64)
        validate_mod._value_checks(code, batch, 10**6, 10**6)
        return code

    same = torch.equal(c_way(), torch_way())
    t_ms, c_ms = per_call(torch_way, seconds) * 1e3, per_call(c_way, seconds) * 1e3
    return (
        f"value checks {K:>5}  C {c_ms:7.3f} ms  torch {t_ms:7.3f} ms ({t_ms / c_ms:5.2f}x)"
        f"  same verdicts: {'yes' if same else 'NO'}"
    )


def client_side(K, seconds) -> list[str]:
    import fedrec.models.batch as batch_mod
    from fedrec.data import synthetic
    from fedrec.models import CSRTensors, TableLayout, gather_users, sample_negatives, touched_rows
    from fedrec.models.bpr_native import bpr_row_gradients_native
    from fedrec.models.gradients import assemble_row_gradients, sample_terms, with_l2

    n_clients = max(1, K // 100)
    inter = synthetic(max(200, 4 * n_clients), 3000, mean_items=33, seed=0)
    csr = CSRTensors.from_interactions(inter)
    layout = TableLayout.for_model("fism", csr.n_items)
    batch = gather_users(csr, torch.arange(n_clients))
    neg = sample_negatives(batch, csr.n_items, 1, torch.Generator().manual_seed(0))
    owner, rows = touched_rows(batch, neg, layout)
    keys = owner * layout.n_rows + rows
    W = torch.randn(rows.shape[0], 64, generator=torch.Generator().manual_seed(2)) * 0.1

    def torch_grad():
        terms = sample_terms(W, keys, layout, batch, neg, gamma=1.0)
        g, _ = assemble_row_gradients(terms, W, batch.size, lam=1e-4)
        return g, with_l2(terms.client_loss(batch.size), W, keys, layout, 1e-4)

    def c_grad():
        return bpr_row_gradients_native(W, keys, layout, batch, neg, gamma=1.0, lam=1e-4)

    gap = float((torch_grad()[0] - c_grad()[0]).abs().max())
    t_ms, c_ms = per_call(torch_grad, seconds) * 1e3, per_call(c_grad, seconds) * 1e3
    out = [
        f"gradient {rows.shape[0]:>8}  C {c_ms:7.3f} ms  torch {t_ms:7.3f} ms ({t_ms / c_ms:5.2f}x)"
        f"  {n_clients} clients; largest difference {gap:.1e}"
    ]

    def draw(native: bool):
        saved = batch_mod.redraw_positives
        if not native:
            batch_mod.redraw_positives = lambda *a: False
        try:
            return sample_negatives(batch, csr.n_items, 1, torch.Generator().manual_seed(3))
        finally:
            batch_mod.redraw_positives = saved

    same = torch.equal(draw(True), draw(False))
    t_ms, c_ms = per_call(lambda: draw(False), seconds) * 1e3, per_call(lambda: draw(True), seconds) * 1e3
    out.append(
        f"negatives {batch.items.shape[0]:>7}  C {c_ms:7.3f} ms  torch {t_ms:7.3f} ms ({t_ms / c_ms:5.2f}x)"
        f"  same draws: {'yes' if same else 'NO'}"
    )
    return out


def keep_freed_memory() -> None:
    """glibc's malloc, where it is the allocator: tables freed are kept for the next ones (no return of
    memory to the kernel, no fresh mappings), as in a run's steady state (~0 page faults a round,
    measured with getrusage). Without it a loop that allocates and frees tables of ~10 MB each call
    times the kernel's page faults (~10 ms for 40 MB), not the pass."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: its largest value; tables up to it come from the heap
    except (OSError, AttributeError):
        pass


def main() -> None:
    keep_freed_memory()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, nargs="+", default=[2500, 6000, 20000])
    ap.add_argument("--rows", type=int, default=35_264)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), table {args.rows:,} x {args.dim}")
    for i, K in enumerate(args.K):
        _, tables, rows, owner, up, w = problem(K, args.rows, args.dim)
        if i == 0:  # the whole table: once
            print(default_pass(tables, args.seconds))
        print(rule_check(K, tables, rows, up, args.seconds))
        print(scatter(K, tables, rows, owner, up, w, args.seconds))
        print(pass_with_terms(K, tables, rows, owner, up, w, args.seconds))
        print(forged(K, rows, owner, up, args.seconds))
        print(catch_up(K, tables, rows, args.seconds))
        print(client_step(K, tables, rows, args.seconds))
        print(value_checks(K, rows, owner, up, args.seconds))
        for line in client_side(K, args.seconds):
            print(line)


if __name__ == "__main__":
    main()
