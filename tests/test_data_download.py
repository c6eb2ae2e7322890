"""Verified download from a file:// URL, and the manifest's contents."""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fedrec.data import DataError, expected_stats, load_dataset
from fedrec.data.download import download, manifest, verify

REAL_DIR = os.environ.get("FEDREC_DATA_DIR")
needs_real = pytest.mark.skipif(not REAL_DIR, reason="FEDREC_DATA_DIR not set: real datasets unavailable")
download_module = sys.modules["fedrec.data.download"]  # `fedrec.data.download` is the function

USERS = b"2 0 3\n1 2\n3 0 1 4"
CITATIONS = b"0\n0\n0\n0\n0\n0"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zip(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path.as_uri()


@pytest.fixture
def toy_manifest(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A manifest whose one dataset, citeulike-a, is tiny, so that tests can build its archive."""
    spec = {
        "url": "https://example.invalid/toy.zip",
        "archive": "zip",
        "files": {
            "users.dat": {"member": "toy-master/users.dat", "sha256": _sha(USERS)},
            "citations.dat": {"member": "toy-master/citations.dat", "sha256": _sha(CITATIONS)},
        },
        "stats": {"users": 3, "items": 6, "interactions": 6},
    }
    monkeypatch.setattr(download_module, "manifest", lambda: {"citeulike-a": spec})
    return spec


def test_download_verifies_and_installs(tmp_path: Path, toy_manifest: dict[str, Any]) -> None:
    url = _zip(tmp_path / "toy.zip", {"toy-master/users.dat": USERS, "toy-master/citations.dat": CITATIONS})
    cache = tmp_path / "cache"
    target = download("citeulike-a", cache, url=url)
    assert target == cache / "citeulike-a"
    assert sorted(p.name for p in target.iterdir()) == ["citations.dat", "users.dat"]
    assert (target / "users.dat").read_bytes() == USERS
    assert os.listdir(cache) == ["citeulike-a"]  # no temporary leftovers
    inter = load_dataset("citeulike-a", cache)
    assert (inter.n_users, inter.n_items, inter.nnz) == (3, 6, 6)
    # Installed and intact: a second call needs no network (this URL does not exist).
    assert download("citeulike-a", cache, url=(tmp_path / "gone.zip").as_uri()) == target


def test_download_finds_rerooted_members(tmp_path: Path, toy_manifest: dict[str, Any]) -> None:
    url = _zip(tmp_path / "m.zip", {"mirror/users.dat": USERS, "mirror/citations.dat": CITATIONS})
    assert not verify("citeulike-a", download("citeulike-a", tmp_path / "c", url=url))


def test_tampered_file_raises_and_installs_nothing(tmp_path: Path, toy_manifest: dict[str, Any]) -> None:
    url = _zip(
        tmp_path / "bad.zip", {"toy-master/users.dat": USERS + b" 5", "toy-master/citations.dat": CITATIONS}
    )
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="sha256 mismatch") as info:
        download("citeulike-a", cache, url=url)
    assert "\n" not in str(info.value) and "users.dat" in str(info.value)
    assert not (cache / "citeulike-a").exists()
    assert os.listdir(cache) == []


def test_damaged_install_is_replaced(tmp_path: Path, toy_manifest: dict[str, Any]) -> None:
    cache = tmp_path / "cache"
    (cache / "citeulike-a").mkdir(parents=True)
    (cache / "citeulike-a" / "users.dat").write_bytes(b"1 0")
    assert verify("citeulike-a", cache / "citeulike-a")
    url = _zip(tmp_path / "toy.zip", {"toy-master/users.dat": USERS, "toy-master/citations.dat": CITATIONS})
    target = download("citeulike-a", cache, url=url)
    assert verify("citeulike-a", target) == [] and os.listdir(cache) == ["citeulike-a"]


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"toy-master/users.dat": USERS}, "no member"),
        (None, "not a zip"),
    ],
)
def test_bad_archives(tmp_path: Path, toy_manifest: dict[str, Any], members: dict | None, words: str) -> None:
    if members is None:
        (tmp_path / "a.zip").write_bytes(b"not a zip at all")
        url = (tmp_path / "a.zip").as_uri()
    else:
        url = _zip(tmp_path / "a.zip", members)
    with pytest.raises(DataError, match=words):
        download("citeulike-a", tmp_path / "cache", url=url)
    assert not (tmp_path / "cache" / "citeulike-a").exists()


def test_unreachable_url(tmp_path: Path, toy_manifest: dict[str, Any]) -> None:
    with pytest.raises(DataError, match="download failed"):
        download("citeulike-a", tmp_path / "cache", url=(tmp_path / "nowhere.zip").as_uri())
    assert os.listdir(tmp_path / "cache") == []


def test_unknown_dataset_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="lastfm"):
        download("netflix", tmp_path)


@needs_real
def test_real_files_verify_against_manifest(tmp_path: Path) -> None:
    """An archive laid out like the official ml-100k.zip, built from the real files, installs."""
    real = Path(REAL_DIR) / "ml100k"
    members = {
        spec["member"]: (real / name).read_bytes() for name, spec in manifest()["ml100k"]["files"].items()
    }
    target = download("ml100k", tmp_path, url=_zip(tmp_path / "ml-100k.zip", members))
    assert load_dataset("ml100k", tmp_path).stats()["interactions"] == 100000
    assert verify("ml100k", target) == []


@needs_real
def test_manifest_sha256_matches_shared_sums() -> None:
    sums = {}
    for line in (Path(REAL_DIR) / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        sums[rel] = digest
    listed = {
        f"{name}/{fname}": f["sha256"]
        for name, spec in manifest().items()
        for fname, f in spec["files"].items()
    }
    assert listed == sums


def test_manifest_contents() -> None:
    specs = manifest()
    assert set(specs) == {"lastfm", "ml100k", "citeulike-a", "citeulike-t"}
    assert (
        specs["lastfm"]["url"] == "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"
    )
    assert specs["ml100k"]["url"] == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    for spec in specs.values():
        assert spec["url"].startswith("https://") and spec["license"]
        for entry in spec["files"].values():
            assert len(entry["sha256"]) == 64 and entry["member"]
    assert expected_stats("lastfm") == {"users": 1892, "items": 17632, "interactions": 92834}
    assert expected_stats("citeulike-t") == {"users": 7947, "items": 25975, "interactions": 134860}


def test_a_corrupted_member_raises_one_line_and_installs_nothing(
    tmp_path: Path, toy_manifest: dict[str, Any]
) -> None:
    """A byte flipped in transit failed the member's CRC: zipfile.BadZipFile escaped as a traceback."""
    path = tmp_path / "crc.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("toy-master/users.dat", USERS * 50)
        zf.writestr("toy-master/citations.dat", CITATIONS)
    raw = bytearray(path.read_bytes())
    raw[raw.find(USERS) + 20] ^= 1
    path.write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"cannot read toy-master/users\.dat") as info:
        download("citeulike-a", cache, url=path.as_uri())
    assert "\n" not in str(info.value)
    assert not (cache / "citeulike-a").exists()
