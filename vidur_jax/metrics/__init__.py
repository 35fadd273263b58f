"""Metrics: percentiles, TBT histograms, summaries, request tables, plots, atomic I/O.

Host-side (numpy/pandas) post-processing of one configuration's simulator outputs into
the columns of ``summary.csv`` and ``requests.parquet`` (DESIGN.md section 5).
"""

from vidur_jax.metrics.histogram import (
    TBT_MAX_S,
    TBT_MIN_S,
    TBT_NUM_BINS,
    histogram_mean,
    histogram_quantile,
    tbt_bin_edges,
    tbt_bin_index,
)
from vidur_jax.metrics.io import (
    atomic_path,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_parquet,
    to_jsonable,
)
from vidur_jax.metrics.plots import plot_cdfs
from vidur_jax.metrics.summary import (
    REQUEST_COLUMNS,
    REQUEST_FIELDS,
    percentiles,
    requests_frame,
    summarize,
)

__all__ = [
    "REQUEST_COLUMNS",
    "REQUEST_FIELDS",
    "TBT_MAX_S",
    "TBT_MIN_S",
    "TBT_NUM_BINS",
    "atomic_path",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_parquet",
    "histogram_mean",
    "histogram_quantile",
    "percentiles",
    "plot_cdfs",
    "requests_frame",
    "summarize",
    "tbt_bin_edges",
    "tbt_bin_index",
    "to_jsonable",
]
