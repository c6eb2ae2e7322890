"""Readers for the raw dataset files (formats: /work/shared/data/README.md, RecBole atomic files).

Every reader returns :class:`Interactions` with dense 0-based indices and the original-id maps; every
listed pair is a positive. Parsing takes a fast pandas/numpy path; only when that fails (or validation
finds a problem) is the file re-read line by line to raise a :class:`DataError` naming file and line.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.errors import DataError
from fedrec.data.interactions import Interactions

log = logging.getLogger(__name__)

_SEP_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe", " ": "space"}
# ASCII digits and blanks only: Unicode digits (Arabic-Indic, fullwidth) are no ids in these formats
_INT = re.compile(r"\s*[-+]?\d+\s*", re.ASCII)
_FAST_ERRORS = (
    ValueError,
    OverflowError,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
    UnicodeDecodeError,
)

# Caps on what a data file may hold: far above every real file (longest line: 11,108 bytes in
# citeulike-t users.dat) yet small enough that one absurd token cannot exhaust memory (a 10-million-
# character id once made numpy ask for 745 GiB: astype(str) gives every id the longest one's width).
MAX_LINE_BYTES = 1 << 20
MAX_ID_CHARS = 256
# A file is read whole (UTF-8 and line checks), so its size is checked first: 1 GiB is ~500x the largest
# real file (ml100k u.data, 1.9 MB) and above RecBole's ml-20m .inter, yet a 3 GB file no longer ends
# in a MemoryError.
MAX_FILE_BYTES = 1 << 30
# citeulike item ids are dense article indices, so the largest id sets the catalog and the size of its
# id map: 10 M articles (~400x citeulike-t's 25,975; 80 MB of ids) bounds what one id can allocate
# (``1 2000000000`` once asked for 15 GiB).
MAX_CATALOG = 10_000_000
_BOM = b"\xef\xbb\xbf"  # tolerated at the start of a file (editors on Windows write one)
_INT64_MAX = 2**63 - 1

LASTFM_FIELDS = ("userID", "artistID", "weight")
ML100K_FIELDS = ("user_id", "item_id", "rating", "timestamp")


# ---------------------------------------------------------------- shared helpers


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a regular file", path)
    size = path.stat().st_size
    if size == 0:
        raise DataError("empty file: no interactions", path)
    if size > MAX_FILE_BYTES:
        raise DataError(f"file of {size:,} bytes is larger than the limit of {MAX_FILE_BYTES:,}", path)
    _check_bytes(path)
    return path


def _check_bytes(path: Path) -> None:
    """UTF-8 throughout and no line over ``MAX_LINE_BYTES``, each failure located at its line (the
    fast parsers would report neither with a line number)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        raise DataError(
            f"not UTF-8: byte 0x{data[e.start]:02x} at column {e.start - line_start + 1} "
            "(re-save the file as UTF-8)",
            path,
            data.count(b"\n", 0, e.start) + 1,
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:  # the fast parsers end a field at a NUL and read "3\x009" as 3
        line_start = data.rfind(b"\n", 0, nul) + 1
        raise DataError(
            f"NUL byte at column {nul - line_start + 1} (not a text file?)",
            path,
            data.count(b"\n", 0, nul) + 1,
        )
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    lens = np.diff(np.concatenate(([-1], ends, [len(data)]))) - 1
    if lens.max() > MAX_LINE_BYTES:
        k = int(np.argmax(lens > MAX_LINE_BYTES))
        raise DataError(
            f"line of {lens[k]:,} bytes is longer than the limit of {MAX_LINE_BYTES:,}", path, k + 1
        )


def _read_lines(path: Path) -> list[str]:
    """File lines without terminators (CRLF tolerated); no phantom line after a final newline."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]


def _sep_name(sep: str) -> str:
    return _SEP_NAMES.get(sep, repr(sep))


def _short(token: str, width: int = 40) -> str:
    return repr(token if len(token) <= width else token[:width] + "...")


def _field_count_error(line: str, sep: str, fields: Sequence[str], path: Path, lineno: int) -> DataError:
    """Why a line does not split into ``len(fields)`` parts: wrong separator, truncated, or too long."""
    expected, found = len(fields), len(line.split(sep))
    if found < expected:
        for other in _SEP_NAMES:
            if other != sep and len(line.split(other)) >= expected:
                return DataError(
                    f"wrong separator: expected {_sep_name(sep)}-separated fields, "
                    f"found {_sep_name(other)}-separated ones",
                    path,
                    lineno,
                )
        what = "truncated line"
    else:
        what = "too many fields"
    names = ", ".join(fields)
    return DataError(
        f"{what}: expected {expected} {_sep_name(sep)}-separated fields ({names}), found {found}",
        path,
        lineno,
    )


def _separators_ok(path: Path, sep: str, n_lines: int, n_fields: int) -> bool:
    """Whether the file holds exactly ``n_fields - 1`` separators per non-blank line.

    pandas pads a short line (with NaN or "") and turns the extra leading field of a long line
    after a header into an index, silently; counting separators catches both in one pass.
    """
    return path.read_bytes().count(sep.encode()) == n_lines * (n_fields - 1)


def _check_threshold(rating_threshold: float | None, has_ratings: bool, path: Path) -> None:
    if rating_threshold is not None and not has_ratings:
        raise DataError("this file has no rating/weight column, so rating_threshold cannot be used", path)


def _build(users_raw: np.ndarray, items_raw: np.ndarray, keep: np.ndarray | None = None) -> Interactions:
    """Remap original ids to dense indices (sorted by original id) and keep the selected pairs.

    Users and items are indexed over *all* rows of the file, so a rating threshold removes pairs but
    never changes the catalog or the id maps.
    """
    user_ids, u = np.unique(users_raw, return_inverse=True)
    item_ids, i = np.unique(items_raw, return_inverse=True)
    if keep is not None:
        u, i = u[keep], i[keep]
    inter = Interactions.from_pairs(
        u, i, n_users=len(user_ids), n_items=len(item_ids), user_ids=user_ids, item_ids=item_ids
    )
    if inter.nnz < len(u):
        log.info("dropped %d duplicate (user, item) pairs", len(u) - inter.nnz)
    return inter


# ---------------------------------------------------------------- fixed-layout integer tables


def _diagnose_int_table(
    path: Path, sep: str, fields: Sequence[str], header: bool, int_cols: Sequence[int], cause: str
) -> DataError:
    """Re-read the file line by line and describe the first problem found."""
    lines = _read_lines(path)
    start = 0
    if header:
        if not any(ln.strip() for ln in lines):
            return DataError("empty file: no interactions", path)
        head = lines[0].split(sep)
        if len(head) != len(fields):
            return _field_count_error(lines[0], sep, fields, path, 1)
        if _INT.fullmatch(head[0]):
            return DataError(f"expected a header line ({', '.join(fields)}), found data", path, 1)
        start = 1
    n_data, blank = 0, None
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            blank = blank or (lineno if line else None)
            continue  # pandas skips blank lines too (some of them: see _blank_line)
        n_data += 1
        parts = line.split(sep)
        if len(parts) != len(fields):
            return _field_count_error(line, sep, fields, path, lineno)
        for c in int_cols:
            if not _INT.fullmatch(parts[c]):
                return DataError(f"{fields[c]} {_short(parts[c])} is not an integer", path, lineno)
            if not _fits_int64(parts[c]):
                return DataError(f"{fields[c]} {_short(parts[c])} is out of the 64-bit range", path, lineno)
    if n_data == 0:
        return DataError(
            "only a header line, no interactions" if header else "empty file: no interactions", path
        )
    return _blank_line(lines, blank, path) or DataError(f"could not parse ({cause})", path)


def _blank_line(lines: list[str], lineno: int | None, path: Path) -> DataError | None:
    """Every line reads, yet the parser failed: the blank line it did not skip. pandas skips a line of
    spaces but not one of tabs or a vertical tab, depending on the separator, so the diagnosis, which
    skips them all, names the first such line instead of a cause without a line."""
    if lineno is None:
        return None
    return DataError(f"a line of only whitespace ({_short(lines[lineno - 1])}): remove it", path, lineno)


def _fits_int64(token: str) -> bool:
    """Whether an integer token fits int64 (length first: int() refuses > 4,300 digits)."""
    digits = token.strip().lstrip("+-")
    return len(digits) <= 19 and -_INT64_MAX - 1 <= int(token) <= _INT64_MAX


def _read_int_table(path: str | Path, *, sep: str, fields: Sequence[str], header: bool) -> np.ndarray:
    """An all-integer delimited file with exactly ``len(fields)`` columns, as an int64 array."""
    path = _require_file(path)
    cause = "unexpected layout"
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            dtype=np.int64,
            quoting=csv.QUOTE_NONE,
            engine="c",
            encoding="utf-8-sig",
        )
        arr = df.to_numpy()
        # A file without its header would silently lose its first row to pandas: insist on a name.
        header_ok = not header or not _INT.fullmatch(str(df.columns[0]))
        # pandas reads a value above int64 as uint64 silently, and mixed columns come back as float
        shape_ok = (
            arr.ndim == 2 and arr.shape[1] == len(fields) and arr.shape[0] > 0 and arr.dtype == np.int64
        )
        if shape_ok and header_ok and _separators_ok(path, sep, arr.shape[0] + header, len(fields)):
            return arr
    except _FAST_ERRORS as exc:
        cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    raise _diagnose_int_table(path, sep, fields, header, range(len(fields)), cause)


# ---------------------------------------------------------------- public parsers


def parse_lastfm(path: str | Path, *, rating_threshold: float | None = None) -> Interactions:
    """HetRec 2011 ``user_artists.dat``: header, CRLF, ``userID\\tartistID\\tweight``, sparse ids.

    ``rating_threshold`` keeps the pairs whose play count (weight) is at least the threshold.
    """
    arr = _read_int_table(path, sep="\t", fields=LASTFM_FIELDS, header=True)
    keep = None if rating_threshold is None else arr[:, 2] >= rating_threshold
    return _build(arr[:, 0], arr[:, 1], keep)


def parse_ml100k(path: str | Path, *, rating_threshold: float | None = None) -> Interactions:
    """MovieLens 100K ``u.data`` (tab, no header, 1-based ids), or RecBole's ``ml-100k.inter``.

    Both give the identical Interactions: users and items are indexed in ascending original id.
    """
    path = _require_file(path)
    with path.open("rb") as f:
        first = f.readline().removeprefix(_BOM)
    if first.startswith(b"user_id:"):
        return parse_inter(path, rating_threshold=rating_threshold)
    arr = _read_int_table(path, sep="\t", fields=ML100K_FIELDS, header=False)
    keep = None if rating_threshold is None else arr[:, 2] >= rating_threshold
    return _build(arr[:, 0], arr[:, 1], keep)


def count_lines(path: str | Path) -> int:
    """Number of lines, counting a last line that lacks a final newline."""
    data = _require_file(path).read_bytes()
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def parse_citeulike(
    path: str | Path, *, citations: str | Path | None = None, rating_threshold: float | None = None
) -> Interactions:
    """Citeulike ``users.dat``: line ``u`` (0-based) holds a count ``n`` then ``n`` 0-based item ids.

    The catalog size is the number of lines of ``citations.dat`` (one line per article), read from
    ``citations`` or, when not given, from beside ``path`` if present; otherwise max item id + 1.
    citeulike-t needs the former: 25,975 articles of which only 25,584 occur in ``users.dat``.
    There are no ratings, so ``rating_threshold`` must be None. A final newline is tolerated.
    """
    path = _require_file(path)
    _check_threshold(rating_threshold, False, path)
    if citations is None and (path.parent / "citations.dat").is_file():
        citations = path.parent / "citations.dat"
    lines = _read_lines(path)
    if not any(ln.strip() for ln in lines):
        raise DataError("empty file: no interactions", path)
    for lineno, ln in enumerate(lines, start=1):  # numpy reads Unicode digits ("٣", "１") as integers
        if not ln.isascii():
            ch = next(c for c in ln if not c.isascii())
            raise DataError(f"non-ASCII character {ch!r}: expected space-separated integers", path, lineno)
    tokens = [ln.split() for ln in lines]
    lens = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    try:
        flat = np.array(list(chain.from_iterable(tokens)), dtype=np.int64)
    except (ValueError, OverflowError):
        for lineno, toks in enumerate(tokens, start=1):
            for pos, tok in enumerate(toks):
                what = "item id" if pos else "count"
                if _INT.fullmatch(tok) and not _fits_int64(tok):
                    raise DataError(
                        f"{what} {_short(tok)} is out of the 64-bit range", path, lineno
                    ) from None
                if not _INT.fullmatch(tok):
                    found = next((c for c in ",;|" if c in tok), None)
                    if found is not None:
                        raise DataError(
                            f"wrong separator: expected space-separated integers, found {_sep_name(found)}-"
                            f"separated {_short(tok)}",
                            path,
                            lineno,
                        ) from None
                    raise DataError(f"{what} {_short(tok)} is not an integer", path, lineno) from None
        raise DataError("could not parse the integers of the file", path) from None
    if (lens == 0).any():
        raise DataError(
            "blank line: expected a count followed by item ids", path, int(np.argmax(lens == 0)) + 1
        )
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    declared, listed = flat[starts], lens - 1
    bad = np.flatnonzero(declared != listed)
    if bad.size:
        u = int(bad[0])
        raise DataError(f"declared count {declared[u]} but the line lists {listed[u]} item ids", path, u + 1)
    is_item = np.ones(flat.shape[0], dtype=bool)
    is_item[starts] = False
    items = flat[is_item]
    users = np.repeat(np.arange(len(lines), dtype=np.int64), listed)
    if items.size and items.min() < 0:
        k = int(np.argmax(items < 0))
        raise DataError(f"negative item id {items[k]}", path, int(users[k]) + 1)
    if items.size and items.max() >= MAX_CATALOG:
        k = int(np.argmax(items >= MAX_CATALOG))
        raise DataError(
            f"item id {items[k]} too large: a catalog holds at most {MAX_CATALOG:,} articles "
            "(ids are 0-based article indices)",
            path,
            int(users[k]) + 1,
        )
    if citations is not None:
        n_items = count_lines(citations)
        if n_items > MAX_CATALOG:
            raise DataError(f"{n_items:,} articles: a catalog holds at most {MAX_CATALOG:,}", citations)
        if items.size and items.max() >= n_items:
            k = int(np.argmax(items >= n_items))
            raise DataError(
                f"item id {items[k]} is outside the catalog of {n_items} articles ({citations} has "
                f"{n_items} lines)",
                path,
                int(users[k]) + 1,
            )
    else:
        n_items = int(items.max()) + 1 if items.size else 0
    return Interactions.from_pairs(users, items, n_users=len(lines), n_items=n_items)


# ---------------------------------------------------------------- RecBole atomic .inter


def _as_ids(raw: np.ndarray) -> np.ndarray:
    """RecBole tokens are strings; use integers when every token is a canonical integer.

    Integer ids sort numerically, so ``ml-100k.inter`` maps exactly like ``u.data``.
    """
    try:
        ints = raw.astype(np.int64)
    except (ValueError, OverflowError):
        return raw.astype(str)
    return ints if bool((ints.astype(str) == raw.astype(str)).all()) else raw.astype(str)


def _diagnose_inter(
    path: Path, fields: Sequence[str], need: dict[int, str], rating_col: int | None
) -> DataError:
    lines = _read_lines(path)
    n_data, blank = 0, None
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            blank = blank or (lineno if line else None)
            continue
        n_data += 1
        parts = line.split("\t")
        if len(parts) != len(fields):
            return _field_count_error(line, "\t", fields, path, lineno)
        for c, name in need.items():
            if parts[c].strip() == "":
                return DataError(f"empty {name}", path, lineno)
            if len(parts[c]) > MAX_ID_CHARS:
                return DataError(
                    f"{name} of {len(parts[c]):,} characters is longer than the limit of {MAX_ID_CHARS}",
                    path,
                    lineno,
                )
        if rating_col is not None:
            try:
                finite = math.isfinite(float(parts[rating_col]))
            except ValueError:
                return DataError(
                    f"{fields[rating_col]} {_short(parts[rating_col])} is not a number", path, lineno
                )
            if not finite:
                return DataError(
                    f"{fields[rating_col]} {_short(parts[rating_col])} is not a finite number", path, lineno
                )
    if n_data == 0:
        return DataError("only a header line, no interactions", path)
    return _blank_line(lines, blank, path) or DataError("could not parse the file", path)


def parse_inter(
    path: str | Path,
    *,
    rating_threshold: float | None = None,
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str = "rating",
) -> Interactions:
    """Any RecBole atomic ``.inter`` file: tab-separated, typed header ``name:type``, columns by name.

    Ids are tokens (strings; integers when all are integers, see ``_as_ids``). Extra columns are
    ignored. ``rating_threshold`` needs a ``rating_field`` column.
    """
    path = _require_file(path)
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        header = f.readline().rstrip("\r\n")
    if not header.strip():
        raise DataError("empty header line: expected 'user_id:token<TAB>item_id:token...'", path, 1)
    fields = header.split("\t")
    names = [fld.split(":", 1)[0] for fld in fields]
    if len(fields) < 2:
        raise _field_count_error(header, "\t", (f"{user_field}:token", f"{item_field}:token"), path, 1)
    for field in (user_field, item_field):
        if field not in names:
            raise DataError(f"header has no '{field}' column (columns: {', '.join(names)})", path, 1)
    ucol, icol = names.index(user_field), names.index(item_field)
    rcol = names.index(rating_field) if rating_field in names else None
    _check_threshold(rating_threshold, rcol is not None, path)
    need = {ucol: user_field, icol: item_field}
    try:
        df = pd.read_csv(
            path,
            sep="\t",
            header=None,
            skiprows=1,
            dtype=str,
            na_filter=False,
            quoting=csv.QUOTE_NONE,
            engine="c",
            encoding="utf-8-sig",
        )
        ok = (
            df.shape[1] == len(fields)
            and len(df) > 0
            and _separators_ok(path, "\t", len(df) + 1, len(fields))
        )
        if ok:
            users, items = df[ucol].to_numpy(), df[icol].to_numpy()
            ok = not ((users == "").any() or (items == "").any())
            # an over-long id goes to the line-by-line diagnosis before _as_ids can widen every id to it
            ok = ok and max(map(len, chain(users, items))) <= MAX_ID_CHARS
        if ok:
            keep = None
            if rcol is not None and rating_threshold is not None:
                ratings = df[rcol].astype(np.float64).to_numpy()
                if not np.isfinite(ratings).all():  # NaN was dropped by the threshold, inf kept: the
                    raise ValueError("a rating that is not finite")  # diagnosis names its line
                keep = ratings >= rating_threshold
            return _build(_as_ids(users), _as_ids(items), keep)
    except _FAST_ERRORS:
        pass
    raise _diagnose_inter(path, fields, need, rcol if rating_threshold is not None else None)
