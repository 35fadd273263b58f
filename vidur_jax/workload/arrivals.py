"""Arrival processes: ``key -> arrival times`` (float64 seconds, non-decreasing).

Semantics follow Vidur's interval generators: the first request arrives one
inter-arrival time after t=0 (except ``static``), and times are a cumulative sum of
inter-arrival gaps.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vidur_jax.errors import require
from vidur_jax.workload._common import (
    check_count,
    check_positive,
    numpy_rng,
    read_trace_csv,
)

VIDUR_MAX_INTERVAL_FACTOR = 3.0


def poisson(
    key: jax.Array,
    num_requests: int,
    qps: float,
    max_interval_factor: float | None = VIDUR_MAX_INTERVAL_FACTOR,
) -> np.ndarray:
    """Poisson arrivals: exponential gaps with mean ``1/qps``.

    Vidur caps every gap at ``3/qps`` (``max_interval_factor=3``, the default), which
    raises the realised rate to ``qps / (1 - e^-3)`` ~= 1.052 x qps. Pass
    ``max_interval_factor=None`` for an uncapped Poisson process.

    Args:
        key: JAX PRNG key.
        num_requests: number of arrivals R (>= 1).
        qps: mean rate, requests per second (> 0).
        max_interval_factor: cap on a gap, in units of ``1/qps``; None = no cap.

    Returns:
        f64[R] arrival times in seconds.
    """
    n = check_count("num_requests", num_requests)
    rate = check_positive("qps", qps)
    gaps = numpy_rng(key).exponential(1.0 / rate, size=n)
    if max_interval_factor is not None:
        cap = check_positive("max_interval_factor", max_interval_factor)
        gaps = np.minimum(gaps, cap / rate)
    return np.cumsum(gaps)


def gamma(key: jax.Array, num_requests: int, qps: float, cv: float) -> np.ndarray:
    """Gamma-distributed gaps with mean ``1/qps`` and coefficient of variation ``cv``.

    Shape ``k = 1/cv^2``, scale ``1/(qps k)`` (Vidur). ``cv = 1`` is Poisson (uncapped);
    larger ``cv`` gives burstier traffic.

    Args:
        key: JAX PRNG key.
        num_requests: number of arrivals R (>= 1).
        qps: mean rate, requests per second (> 0).
        cv: coefficient of variation of the gaps (> 0).

    Returns:
        f64[R] arrival times in seconds.
    """
    n = check_count("num_requests", num_requests)
    rate = check_positive("qps", qps)
    shape = 1.0 / check_positive("cv", cv) ** 2
    gaps = numpy_rng(key).gamma(shape, 1.0 / (rate * shape), size=n)
    return np.cumsum(gaps)


def static(key: jax.Array, num_requests: int) -> np.ndarray:
    """Every request arrives at t = 0 (offline / batch workloads).

    Returns:
        f64[R] zeros.
    """
    del key
    return np.zeros(check_count("num_requests", num_requests), dtype=np.float64)


def trace(
    key: jax.Array,
    num_requests: int,
    path: str | os.PathLike,
    time_scale_factor: float = 1.0,
) -> np.ndarray:
    """The first ``num_requests`` ``arrived_at`` values of a trace CSV, times a factor.

    ``time_scale_factor < 1`` compresses time (higher QPS), as in Vidur.

    Args:
        key: unused (the trace is deterministic); kept for a uniform signature.
        num_requests: rows to take (the trace must have at least this many).
        path: CSV with an ``arrived_at`` column (seconds, non-decreasing, >= 0).
        time_scale_factor: multiplier on arrival times (> 0).

    Returns:
        f64[R] arrival times in seconds.
    """
    del key
    n = check_count("num_requests", num_requests)
    scale = check_positive("time_scale_factor", time_scale_factor)
    t = read_trace_csv(path, ["arrived_at"])["arrived_at"].to_numpy()
    require(
        len(t) >= n,
        f"trace file {os.fspath(path)!r} has {len(t)} arrivals but num_requests={n} were asked",
    )
    t = t[:n]
    check_arrivals(os.fspath(path), t)
    return t * scale


def check_arrivals(source: str, t: np.ndarray) -> None:
    """Require finite, >= 0, non-decreasing arrival times (``source`` names the input)."""
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    require(
        bad.size == 0,
        f"{source}: arrived_at must be finite and >= 0 "
        f"(data row {bad[0] if bad.size else -1} is {t[bad[0]] if bad.size else 0})",
    )
    dec = np.flatnonzero(np.diff(t) < 0)
    require(
        dec.size == 0,
        f"{source}: arrived_at must be sorted (non-decreasing); data row "
        f"{dec[0] + 1 if dec.size else -1} arrives at {t[dec[0] + 1] if dec.size else 0} "
        f"before row {dec[0] if dec.size else -1} at {t[dec[0]] if dec.size else 0}; sort the file",
    )


ARRIVALS = {"poisson": poisson, "gamma": gamma, "static": static, "trace": trace}

__all__ = ["ARRIVALS", "check_arrivals", "gamma", "poisson", "static", "trace"]
