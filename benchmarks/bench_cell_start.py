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


def seconds_a_cell(way: str, grid_file: Path, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", RUN, way, str(grid_file), str(out)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"the {way} grid failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
    return float(pd.read_parquet(out / "results.parquet")["wall_s"].mean())


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
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    for r in range(args.repeats):
        for way in ("cold", "warm"):
            times[way].append(seconds_a_cell(way, grid_file, root / f"{way}-{r}"))
            print(f"repeat {r} {way}: {times[way][-1]:.2f} s a cell", flush=True)
    cold, warm = statistics.median(times["cold"]), statistics.median(times["warm"])
    print(f"{args.cells} cells of {args.rounds} rounds, median of {args.repeats} grids: cold {cold:.2f} s "
          f"a cell, warm {warm:.2f} s a cell, {cold / warm:.2f}x; {cold - warm:.2f} s saved a cell")  # fmt: skip


if __name__ == "__main__":
    main()
