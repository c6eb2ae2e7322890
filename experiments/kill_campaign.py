"""Kill -9 campaign: SIGKILL a federated run at seeded random times, resume it, and require the
result to be bit-identical to an uninterrupted run.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/kill_campaign.py [--kills 12] [--seed 0]
        [--rounds 400] [--checkpoint-every 7] [--eval-every 10] [--dim 16] [--out DIR]

One reference run (ML-100K, FISM, Adam) runs to the end. Then, per kill, the same run starts and gets
SIGKILL either at a random time after its config.yaml appears or, every other kill, halfway through a
random checkpoint write (``FEDREC_CHECKPOINT_WRITE_DELAY`` holds each write open for a moment; the
kill comes when a fresh ``checkpoint.pt.tmp`` appears). Every third kill also kills the first resume.
Then ``fedrec train --resume`` runs until the run finishes, and the final checkpoint (theta, every
optimizer state tensor, private state, RNG states, records, round counter; everything but the wall
time), metrics.parquet, rounds.parquet and detection.parquet are compared with the reference's.
Prints one row per kill and exits 1 if any run failed to resume or differs.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedrec.federation.checkpoint import CHECKPOINT, DELAY_ENV, load_checkpoint  # noqa: E402

TABLES = ("metrics.parquet", "rounds.parquet", "detection.parquet")


@dataclass
class Trial:
    kill: int
    plan: str  # what was aimed at: "time" or "ckpt-write"
    kill_at: list[float]  # seconds after config.yaml appeared (or after the resume started)
    landed: list[str]  # "ckpt write" (a fresh checkpoint.pt.tmp existed), "table write", "between"
    resumes: int
    resumed_ok: bool
    state_identical: bool
    metrics_identical: bool
    rounds_identical: bool

    @property
    def ok(self) -> bool:
        return self.resumed_ok and self.state_identical and self.metrics_identical and self.rounds_identical


def write_config(path: Path, rounds: int, checkpoint_every: int, eval_every: int, dim: int) -> None:
    path.write_text(
        "data: {dataset: ml100k}\n"
        f"model: {{name: fism, dim: {dim}}}\n"
        "train: {mode: federated, optimizer: adam, lr: 0.01, seed: 0}\n"
        f"federated: {{fraction: 0.01, rounds: {rounds}, eval_every: {eval_every}, "
        f"checkpoint_every: {checkpoint_every}}}\n"
        "eval: {ks: [1, 5, 10]}\n"
        "run: {name: kc, device: cpu}\n"
    )


def _env(delay: float) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop(DELAY_ENV, None)
    if delay > 0:
        env[DELAY_ENV] = str(delay)
    return env


def _start(args: list[str], log: Path, delay: float) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "fedrec", *args], stdout=fh, stderr=subprocess.STDOUT, env=_env(delay)
        )


def _run_dir(out: Path) -> Path | None:
    dirs = [d for d in out.glob("*") if (d / "config.yaml").is_file()] if out.is_dir() else []
    return dirs[0] if dirs else None


def _tmp_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _landed(run_dir: Path | None, stale: dict[str, tuple[int, int] | None]) -> str:
    """Where a kill landed: a .tmp file that this process created or rewrote is a write in progress."""
    if run_dir is None:
        return "before config.yaml"
    fresh = [p.name for p in run_dir.glob("*.tmp") if _tmp_key(p) != stale.get(p.name)]
    if f"{CHECKPOINT}.tmp" in fresh:
        return "ckpt write"
    return "table write" if fresh else "between"


def _kill_one(proc: subprocess.Popen, out: Path, plan: str, rng: random.Random, window: float, n_writes: int):
    """Wait for the aimed moment, SIGKILL ``proc``; returns (seconds after the start mark, landed) or
    None when the process finished first."""
    t0 = time.perf_counter()
    run_dir = _run_dir(out)
    while run_dir is None:  # the start mark: config.yaml exists (before it, --resume has nothing)
        if proc.poll() is not None:
            return None
        time.sleep(0.002)
        run_dir = _run_dir(out)
    t0 = time.perf_counter()
    stale = {p.name: _tmp_key(p) for p in run_dir.glob("*.tmp")}
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    if plan == "ckpt-write":
        target, seen, inside = rng.randint(1, n_writes), 0, False
        while proc.poll() is None:
            key = _tmp_key(tmp)
            if key is not None and key != stale.get(tmp.name) and not inside:
                inside, seen = True, seen + 1
                if seen == target:
                    time.sleep(rng.uniform(0, 0.02))  # somewhere inside the held-open write
                    break
            elif key is None:
                inside = False
            time.sleep(0.001)
    else:
        deadline = t0 + rng.uniform(0, window)
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.002)
    if proc.poll() is not None:
        return None
    landed = _landed(run_dir, stale)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.perf_counter() - t0, landed


def _same_state(a: dict, b: dict) -> bool:
    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            # bit for bit (torch.equal calls NaN != NaN, and unscored rounds record NaN)
            return (
                isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape
                and x.numpy().tobytes() == y.numpy().tobytes()
            )  # fmt: skip
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list):
            return isinstance(y, list) and len(x) == len(y) and all(map(same, x, y))
        return x == y

    keys = set(a) - {"seconds"}  # wall time is the one thing a resumed run may not reproduce
    return set(a) == set(b) and all(same(a[k], b[k]) for k in keys)


def _same_table(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and pd.read_parquet(a).equals(pd.read_parquet(b))


def reference(work: Path, config: Path) -> tuple[Path, float]:
    """The uninterrupted run: its directory and its seconds from config.yaml to exit."""
    out = work / "reference"
    proc = _start(["train", "-c", str(config), "--out", str(out), "--json"], work / "reference.log", 0)
    while _run_dir(out) is None and proc.poll() is None:
        time.sleep(0.002)
    t0 = time.perf_counter()
    if proc.wait() != 0 or _run_dir(out) is None:
        raise SystemExit(f"reference run failed, see {work / 'reference.log'}")
    return _run_dir(out), time.perf_counter() - t0


def trial(
    work: Path, config: Path, ref: Path, i: int, plan: str, rng: random.Random, window: float,
    n_writes: int, delay: float, kill_resume: bool,
) -> Trial:  # fmt: skip
    out, log = work / f"kill{i:02d}", work / f"kill{i:02d}.log"
    hold = delay if plan == "ckpt-write" else 0.0
    kill_at, landed, resumes = [], [], 0
    proc = _start(["train", "-c", str(config), "--out", str(out), "--json"], log, hold)
    killed = _kill_one(proc, out, plan, rng, window, n_writes)
    rc = proc.returncode
    while killed is not None:
        kill_at.append(killed[0])
        landed.append(killed[1])
        run_dir = _run_dir(out)
        resumes += 1
        proc = _start(["train", "--resume", str(run_dir), "--json"], log, hold)
        killed = None
        if kill_resume and resumes == 1:  # a resume killed again must resume as well
            killed = _kill_one(proc, out, plan, rng, window / 2, max(1, n_writes // 2))
        rc = proc.wait()
    run_dir = _run_dir(out)
    ok = rc == 0 and run_dir is not None and (run_dir / "summary.json").is_file()
    same_state = ok and _same_state(
        load_checkpoint(ref / CHECKPOINT), load_checkpoint(run_dir / CHECKPOINT)
    )  # fmt: skip
    return Trial(
        kill=i, plan=plan, kill_at=kill_at, landed=landed, resumes=resumes, resumed_ok=ok,
        state_identical=bool(same_state),
        metrics_identical=ok and all(_same_table(ref / t, run_dir / t) for t in TABLES if t != "rounds.parquet"),
        rounds_identical=ok and _same_table(ref / "rounds.parquet", run_dir / "rounds.parquet"),
    )  # fmt: skip


def campaign(
    work: Path, kills: int, seed: int, rounds: int, checkpoint_every: int, eval_every: int, dim: int,
    delay: float = 0.2,
) -> list[Trial]:  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    write_config(config, rounds, checkpoint_every, eval_every, dim)
    ref, window = reference(work, config)
    rng = random.Random(seed)
    n_writes = rounds // checkpoint_every
    return [
        trial(
            work, config, ref, i, "ckpt-write" if i % 2 else "time", rng, window, n_writes, delay, i % 3 == 2
        )
        for i in range(kills)
    ]


def table(trials: list[Trial]) -> str:
    head = (
        "kill",
        "aimed at",
        "killed at (s)",
        "landed",
        "resumes",
        "resumed ok",
        "state ==",
        "metrics ==",
        "rounds ==",
    )
    rows = [
        (str(t.kill), t.plan, ", ".join(f"{s:.2f}" for s in t.kill_at) or "-", ", ".join(t.landed) or "finished first",
         str(t.resumes), *("yes" if x else "NO" for x in (t.resumed_ok, t.state_identical, t.metrics_identical, t.rounds_identical)))
        for t in trials
    ]  # fmt: skip
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in [head, *rows])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--checkpoint-every", type=int, default=7)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--out", type=Path, default=None, help="work directory (default: a fresh temporary one)")
    a = p.parse_args()
    work = a.out or Path(tempfile.mkdtemp(prefix="kill-campaign-"))
    start = time.perf_counter()
    trials = campaign(work, a.kills, a.seed, a.rounds, a.checkpoint_every, a.eval_every, a.dim)
    print(table(trials))
    bad = [t.kill for t in trials if not t.ok]
    print(
        f"{len(trials)} kill trials, {sum(len(t.kill_at) for t in trials)} SIGKILLs "
        f"({sum(x == 'ckpt write' for t in trials for x in t.landed)} during a checkpoint write), "
        f"{len(bad)} differing; {time.perf_counter() - start:.0f} s; work directory {work}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
