"""Datasets: parsers, registry, verified download, per-user split, synthetic generator, titles.

This package imports nothing from the other fedrec packages (DESIGN.md section 11).
"""

from fedrec.data.download import download, expected_stats
from fedrec.data.errors import DataError
from fedrec.data.interactions import Interactions, Split
from fedrec.data.registry import DATASETS, data_home, dataset_source, load_dataset
from fedrec.data.split import split_per_user
from fedrec.data.synthetic import synthetic
from fedrec.data.titles import item_titles

__all__ = [
    "DATASETS",
    "DataError",
    "Interactions",
    "Split",
    "data_home",
    "dataset_source",
    "download",
    "expected_stats",
    "item_titles",
    "load_dataset",
    "split_per_user",
    "synthetic",
]
