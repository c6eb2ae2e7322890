"""One cell of a ``fedrec experiment`` grid, in its own process: :func:`cell_process` is the target the
grid runner starts (from a forkserver that has imported fedrec and torch once, so a cell costs a fork,
not seconds of imports). The grid runner has written ``RUN_DIR/config.yaml``; the cell trains it into
RUN_DIR, with its output appended to ``RUN_DIR/cell.log``.

A federated cell continues from its last checkpoint (``resume_federated``); a checkpoint that cannot be
used (corrupt, truncated, from another config) is dropped and the cell starts again from round 0. A
centralized cell has no checkpoint and always starts over. The last line of a failed cell's output is
``error: <one line>``, which the grid runner reports.

Two guards make a killed grid safe to restart: the cell exits when the grid process is gone (a SIGKILL
of the grid leaves no orphan training on), and it holds an exclusive lock on ``RUN_DIR/.lock`` while it
works, so a restarted grid's cell waits for a dying one instead of writing the same files at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
LOG = "cell.log"
LOCK = ".lock"
# tables of a run that a restart from round 0 rewrites; stale ones must not outlive a dropped checkpoint
RUN_TABLES = ("metrics.parquet", "rounds.parquet", "detection.parquet")
# what the forkserver imports once for every cell
PRELOAD = ["fedrec.experiments.cell", "fedrec.federation.runner", "fedrec.config"]

log = logging.getLogger("fedrec.experiments.cell")


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary when it finished (summary.json is written last, atomically), else None."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("metrics"), dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (the pid was reused): treat as gone
        return False
    return True


def _watch(grid_pid: int) -> None:
    """Exit at once when the grid process is gone (checked by pid: the forkserver between the two may
    itself be gone by the time this cell starts)."""

    def watch() -> None:
        while _alive(grid_pid):
            time.sleep(0.2)
        os._exit(3)  # no cleanup: the checkpoint on disk is what the restarted grid resumes from

    threading.Thread(target=watch, daemon=True, name="grid-watch").start()


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one grid at a time on an output folder is the user's care
        yield
        return
    with open(run_dir / LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the kernel when the holder dies
        yield


def _progress(events: int = 10):
    said = [-1]

    def on_progress(ev: dict[str, Any]) -> None:
        total = ev.get("rounds") or ev.get("epochs")
        done = ev.get("t", ev.get("epoch"))
        if not total or done is None or (part := int(events * done / total)) <= said[0]:
            return
        said[0] = part
        p5 = f" P@5 {ev['P@5']:.4f}" if ev.get("P@5") is not None else ""
        print(f"{done}/{total} loss {ev['loss']:.4g}{p5}", file=sys.stderr, flush=True)

    return on_progress


def run_cell(run_dir: Path) -> dict[str, Any]:
    """Train the cell in ``run_dir`` to its end (resuming a federated one); returns its summary."""
    from fedrec.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    if cfg.train.mode == "centralized":
        from fedrec.baselines.runner import run_centralized

        return run_centralized(cfg, _progress(), run_dir=run_dir)[0]
    from fedrec.federation.checkpoint import CHECKPOINT, CheckpointError
    from fedrec.federation.runner import resume_federated

    try:
        return resume_federated(run_dir, _progress())[0]
    except CheckpointError as err:
        log.warning("%s; starting the cell again from round 0", err)
        for name in (CHECKPOINT, *RUN_TABLES):
            (run_dir / name).unlink(missing_ok=True)
        return resume_federated(run_dir, _progress())[0]


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def cell_process(run_dir: str, grid_pid: int, threads: int) -> None:
    """The body of a cell's process: output to RUN_DIR/cell.log, ``threads`` torch threads, exit code
    0 (done), 2 (bad input: config, data) or 1 (a bug, traceback in the log)."""
    path = Path(run_dir)
    fd = os.open(path / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _watch(grid_pid)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    from fedrec.config import ConfigError
    from fedrec.data import DataError

    code = 0
    with _locked(path):
        if finished_summary(path) is not None:  # another grid's cell finished it while this one waited
            log.info("%s: already finished", path)
        else:
            try:
                summary = run_cell(path)
                log.info("%s: finished at round %s", path, summary.get("rounds", summary.get("epochs")))
            except (ConfigError, DataError, ValueError, FileNotFoundError) as err:
                print(f"error: {_one_line(err)}", file=sys.stderr)
                code = 2
            except Exception as err:  # a bug: the traceback stays in the log, one line last for the table
                traceback.print_exc()
                print(f"error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
                code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
