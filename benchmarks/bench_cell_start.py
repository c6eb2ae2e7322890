"""A grid cell's fixed cost with and without the forkserver's compiler warm-up (fedrec.experiments.warm):
the same small grid of short compiled cells (ML-100K, 20 rounds each) run by ``fedrec experiment``
both ways, alternating, in one run of this script; prints seconds a cell and the ratio.

    FEDREC_DATA_DIR=... python benchmarks/bench_cell_start.py [--cells 4] [--repeats 2]

Each way runs in its own process: a process starts one forkserver, whose preload is fixed when it
starts. "cold" is the grid runner told that no cell compiles (no warm-up), which is how every cell ran
before; the cells still compile, each loading the compiler stack for itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

RUN = """
import sys
import fedrec.experiments.grid as grid
if sys.argv[1] == "cold":
    original = grid._context
    grid._context = lambda compiles: original(False)
from fedrec.cli import app
app(["experiment", sys.argv[2], "--out", sys.argv[3], "--jobs", "1"])
"""


def seconds(way: str, grid_file: Path, out: Path) -> tuple[float, float]:
    """The cells' mean wall time (the grid's per-cell timer: from the fork, so without the forkserver's
    one-off start and warm-up) and the whole command's wall time (with them, and with imports)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, way, str(grid_file), str(out)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"the {way} grid failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
    whole = time.perf_counter() - start
    return float(pd.read_parquet(out / "results.parquet")["wall_s"].mean()), whole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-cell-start-"))
    grid_file = root / "grid.yaml"
    doc = {
        "base": str(Path(__file__).resolve().parents[1] / "configs" / "ml100k.yaml"),
        "set": {"run.compile": True, "federated": {"rounds": args.rounds, "eval_every": args.rounds}},
        "grid": {"train.seed": list(range(args.cells))},
    }
    grid_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    cell: dict[str, list[float]] = {"cold": [], "warm": []}
    whole: dict[str, list[float]] = {"cold": [], "warm": []}
    for r in range(args.repeats):
        for way in ("cold", "warm"):
            c, w = seconds(way, grid_file, root / f"{way}-{r}")
            cell[way].append(c)
            whole[way].append(w)
            print(f"repeat {r} {way}: {c:.2f} s a cell, {w:.2f} s the whole command", flush=True)
    med = {k: (statistics.median(cell[k]), statistics.median(whole[k])) for k in cell}
    (cc, cw), (wc, ww) = med["cold"], med["warm"]
    print(f"{args.cells} cells of {args.rounds} rounds, medians of {args.repeats} grids each way:")
    print(
        f"  a cell (from its fork): cold {cc:.2f} s, warm {wc:.2f} s, {cc / wc:.2f}x, {cc - wc:.2f} s saved"
    )
    print(f"  the whole command (imports, forkserver start and warm-up included): cold {cw:.2f} s, "
          f"warm {ww:.2f} s, {cw / ww:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
