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


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        msg = f"{what} {path} not found"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _shared_data() -> Path:
    env = os.environ.get("VIDUR_JAX_PROFILES")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return _require_dir(path, "Vidur data folder (set VIDUR_JAX_PROFILES)")


@pytest.fixture(scope="session")
def profiles_dir() -> Path:
    """Folder with Vidur's ``profiling/`` tables (skip if absent, fail under CI)."""
    return _shared_data()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder with Vidur's ``processed_traces/`` (same root as ``profiles_dir``)."""
    return _shared_data()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Vidur's reference outputs (``../shared/reference/cases``; env VIDUR_JAX_REFERENCE)."""
    env = os.environ.get("VIDUR_JAX_REFERENCE")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "reference" / "cases"
    return _require_dir(path, "Vidur reference cases folder (set VIDUR_JAX_REFERENCE)")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled executables after each test module.

    The full suite compiles hundreds of simulator programs in one process; late in the
    run XLA CPU segfaulted while compiling (tests/test_studies.py), never when the file
    ran alone. Cause: the process's memory maps (each CPU executable maps code
    pages; vm.max_map_count is 65,530 here). Measured: ~750 maps per prefix-caching
    executable, 29k after three modules while ``executables._LOADED`` pinned them, 1.3k
    when each module's executables are freed. Freeing them per module bounds that.
    """
    yield
    import jax

    from vidur_jax.sim import executables, run

    run._sharded_runner.cache_clear()
    run._pool_runner.cache_clear()
    executables.clear_loaded()
    jax.clear_caches()
