"""Parsers on small hand-made files: exact CSR contents and id maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.data import DataError, Interactions
from fedrec.data.parsers import parse_citeulike, parse_inter, parse_lastfm, parse_ml100k


def _write(path: Path, data: str) -> Path:
    path.write_bytes(data.encode())
    return path


def _pairs(inter: Interactions) -> set[tuple[int, int]]:
    """(original user id, original item id) of every stored interaction."""
    users = inter.user_ids[inter.user_of_entry()].tolist()
    items = inter.item_ids[inter.indices].tolist()
    return set(zip(users, items, strict=True))


def _assert_csr(inter: Interactions, indptr: list[int], indices: list[int]) -> None:
    np.testing.assert_array_equal(inter.indptr, indptr)
    np.testing.assert_array_equal(inter.indices, indices)
    assert inter.indptr.dtype == np.int64 and inter.indices.dtype == np.int64


LASTFM = "userID\tartistID\tweight\r\n7\t900\t1\r\n2\t52\t11690\r\n2\t51\t13883\r\n4\t51\t5\r\n"


def test_lastfm_crlf_header_sparse_ids(tmp_path: Path) -> None:
    inter = parse_lastfm(_write(tmp_path / "user_artists.dat", LASTFM))
    assert (inter.n_users, inter.n_items, inter.nnz) == (3, 3, 4)
    np.testing.assert_array_equal(inter.user_ids, [2, 4, 7])
    np.testing.assert_array_equal(inter.item_ids, [51, 52, 900])
    _assert_csr(inter, [0, 2, 3, 4], [0, 1, 0, 2])
    assert _pairs(inter) == {(7, 900), (2, 52), (2, 51), (4, 51)}


def test_lastfm_weight_threshold_keeps_catalog(tmp_path: Path) -> None:
    inter = parse_lastfm(_write(tmp_path / "user_artists.dat", LASTFM), rating_threshold=10)
    assert (inter.n_users, inter.n_items) == (3, 3)  # ids of the whole file stay
    _assert_csr(inter, [0, 2, 2, 2], [0, 1])


# user 10 sorts after user 9 only numerically: string order would swap them.
UDATA = "10\t7\t5\t881250949\n9\t3\t2\t881250950\n10\t3\t4\t881250951\n9\t12\t1\t881250952\n"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def test_ml100k_udata(tmp_path: Path) -> None:
    inter = parse_ml100k(_write(tmp_path / "u.data", UDATA))
    np.testing.assert_array_equal(inter.user_ids, [9, 10])
    np.testing.assert_array_equal(inter.item_ids, [3, 7, 12])
    _assert_csr(inter, [0, 2, 4], [0, 2, 0, 1])
    kept = parse_ml100k(tmp_path / "u.data", rating_threshold=4)
    assert _pairs(kept) == {(10, 7), (10, 3)}


def test_ml100k_recbole_copy_is_identical(tmp_path: Path) -> None:
    plain = parse_ml100k(_write(tmp_path / "u.data", UDATA))
    embedded = parse_ml100k(_write(tmp_path / "ml-100k.inter", INTER_HEADER + UDATA))
    for field in ("indptr", "indices", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(plain, field), getattr(embedded, field))
        assert getattr(plain, field).dtype == getattr(embedded, field).dtype
    assert (plain.n_users, plain.n_items) == (embedded.n_users, embedded.n_items)


def test_citeulike_no_final_newline_max_id_catalog(tmp_path: Path) -> None:
    inter = parse_citeulike(_write(tmp_path / "users.dat", "2 0 3\n1 2\n3 0 1 4"))
    assert (inter.n_users, inter.n_items, inter.nnz) == (3, 5, 6)
    _assert_csr(inter, [0, 2, 3, 6], [0, 3, 2, 0, 1, 4])
    np.testing.assert_array_equal(inter.user_ids, [0, 1, 2])
    np.testing.assert_array_equal(inter.item_ids, np.arange(5))


def test_citeulike_catalog_from_citations(tmp_path: Path) -> None:
    _write(tmp_path / "users.dat", "2 0 3\n1 2\n3 0 1 4")
    _write(tmp_path / "citations.dat", "1 1\n1 0\n0\n0\n0\n0\n0")  # 7 articles, no final newline
    inter = parse_citeulike(tmp_path / "users.dat")
    assert (inter.n_items, inter.stats()["items_with_interactions"]) == (7, 5)
    _assert_csr(inter, [0, 2, 3, 6], [0, 3, 2, 0, 1, 4])


def test_citeulike_tolerates_final_newline_and_zero_count(tmp_path: Path) -> None:
    inter = parse_citeulike(_write(tmp_path / "users.dat", "1 2\n0\n2 0 1\n"))
    assert inter.n_users == 3  # the final newline adds no user
    _assert_csr(inter, [0, 1, 1, 3], [2, 0, 1])


def test_inter_extra_and_reordered_columns_string_ids(tmp_path: Path) -> None:
    text = (
        "timestamp:float\titem_id:token\tuser_id:token\trating:float\ttags:token_seq\n"
        '1\tb7\tzoe\t4.5\t"quoted" words\n'
        "2\ta1\tann\t2\t\n"
        "3\tb7\tann\t3\tx y\n"
    )
    inter = parse_inter(_write(tmp_path / "x.inter", text))
    np.testing.assert_array_equal(inter.user_ids, ["ann", "zoe"])
    np.testing.assert_array_equal(inter.item_ids, ["a1", "b7"])
    _assert_csr(inter, [0, 2, 3], [0, 1, 1])
    kept = parse_inter(tmp_path / "x.inter", rating_threshold=3)
    _assert_csr(kept, [0, 1, 2], [1, 1])


def test_inter_without_rating_rejects_threshold(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.inter", "user_id:token\titem_id:token\n1\t2\n")
    assert parse_inter(path).nnz == 1
    with pytest.raises(DataError, match="rating_threshold"):
        parse_inter(path, rating_threshold=1)


def test_citeulike_rejects_threshold(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="rating_threshold"):
        parse_citeulike(_write(tmp_path / "users.dat", "1 0"), rating_threshold=1)
