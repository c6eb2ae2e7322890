"""Intra-op threads that never oversubscribe the cores (issue 14, item 1).

torch's default is one thread per core. On a 2-core machine with one other busy process that made a
federated round ~30x slower than one thread (OpenMP workers wait on a core someone else holds), while
on an idle machine two threads are 1.1-1.5x faster than one.

- ``run.threads`` unset (the default): ``$OMP_NUM_THREADS`` if the caller exported it (a process pool
  that split the cores already chose), else **one** thread: it never oversubscribes, and parallelism
  comes from running cells side by side (``fedrec experiment --jobs``).
- ``run.threads: N``: N threads.
- ``run.threads: auto``: starts at one thread and, every ``interval`` seconds, counts the cores the
  *other* processes kept busy since the last look (``/proc/stat``'s busy time minus this process's own
  CPU time) and uses the cores left, at least one. Fastest on an idle machine, never collapses when
  the machine fills up, but the thread count changes the order of float sums (theta differs by ~1e-6
  after 200 ML-100K rounds at 1 vs 2 threads), so a run is bit-reproducible only at a fixed count.

The policy and the rounds run at each count are recorded in summary.json (``threads``).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import torch

from fedrec.config import MAX_THREADS


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _busy_seconds() -> float | None:
    """Machine-wide busy CPU seconds since boot (every core), or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:8]]  # user nice system idle iowait irq softirq
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


class ThreadPolicy:
    """``setting``: None (the default above), ``"auto"`` or a positive int. ``tick()`` once a round; it looks at the machine at
    most every ``interval`` seconds (one small file read), so it costs nothing measurable."""

    def __init__(
        self, setting: str | int | None = None, device: torch.device | None = None, interval: float = 1.0
    ):
        self.cores = usable_cores()
        self.interval = interval
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if device is not None and device.type != "cpu":
            self.mode, fixed = "device", torch.get_num_threads()  # the host threads only feed the GPU
        elif setting is None:
            usable = env.isascii() and env.isdigit() and 0 < int(env) <= MAX_THREADS  # not "²", not 10^12
            self.mode, fixed = ("env", int(env)) if usable else ("fixed", 1)
        elif setting != "auto":
            self.mode, fixed = "fixed", int(setting)
        elif _busy_seconds() is None:
            self.mode, fixed = "fixed", 1  # nothing to measure the others by: the safe choice
        else:
            self.mode, fixed = "auto", 1  # one thread until the first look
        self.threads = fixed
        self.rounds: Counter[int] = Counter()
        torch.set_num_threads(fixed)
        self._mark = self._sample()

    def _sample(self) -> tuple[float, float, float | None]:
        return time.monotonic(), time.process_time(), _busy_seconds()

    def choose(self, others_busy: float) -> int:
        """Threads for a machine whose other processes keep ``others_busy`` cores busy: the free cores,
        rounded down with a quarter-core margin (a half-busy core is not free), at least one."""
        return int(max(1, min(self.cores, int(self.cores - others_busy + 0.25))))

    def tick(self) -> None:
        self.rounds[self.threads] += 1
        if self.mode != "auto":
            return
        now = time.monotonic()
        if now - self._mark[0] < self.interval:
            return
        wall, own, busy = self._sample()
        w0, o0, b0 = self._mark
        self._mark = (wall, own, busy)
        if busy is None or b0 is None or wall <= w0:
            return
        others = max(0.0, ((busy - b0) - (own - o0)) / (wall - w0))
        want = self.choose(others)
        if want != self.threads:
            torch.set_num_threads(want)
            self.threads = want

    def summary(self) -> dict[str, Any]:
        """For summary.json: the policy, the cores it could use, rounds run at each thread count."""
        at = {str(k): v for k, v in sorted(self.rounds.items())}
        return {"policy": self.mode, "cores": self.cores, "threads": self.threads, "rounds_at": at}
