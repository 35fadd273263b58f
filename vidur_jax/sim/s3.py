"""S3 output-length predictions: a bucket per request, computed on the host at build time.

S3 (Jin et al., "S3: Increasing GPU Utilization during Generative Inference for Higher
Throughput", NeurIPS 2023) reserves KV memory for a request's *predicted* output length
instead of the maximum. The predictor classifies the output length into buckets of
``max_tokens / num_buckets`` tokens; the scheduler reserves prompt + the bucket's upper
bound (:mod:`vidur_jax.sim.policies.s3`). Its quality is a knob here:

* ``oracle`` — the true bucket;
* ``confusion`` — the true bucket with probability ``accuracy``, else off by
  ``+/- error_buckets`` (sign at random, clipped to the valid range; a clipped error
  that lands on the true bucket counts as correct);
* ``learned`` — a classifier on a feature the workload has before generation (the
  prompt length): prompt lengths are cut into ``LEARNED_BINS`` quantile bins and each bin
  predicts the most frequent output bucket of its training requests (every other
  request of the workload; the rest are held out). Output length is only weakly
  related to prompt length in chat traces, so this is a weak, honest baseline.

An under-prediction makes the sequence outgrow its reservation: it is preempted
(restarted by recomputation) and re-reserved at the next bucket.
"""

from __future__ import annotations

import numpy as np

from vidur_jax.errors import require

PREDICTORS = ("oracle", "confusion", "learned")
LEARNED_BINS = 8


def bucket_width(max_tokens: int, num_buckets: int) -> int:
    """Output tokens per bucket (at least 1)."""
    return max(1, int(np.ceil(max_tokens / num_buckets)))


def true_buckets(num_decode: np.ndarray, width: int, num_buckets: int) -> np.ndarray:
    """(R,) i32 bucket ``b`` with ``b * width < num_decode <= (b + 1) * width``."""
    d = np.asarray(num_decode, np.int64)
    return np.clip(-(-d // width) - 1, 0, num_buckets - 1).astype(np.int32)


def predict_buckets(
    kind: str,
    num_prefill: np.ndarray,
    num_decode: np.ndarray,
    mask: np.ndarray,
    width: int,
    num_buckets: int,
    accuracy: float = 1.0,
    error_buckets: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """(R,) i32 predicted output-length bucket per request (0 on padding rows).

    Args:
        kind: one of :data:`PREDICTORS`.
        num_prefill: (R,) prompt tokens.
        num_decode: (R,) true output tokens.
        mask: (R,) bool real requests.
        width: bucket width in output tokens.
        num_buckets: number of buckets.
        accuracy: probability of the true bucket (``confusion``).
        error_buckets: size of a wrong prediction, buckets (``confusion``).
        seed: random seed (``confusion``).
    """
    require(kind in PREDICTORS, f"s3_predictor={kind!r}; allowed: {', '.join(PREDICTORS)}")
    mask = np.asarray(mask, bool)
    true = true_buckets(num_decode, width, num_buckets)
    if kind == "oracle":
        pred = true
    elif kind == "confusion":
        rng = np.random.default_rng(seed)
        wrong = rng.random(true.shape) >= accuracy
        sign = np.where(rng.random(true.shape) < 0.5, -1, 1)
        pred = np.where(wrong, np.clip(true + sign * error_buckets, 0, num_buckets - 1), true)
    else:
        p = np.asarray(num_prefill, np.float64)
        idx = np.flatnonzero(mask)
        train = idx[::2] if idx.size > 1 else idx
        edges = np.unique(np.quantile(p[train], np.linspace(0, 1, LEARNED_BINS + 1)[1:-1]))
        bins = np.searchsorted(edges, p, side="right")
        pred = np.zeros_like(true)
        overall = np.bincount(true[train], minlength=num_buckets).argmax()
        for b in range(edges.size + 1):
            members = train[bins[train] == b]
            mode = np.bincount(true[members], minlength=num_buckets).argmax() if members.size else overall
            pred[bins == b] = mode
    return np.where(mask, pred, 0).astype(np.int32)


def accuracy_of(pred: np.ndarray, num_decode: np.ndarray, mask: np.ndarray, width: int, num_buckets: int) -> float:
    """Fraction of real requests whose predicted bucket is the true one."""
    mask = np.asarray(mask, bool)
    true = true_buckets(num_decode, width, num_buckets)
    return float((np.asarray(pred)[mask] == true[mask]).mean())
