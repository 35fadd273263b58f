"""Fixed log-spaced histograms for time-between-tokens (TBT).

The simulator cannot keep one TBT sample per output token per configuration, so it
accumulates counts over fixed bin edges (:func:`tbt_bin_edges`, shared by every
configuration and run) with :func:`tbt_bin_index`, and the host reads quantiles back with
:func:`histogram_quantile`. With 2048 bins over 1e-5 .. 1e4 s the relative bin width is
about 1%, so a quantile is off by at most ~1% of its value.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array

from vidur_jax.errors import require

TBT_NUM_BINS = 2048
TBT_MIN_S = 1e-5
TBT_MAX_S = 1e4


def tbt_bin_edges(
    num_bins: int = TBT_NUM_BINS, lo: float = TBT_MIN_S, hi: float = TBT_MAX_S
) -> np.ndarray:
    """Log-spaced bin edges, f64[num_bins + 1] seconds, from ``lo`` to ``hi``."""
    require(num_bins >= 1 and 0 < lo < hi, f"bad histogram spec {num_bins=}, {lo=}, {hi=}")
    return np.geomspace(lo, hi, num_bins + 1)


def tbt_bin_index(
    tbt_s: Array | np.ndarray,
    num_bins: int = TBT_NUM_BINS,
    lo: float = TBT_MIN_S,
    hi: float = TBT_MAX_S,
) -> Array:
    """Bin of each TBT value for :func:`tbt_bin_edges` (jit/vmap/grad-safe, no search).

    Values below ``lo`` (including 0) go to bin 0, values at or above ``hi`` to the last
    bin, so every sample is counted.

    Args:
        tbt_s: (...,) seconds.

    Returns:
        (...,) int32 bin indices in ``[0, num_bins)``.
    """
    x = jnp.maximum(jnp.asarray(tbt_s), lo)
    pos = jnp.log(x / lo) / np.log(hi / lo) * num_bins
    return jnp.clip(jnp.floor(pos), 0, num_bins - 1).astype(jnp.int32)


def histogram_quantile(
    counts: np.ndarray, edges: np.ndarray, q: float | np.ndarray
) -> float | np.ndarray:
    """Quantile of binned data, interpolating linearly inside the bin.

    The q-quantile is where the cumulative count reaches ``q * total``; inside a bin the
    mass is taken as uniform between its edges.

    Args:
        counts: (B,) non-negative counts.
        edges: (B + 1,) increasing bin edges.
        q: quantile(s) in [0, 1].

    Returns:
        Value(s) in the units of ``edges``; NaN when the histogram is empty.
    """
    c = np.asarray(counts, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    require(
        c.ndim == 1 and e.shape == (c.size + 1,),
        f"counts {c.shape} and edges {e.shape} must have shapes (B,) and (B+1,)",
    )
    qa = np.asarray(q, dtype=np.float64)
    require(bool(np.all((qa >= 0) & (qa <= 1))), f"quantile q={q!r} must be in [0, 1]")
    total = c.sum()
    if total <= 0:
        out = np.full(qa.shape, np.nan)
        return float(out) if out.ndim == 0 else out
    cum = np.cumsum(c)
    target = qa * total
    # First bin whose cumulative count reaches the target (skipping empty bins at q=0).
    b = np.searchsorted(cum, target, side="left")
    b = np.clip(b, 0, c.size - 1)
    nonempty = np.flatnonzero(c > 0)
    b = np.clip(b, nonempty[0], nonempty[-1])
    before = cum[b] - c[b]
    frac = np.clip((target - before) / np.where(c[b] > 0, c[b], 1.0), 0.0, 1.0)
    out = e[b] + frac * (e[b + 1] - e[b])
    return float(out) if out.ndim == 0 else out


def histogram_mean(counts: np.ndarray, edges: np.ndarray) -> float:
    """Mean of binned data using bin midpoints (NaN when empty)."""
    c = np.asarray(counts, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return float("nan")
    return float(np.sum(c * 0.5 * (e[:-1] + e[1:])) / total)
