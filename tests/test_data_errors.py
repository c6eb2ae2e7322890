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


# ---------------------------------------------------------------- issue 9 item 6: hostile bytes

BOM = b"\xef\xbb\xbf"
GOOD_FILES = [
    (parse_lastfm, "user_artists.dat", b"userID\tartistID\tweight\r\n2\t51\t13\r\n3\t52\t1\r\n"),
    (parse_ml100k, "u.data", b"1\t2\t3\t881250949\n2\t3\t4\t881250949\n"),
    (parse_citeulike, "users.dat", b"2 0 3\n1 2\n"),
    (parse_inter, "x.inter", INTER.encode() + b"1\t2\t3\t4\n5\t6\t7\t8\n"),
    (parse_ml100k, "ml-100k.inter", INTER.encode() + b"1\t2\t3\t4\n5\t6\t7\t8\n"),
]
GOOD_IDS = [f"{c[0].__name__}-{c[1]}" for c in GOOD_FILES]


def _same(a: Interactions, b: Interactions) -> bool:
    return (
        (a.indptr == b.indptr).all()
        and (a.indices == b.indices).all()
        and list(a.user_ids) == list(b.user_ids)
        and list(a.item_ids) == list(b.item_ids)
    )


@pytest.mark.parametrize(("parser", "fname", "content"), GOOD_FILES, ids=GOOD_IDS)
def test_utf8_bom_was_rejected(tmp_path: Path, parser: Callable[..., Interactions], fname, content) -> None:
    """A UTF-8 byte-order mark (Windows editors write one) reads exactly like the file without it."""
    plain, bom = tmp_path / "plain", tmp_path / "bom"
    plain.mkdir(), bom.mkdir()
    (plain / fname).write_bytes(content)
    (bom / fname).write_bytes(BOM + content)
    assert _same(parser(bom / fname), parser(plain / fname))


@pytest.mark.parametrize(("parser", "fname", "content"), GOOD_FILES, ids=GOOD_IDS)
def test_non_utf8_byte_had_no_line_number(
    tmp_path: Path, parser: Callable[..., Interactions], fname, content
) -> None:
    lines = content.split(b"\n")
    lines[1] = lines[1][:1] + b"\xe9" + lines[1][1:]  # a Latin-1 e-acute on line 2
    path = tmp_path / fname
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as info:
        parser(path)
    _check(info.value, path, 2, ["UTF-8", "0xe9", "column 2"])


def test_ten_million_character_id_was_parsed_into_a_745_gib_allocation(tmp_path: Path) -> None:
    """numpy gives every id the longest one's width: one 10^7-character id in a big file asked for
    745 GiB. The line cap stops it before any parsing."""
    path = tmp_path / "x.inter"
    path.write_bytes(INTER.encode() + b"1\t2\t3\t4\n" + b"u" * 10_000_000 + b"\t2\t3\t4\n")
    with pytest.raises(DataError) as info:
        parse_inter(path)
    _check(info.value, path, 3, ["longer than the limit"])


def test_overlong_id_under_the_line_cap_was_accepted(tmp_path: Path) -> None:
    """A 1,000-character id (a line well under the line cap) is refused at its own line, blank lines
    before it counted."""
    path = tmp_path / "x.inter"
    path.write_bytes(INTER.encode() + b"1\t2\t3\t4\n\n5\t" + b"i" * 1000 + b"\t3\t4\n")
    with pytest.raises(DataError) as info:
        parse_inter(path)
    _check(info.value, path, 4, ["item_id", "1,000 characters", "limit"])


@pytest.mark.parametrize(
    ("parser", "fname", "content", "line"),
    [
        (parse_ml100k, "u.data", UDATA_OK + "1\t99999999999999999999999\t3\t4\n", 2),  # was OverflowError
        (parse_ml100k, "u.data", UDATA_OK + "1\t9999999999999999999\t3\t4\n", 2),  # was read as float ids
        (parse_lastfm, "user_artists.dat", HEAD + "2\t51\t1\r\n2\t51\t99999999999999999999\r\n", 3),
        (parse_citeulike, "users.dat", "1 0\n1 99999999999999999999999\n", 2),  # was OverflowError
    ],
    ids=["ml100k-overflow", "ml100k-uint64", "lastfm-overflow", "cite-overflow"],
)
def test_integer_beyond_int64_crashed_or_turned_ids_to_float(
    tmp_path: Path, parser: Callable[..., Interactions], fname: str, content: str, line: int
) -> None:
    path = tmp_path / fname
    path.write_text(content)
    with pytest.raises(DataError) as info:
        parser(path)
    _check(info.value, path, line, ["64-bit range"])


@pytest.mark.parametrize("item", ["2000000000", "9223372036854775806"])
def test_a_huge_citeulike_item_id_allocated_its_whole_catalog(tmp_path: Path, item: str) -> None:
    """``1 2000000000`` made the catalog max id + 1 and the id map asked for 15 GiB (near int64 max:
    a confused ValueError); now the id is refused at its line, before any catalog is built."""
    path = tmp_path / "users.dat"
    path.write_text(f"1 0\n1 {item}\n")
    with pytest.raises(DataError) as info:
        parse_citeulike(path)
    _check(info.value, path, 2, [f"item id {item} too large", "10,000,000"])


def test_a_file_over_the_size_cap_was_read_whole_first(tmp_path: Path) -> None:
    """A 3 GB u.data was read into memory before any check (MemoryError); its size is checked first
    (a sparse file: nothing is written or read)."""
    path = tmp_path / "u.data"
    with open(path, "wb") as fh:
        fh.truncate(3 << 30)
    with pytest.raises(DataError) as info:
        parse_ml100k(path)
    _check(info.value, path, None, ["3,221,225,472 bytes", "limit of 1,073,741,824"])


@pytest.mark.parametrize(
    ("fname", "content", "line", "needle"),
    [
        ("u.data", "1\t2\t4\t5\n\u0663\t3\t4\t5\n", 2, "not an integer"),
        ("u.data", "1\t2\t4\t5\n\uff13\t3\t4\t5\n", 2, "not an integer"),
        ("users.dat", "1 0\n1 \u0663\n", 2, "non-ASCII character"),
        ("users.dat", "1 0\n1 \uff11\n", 2, "non-ASCII character"),
        ("u.data", "1\t2\t4\t5\n2\t3\x009\t4\t5\n", 2, "NUL byte at column 4"),
        ("users.dat", "1 0\n1 5\x00junk\n", 2, "NUL byte"),
    ],
    ids=["arabic-indic u.data", "fullwidth u.data", "arabic-indic citeulike", "fullwidth citeulike",
         "NUL in u.data", "NUL in citeulike"],
)  # fmt: skip
def test_unicode_digits_and_nul_bytes_were_read_as_ids(tmp_path: Path, fname, content, line, needle) -> None:
    """Unicode digits were parsed as ids by numpy (citeulike: "٣ １" read as items 3 and 1) or reported
    without a line (u.data: the locating regex matched them); a NUL ended a field in the C parser ("3\x009"
    read as item 3). Each is now refused at its line."""
    path = tmp_path / fname
    path.write_text(content, encoding="utf-8")
    parser = parse_ml100k if fname == "u.data" else parse_citeulike
    with pytest.raises(DataError) as info:
        parser(path)
    _check(info.value, path, line, [needle])


@pytest.mark.parametrize(
    ("parser", "fname", "content", "line"),
    [
        (parse_lastfm, "user_artists.dat", HEAD + "1\t2\t3\r\n\t\t\r\n4\t5\t6\r\n", 3),
        (parse_ml100k, "u.data", UDATA_OK + "\x0b\n" + UDATA_OK, 2),
        (parse_inter, "x.inter", "user_id:token\titem_id:token\n1\t2\n\t\n3\t4\n", 3),
    ],
    ids=["tabs lastfm", "vertical tab u.data", "tab .inter"],
)
def test_a_line_of_whitespace_the_parser_does_not_skip_is_named(tmp_path: Path, parser, fname, content, line):
    """pandas skips a line of spaces, not one of tabs or a vertical tab; the diagnosis skipped them all,
    so the error ("could not parse") said neither where nor why."""
    path = tmp_path / fname
    path.write_text(content, encoding="utf-8", newline="")
    with pytest.raises(DataError) as info:
        parser(path)
    _check(info.value, path, line, ["a line of only whitespace"])


@pytest.mark.parametrize(("rating", "line"), [("nan", 3), ("inf", 3), ("-inf", 3)])
def test_a_rating_that_is_not_finite_is_named_when_a_threshold_reads_it(tmp_path: Path, rating, line):
    """With data.rating_threshold a NaN rating was dropped and an infinite one kept, without a word."""
    path = tmp_path / "r.inter"
    path.write_text(f"user_id:token\titem_id:token\trating:float\n1\t2\t5\n1\t3\t{rating}\n2\t3\t4\n")
    with pytest.raises(DataError) as info:
        parse_inter(path, rating_threshold=3)
    _check(info.value, path, line, ["is not a finite number"])
    assert parse_inter(path).nnz == 3  # without a threshold the rating is not read
