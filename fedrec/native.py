"""C loops compiled for this process: the few places where a round's arithmetic is one pass over its
rows but torch (eager: a pass per operation; inductor: several loops with float64 buffers between
them) makes several (fedrec.optim.adam_check, fedrec.federation.replay).

``library(source)`` compiles ``source`` with the system's C compiler into a fresh temporary folder
(nothing persistent is loaded, nothing is read from a cache another process could write) and loads it,
once per process and source; None where no compiler works. The flags keep every operation the IEEE
one torch's kernels compute: no fast-math, no contraction into fused multiply-adds; ``-fno-math-errno``
only lets sqrt vectorise and ``-march=native`` only widens the vectors (retried without it where the
compiler refuses it).
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

FLAGS = ("-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno")


@functools.cache
def library(source: str) -> ctypes.CDLL | None:
    """``source`` compiled and loaded (see the module docstring), or None."""
    cc = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="fedrec-native-"))
    src, lib = folder / "kernel.c", folder / "kernel.so"
    src.write_text(source)
    try:
        for extra in (["-march=native"], []):
            try:
                cmd = [cc, *FLAGS, *extra, str(src), "-o", str(lib), "-lm"]
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                return ctypes.CDLL(str(lib))
            except (OSError, subprocess.SubprocessError):
                continue
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # a loaded library stays mapped
    return None


def load(source: str, signatures: dict[str, tuple[Any, list[Any]]]) -> ctypes.CDLL | None:
    """``library(source)`` with each named function's ctypes result and argument types set, or None."""
    lib = library(source)
    if lib is not None:
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    return lib
