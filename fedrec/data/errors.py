"""Errors raised while reading data: one line that names the file and, where known, the line."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad or missing input data. ``str(err)`` is a single line: ``file:line: reason``."""

    def __init__(self, reason: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        super().__init__(f"{where}{reason}")
