"""Request-length distributions: ``key -> (num_prefill i64[R], num_decode i64[R])``.

Semantics follow Vidur's length generators (fixed, uniform, zipf, trace). Where Vidur
would emit a request with 0 prefill or decode tokens (tiny totals), we clip to 1 token,
as Vidur's trace generators do.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vidur_jax.errors import require
from vidur_jax.workload._common import (
    check_count,
    check_nonnegative,
    check_positive,
    check_positive_tokens,
    numpy_rng,
    read_trace_csv,
)

Lengths = tuple[np.ndarray, np.ndarray]
_ZIPF_EPS = 1e-8  # Vidur's ZipfGenerator EPS


def fixed(key: jax.Array, num_requests: int, prefill: int, decode: int) -> Lengths:
    """Every request has ``prefill`` prompt tokens and ``decode`` output tokens.

    Returns:
        (i64[R] prefill tokens, i64[R] decode tokens).
    """
    del key
    n = check_count("num_requests", num_requests)
    p = check_count("prefill", prefill)
    d = check_count("decode", decode)
    return np.full(n, p, dtype=np.int64), np.full(n, d, dtype=np.int64)


def _check_range(min_tokens: int, max_tokens: int, ratio: float) -> tuple[int, int, float]:
    lo = check_count("min_tokens", min_tokens)
    hi = check_count("max_tokens", max_tokens)
    require(lo >= 2, f"min_tokens={lo} must be >= 2 (one prefill + one decode token)")
    require(hi >= lo, f"max_tokens={hi} must be >= min_tokens={lo}")
    r = check_nonnegative("prefill_to_decode_ratio", ratio)
    return lo, hi, r


def _split(total: np.ndarray, decode: np.ndarray) -> Lengths:
    prefill = np.maximum(np.floor(total - decode), 1).astype(np.int64)
    return prefill, np.maximum(np.floor(decode), 1).astype(np.int64)


def uniform(
    key: jax.Array,
    num_requests: int,
    min_tokens: int,
    max_tokens: int,
    prefill_to_decode_ratio: float,
) -> Lengths:
    """Total tokens ~ U[min_tokens, max_tokens], split by a prefill:decode ratio (Vidur).

    ``decode = ceil(total / (1 + ratio))``, ``prefill = floor(total - decode)``.

    Args:
        key: JAX PRNG key.
        num_requests: R (>= 1).
        min_tokens: smallest total (>= 2).
        max_tokens: largest total (>= min_tokens).
        prefill_to_decode_ratio: prefill / decode (>= 0).

    Returns:
        (i64[R] prefill tokens, i64[R] decode tokens).
    """
    n = check_count("num_requests", num_requests)
    lo, hi, r = _check_range(min_tokens, max_tokens, prefill_to_decode_ratio)
    total = numpy_rng(key).uniform(lo, hi, size=n)
    return _split(total, np.ceil(total / (1.0 + r)))


def zipf_totals(u: np.ndarray, min_tokens: int, max_tokens: int, theta: float) -> np.ndarray:
    """Vidur's (YCSB-style) Zipf sampler, vectorized: maps uniforms ``u`` to totals.

    Rank 1 (= ``min_tokens``) is the most likely value. Reproduces Vidur's quirk that
    ``zeta(n)`` sums ``i = 1 .. n-1``.

    Args:
        u: f64[R] uniforms in [0, 1).
        min_tokens, max_tokens: inclusive range.
        theta: skew in (0, 1).

    Returns:
        i64[R] totals in [min_tokens, max_tokens].
    """
    items = max_tokens - min_tokens + 1
    zetan = np.sum(1.0 / np.power(np.arange(1, items, dtype=np.float64), theta))
    zeta2 = 1.0
    alpha = 1.0 / (1.0 - theta)
    eta = (1.0 - np.power(2.0 / items, 1.0 - theta)) / (1.0 - zeta2 / (zetan + _ZIPF_EPS))
    uz = u * zetan
    tail = min_tokens + np.floor(items * np.power(eta * u - eta + 1.0, alpha))
    out = np.where(
        uz < 1.0, min_tokens, np.where(uz < 1.0 + np.power(0.5, theta), min_tokens + 1, tail)
    )
    return np.clip(out, min_tokens, max_tokens).astype(np.int64)


def zipf(
    key: jax.Array,
    num_requests: int,
    theta: float,
    scramble: bool,
    min_tokens: int,
    max_tokens: int,
    prefill_to_decode_ratio: float,
) -> Lengths:
    """Zipf-distributed totals (Vidur's generator), split by a prefill:decode ratio.

    ``decode = floor(total / (1 + ratio))``, ``prefill = floor(total - total/(1+ratio))``.
    ``scramble=True`` maps each rank through a random permutation of the range drawn
    from ``key`` (Vidur hashes with Python's per-process-salted ``hash``, which is not
    reproducible; a permutation keeps the same frequency profile deterministically).

    Args:
        key: JAX PRNG key.
        num_requests: R (>= 1).
        theta: skew, in (0, 1) (Vidur default 0.6).
        scramble: spread popular lengths over the range instead of near ``min_tokens``.
        min_tokens: smallest total (>= 2).
        max_tokens: largest total (>= min_tokens).
        prefill_to_decode_ratio: prefill / decode (>= 0).

    Returns:
        (i64[R] prefill tokens, i64[R] decode tokens).
    """
    n = check_count("num_requests", num_requests)
    lo, hi, r = _check_range(min_tokens, max_tokens, prefill_to_decode_ratio)
    th = check_positive("theta", theta)
    require(th < 1.0, f"theta={theta!r} must be in (0, 1)")
    rng = numpy_rng(key)
    total = zipf_totals(rng.random(n), lo, hi, th)
    if scramble:
        total = lo + rng.permutation(hi - lo + 1)[total - lo]
    total = total.astype(np.float64)
    return _split(total, total / (1.0 + r))


def clip_proportional(prefill: np.ndarray, decode: np.ndarray, max_tokens: int) -> Lengths:
    """Vidur's length-trace clipping: remove the excess over ``max_tokens`` from prefill
    and decode in proportion to their share (rounded up), then clip each to >= 1.

    Returns:
        (i64[R] prefill, i64[R] decode) with prefill + decode <= max_tokens whenever
        max_tokens >= 2.
    """
    total = prefill + decode
    diff = np.maximum(total - max_tokens, 0)
    p = prefill - np.ceil(diff * (prefill / total)).astype(np.int64)
    d = decode - np.ceil(diff * (decode / total)).astype(np.int64)
    p = np.maximum(p, 1).astype(np.int64)
    # Rounding plus the >= 1 clip can leave one token too many; take it from decode.
    d = np.maximum(np.minimum(d, max_tokens - p), 1).astype(np.int64)
    return p, d


def trace(
    key: jax.Array,
    num_requests: int,
    path: str | os.PathLike,
    max_tokens: int,
    prefill_scale_factor: float = 1.0,
    decode_scale_factor: float = 1.0,
) -> Lengths:
    """Sample (prefill, decode) rows of a lengths CSV (arxiv, splitwise, ...), like Vidur.

    Token counts are scaled, truncated to integers, clipped to ``max_tokens`` with
    :func:`clip_proportional`, then rows are taken in a random order (a shuffle drawn
    from ``key``). For ``num_requests`` > rows, further independent shuffles are
    appended (Vidur stops when the trace runs out).

    Args:
        key: JAX PRNG key.
        num_requests: R (>= 1).
        path: CSV with ``num_prefill_tokens`` and ``num_decode_tokens`` columns.
        max_tokens: per-request token limit (>= 2).
        prefill_scale_factor: multiplier on prompt lengths (> 0).
        decode_scale_factor: multiplier on output lengths (> 0).

    Returns:
        (i64[R] prefill tokens, i64[R] decode tokens).
    """
    n = check_count("num_requests", num_requests)
    limit = check_count("max_tokens", max_tokens)
    require(limit >= 2, f"max_tokens={limit} must be >= 2")
    ps = check_positive("prefill_scale_factor", prefill_scale_factor)
    ds = check_positive("decode_scale_factor", decode_scale_factor)
    cols = ["num_prefill_tokens", "num_decode_tokens"]
    df = read_trace_csv(path, cols)
    check_positive_tokens(os.fspath(path), df, cols)
    p = np.trunc(df["num_prefill_tokens"].to_numpy() * ps).astype(np.int64)
    d = np.trunc(df["num_decode_tokens"].to_numpy() * ds).astype(np.int64)
    p, d = clip_proportional(np.maximum(p, 1), np.maximum(d, 1), limit)
    rng = numpy_rng(key)
    reps = -(-n // len(p))
    order = np.concatenate([rng.permutation(len(p)) for _ in range(reps)])[:n]
    return p[order], d[order]


LENGTHS = {"fixed": fixed, "uniform": uniform, "zipf": zipf, "trace": trace}

__all__ = ["LENGTHS", "clip_proportional", "fixed", "trace", "uniform", "zipf", "zipf_totals"]
