"""The run directory (DESIGN.md section 10): config.yaml, metrics.parquet, summary.json, checkpoint.pt."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def run_name_problem(name: str, what: str = "a folder") -> str | None:
    """Why ``name`` cannot name ``what`` inside ``--out`` (None when it can): a separator, a ``..`` or an
    absolute path would put it outside the out folder."""
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty name"
    if any(c in name for c in "/\\\0") or Path(name).is_absolute():
        return f"must be a plain name without path separators (it names {what} inside --out)"
    if ".." in name:
        return f"must not contain '..' (it names {what} inside --out)"
    return None


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """A fresh directory ``out_dir/name-YYYYmmdd-HHMMSS[-k]``; never reuses an existing one, also when
    many processes start runs in the same second (mkdir is the atomic claim, not an exists() check)."""
    if (why := run_name_problem(name)) is not None:
        raise ValueError(f"run.name={name!r}: {why}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while True:
        try:
            path.mkdir(exist_ok=False)
            return path
        except FileExistsError:
            path, k = Path(f"{base}-{k}"), k + 1


def write_config(run_dir: Path, yaml_text: str) -> None:
    _atomic(run_dir / "config.yaml", lambda p: p.write_text(yaml_text))


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``rows``: dicts with t, metric, k, value (one per evaluation point)."""
    df = pd.DataFrame(rows, columns=["t", "metric", "k", "value"])
    _atomic(run_dir / "metrics.parquet", lambda p: df.to_parquet(p, index=False))


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, Inf, numpy's too) as None: strict JSON has no NaN, and
    JSON.parse or jq reject Python's ``NaN`` token."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float | np.floating) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON (null for NaN / Inf; other objects as strings)."""
    return json.dumps(finite_json(obj), allow_nan=False, default=str, **kw)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    _atomic(run_dir / "summary.json", lambda p: p.write_text(dumps(summary, indent=2)))


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def _atomic(path: Path, write, unique: bool = False) -> None:
    """Write then rename, so a killed process never leaves a half-written file in place of a good one.
    ``unique``: a temporary name of this process's own, for files that several processes may rewrite
    at once (two grids on one out folder); otherwise ``NAME.tmp``, which the kill campaign watches."""
    suffix = f".{os.getpid()}.tmp" if unique else ".tmp"
    tmp = path.with_name(path.name + suffix)
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:  # a full disk, a write error: the old file stays, no half-written temporary
        tmp.unlink(missing_ok=True)
        raise
