"""Shared pytest fixtures.

``profiles_dir`` / ``data_dir`` point at Vidur-format data (profiling CSVs and
``processed_traces/``): the ``VIDUR_JAX_PROFILES`` environment variable, else
``../shared/data`` next to the repository. Tests using them are skipped when the data is
absent, except under ``CI=true`` where a missing folder is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    env = os.environ.get("VIDUR_JAX_PROFILES")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        msg = f"Vidur data folder {path} not found (set VIDUR_JAX_PROFILES)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def profiles_dir() -> Path:
    """Folder with Vidur's ``profiling/`` tables (skip if absent, fail under CI)."""
    return _shared_data()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder with Vidur's ``processed_traces/`` (same root as ``profiles_dir``)."""
    return _shared_data()
