"""Human-readable item names for demos: original item id -> title."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from fedrec.data.errors import DataError
from fedrec.data.registry import DATASETS, dataset_dir, is_inter_path, recbole_ml100k


def _read_titles(
    path: Path, *, sep: str, header: bool, encoding: str, id_col: int, title_col: int
) -> pd.DataFrame:
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        return pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            usecols=[id_col, title_col],
            encoding=encoding,
            quoting=csv.QUOTE_NONE,  # names contain literal double quotes ("Weird Al" Yankovic)
            keep_default_na=False,  # an artist called "NULL" stays a name
            dtype=str,
        )
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read titles: {' '.join(str(exc).split())}", path) from None


def _as_dict(ids: pd.Series, titles: pd.Series, path: Path) -> dict[int, str]:
    try:
        keys = ids.astype("int64").tolist()
    except ValueError:
        raise DataError("non-integer item id in the title file", path) from None
    return dict(zip(keys, titles.tolist(), strict=True))


def _ml100k_embedded(path: Path) -> dict[int, str]:
    """RecBole's ``ml-100k.item``: tab-separated, title and year in separate columns."""
    df = _read_titles(path, sep="\t", header=True, encoding="utf-8", id_col=0, title_col=1)
    years = pd.read_csv(path, sep="\t", usecols=[2], dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    # u.item writes "Toy Story (1995)"; rebuild that form so both sources agree in spirit.
    year = years.iloc[:, 0].str.strip()
    titles = df.iloc[:, 1].where(year == "", df.iloc[:, 1] + " (" + year + ")")
    return _as_dict(df.iloc[:, 0], titles, path)


def item_titles(name: str, data_dir: str | Path | None = None) -> dict[int, str]:
    """Titles keyed by original item id (``Interactions.item_ids``).

    lastfm: ``artists.dat`` (UTF-8, header, quoting disabled). ml100k: ``u.item`` (pipe-separated,
    latin-1) beside ``u.data``, else RecBole's embedded ``ml-100k.item``. citeulike-a/-t: the
    releases' article titles (``raw-data.csv`` / ``rawtext.dat``) are not among the files used, so
    this returns ``{}``. A RecBole ``.inter`` path: ``{}`` (no title convention across datasets).
    """
    if is_inter_path(name):
        return {}
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    folder = dataset_dir(name, data_dir)
    if name == "lastfm":
        if folder is None:
            raise DataError(
                "dataset 'lastfm' not found; run `fedrec data download lastfm` or set FEDREC_DATA_DIR"
            )
        path = folder / "artists.dat"
        df = _read_titles(path, sep="\t", header=True, encoding="utf-8", id_col=0, title_col=1)
        return _as_dict(df.iloc[:, 0], df.iloc[:, 1], path)
    if name == "ml100k":
        if folder is not None and (folder / "u.item").is_file():
            path = folder / "u.item"
            df = _read_titles(path, sep="|", header=False, encoding="latin-1", id_col=0, title_col=1)
            return _as_dict(df.iloc[:, 0], df.iloc[:, 1].str.strip(), path)  # a few end in a space
        embedded = recbole_ml100k(".item")
        if embedded is None:
            raise DataError("no u.item found and RecBole's embedded ml-100k.item is unavailable")
        return _ml100k_embedded(embedded)
    return {}  # citeulike: no titles in the files we use
