"""Item-wise Krum and median on one round of real client uploads, timed next to the flat rules and
against a straightforward per-item Python loop (Spattack's way: group the uploads by item, then one
small aggregation per item; ANCHORS.md section 4.7), all in one run, with the ratios:

    FEDREC_DATA_DIR=... python benchmarks/bench_itemwise.py [--dataset citeulike-t] [--fraction 0.01]

The round: paper settings (FISM, d = 64, Adam), one round of honest uploads from the pipeline, the
rules on the reconstructed gradients (gradient space) with f = ceil(0.2 n). Real datasets are read
through FEDREC_DATA_DIR when set; otherwise a synthetic dataset of the same shape stands in, and the
output says so. The loop results are checked against the vectorised ones.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_round import SHAPES, load, sync

from fedrec.config import Config
from fedrec.data import split_per_user
from fedrec.defenses import RULES, assumed_f
from fedrec.defenses.spaces import space_vectors
from fedrec.defenses.trimmed import PADDED_WASTE, coordinate_median, item_median
from fedrec.defenses.vectors import ClientVectors
from fedrec.federation.clients import client_gradients, honest_uploads
from fedrec.federation.simulation import FederatedRun
from fedrec.models import gather_users, sample_negatives

Tensor = torch.Tensor


def timed(fn, device: torch.device, seconds: float, once_past: float | None = None) -> float:
    """Seconds per call (one warm-up call; at least one timed call, more within ``seconds``). Where the
    warm-up call alone takes longer than ``once_past`` seconds, its time is the answer (a dense way on a
    large catalogue takes minutes a call)."""
    start = time.perf_counter()
    fn()
    sync(device)
    if once_past is not None and time.perf_counter() - start > once_past:
        return time.perf_counter() - start
    reps, start = 0, time.perf_counter()
    while reps < 1 or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    sync(device)
    return (time.perf_counter() - start) / reps


def per_item(v: ClientVectors) -> tuple[list[int], list[Tensor]]:
    """The uploads grouped by row, as a per-item implementation starts: rows and their ``[c_r, d]``."""
    order = torch.sort(v.rows, stable=True).indices
    rows, counts = torch.unique_consecutive(v.rows[order], return_counts=True)
    return rows.tolist(), list(torch.split(v.values[order].to(torch.float64), counts.tolist()))


def loop_median(v: ClientVectors) -> Tensor:
    _, groups = per_item(v)
    out = []
    for x in groups:  # one item at a time
        s = torch.sort(x, dim=0).values
        c = s.shape[0]
        out.append(0.5 * (s[(c - 1) // 2] + s[c // 2]))
    return torch.stack(out)


def loop_krum(v: ClientVectors, f: int) -> Tensor:
    """Per item: Krum with f_r = min(f, (c - 1) // 2, c - 3) on c - f_r - 2 neighbours, the mean of
    the listers where c < 3 (``fedrec.defenses.itemwise``'s definition)."""
    _, groups = per_item(v)
    out = []
    for x in groups:  # one item at a time
        c = x.shape[0]
        fr = min(f, (c - 1) // 2, c - 3)
        if fr < 0:
            out.append(x.mean(0))
            continue
        d2 = torch.cdist(x, x).pow(2)
        d2.fill_diagonal_(float("inf"))
        scores = torch.topk(d2, c - fr - 2, dim=1, largest=False).values.sum(1)
        out.append(x[torch.argmin(scores)])
    return torch.stack(out)


def round_vectors(name: str, fraction: float, device: torch.device) -> tuple[ClientVectors, str, list[int]]:
    """One round's honest uploads at ``fraction`` clients a round (paper settings), as the rules see
    them in gradient space: ``(vectors, data source, table shape)``."""
    inter, source = load(name)
    cfg = Config()
    cfg.federated.fraction, cfg.run.device = fraction, str(device)
    run = FederatedRun.create(cfg, split_per_user(inter, seed=0), device)
    run.step()  # past round 1, so the state is not all zeros
    t = run.server.t + 1
    pick = torch.randperm(run.active.shape[0], generator=run.sample_gen)[: run.per_round]
    clients = run.active[pick].sort().values.to(device)
    batch = gather_users(run.train, clients)
    neg = sample_negatives(batch, run.layout.n_items, 1, run.neg_gen)
    grads = client_gradients(run.server.theta, run.layout, batch, neg, gamma=1.0, lam=1e-4)
    uploads = honest_uploads(run.server, run.rule, grads, batch, t)
    return space_vectors("gradient", run.server, uploads, run.rule, t), source, list(run.server.theta.shape)


def bench(name: str, fraction: float, device: torch.device, seconds: float, flat: bool = True) -> dict:
    """One round at ``fraction``; ``flat = False`` skips the flat rules (their n x n Gram matrix and
    dense blocks over the union grow with n^2 and n M: minutes on one core at Spattack's density)."""
    v, source, table = round_vectors(name, fraction, device)
    f = assumed_f(v.n, 0.2)
    _, counts = torch.unique(v.rows, return_counts=True)
    krum = RULES["krum"]
    fns = {
        "flat krum": lambda: krum(v, f),
        "item krum": lambda: krum.item(v, f),
        "loop krum": lambda: loop_krum(v, f),
        "flat median": lambda: coordinate_median(v),
        "item median": lambda: item_median(v),
        "item median, padded block": lambda: item_median(v, padded=True),
        "item median, one sort of K": lambda: item_median(v, padded=False),
        "loop median": lambda: loop_median(v),
    }
    if not flat:
        fns = {k: fn for k, fn in fns.items() if not k.startswith("flat")}
    ms = {k: timed(fn, device, seconds) * 1e3 for k, fn in fns.items()}
    # the loops compute what the vectorised rules compute
    check = {
        "krum": float((krum.item(v, f)[1].double() - loop_krum(v, f)).abs().max()),
        "median": float((item_median(v)[1].double() - loop_median(v)).abs().max()),
    }
    return {
        "dataset": name, "source": source, "table": table, "clients": v.n, "f": f,
        "entries": int(v.rows.shape[0]), "listed_rows": int(counts.numel()), "max_listers": int(counts.max()),
        "sum_c2": int((counts.double() ** 2).sum()), "ms": ms, "max_abs_diff": check,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="citeulike-t", choices=list(SHAPES))
    ap.add_argument("--fraction", type=float, default=0.01, help="clients per round (paper 000: 0.01)")
    ap.add_argument(
        "--dense-fraction", type=float, default=0.25,
        help="a second, denser round (Spattack trains every client every epoch): item-wise against the loop",
    )  # fmt: skip
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum timing window per measurement")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for fraction, flat in ((args.fraction, True), (args.dense_fraction, False)):
        report(bench(args.dataset, fraction, device, args.seconds, flat))


def report(r: dict) -> None:
    print(
        f"\n{r['dataset']} ({r['source']}), table {r['table']}, {r['clients']} clients, f = {r['f']}, "
        f"{r['entries']} uploaded rows over {r['listed_rows']} listed rows (max {r['max_listers']} listers, "
        f"sum c_r^2 = {r['sum_c2']})"
    )
    ms = r["ms"]
    for k, val in ms.items():
        print(f"  {k:<26} {val:>10.2f} ms")
    for rule in ("krum", "median"):
        flat = f"item / flat {ms[f'item {rule}'] / ms[f'flat {rule}']:.3f}x, " if f"flat {rule}" in ms else ""
        print(
            f"  {rule}: {flat}per-item loop / item {ms[f'loop {rule}'] / ms[f'item {rule}']:.1f}x "
            f"(max |loop - item| = {r['max_abs_diff'][rule]:.1e})"
        )
    waste = r["listed_rows"] * r["max_listers"] / r["entries"]
    print(
        f"  median: one sort of K / padded block "
        f"{ms['item median, one sort of K'] / ms['item median, padded block']:.2f}x "
        f"(M max c_r = {waste:.1f} K; item median takes the padded block while <= {PADDED_WASTE} K)"
    )


if __name__ == "__main__":
    main()
