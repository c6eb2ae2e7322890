"""ByzFL's aggregators as a test-only oracle (shared by the rule tests)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def load_byzfl_aggregators() -> types.ModuleType | None:
    """ByzFL's aggregators module, or None. ``import byzfl`` imports its benchmark code and with it
    torchvision, which has no CPU build for torch 2.13 here (pyproject.toml); the aggregators need only
    torch, numpy and scipy, so the package is entered through a namespace stub that skips
    byzfl/__init__.py."""
    try:
        if "byzfl" not in sys.modules:
            spec = importlib.util.find_spec("byzfl")
            if spec is None or not spec.submodule_search_locations:
                return None
            stub = types.ModuleType("byzfl")
            stub.__path__ = list(spec.submodule_search_locations)
            sys.modules["byzfl"] = stub
        return importlib.import_module("byzfl.aggregators.aggregators")
    except Exception:  # an oracle that does not load is skipped, not a failure
        return None


BYZFL = load_byzfl_aggregators()
needs_byzfl = pytest.mark.skipif(BYZFL is None, reason="byzfl (test-only oracle) is not installed")
