"""The run directory (DESIGN.md section 10): config.yaml, metrics.parquet, summary.json, checkpoint.pt."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """A fresh directory ``out_dir/name-YYYYmmdd-HHMMSS[-k]``; never reuses an existing one."""
    base = Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    path.mkdir(parents=True)
    return path


def write_config(run_dir: Path, yaml_text: str) -> None:
    _atomic(run_dir / "config.yaml", lambda p: p.write_text(yaml_text))


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``rows``: dicts with t, metric, k, value (one per evaluation point)."""
    df = pd.DataFrame(rows, columns=["t", "metric", "k", "value"])
    _atomic(run_dir / "metrics.parquet", lambda p: df.to_parquet(p, index=False))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    _atomic(run_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=str)))


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def _atomic(path: Path, write) -> None:
    # write then rename, so a killed process never leaves a half-written file in place of a good one
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
