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
import stat
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
# fedrec.experiments.preload_native: the C loops compiled once, inherited by every cell
PRELOAD = [
    "fedrec.experiments.cell",
    "fedrec.federation.runner",
    "fedrec.config",
    "fedrec.experiments.preload_native",
]

log = logging.getLogger("fedrec.experiments.cell")


# a real summary.json is a few KB and cell.json ~150 bytes: a record past this is not one of ours
MAX_RECORD_BYTES = 16 << 20
_warned: set[str] = set()


class RecordError(ValueError):
    """A grid record (summary.json, cell.json) that cannot be used; ``str`` is one line naming it."""


def read_small(path: Path) -> bytes:
    """The bytes of ``path``. FileNotFoundError when it is absent; :class:`RecordError` when it is not a
    regular file (a FIFO would block, /dev/zero never ends) or is over ``MAX_RECORD_BYTES``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not block
    except FileNotFoundError:
        raise
    except OSError as err:
        raise RecordError(f"{path}: unreadable ({err.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise RecordError(f"{path}: not a regular file")
        data = fh.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"{path}: larger than {MAX_RECORD_BYTES:,} bytes")
    return data


def read_record(path: Path) -> Any:
    """The JSON value of ``path`` (:func:`read_small`); :class:`RecordError` also when it is not JSON
    (nesting too deep for the parser included)."""
    data = read_small(path)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:
        raise RecordError(f"{path}: not valid JSON ({type(err).__name__})") from None


def warn_once(message: str | None = None) -> None:
    """One warning line per bad record (the grid reads a record many times); ``None`` forgets the
    lines said (a new grid run says them again)."""
    if message is None:
        _warned.clear()
    elif message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _is_number(v: Any) -> bool:
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63)


def summary_problem(summary: Any) -> str | None:
    """What keeps a parsed summary.json from being a finished run's, as the grid reads it (metrics
    name -> K -> number, an integer ``rounds``, a mapping ``detection``), or None when it is one."""
    if not isinstance(summary, dict):
        return "not a JSON object"
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict):
        return "metrics is not a mapping"
    for name, by_k in metrics.items():
        if not isinstance(by_k, dict):
            return f"metrics.{name} is not a mapping"
        for k, v in by_k.items():
            if not (k.isascii() and k.isdigit()):
                return f"metrics.{name}: K {k!r} is not a number"
            if v is not None and not _is_number(v):
                return f"metrics.{name}.{k} is not a number"
    rounds = summary.get("rounds")
    if rounds is not None and not (
        isinstance(rounds, int) and not isinstance(rounds, bool) and 0 <= rounds < 2**63
    ):
        return "rounds is not a count"
    detection = summary.get("detection")
    if detection is not None and not (
        isinstance(detection, dict) and isinstance(detection.get("all_rounds", {}), dict | None)
    ):
        return "detection is not a mapping"
    return None


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary when it finished (summary.json is written last, atomically), else None. A
    summary.json that is there but unusable (tampered, a FIFO, a link to /dev/zero) gets one warning
    line and counts as not finished, so the cell runs again instead of stopping the grid."""
    path = run_dir / SUMMARY
    try:
        summary = read_record(path)
    except FileNotFoundError:
        return None
    except RecordError as err:
        warn_once(f"{err}; the cell counts as not finished")
        return None
    if (problem := summary_problem(summary)) is not None:
        warn_once(f"{path}: {problem}; the cell counts as not finished")
        return None
    return summary


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

    if run_dir.is_symlink():  # training would rewrite and delete files of whatever run it points at
        raise ValueError(
            f"{run_dir}: a symbolic link, not a cell folder of the grid; refusing to write through it"
        )
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
