"""Issue 10, last item: the defenses of papers 001-002 (and A-RFRS) in fedrec's recommendation setting,
under the attacks of papers 001-002, at 40 % Byzantine clients.

    OMP_NUM_THREADS=1 FEDREC_DATA_DIR=/work/shared/data python experiments/papers_recsys.py OUT \
        [--datasets ml100k lastfm] [--seeds 0 1 2] [--rounds 1000] [--jobs 2] [--only DEFENSE/ATTACK ...]
    python experiments/papers_recsys.py OUT --table [--plot docs/figures]   # Markdown (and PNG) so far
    ... --set model.init_std=0.1      # extra overrides for every cell (use a separate OUT)

Every cell is ``fedrec train -c configs/<dataset>.yaml --defense D --attack A --byzantine 0.4 --rounds R
--seed S --set attack.seed=S --set train.lr=0.01 --set run.compile=true`` (one evaluation, at the end;
the rule check compiled: the same verdicts, faster) and writes
OUT/<dataset>/<defense>__<attack>__s<seed>.json (the run's summary, its command and wall time);
finished cells are skipped, so the script resumes after an interruption. Attack-free cells
(``none``) set ``defense.assumed_fraction=0.4`` instead: the defense still drops what it would drop. The order puts seed 0 of
every cell first, so a cut-short grid still covers every cell once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFENSES = ["none", "a-rfrs", "signguard", "grad-mda", "grad-cc", "grad-cge", "grad-geomed", "grad-meamed",
            "grad-trmean", "krum-star"]  # fmt: skip
ATTACKS = ["none", "alie", "ipm", "sign-flip", "label-flip", "min-max", "gaussian", "byzmean", "min-sum"]
FRACTION = 0.4


def cells(datasets: list[str], seeds: list[int], only: set[str]) -> list[tuple[str, str, str, int]]:
    out = []
    for seed in seeds:
        for ds in datasets:
            for attack in ATTACKS:
                for defense in DEFENSES:
                    if only and f"{defense}/{attack}" not in only:
                        continue
                    out.append((ds, defense, attack, seed))
    return out


def run_cell(out_dir: Path, rounds: int, cell: tuple[str, str, str, int], extra: tuple[str, ...] = ()) -> str:
    ds, defense, attack, seed = cell
    path = out_dir / ds / f"{defense}__{attack}__s{seed}.json"
    if path.exists():
        return ""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fedrec", "train", "-c", f"configs/{ds}.yaml", "--defense", defense,
           "--rounds", str(rounds), "--seed", str(seed), "--set", f"attack.seed={seed}",
           "--set", "train.lr=0.01", "--set", "run.compile=true", "--set", f"federated.eval_every={rounds}",
           "--set", f"federated.checkpoint_every={rounds}", "--out", str(out_dir / "runs"), "--json"]  # fmt: skip
    for kv in extra:  # --set: every cell's extra overrides (e.g. model.init_std=0.1)
        cmd += ["--set", kv]
    if attack != "none":
        cmd[6:6] = ["--attack", attack, "--byzantine", str(FRACTION)]
    else:  # attack-free, but the defense still assumes 40 %: what it costs honest training
        cmd[6:6] = ["--set", f"defense.assumed_fraction={FRACTION}"]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    if res.returncode != 0:
        return f"{path.stem}: FAILED ({res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode})"
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    summary.update(command=" ".join(cmd[2:]), wall_s=wall)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(path)
    return f"{ds}/{path.stem}: P@5 {summary['metrics']['precision']['5']:.4f} ({wall:.0f} s)"


def _stat(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(out_dir: Path, seeds: list[int]) -> None:
    """P@5 (mean ± std over seeds) per defense x attack, and the Byzantine / honest rejection rates
    pooled over the finished runs, one table per dataset."""
    for ds_dir in sorted(p for p in out_dir.iterdir() if p.is_dir() and p.name != "runs"):
        found: dict[tuple[str, str], list[dict]] = {}
        for f in ds_dir.glob("*.json"):
            defense, attack, seed = f.stem.split("__")
            if int(seed[1:]) not in seeds:
                continue
            found.setdefault((defense, attack), []).append(json.loads(f.read_text()))
        attacks = [a for a in ATTACKS if any(k[1] == a for k in found)]
        print(f"\n#### {ds_dir.name}: P@5 after the run (mean ± std over seeds; n = seeds)\n")
        print("| defense | " + " | ".join(attacks) + " | worst |")
        print("|---|" + "---|" * (len(attacks) + 1))
        for d in DEFENSES:
            row, worst = [], []
            for a in attacks:
                runs = found.get((d, a), [])
                p5 = [r["metrics"]["precision"]["5"] for r in runs]
                row.append(_stat(p5) + (f" (n={len(p5)})" if p5 and len(p5) < 3 else ""))
                if p5 and a != "none":
                    worst.append((statistics.mean(p5), a))
            w = min(worst) if worst else None
            print(f"| {d} | " + " | ".join(row) + (f" | {w[0]:.3f} ({w[1]}) |" if w else " | — |"))
        print(
            f"\n#### {ds_dir.name}: Byzantine uploads rejected / honest uploads rejected (all rounds, pooled)\n"
        )
        print("| defense | " + " | ".join(a for a in attacks if a != "none") + " |")
        print("|---|" + "---|" * len([a for a in attacks if a != "none"]))
        for d in DEFENSES:
            row = []
            for a in attacks:
                if a == "none":
                    continue
                runs = [r for r in found.get((d, a), []) if r.get("detection")]
                byz = sum(r["detection"]["all_rounds"]["byzantine"] for r in runs)
                hon = sum(r["detection"]["all_rounds"]["honest"] for r in runs)
                rb = sum(r["detection"]["all_rounds"]["rejected_byzantine"] for r in runs)
                rh = sum(r["detection"]["all_rounds"]["rejected_honest"] for r in runs)
                row.append(f"{rb / byz:.2f} / {rh / hon:.2f}" if byz and hon else "—")
            print(f"| {d} | " + " | ".join(row) + " |")
        walls = [r["wall_s"] for runs in found.values() for r in runs]
        print(
            f"\n{len(walls)} runs, {sum(walls) / 60:.0f} CPU-minutes in all, median {statistics.median(walls):.0f} s a run."
        )


def plot(out_dir: Path, folder: Path, seeds: list[int], prefix: str = "papers-recsys") -> None:
    """A heatmap per dataset: P@5 (mean over seeds) of every defense under every attack."""
    from heatmap import heatmap

    for ds_dir in sorted(p for p in out_dir.iterdir() if p.is_dir() and p.name != "runs"):
        found: dict[tuple[str, str], list[float]] = {}
        used: set[str] = set()
        for f in ds_dir.glob("*.json"):
            defense, attack, seed = f.stem.split("__")
            if int(seed[1:]) not in seeds:
                continue
            used.add(seed)
            found.setdefault((defense, attack), []).append(
                json.loads(f.read_text())["metrics"]["precision"]["5"]
            )
        values = [[statistics.mean(found[(d, a)]) if (d, a) in found else float("nan") for a in ATTACKS]
                  for d in DEFENSES]  # fmt: skip
        title = (
            f"{ds_dir.name}, 40 % Byzantine: P@5 (mean over seeds {', '.join(sorted(s[1:] for s in used))})"
        )
        print(heatmap(values, DEFENSES, ATTACKS, title, folder / f"{prefix}-{ds_dir.name}.png", fmt="{:.3f}",
                      vmin=0, label="P@5"))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "lastfm"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument(
        "--reverse", action="store_true", help="last cell first (a second worker on the same grid)"
    )
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--plot", type=Path, help="write the heatmaps of finished cells into this folder")
    ap.add_argument("--name", default="papers-recsys", help="the heatmaps' file name before -<dataset>.png")
    ap.add_argument("--set", action="append", default=[], help="key=value added to every cell's command")
    args = ap.parse_args()
    if args.table or args.plot:
        table(args.out, args.seeds)
        if args.plot:
            plot(args.out, args.plot, args.seeds, args.name)
        return
    todo = cells(args.datasets, args.seeds, set(args.only))
    todo = todo[::-1] if args.reverse else todo
    print(f"{len(todo)} cells", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda c: run_cell(args.out, args.rounds, c, tuple(args.set)), todo):
            if line:
                print(line, flush=True)


if __name__ == "__main__":
    main()
