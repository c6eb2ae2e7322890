"""Dataset registry: real statistics, RecBole fallback, directory resolution, titles."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from fedrec.data import (
    DATASETS,
    DataError,
    data_home,
    dataset_source,
    expected_stats,
    item_titles,
    load_dataset,
)

REAL_DIR = os.environ.get("FEDREC_DATA_DIR")
needs_real = pytest.mark.skipif(not REAL_DIR, reason="FEDREC_DATA_DIR not set: real datasets unavailable")

# Paper 000, Appendix G: users / items / interactions.
APPENDIX_G = {
    "lastfm": (1892, 17632, 92834),
    "ml100k": (943, 1682, 100000),
    "citeulike-a": (5551, 16980, 204986),
    "citeulike-t": (7947, 25975, 134860),
}


@pytest.fixture
def no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No FEDREC_DATA_DIR and an empty cache: nothing can be found on disk."""
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _stats(name: str, data_dir: str | Path | None = None) -> tuple[int, int, int]:
    s = load_dataset(name, data_dir).stats()
    return s["users"], s["items"], s["interactions"]


def test_registry_names() -> None:
    assert set(DATASETS) == set(APPENDIX_G)


@needs_real
@pytest.mark.parametrize("name", sorted(APPENDIX_G))
def test_real_stats_match_appendix_g(name: str) -> None:
    inter = load_dataset(name)
    assert inter.name == name
    assert _stats(name) == APPENDIX_G[name]
    assert expected_stats(name) == dict(
        zip(("users", "items", "interactions"), APPENDIX_G[name], strict=True)
    )
    assert dataset_source(name)[0].parent == Path(REAL_DIR) / name


@needs_real
def test_citeulike_t_catalog_exceeds_used_items() -> None:
    stats = load_dataset("citeulike-t").stats()
    assert (stats["items"], stats["items_with_interactions"]) == (25975, 25584)
    assert [p.name for p in dataset_source("citeulike-t")] == ["users.dat", "citations.dat"]


def test_embedded_ml100k_fallback(no_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fedrec.data"):
        inter = load_dataset("ml100k")
    stats = inter.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == APPENDIX_G["ml100k"]
    assert inter.name == "ml100k"
    (source,) = dataset_source("ml100k")
    assert source.name == "ml-100k.inter" and source.is_file()
    assert "embedded" in caplog.text


@needs_real
def test_udata_and_embedded_copy_identical(no_data: Path) -> None:
    real = load_dataset("ml100k", REAL_DIR)
    embedded = load_dataset("ml100k")  # nothing on disk: RecBole's copy
    assert dataset_source("ml100k", REAL_DIR)[0].name == "u.data"
    for field in ("indptr", "indices", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(real, field), getattr(embedded, field))
    assert (real.n_users, real.n_items) == (embedded.n_users, embedded.n_items)


def _fake_lastfm(root: Path, n_rows: int) -> Path:
    folder = root / "lastfm"
    folder.mkdir(parents=True)
    rows = "".join(f"{u}\t{u + 100}\t1\r\n" for u in range(n_rows))
    (folder / "user_artists.dat").write_text("userID\tartistID\tweight\r\n" + rows, newline="")
    return folder


def test_resolution_order(no_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, env, explicit = no_data / "cache", no_data / "env", no_data / "explicit"
    _fake_lastfm(cache, 1)
    assert load_dataset("lastfm").nnz == 1  # the cache
    _fake_lastfm(env, 2)
    monkeypatch.setenv("FEDREC_DATA_DIR", str(env))
    assert load_dataset("lastfm").nnz == 2  # env beats cache
    _fake_lastfm(explicit, 3)
    assert load_dataset("lastfm", explicit).nnz == 3  # explicit beats env
    assert load_dataset("lastfm", explicit / "lastfm").nnz == 3  # the dataset folder itself
    (env / "lastfm" / "user_artists.dat").unlink()
    assert load_dataset("lastfm").nnz == 1  # env lacks it: falls through to the cache


def test_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEDREC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "fedrec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_home() == Path.home() / ".cache" / "fedrec"
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "c"))
    assert data_home() == tmp_path / "c"


def test_unknown_name_lists_known() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("movielens-1b")
    msg = str(info.value)
    assert "movielens-1b" in msg and all(name in msg for name in DATASETS)


@pytest.mark.parametrize("name", ["lastfm", "citeulike-a"])
def test_missing_files_say_how_to_get_them(no_data: Path, name: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"fedrec data download {name}" in msg and "FEDREC_DATA_DIR" in msg
    assert info.value.path is not None and name in info.value.path
    with pytest.raises(DataError):
        dataset_source(name)


def test_threshold_on_dataset_without_ratings(no_data: Path) -> None:
    with pytest.raises(DataError, match="no ratings"):
        load_dataset("citeulike-t", rating_threshold=1)


def test_inter_path_as_name(tmp_path: Path) -> None:
    path = tmp_path / "toy.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\n1\t5\t1\n2\t5\t4\n2\t6\t5\n")
    inter = load_dataset(str(path), rating_threshold=4)
    assert inter.name == "toy" and inter.nnz == 2 and inter.n_users == 2
    assert dataset_source(str(path)) == (path,)


def test_embedded_ml100k_titles(no_data: Path) -> None:
    titles = item_titles("ml100k")
    assert len(titles) == 1682
    assert titles[1] == "Toy Story (1995)"


@needs_real
def test_real_titles() -> None:
    lastfm = item_titles("lastfm")
    assert len(lastfm) == 17632 and '"Weird Al" Yankovic' in lastfm.values()
    assert set(lastfm) == set(load_dataset("lastfm").item_ids.tolist())
    ml = item_titles("ml100k")
    assert len(ml) == 1682 and "Misérables, Les (1995)" in ml.values()  # latin-1 decoded
    assert item_titles("citeulike-a") == {}


def test_lastfm_titles_keep_quotes_and_null(tmp_path: Path) -> None:
    folder = _fake_lastfm(tmp_path, 1)
    (folder / "artists.dat").write_text(
        'id\tname\turl\tpictureURL\n100\t"Weird Al" Yankovic\thttp://a\t\n101\tNULL\thttp://b\thttp://c\n',
        encoding="utf-8",
    )
    assert item_titles("lastfm", tmp_path) == {100: '"Weird Al" Yankovic', 101: "NULL"}


@pytest.mark.parametrize("kind", ["folder", "dangling link", "fifo"])
def test_a_broken_udata_fell_back_to_the_embedded_copy(
    no_data: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A u.data that is a folder, a dangling link or a FIFO was skipped, and RecBole's ML-100K read in
    its place without a word: now it is the error, naming the file."""
    udata = no_data / "d" / "ml100k" / "u.data"
    udata.parent.mkdir(parents=True)
    if kind == "folder":
        udata.mkdir()
    elif kind == "dangling link":
        udata.symlink_to(no_data / "nowhere")
    else:
        os.mkfifo(udata)
    for data_dir in (no_data / "d", None):
        if data_dir is None:
            monkeypatch.setenv("FEDREC_DATA_DIR", str(no_data / "d"))
        with pytest.raises(DataError, match="not a regular file") as info:
            load_dataset("ml100k", data_dir)
        assert info.value.path == str(udata)


def test_an_explicit_data_dir_never_falls_back(no_data: Path) -> None:
    """--data-dir naming a folder that is not there, or one without ML-100K, read RecBole's embedded
    copy instead; with no data dir given the embedded copy is still the default."""
    with pytest.raises(DataError, match="data folder not found") as info:
        load_dataset("ml100k", no_data / "typo")
    assert info.value.path == str(no_data / "typo")
    (no_data / "empty").mkdir()
    with pytest.raises(DataError, match="dataset 'ml100k' not found"):
        load_dataset("ml100k", no_data / "empty")
    assert load_dataset("ml100k").nnz == 100_000


@pytest.mark.parametrize(
    ("name", "files", "threshold", "needle"),
    [
        (
            "ml100k",
            {"u.data": "1\t1\t3\t5\n1\t2\t4\t5\n"},
            10,
            "no interactions left after rating_threshold=10",
        ),
        ("citeulike-a", {"users.dat": "0\n0\n"}, None, "no interactions left after reading the file"),
    ],
)
def test_data_with_nothing_to_train_failed_deep_in_the_run(
    no_data: Path, name: str, files: dict[str, str], threshold: int | None, needle: str
) -> None:
    """A threshold above every rating, a citeulike file whose users list no item, or users of one item
    each: a traceback in the recorder / negative sampling, or an error after the run folder was made;
    now one line from the loader, before any run folder."""
    folder = no_data / "d" / name
    folder.mkdir(parents=True)
    for fname, text in files.items():
        (folder / fname).write_text(text)
    with pytest.raises(DataError, match=needle) as info:
        load_dataset(name, no_data / "d", rating_threshold=threshold)
    assert info.value.path == str(folder / next(iter(files)))


def test_a_data_dir_variable_that_is_no_folder_is_said(monkeypatch, tmp_path, caplog):
    """FEDREC_DATA_DIR set to a file or a missing folder was ignored without a word (ML-100K then came
    from RecBole's copy): now a warning says so."""
    import logging

    from fedrec.data.registry import _say_not_a_folder, search_roots

    _say_not_a_folder.cache_clear()
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path / "missing"))
    with caplog.at_level(logging.WARNING, logger="fedrec.data.registry"):
        search_roots()
    assert "is not a folder: ignored" in caplog.text
