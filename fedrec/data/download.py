"""Dataset manifests (``data/datasets.yaml``) and the verified download into the cache.

The manifest ships inside the package as the resource package ``fedrec.manifests`` (pyproject maps
the repository's top-level ``data/`` folder onto it); a source tree that is not installed falls back
to ``<repo>/data/datasets.yaml``.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import importlib.resources
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any

import yaml

from fedrec.data.errors import DataError
from fedrec.data.registry import data_home

log = logging.getLogger(__name__)

MANIFEST_PACKAGE = "fedrec.manifests"
MANIFEST_FILE = "datasets.yaml"
_CHUNK = 1 << 20


def _manifest_text() -> tuple[str, str]:
    """The manifest's text and where it came from."""
    try:
        res = importlib.resources.files(MANIFEST_PACKAGE) / MANIFEST_FILE
        if res.is_file():
            return res.read_text(encoding="utf-8"), str(res)
    except ModuleNotFoundError:
        pass
    src = Path(__file__).resolve().parents[2] / "data" / MANIFEST_FILE
    if src.is_file():
        return src.read_text(encoding="utf-8"), str(src)
    raise DataError(f"dataset manifest not found: neither {MANIFEST_PACKAGE}/{MANIFEST_FILE} nor {src}")


@functools.cache
def manifest() -> dict[str, Any]:
    """All dataset manifests, keyed by dataset name."""
    text, where = _manifest_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"invalid YAML: {' '.join(str(exc).split())}", where) from None
    return doc["datasets"]


def _spec(name: str) -> dict[str, Any]:
    specs = manifest()
    if name not in specs:
        raise DataError(f"no manifest for dataset {name!r}; known: {', '.join(specs)}")
    return specs[name]


def expected_stats(name: str) -> dict[str, int]:
    """Users / items / interactions that paper 000 (Appendix G) reports for ``name``."""
    stats = _spec(name)["stats"]
    return {k: int(stats[k]) for k in ("users", "items", "interactions")}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(name: str, folder: str | Path) -> list[str]:
    """Problems with the installed files of ``name`` in ``folder`` (empty list: all present and intact)."""
    problems = []
    for fname, entry in _spec(name)["files"].items():
        path = Path(folder) / fname
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif (got := sha256_file(path)) != entry["sha256"]:
            problems.append(f"{path}: sha256 {got} != expected {entry['sha256']}")
    return problems


def _fetch(url: str, dest: Path) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "fedrec-data-download"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp, dest.open("wb") as out:
            shutil.copyfileobj(resp, out, _CHUNK)
    except (
        urllib.error.URLError,
        OSError,
        ValueError,
        http.client.HTTPException,
    ) as exc:  # IncompleteRead too
        raise DataError(f"download failed: {' '.join(str(exc).split())}", url) from None


def _member(zf: zipfile.ZipFile, wanted: str, url: str) -> str:
    """``wanted`` itself, else the one member with the same base name (mirrors re-root archives)."""
    names = zf.namelist()
    if wanted in names:
        return wanted
    base = wanted.rsplit("/", 1)[-1]
    same = [n for n in names if n.rsplit("/", 1)[-1] == base]
    if len(same) == 1:
        return same[0]
    raise DataError(f"archive has no member {wanted!r}", url)


def _extract_verified(archive: Path, spec: dict[str, Any], staging: Path, url: str) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DataError("not a zip archive", url) from None
    with zf:
        for fname, entry in spec["files"].items():
            member = _member(zf, entry["member"], url)
            digest = hashlib.sha256()
            # Written under the manifest's file name, never the member path (no path traversal).
            try:
                with zf.open(member) as src, (staging / fname).open("wb") as out:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
                # a corrupted member (CRC), a truncated stream, a compression or encryption zipfile lacks
                raise DataError(
                    f"cannot read {member} from the archive ({err}); nothing was installed", url
                ) from None
            if digest.hexdigest() != entry["sha256"]:
                raise DataError(
                    f"sha256 mismatch for {member}: expected {entry['sha256']}, got {digest.hexdigest()}; "
                    "nothing was installed",
                    url,
                )


def download(
    name: str, cache_dir: str | Path | None = None, *, url: str | None = None, force: bool = False
) -> Path:
    """Fetch ``name`` into ``cache_dir/name`` (default :func:`data_home`) and return that folder.

    The archive is downloaded and extracted into a temporary folder beside the target; the folder is
    moved into place only after every file's sha256 matches the manifest, so a failed or tampered
    download leaves nothing behind. ``url`` overrides the manifest's (a mirror, or ``file://``).
    An already installed, intact copy is kept unless ``force``.
    """
    spec = _spec(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else data_home()
    target = root / name
    if not force and target.is_dir() and not verify(name, target):
        log.info("%s: already installed and verified in %s", name, target)
        return target
    url = url or spec["url"]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-download-") as tmp:
        archive, staging = Path(tmp) / "archive.zip", Path(tmp) / name
        staging.mkdir()
        log.info("%s: downloading %s", name, url)
        _fetch(url, archive)
        _extract_verified(archive, spec, staging, url)
        if target.exists():
            os.replace(target, Path(tmp) / "previous")  # a stale or damaged copy, removed with tmp
        os.replace(staging, target)
    log.info("%s: installed %d verified files into %s", name, len(spec["files"]), target)
    return target
