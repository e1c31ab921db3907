"""Shared fixtures. Every fixture is function-scoped and returns fresh objects."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("MEDSEG_TEST_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def require_data(relative: str) -> Path:
    """Path of a real dataset under MEDSEG_TEST_DATA.

    Skips with a reason when it is missing, except under CI=true, where missing data fails.
    """
    path = _data_root() / relative
    if not path.exists():
        message = f"real test data missing: {path} (set MEDSEG_TEST_DATA to the shared data folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_tool(name: str) -> str:
    """Path of an external program; skip (or fail under CI=true) when it is not installed."""
    found = shutil.which(name)
    if found is None:
        message = f"external tool {name!r} not installed (the README test command installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def data_root() -> Path:
    """Root of the shared real datasets (may not exist; use require_data for a sub-path)."""
    return _data_root()
