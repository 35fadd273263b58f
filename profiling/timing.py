"""Wall-clock timing of compiled JAX functions with device synchronization.

Each measurement runs the (already compiled) function ``inner`` times back to back and
waits once with ``jax.block_until_ready``; the sample is the elapsed time divided by
``inner``. With ``inner > 1`` the asynchronous dispatch of call ``i + 1`` overlaps the
device work of call ``i``, so a sample approaches the kernel time (what Vidur's CUDA
events / Kineto traces record) rather than kernel + Python dispatch. ``warmup`` calls
(which include compilation) are discarded. Statistics follow Vidur's
``TimerStatsStore``: min, max, mean, median and population std, in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np

STAT_NAMES: tuple[str, ...] = ("min", "max", "mean", "median", "std")


@dataclass(frozen=True)
class TimingConfig:
    """How many times to run each point.

    Attributes:
        warmup: discarded calls before measuring (the first compiles).
        reps: measured samples (statistics are over these).
        inner: calls per sample (dispatch overlap; the sample is the per-call mean).
    """

    warmup: int = 2
    reps: int = 20
    inner: int = 1


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """``{min, max, mean, median, std}`` of samples (ms; population std like numpy)."""
    a = np.asarray(samples_ms, np.float64)
    return {
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "std": float(a.std()),
    }


def time_call(fn: Callable, args: Sequence, cfg: TimingConfig) -> dict[str, float]:
    """Time ``fn(*args)`` on its device.

    Args:
        fn: a jitted function (compiled on the first warm-up call).
        args: device arrays passed to every call (not donated, so reusable).
        cfg: warm-up / repetition counts.

    Returns:
        Statistics in milliseconds per call (see :func:`summarize`).
    """
    for _ in range(max(cfg.warmup, 1)):
        jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(cfg.reps):
        t0 = time.perf_counter()
        out = None
        for _ in range(cfg.inner):
            out = fn(*args)
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - t0) * 1e3 / cfg.inner)
    return summarize(samples)


def stat_columns(op: str) -> list[str]:
    """Vidur's column names ``time_stats.<op>.{min,max,mean,median,std}``."""
    return [f"time_stats.{op}.{s}" for s in STAT_NAMES]


def flatten_stats(op: str, stats: dict[str, float]) -> dict[str, float]:
    """``{time_stats.<op>.<stat>: value}`` for one op."""
    return {f"time_stats.{op}.{s}": stats[s] for s in STAT_NAMES}
