"""Metrics: percentiles, TBT histograms, summaries, tables, plots, reports, atomic I/O.

Host-side (numpy/pandas) post-processing of the simulator's outputs into the files of a
run dir (DESIGN.md section 5): ``summary.csv`` (:mod:`.table`), ``requests.parquet``
(:mod:`.summary`), ``plots/`` (:mod:`.plots`) and ``report.html`` (:mod:`.report`).

Names are imported on first use, so ``import vidur_jax.metrics.table`` (the config
checks before a run) does not pull in JAX or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "histogram": (
        "TBT_MAX_S",
        "TBT_MIN_S",
        "TBT_NUM_BINS",
        "histogram_mean",
        "histogram_quantile",
        "tbt_bin_edges",
        "tbt_bin_index",
    ),
    "io": (
        "atomic_path",
        "atomic_write_csv",
        "atomic_write_json",
        "atomic_write_parquet",
        "to_jsonable",
    ),
    "plots": ("plot_cdfs",),
    "summary": ("REQUEST_COLUMNS", "REQUEST_FIELDS", "percentiles", "requests_frame", "summarize"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
