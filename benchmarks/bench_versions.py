"""A grid cell's round, this tree against an earlier commit, measured in one run: the speed a change
bought, on the cells of paper 000's Figure 4 grid.

``--old REV`` is checked out into a temporary git worktree; each (dataset, defense) cell is timed in
fresh processes that alternate between the two trees (``--repeats`` each, medians), every process at
one torch thread. A cell: the grid's settings (``configs/grids/figure4-converged.yaml``: FISM d = 64,
Adam, e = 0.01, compiled default pass) under gradient ascent at ``--byzantine``; ``--warmup`` rounds,
then ``--rounds`` timed. Each process runs from its tree's folder and checks that it imported fedrec
from there. The last column says whether both trees ended on the same model (the sum of theta;
changes that keep the arithmetic keep it exactly; otherwise how far apart the sums are, relative).
``--lr 0.001 --init-std 1.0``: the grid's paper settings (the Figure 4 measurement of RESULTS.md).
``--chunks K``: instead of fresh processes, one live process per tree, warmed up once, then timed in K
chunks of ``--rounds`` rounds each, the two trees taking turns chunk by chunk (the first of a pair
alternating), so that both see the machine in the same state (on a host whose speed drifts over
minutes, fresh processes a minute apart disagree by more than the change being measured); medians of
the chunks.

    FEDREC_DATA_DIR=... python benchmarks/bench_versions.py --old 1727ad0 [--datasets ml100k citeulike-a]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CELL = r"""
import json, sys, time, torch
from fedrec.config import Config
from fedrec.data import load_dataset, split_per_user
from fedrec.federation.simulation import FederatedRun
name, defense, byz, warmup, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cfg = Config()
cfg.federated.fraction, cfg.federated.rounds, cfg.run.compile = 0.01, 10**6, True
if len(sys.argv) > 6:  # the paper's settings (--lr, --init-std)
    cfg.train.lr, cfg.model.init_std = float(sys.argv[6]), float(sys.argv[7])
if byz > 0:
    cfg.attack.name, cfg.attack.fraction = "gradient-ascent", byz
cfg.defense.name = defense
run = FederatedRun.create(cfg, split_per_user(load_dataset(name), seed=0), torch.device("cpu"))
for _ in range(warmup):
    run.step()
start = time.perf_counter()
for _ in range(rounds):
    run.step()
ms = (time.perf_counter() - start) / rounds * 1e3
import fedrec
print(json.dumps({"ms": ms, "theta_sum": float(run.server.theta.double().sum()), "path": fedrec.__file__}))
"""

# a live cell (--chunks): after the warm-up (and the timed rounds of CELL, 0 here), one chunk of rounds per
# line read, its ms a round printed; "end" prints CELL's summary
LIVE = CELL.replace(
    "start = time.perf_counter()", "print('ready', flush=True)\nstart = time.perf_counter()"
).replace(
    "ms = (time.perf_counter() - start) / rounds * 1e3",
    """for line in sys.stdin:
    if line.strip() == "end":
        break
    chunk = int(line)
    t0 = time.perf_counter()
    for _ in range(chunk):
        run.step()
    print(json.dumps({"ms": (time.perf_counter() - t0) / chunk * 1e3}), flush=True)
ms = float("nan")""",
)


def live_cells(old: Path, new: Path, args, name: str, defense: str) -> dict[str, dict]:
    """``--chunks``: the two trees' cells alive together, timed chunk by chunk in turns."""
    procs = {}
    for label, tree in (("old", old), ("new", new)):
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-c", LIVE, name, defense, str(args.byzantine), str(args.warmup), "0"]
        if args.lr is not None:
            cmd += [str(args.lr), str(args.init_std)]
        procs[label] = subprocess.Popen(
            cmd, env=env, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
    try:
        for p in procs.values():  # both warm up at once (untimed), then wait for a chunk
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a live cell did not start")
        times: dict[str, list[float]] = {"old": [], "new": []}
        for c in range(args.chunks):
            for label in ("old", "new") if c % 2 == 0 else ("new", "old"):
                procs[label].stdin.write(f"{args.rounds}\n")
                procs[label].stdin.flush()
                times[label].append(json.loads(procs[label].stdout.readline())["ms"])
        out = {}
        for label, p in procs.items():
            p.stdin.write("end\n")
            p.stdin.flush()
            out[label] = json.loads(p.stdout.readline())
            out[label]["ms"] = statistics.median(times[label])
            tree = old if label == "old" else new
            if not Path(out[label]["path"]).resolve().is_relative_to(tree.resolve()):
                raise RuntimeError(f"the cell imported fedrec from {out[label]['path']}, not from {tree}")
        return out
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def cell(tree: Path, args, name: str, defense: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CELL, name, defense, str(args.byzantine), str(args.warmup), str(args.rounds)]
    if args.lr is not None:
        cmd += [str(args.lr), str(args.init_std)]
    # run from the tree itself: ``python -c`` puts the working directory first on sys.path
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
    path = json.loads(out.stdout.strip().splitlines()[-1])["path"]
    if not Path(path).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the cell imported fedrec from {path}, not from {tree}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the earlier commit")
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "lastfm", "citeulike-a", "citeulike-t"])
    ap.add_argument("--defenses", nargs="+", default=["none", "krum"])
    ap.add_argument("--byzantine", type=float, default=0.3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=0, help="live cells timed in K alternating chunks (above)")
    ap.add_argument(
        "--lr", type=float, default=None, help="train.lr (with --init-std; the grid's paper settings: 0.001)"
    )
    ap.add_argument("--init-std", type=float, default=1.0, help="model.init_std with --lr")
    args = ap.parse_args()
    new = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="fedrec-old-") as tmp:
        old = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(new), "worktree", "add", "-q", "--detach", str(old), args.old], check=True
        )
        try:
            rev = subprocess.run(
                ["git", "-C", str(new), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            how = (
                f"{args.chunks} alternating chunks of {args.rounds} rounds in live processes, medians"
                if args.chunks
                else f"{args.rounds} timed, medians of {args.repeats} fresh processes"
            )
            print(f"{args.old} against {rev} (+ the working tree); gradient ascent at {args.byzantine:.0%}; "
                  f"{args.warmup} rounds of warm-up, {how}")  # fmt: skip
            print("dataset       defense   old ms   new ms   old / new   same model")
            for name in args.datasets:
                for defense in args.defenses:
                    runs: dict[str, list[dict]] = {"old": [], "new": []}
                    if args.chunks:
                        for label, res in live_cells(old, new, args, name, defense).items():
                            runs[label].append(res)
                    for _ in range(0 if args.chunks else args.repeats):
                        for label, tree in (("old", old), ("new", new)):
                            runs[label].append(cell(tree, args, name, defense))
                    o = statistics.median(r["ms"] for r in runs["old"])
                    n = statistics.median(r["ms"] for r in runs["new"])
                    a, b = runs["old"][0]["theta_sum"], runs["new"][0]["theta_sum"]
                    same = "yes" if a == b else f"no (sums {abs(a - b) / max(abs(a), 1e-300):.1e} apart)"
                    print(
                        f"{name:<13} {defense:<8} {o:>7.2f}  {n:>7.2f}  {o / n:>8.2f}x   {same}", flush=True
                    )
        finally:
            subprocess.run(["git", "-C", str(new), "worktree", "remove", "--force", str(old)], check=False)


if __name__ == "__main__":
    main()
