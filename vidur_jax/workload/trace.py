"""Trace replay: load Vidur's ``arrived_at,num_prefill_tokens,num_decode_tokens`` CSVs.

Rules (Vidur's ``TraceReplayRequestGenerator`` plus input checks):

1. tokens are scaled, truncated to integers and clipped to >= 1;
2. a request longer than ``max_tokens`` has its **prompt** trimmed so that
   prefill + decode == max_tokens (decode is kept); with ``clip=False`` it is an error;
3. arrival times are multiplied by ``time_scale_factor``;
4. arrivals must already be sorted (non-decreasing): an unsorted trace is an error,
   never silently reordered, since reordering would change which request is which.
"""

from __future__ import annotations

import os

import numpy as np

from vidur_jax.errors import ConfigError, require
from vidur_jax.workload._common import (
    check_count,
    check_positive,
    check_positive_tokens,
    read_trace_csv,
)
from vidur_jax.workload.arrivals import check_arrivals
from vidur_jax.workload.build import make_workload
from vidur_jax.workload.types import Workload

TRACE_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


def clip_prefill(prefill: np.ndarray, decode: np.ndarray, max_tokens: int) -> np.ndarray:
    """Vidur's trace-replay clipping: trim the prompt so prefill + decode <= max_tokens.

    Returns:
        i64[R] clipped prefill (may be < 1 when decode alone reaches ``max_tokens``).
    """
    return prefill - np.maximum(prefill + decode - max_tokens, 0)


def load_trace(
    path: str | os.PathLike,
    max_tokens: int = 4096,
    prefill_scale_factor: float = 1.0,
    decode_scale_factor: float = 1.0,
    time_scale_factor: float = 1.0,
    *,
    num_requests: int | None = None,
    clip: bool = True,
    max_model_len: int | None = None,
) -> Workload:
    """Load a trace-replay CSV into a :class:`Workload` (no padding).

    Args:
        path: CSV with columns ``arrived_at`` (s), ``num_prefill_tokens``,
            ``num_decode_tokens``.
        max_tokens: per-request token limit (prefill + decode).
        prefill_scale_factor: multiplier on prompt lengths (> 0).
        decode_scale_factor: multiplier on output lengths (> 0).
        time_scale_factor: multiplier on arrival times (> 0; < 1 raises QPS).
        num_requests: keep only the first this many rows (None = all).
        clip: trim over-long prompts like Vidur (True) or reject them (False).
        max_model_len: the model's context length; ``max_tokens`` may not exceed it.

    Returns:
        Workload with one row per trace row, in file order.

    Raises:
        ConfigError: missing file or columns, empty trace, NaN/non-numeric values,
            non-positive token counts, negative or unsorted arrivals, ``max_tokens``
            beyond the model context, or a request that cannot fit in ``max_tokens``.
    """
    src = os.fspath(path)
    limit = check_count("max_tokens", max_tokens)
    if max_model_len is not None:
        require(
            limit <= check_count("max_model_len", max_model_len),
            f"max_tokens={limit} exceeds the model's context length {max_model_len}",
        )
    ps = check_positive("prefill_scale_factor", prefill_scale_factor)
    ds = check_positive("decode_scale_factor", decode_scale_factor)
    ts = check_positive("time_scale_factor", time_scale_factor)
    df = read_trace_csv(src, TRACE_COLUMNS)
    if num_requests is not None:
        n = check_count("num_requests", num_requests)
        require(len(df) >= n, f"trace file {src!r} has {len(df)} rows but num_requests={n}")
        df = df.iloc[:n]
    check_positive_tokens(src, df, TRACE_COLUMNS[1:])
    t = df["arrived_at"].to_numpy()
    check_arrivals(f"trace file {src!r}", t)
    p = np.maximum(np.trunc(df["num_prefill_tokens"].to_numpy() * ps), 1).astype(np.int64)
    d = np.maximum(np.trunc(df["num_decode_tokens"].to_numpy() * ds), 1).astype(np.int64)
    too_long = np.flatnonzero(p + d > limit)
    if too_long.size and not clip:
        i = too_long[0]
        raise ConfigError(
            f"trace file {src!r} data row {i} has {p[i] + d[i]} tokens (prefill {p[i]} + "
            f"decode {d[i]}) > max_tokens={limit}; use clip=True or raise max_tokens"
        )
    p = clip_prefill(p, d, limit)
    bad = np.flatnonzero(p < 1)
    if bad.size:
        i = bad[0]
        raise ConfigError(
            f"trace file {src!r} data row {i} has num_decode_tokens={d[i]} which leaves no "
            f"room for a prompt within max_tokens={limit}"
        )
    return make_workload(t * ts, p, d, source=f"trace file {src!r}")
