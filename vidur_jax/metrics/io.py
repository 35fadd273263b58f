"""Atomic writers: a temp file in the destination folder, then ``os.replace``.

A crash mid-write leaves either the old file or none, never a truncated one, so a sweep
job that fails cannot corrupt other jobs' results.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success move it onto ``path``.

    Parent folders are created. On error the temp file is removed and ``path`` is
    untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as CSV (no index) atomically; returns ``path``."""
    return _write(path, lambda tmp: df.to_csv(tmp, index=False))


def atomic_write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as Parquet (pyarrow, no index) atomically; returns ``path``."""
    return _write(path, lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow"))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and Paths to JSON types; NaN/inf floats -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (NaN -> null) atomically; returns ``path``."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
    return _write(path, lambda tmp: tmp.write_text(text))
