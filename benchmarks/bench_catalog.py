"""How a round's cost grows with the catalog (issue 14, the catalog item): the same clients, the same work per
round, item tables of 1e4, 1e5 and 1e6 items, measured in one run.

Citeulike-t's shape of users (7,947 users, 79 clients a round at e = 0.01, ~17 items a user), FISM
d = 64, Adam, no attack and no defense unless asked. Items are drawn with a Zipf-like popularity
(exponent 1 over a random order), so a large catalog has the long tail a real one has. The round is
timed in steady state, after ``--warmup`` rounds; the per-phase split comes from ``bench_phases``'
wrappers.

    python benchmarks/bench_catalog.py [--items 10000 1000000] [--deferred off on] [--warmup 2000]
                                       [--attack gradient-ascent --byzantine 0.3 --defense a-rfrs]

``run.deferred`` (fedrec/federation/deferred.py) makes the round follow the rows it touches; the dense
pass is timed only up to ``--dense-max-items`` (a dense round at a million items takes over a second,
and the warm-up would take most of an hour). The last line is the ratio the issue asks about: the
largest catalog's deferred round over the smallest catalog's dense (default) round. ``eval catch-up``
is what an evaluation or a checkpoint adds in a deferred run: every row brought up to date.

``--chunks K``: every run is built and warmed up first, then the runs are timed in K chunks of
``--seconds / K`` each, taking turns (the order reversed every other chunk), and the medians are
printed: on a host whose speed drifts over minutes, runs timed one after the other a minute apart
disagree by more than the ratio being measured.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedrec.config import Config
from fedrec.data.interactions import Interactions
from fedrec.data.split import split_per_user
from fedrec.federation.simulation import FederatedRun


def zipf_interactions(n_users: int, n_items: int, mean_items: float, seed: int = 0) -> Interactions:
    """``n_users`` users with ~``mean_items`` distinct items each (at least 3), drawn by popularity
    ``1 / rank`` over a random order of the catalog: linear in the interactions, not users x items."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(3, rng.poisson(mean_items, size=n_users))
    p = 1.0 / np.arange(1, n_items + 1)
    p /= p.sum()
    order = rng.permutation(n_items)
    users, items = [], []
    for u, k in enumerate(counts):
        draw = np.unique(order[rng.choice(n_items, size=int(k) * 2, p=p)])[: int(k)]
        users.append(np.full(draw.shape[0], u, dtype=np.int64))
        items.append(draw)
    return Interactions.from_pairs(
        np.concatenate(users), np.concatenate(items), n_users=n_users, n_items=n_items, name="zipf"
    )


def steady_round_seconds(run: FederatedRun, seconds: float) -> float:
    reps, start = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - start < seconds:
        run.step()
        reps += 1
    return (time.perf_counter() - start) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--dense-max-items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=7947)
    ap.add_argument("--mean-items", type=float, default=17.0)
    ap.add_argument("--warmup", type=int, default=2000, help="rounds before timing (lags reach steady state)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--compile", choices=["on", "off"], default="on", help="run.compile")
    ap.add_argument(
        "--deferred", nargs="+", choices=["on", "off"], default=["off", "on"], help="run.deferred (each)"
    )
    ap.add_argument("--attack", default="none", help="an attack of `fedrec attacks` (its defaults)")
    ap.add_argument("--byzantine", type=float, default=0.3, help="share of Byzantine clients with --attack")
    ap.add_argument("--defense", default="none")
    ap.add_argument("--chunks", type=int, default=0, help="time the live runs in K alternating chunks")
    args = ap.parse_args()
    attacked = f"{args.attack} at {args.byzantine:.0%}" if args.attack != "none" else "no attack"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), FISM d = 64, Adam, e = 0.01;"
        f" {attacked}, defense {args.defense}"
    )
    if args.chunks:
        print("deferred  items        rows       clients  round ms")
        chunked(args)
        return
    print("deferred  items        rows       clients  round ms  x first  eval catch-up ms")
    first: dict[str, float] = {}
    last = None
    for n_items in args.items:
        split = split_per_user(zipf_interactions(args.users, n_items, args.mean_items), seed=0)
        for mode in args.deferred:
            if mode == "off" and n_items > args.dense_max_items:
                continue
            run = make_run(args, split, mode)
            sec = steady_round_seconds(run, args.seconds)
            first.setdefault(mode, sec)
            last = (mode, n_items, sec)
            catch_up = ""
            if mode == "on":  # what an evaluation adds: every row brought up to date
                start = time.perf_counter()
                run.server.theta  # noqa: B018 - the read catches every row up
                catch_up = f"{(time.perf_counter() - start) * 1e3:>16.1f}"
            rows = run.server.n_rows
            print(
                f"{mode:<8}  {n_items:>9,}  {rows:>9,}  {run.per_round:>7}  {sec * 1e3:>8.2f}"
                f"  {sec / first[mode]:>6.2f}x  {catch_up}"
            )

    if "off" in first and last is not None and last[0] == "on":
        print(
            f"deferred round at {last[1]:,} items / dense round at {args.items[0]:,} items:"
            f" {last[2] / first['off']:.2f}x"
        )


def make_run(args, split, mode: str) -> FederatedRun:
    cfg = Config()
    cfg.federated.fraction, cfg.federated.rounds = 0.01, 10**6
    cfg.run.compile, cfg.run.deferred = args.compile == "on", mode == "on"
    cfg.attack.name, cfg.defense.name = args.attack, args.defense
    cfg.attack.fraction = args.byzantine if args.attack != "none" else 0.0
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    for _ in range(args.warmup):
        run.step()
    return run


def chunked(args) -> None:
    """``--chunks``: every run live at once, timed in alternating chunks (the module docstring)."""
    runs: dict[tuple[str, int], FederatedRun] = {}
    for n_items in args.items:
        split = split_per_user(zipf_interactions(args.users, n_items, args.mean_items), seed=0)
        for mode in args.deferred:
            if not (mode == "off" and n_items > args.dense_max_items):
                runs[(mode, n_items)] = make_run(args, split, mode)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
    for c in range(args.chunks):
        for key in list(runs) if c % 2 == 0 else list(reversed(runs)):
            times[key].append(steady_round_seconds(runs[key], args.seconds / args.chunks))
    med = {key: float(np.median(t)) for key, t in times.items()}
    for (mode, n_items), run in runs.items():
        print(
            f"{mode:<8}  {n_items:>9,}  {run.server.n_rows:>9,}  {run.per_round:>7}"
            f"  {med[(mode, n_items)] * 1e3:>8.2f}  (median of {args.chunks} chunks)"
        )
    big, small = ("on", max(args.items)), ("off", min(args.items))
    if big in med and small in med:
        pairs = [b / s for b, s in zip(times[big], times[small], strict=True)]
        print(
            f"deferred round at {big[1]:,} items / dense round at {small[1]:,} items: {med[big] / med[small]:.2f}x"
            f" (medians; chunk by chunk {min(pairs):.2f}-{max(pairs):.2f}x)"
        )


if __name__ == "__main__":
    main()
