"""Named datasets: where their files live and which parser reads them.

Data directory resolution (first hit wins): the explicit ``data_dir``; else ``$FEDREC_DATA_DIR``
then the download cache :func:`data_home`. Each dataset lives in a subfolder of that name
(``lastfm/``, ``ml100k/``, ``citeulike-a/``, ``citeulike-t/``); a ``data_dir`` that directly holds
the files works too. ML-100K falls back to the copy embedded in RecBole when no ``data_dir`` is
given (an explicit folder must hold the data; one that does not exist is an error).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from fedrec.data.errors import DataError
from fedrec.data.interactions import Interactions
from fedrec.data.parsers import parse_citeulike, parse_inter, parse_lastfm, parse_ml100k

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    """How to read one named dataset."""

    name: str
    interactions: str  # file holding the interactions, inside the dataset folder
    side_files: tuple[str, ...]  # files also read when present (citeulike catalog)
    has_ratings: bool
    parser: Callable[..., Interactions] = dataclasses.field(repr=False)
    description: str = ""


DATASETS: Mapping[str, DatasetInfo] = MappingProxyType(
    {
        "lastfm": DatasetInfo(
            "lastfm",
            "user_artists.dat",
            (),
            True,
            parse_lastfm,
            "HetRec 2011 Last.fm, top-50 artists per user",
        ),
        "ml100k": DatasetInfo("ml100k", "u.data", (), True, parse_ml100k, "MovieLens 100K ratings"),
        "citeulike-a": DatasetInfo(
            "citeulike-a", "users.dat", ("citations.dat",), False, parse_citeulike, "CiteULike articles (a)"
        ),
        "citeulike-t": DatasetInfo(
            "citeulike-t", "users.dat", ("citations.dat",), False, parse_citeulike, "CiteULike articles (t)"
        ),
    }
)

RECBOLE_ML100K = "dataset_example/ml-100k"


def data_home() -> Path:
    """Download cache: ``$FEDREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedrec``, else ``~/.cache/fedrec``.

    This is also the last place :func:`load_dataset` looks for data.
    """
    if os.environ.get("FEDREC_CACHE_DIR"):
        return Path(os.environ["FEDREC_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fedrec"


def search_roots(data_dir: str | Path | None = None) -> list[Path]:
    """Directories searched for dataset folders, most preferred first."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("FEDREC_DATA_DIR")
    roots = [Path(env).expanduser()] if env else []
    if roots and not roots[0].is_dir():
        _say_not_a_folder(env)  # it fell back to the cache (ML-100K: RecBole's copy) without a word
    return [*roots, data_home()]


@functools.cache
def _say_not_a_folder(env: str) -> None:
    log.warning("FEDREC_DATA_DIR=%s is not a folder: ignored", env)


def recbole_ml100k(suffix: str) -> Path | None:
    """RecBole's embedded ML-100K atomic file (``.inter`` or ``.item``), if RecBole is installed."""
    try:
        res = importlib.resources.files("recbole") / RECBOLE_ML100K / f"ml-100k{suffix}"
    except ModuleNotFoundError:
        return None
    return Path(str(res)) if res.is_file() else None


def is_inter_path(name: str | Path) -> bool:
    """True when ``name`` names a RecBole atomic file rather than a registered dataset."""
    return str(name).endswith(".inter")


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        known = ", ".join(DATASETS)
        raise DataError(f"unknown dataset {name!r}; known: {known} (or a path to a RecBole .inter file)")
    return DATASETS[name]


def dataset_dir(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The folder holding ``name``'s interactions file, or None when no searched root has it."""
    info = _info(name)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        # an explicit folder that is not there is a typo, never a reason to read other data
        what = "not a folder" if Path(data_dir).expanduser().exists() else "data folder not found"
        raise DataError(what, Path(data_dir).expanduser())
    for root in search_roots(data_dir):
        for folder in (root / name, root):
            path = folder / info.interactions
            if path.is_file():
                return folder
            if path.is_symlink() or path.exists():  # a folder, FIFO or dangling link: never skip past it
                raise DataError("not a regular file", path)
    return None


def dataset_source(name: str | Path, data_dir: str | Path | None = None) -> tuple[Path, ...]:
    """The file(s) that :func:`load_dataset` reads (or would read), interactions file first."""
    if is_inter_path(name):
        return (Path(name),)
    info = _info(str(name))
    folder = dataset_dir(info.name, data_dir)
    if folder is not None:
        side = [folder / f for f in info.side_files if (folder / f).is_file()]
        return (folder / info.interactions, *side)
    # the embedded copy stands in only when no folder was given: an explicit one must hold the data
    if info.name == "ml100k" and data_dir is None and (embedded := recbole_ml100k(".inter")) is not None:
        return (embedded,)
    wanted = search_roots(data_dir)[0] / info.name / info.interactions
    looked = ", ".join(str(r) for r in search_roots(data_dir))
    raise DataError(
        f"dataset {info.name!r} not found (looked in {looked}); run `fedrec data download {info.name}` "
        "or set FEDREC_DATA_DIR to a folder holding it",
        wanted,
    )


def load_dataset(
    name: str | Path, data_dir: str | Path | None = None, *, rating_threshold: float | None = None
) -> Interactions:
    """Load a registered dataset (see :data:`DATASETS`) or a RecBole ``.inter`` file by path.

    ``rating_threshold`` keeps the pairs whose rating / play count is at least the threshold (catalog
    and id maps unchanged); it is an error for datasets without ratings (citeulike).
    """
    if is_inter_path(name):
        path = Path(name)
        inter = parse_inter(path, rating_threshold=rating_threshold)
        _require_interactions(inter, path, rating_threshold)
        return dataclasses.replace(inter, name=path.stem)
    info = _info(str(name))
    if rating_threshold is not None and not info.has_ratings:
        raise DataError(f"dataset {info.name!r} has no ratings, so rating_threshold cannot be used")
    source = dataset_source(info.name, data_dir)
    if source[0].suffix == ".inter":
        log.info("ml100k: no u.data found, reading RecBole's embedded copy %s", source[0])
    inter = info.parser(source[0], rating_threshold=rating_threshold)
    _require_interactions(inter, source[0], rating_threshold)
    return dataclasses.replace(inter, name=info.name)


def _require_interactions(inter: Interactions, path: Path, rating_threshold: float | None) -> None:
    """A run needs interactions to split and train on; say so here, before any run folder is made
    (an empty matrix otherwise fails deep in negative sampling or the recorder)."""
    if inter.nnz == 0:
        why = f"rating_threshold={rating_threshold}" if rating_threshold is not None else "reading the file"
        raise DataError(f"no interactions left after {why}", path)
