"""Test-wide settings: hypothesis runs derandomized under CI (CI=true), so a run there is repeatable;
locally it explores new examples every run."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
