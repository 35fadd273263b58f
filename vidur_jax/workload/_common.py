"""Shared helpers for workload generators: key -> numpy RNG, validation, CSV reading."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax
import numpy as np
import pandas as pd

from vidur_jax.errors import ConfigError, require


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A numpy ``Generator`` seeded deterministically from a JAX PRNG key.

    Works with raw ``uint32`` keys (``jax.random.PRNGKey``) and typed keys
    (``jax.random.key``). Same key -> same stream; keys from ``jax.random.split`` give
    independent streams (SeedSequence hashes all key words).
    """
    try:
        data = np.asarray(jax.random.key_data(key))
    except Exception as exc:  # not a key at all
        raise ConfigError(f"expected a jax PRNG key, got {type(key).__name__}") from exc
    require(data.ndim == 1, f"expected a single PRNG key, got key data of shape {data.shape}")
    return np.random.default_rng([int(w) for w in data.astype(np.uint32)])


def check_count(name: str, value: object) -> int:
    """Require an integer >= 1 (bools rejected); return it as ``int``."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
    require(ok, f"{name}={value!r} must be an integer >= 1")
    return int(value)


def check_positive(name: str, value: object) -> float:
    """Require a finite real number > 0; return it as ``float``."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a finite number > 0") from None
    require(math.isfinite(x) and x > 0, f"{name}={value!r} must be a finite number > 0")
    return x


def check_nonnegative(name: str, value: object) -> float:
    """Require a finite real number >= 0; return it as ``float``."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a finite number >= 0") from None
    require(math.isfinite(x) and x >= 0, f"{name}={value!r} must be a finite number >= 0")
    return x


def read_trace_csv(path: str | os.PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """Read a trace CSV and check the ``columns`` exist, are numeric, non-empty, not NaN.

    Args:
        path: CSV file.
        columns: required column names.

    Returns:
        The frame restricted to ``columns`` (float64 values, original row order).

    Raises:
        ConfigError: missing/unreadable file, missing columns, no rows, non-numeric or
            NaN/inf values (the message names the first bad row, 0-based data row).
    """
    p = os.fspath(path)
    require(os.path.isfile(p), f"trace file {p!r} does not exist")
    try:
        df = pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"trace file {p!r} is empty") from None
    except Exception as exc:
        raise ConfigError(f"trace file {p!r} could not be parsed as CSV: {exc}") from None
    missing = [c for c in columns if c not in df.columns]
    require(
        not missing,
        f"trace file {p!r} lacks column(s) {missing}; required: {list(columns)}, "
        f"found: {list(df.columns)}",
    )
    require(len(df) > 0, f"trace file {p!r} has no rows")
    out = {}
    for c in columns:
        values = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        require(
            bad.size == 0,
            f"trace file {p!r} column {c!r} has a missing/NaN/non-numeric value in data row "
            f"{bad[0] if bad.size else -1}",
        )
        out[c] = values
    return pd.DataFrame(out)


def check_positive_tokens(path: str, df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Require every token count in ``columns`` to be >= 1 (raw, before scaling)."""
    for c in columns:
        bad = np.flatnonzero(df[c].to_numpy() <= 0)
        require(
            bad.size == 0,
            f"trace file {path!r} column {c!r} has non-positive value "
            f"{df[c].iloc[bad[0]] if bad.size else 0} in data row {bad[0] if bad.size else -1}; "
            f"token counts must be >= 1",
        )
