"""Issue 16: P@5 after 2000 rounds (lr 0.01) of flat vs item-wise coordinate-wise rules on ML-100K and
Last.fm, attack-free and under gradient ascent at 20 %, next to most-popular; one job at a time.

    OMP_NUM_THREADS=1 FEDREC_DATA_DIR=/work/shared/data python experiments/issue16_coordinatewise.py OUT_DIR

Each run's summary is written to OUT_DIR/<dataset>-<defense>-<attack>.json with its wall time and
command; existing files are skipped, so the script can be rerun after an interruption. Extra
arguments ``DATASET-DEFENSE-ATTACK`` (e.g. ``ml100k-cw-median-none``) run only those.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 2000
COMMON = ["--rounds", str(ROUNDS), "--seed", "0", "--set", "train.lr=0.01",
          "--set", f"federated.eval_every={ROUNDS}", "--set", f"federated.checkpoint_every={ROUNDS}"]  # fmt: skip
ATTACKS = {"none": [], "ga20": ["--attack", "gradient-ascent", "--byzantine", "0.2"]}
ORDER = [  # most telling first, so a cut-short session still has the attack-free contrast
    ("item-median", "none"), ("cw-median", "none"), ("item-median", "ga20"), ("cw-median", "ga20"),
    ("item-trmean", "none"), ("cw-trmean", "none"), ("item-trmean", "ga20"), ("cw-trmean", "ga20"),
    ("none", "none"),
]  # fmt: skip


def run(cmd: list[str], out: Path) -> None:
    if out.exists():
        return
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    summary.update(
        command=" ".join(cmd[2:]),
        wall_s=wall,
        warnings=[ln for ln in res.stderr.splitlines() if "WARNING" in ln],
    )
    out.write_text(json.dumps(summary, indent=1))
    p5 = summary["metrics"]["precision"]["5"]
    print(f"{out.stem}: P@5 {p5:.4f} wall {wall:.0f} s", flush=True)


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "fedrec"]
    runs_dir = str(out_dir / "runs")
    for ds in ("ml100k", "lastfm"):
        run([*py, "train", "--dataset", ds, "--mode", "centralized", "--model", "pop", "--out", runs_dir, "--json"],
            out_dir / f"{ds}-pop.json")  # fmt: skip
    only = set(sys.argv[2:])
    for defense, attack in ORDER:
        for ds in ("ml100k", "lastfm"):
            if only and f"{ds}-{defense}-{attack}" not in only:
                continue
            # attack-free, a trimmed mean must still assume the 20 % it trims under attack (else f = 0: the mean)
            assume = (
                ["--set", "defense.assumed_fraction=0.2"] if attack == "none" and "trmean" in defense else []
            )
            cmd = [*py, "train", "-c", f"configs/{ds}.yaml", "--defense", defense, *ATTACKS[attack], *COMMON,
                   *assume, "--out", runs_dir, "--json"]  # fmt: skip
            run(cmd, out_dir / f"{ds}-{defense}-{attack}.json")


if __name__ == "__main__":
    main()
