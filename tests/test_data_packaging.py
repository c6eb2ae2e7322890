"""The manifest ships as package resource fedrec.manifests, and every subpackage is packaged."""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path

import pytest

import fedrec

ROOT = Path(fedrec.__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def test_manifest_is_a_package_resource() -> None:
    res = importlib.resources.files("fedrec.manifests") / "datasets.yaml"
    assert res.is_file()
    assert "citeulike-t" in res.read_text(encoding="utf-8")


@pytest.mark.skipif(not PYPROJECT.is_file(), reason="not a source checkout: no pyproject.toml")
def test_every_subpackage_is_listed_in_pyproject() -> None:
    """pyproject lists packages explicitly (to map data/ onto fedrec.manifests): keep it complete."""
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for d in (ROOT / "fedrec").rglob("*")
        if d.is_dir() and any(d.glob("*.py")) and "__pycache__" not in d.parts
    }
    assert on_disk | {"fedrec"} <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert config["package-dir"] == {"fedrec.manifests": "data"}
    assert "*.yaml" in config["package-data"]["fedrec.manifests"]
