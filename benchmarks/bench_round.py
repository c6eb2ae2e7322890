"""Rounds per second of the fast federated engine against the literal dense reference, and the dense
default pass of the server against a plain copy of the same tables (the memory-bandwidth floor).

Paper settings (d = 64, e = 0.01, Adam). Every ratio is measured in one run of this script:

    python benchmarks/bench_round.py [--datasets lastfm ml100k citeulike-a citeulike-t] [--device cpu]

Real datasets are read through FEDREC_DATA_DIR when set (ML-100K also from RecBole's embedded copy);
otherwise a synthetic dataset of the same shape (users, items, interactions) stands in, and the
output says so. The round steps as a run with the default settings does (``run.deferred`` unset: its
default pass deferred where the tables are 8 MiB and more, the last column says which); the server-pass
columns time the dense pass on a dense copy of the same state either way, so ``round / copy`` compares
the round with the dense pass's floor.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fedrec.config import Config
from fedrec.data import DataError, load_dataset, split_per_user, synthetic
from fedrec.federation.clients import client_gradients, honest_uploads
from fedrec.federation.reference import reference_round
from fedrec.federation.server import aggregate, aggregation_weights
from fedrec.federation.simulation import FederatedRun
from fedrec.models import gather_users, sample_negatives

SHAPES = {  # paper 000 Appendix G: users, items, interactions
    "lastfm": (1892, 17632, 92834),
    "ml100k": (943, 1682, 100000),
    "citeulike-a": (5551, 16980, 204986),
    "citeulike-t": (7947, 25975, 134860),
}


def load(name: str):
    try:
        return load_dataset(name), "real"
    except DataError:
        users, items, nnz = SHAPES[name]
        return synthetic(users, items, mean_items=nnz / users, seed=0), "synthetic (same shape)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, min_seconds: float, min_reps: int = 3) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    sync(device)
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        fn()
        reps += 1
    sync(device)
    return (time.perf_counter() - start) / reps


def bench(name: str, device: torch.device, seconds: float, compile_: bool | None = None) -> dict:
    inter, source = load(name)
    split = split_per_user(inter, seed=0)
    cfg = Config()
    cfg.federated.fraction, cfg.run.device, cfg.run.compile = 0.01, str(device), compile_
    cfg.federated.rounds = 10**5  # a timing window of fast rounds must not run past the run's budget
    run = FederatedRun.create(cfg, split, device)
    run.step()  # past round 1, so the state is not all zeros

    fast = timed(run.step, device, seconds)

    # the reference on the same kind of round (same sampler, same number of clients)
    def reference_step():
        t = run.server.t + 1
        pick = torch.randperm(run.active.shape[0], generator=run.sample_gen)[: run.per_round]
        clients = run.active[pick].sort().values.to(device)
        batch = gather_users(run.train, clients)
        neg = sample_negatives(batch, run.layout.n_items, 1, run.neg_gen)
        negs = [neg[batch.ptr[i] : batch.ptr[i + 1]] for i in range(clients.shape[0])]
        reference_round(
            run.server, run.rule, run.layout, run.train, clients.tolist(), negs, t,
            gamma=cfg.model.gamma, lam=cfg.train.weight_decay,
        )  # fmt: skip

    ref = timed(reference_step, device, seconds, min_reps=2)

    # the server's dense pass (defaults + scatter of the uploads) against copying theta, m and v (a
    # deferred run's state as a dense copy: the floor is the dense pass's, whichever way the run steps)
    default_pass = "deferred" if run.server.deferred is not None else "dense"
    run.server = run.server.clone() if run.server.deferred is not None else run.server
    t = run.server.t + 1
    clients = run.active[: run.per_round].to(device)
    batch = gather_users(run.train, clients)
    neg = sample_negatives(batch, run.layout.n_items, 1, run.neg_gen)
    grads = client_gradients(run.server.theta, run.layout, batch, neg, gamma=1.0, lam=1e-4)
    uploads = honest_uploads(run.server, run.rule, grads, batch, t)
    w = aggregation_weights(uploads.n_examples, torch.ones(uploads.n, dtype=torch.bool, device=device))
    dense = timed(lambda: aggregate(run.server, uploads, w, run.rule, t, run.limits.fused), device, seconds)
    tables = [run.server.theta, *run.server.state.values()]
    copy = timed(lambda: [x.clone() for x in tables], device, seconds)
    return {
        "dataset": name,
        "source": source,
        "default_pass": default_pass,
        "rows_x_d": list(run.server.theta.shape),
        "clients_per_round": run.per_round,
        "fast_rounds_per_s": 1 / fast,
        "reference_rounds_per_s": 1 / ref,
        "speedup": ref / fast,
        "server_pass_ms": dense * 1e3,
        "table_copy_ms": copy * 1e3,
        "server_pass_over_copy": dense / copy,
        "round_over_copy": fast / copy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timing window per measurement")
    ap.add_argument(
        "--compile",
        choices=["on", "off"],
        default="on",
        help="the server's rule check compiled (run.compile)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = [bench(name, device, args.seconds, args.compile == "on") for name in args.datasets]
    if args.json:
        print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "rows": rows}))
        return
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    head = "dataset       source                  clients  fast r/s  ref r/s   speedup  server ms  copy ms  ratio  round / copy  round's pass"
    print(head)
    for r in rows:
        print(
            f"{r['dataset']:<13} {r['source']:<23} {r['clients_per_round']:>7} {r['fast_rounds_per_s']:>9.1f}"
            f" {r['reference_rounds_per_s']:>8.2f} {r['speedup']:>8.1f}x {r['server_pass_ms']:>9.2f}"
            f" {r['table_copy_ms']:>8.2f} {r['server_pass_over_copy']:>6.2f}x {r['round_over_copy']:>12.2f}x"
            f"  {r['default_pass']}"
        )


if __name__ == "__main__":
    main()
