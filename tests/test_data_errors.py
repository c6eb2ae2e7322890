"""Bad input gives a one-line DataError that names the file and the offending line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedrec.data import DataError, Interactions
from fedrec.data.parsers import parse_citeulike, parse_inter, parse_lastfm, parse_ml100k

HEAD = "userID\tartistID\tweight\r\n"
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
UDATA_OK = "1\t2\t3\t881250949\n"

# (id, parser, file name, content, expected line or None, words the message must contain)
CASES = [
    (
        "lastfm-truncated",
        parse_lastfm,
        "user_artists.dat",
        HEAD + "2\t51\t13883\r\n2\t52\r\n",
        3,
        ["truncated"],
    ),
    ("lastfm-too-many", parse_lastfm, "user_artists.dat", HEAD + "2\t51\t1\t9\r\n", 2, ["too many fields"]),
    (
        "lastfm-non-numeric",
        parse_lastfm,
        "user_artists.dat",
        HEAD + "2\t51\t1\r\n2\tabc\t1\r\n",
        3,
        ["artistID", "'abc'"],
    ),
    ("lastfm-header-only", parse_lastfm, "user_artists.dat", HEAD, None, ["only a header"]),
    ("lastfm-no-header", parse_lastfm, "user_artists.dat", "2\t51\t13883\r\n", 1, ["header"]),
    (
        "lastfm-comma",
        parse_lastfm,
        "user_artists.dat",
        "userID,artistID,weight\n2,51,1\n",
        1,
        ["tab", "comma"],
    ),
    ("lastfm-empty", parse_lastfm, "user_artists.dat", "", None, ["empty"]),
    ("ml100k-truncated", parse_ml100k, "u.data", UDATA_OK * 3 + "5\t6\t7\n", 4, ["truncated", "4"]),
    ("ml100k-non-numeric", parse_ml100k, "u.data", UDATA_OK + "1\tx7\t3\t4\n", 2, ["item_id", "'x7'"]),
    ("ml100k-float-rating", parse_ml100k, "u.data", UDATA_OK + "1\t7\t3.5\t4\n", 2, ["rating", "integer"]),
    ("ml100k-comma-file", parse_ml100k, "u.data", "1,2,3,881250949\n1,3,3,881250949\n", 1, ["tab", "comma"]),
    ("ml100k-space-line", parse_ml100k, "u.data", UDATA_OK * 2 + "1 2 3 881250949\n", 3, ["tab", "space"]),
    ("ml100k-empty", parse_ml100k, "u.data", "", None, ["empty"]),
    ("ml100k-blank-only", parse_ml100k, "u.data", "\n\n", None, ["empty"]),
    ("cite-count", parse_citeulike, "users.dat", "2 0 3\n3 1 2\n1 4", 2, ["declared count 3", "2 item ids"]),
    ("cite-non-numeric", parse_citeulike, "users.dat", "2 0 3\n1 2\n2 0 x", 3, ["'x'"]),
    ("cite-comma", parse_citeulike, "users.dat", "2 0 3\n2,0,3", 2, ["space", "comma"]),
    ("cite-negative", parse_citeulike, "users.dat", "1 0\n1 -4", 2, ["negative"]),
    ("cite-blank-line", parse_citeulike, "users.dat", "1 0\n\n1 2", 2, ["blank"]),
    ("cite-empty", parse_citeulike, "users.dat", "", None, ["empty"]),
    ("inter-truncated", parse_inter, "x.inter", INTER + "1\t2\t3\t4\n5\t6\n", 3, ["truncated"]),
    ("inter-truncated-unused-col", parse_inter, "x.inter", INTER + "1\t2\t3\t4\n5\t6\t7\n", 3, ["truncated"]),
    ("inter-header-only", parse_inter, "x.inter", INTER, None, ["only a header"]),
    ("inter-comma-header", parse_inter, "x.inter", "user_id:token,item_id:token\n1,2\n", 1, ["tab", "comma"]),
    ("inter-no-item-col", parse_inter, "x.inter", "user_id:token\tthing:token\n1\t2\n", 1, ["item_id"]),
    ("inter-empty-id", parse_inter, "x.inter", INTER + "1\t2\t3\t4\n\t2\t3\t4\n", 3, ["empty user_id"]),
    ("inter-as-ml100k", parse_ml100k, "ml-100k.inter", INTER + "1\t2\t3\n", 2, ["truncated"]),
]


def _check(err: DataError, path: Path, line: int | None, words: list[str]) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert err.path == str(path)
    assert err.line == line
    assert msg.startswith(f"{path}:{line}: " if line is not None else f"{path}: ")
    for word in words:
        assert word in msg, msg


@pytest.mark.parametrize(
    ("parser", "fname", "content", "line", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input(
    tmp_path: Path,
    parser: Callable[..., Interactions],
    fname: str,
    content: str,
    line: int | None,
    words: list[str],
) -> None:
    path = tmp_path / fname
    path.write_bytes(content.encode())
    with pytest.raises(DataError) as info:
        parser(path)
    _check(info.value, path, line, words)


@pytest.mark.parametrize("parser", [parse_lastfm, parse_ml100k, parse_citeulike, parse_inter])
def test_missing_file(tmp_path: Path, parser: Callable[..., Interactions]) -> None:
    path = tmp_path / "absent.dat"
    with pytest.raises(DataError) as info:
        parser(path)
    _check(info.value, path, None, ["not found"])


def test_citeulike_item_outside_catalog(tmp_path: Path) -> None:
    users = tmp_path / "users.dat"
    users.write_text("1 0\n2 1 5\n1 2")
    (tmp_path / "citations.dat").write_text("0\n0\n0")  # 3 articles
    with pytest.raises(DataError) as info:
        parse_citeulike(users)
    _check(info.value, users, 2, ["item id 5", "3 articles"])


def test_error_line_far_into_a_large_file(tmp_path: Path) -> None:
    """The fast path's failure is located exactly, not approximately, in a big file."""
    rows = [f"{u}\t{i}\t3\t881250949" for u in range(1, 301) for i in range(1, 21)]
    rows[4321] = rows[4321].replace("\t3\t", "\tthree\t")
    path = tmp_path / "u.data"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as info:
        parse_ml100k(path)
    _check(info.value, path, 4322, ["rating", "'three'"])
