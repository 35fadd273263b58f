"""Op times at another precision (FP8 weights, FP8 KV cache) and for speculative verify
steps, as **roofline-scaled estimates** of the profiled BF16/FP16 times.

The profiles (and the predictors trained on them) are BF16/FP16 measurements. An op at
another precision, or an attention call with several query tokens per sequence (the
verify step of speculative decoding), is predicted as

    t = t_profiled(BF16) x roofline(variant) / roofline(BF16)

where ``roofline`` is the calibrated roofline of :mod:`vidur_jax.predictors.roofline`
(per-op efficiencies, launch overhead and sharpness fitted on the A100 + H100 profiles)
evaluated on the op's work at the variant and at BF16. The ratio carries what the
datasheets say about the variant (FP8 tensor peak vs BF16 peak, bytes halved) through the
op's calibrated compute/memory balance at that size; the profile carries everything else
(the kernel's real efficiency at that shape). What each variant changes:

================  =========================================================================
variant           work of the op (per TP worker)
================  =========================================================================
FP8 weights       the four GEMMs (attn_pre_proj, attn_post_proj, mlp_up_proj,
                  mlp_down_proj): weight bytes halved; on a GPU with FP8 tensor cores
                  (``fp8_tflops`` in the catalog) the FLOPs run at the FP8 peak (W8A8);
                  without them (A100, A40) at the BF16 peak (weight-only FP8, vLLM's Marlin
                  W8A16). Activation traffic is kept at its BF16 size (the input's per-token
                  quantization pass and the GEMM's one-byte read are not modelled apart).
FP8 KV cache      attn_decode: the cached K/V bytes halved (the query stays BF16, the math
                  is BF16 after dequantization); attn_prefill: the cached context's K/V
                  bytes halved (the chunk's own K/V stays BF16). Compute unchanged.
q queries         attn_decode with ``q`` query tokens per sequence (speculative verify of
                  ``q = k + 1`` tokens): FLOPs x q, query bytes x q, K/V read once.
================  =========================================================================

Everything else (norms, activation, rope, collectives, CPU overhead) keeps its profiled
time. Ratios are exactly 1 for BF16/FP16 and ``q = 1``, and :func:`scale_slab` then returns
the slab it was given (bit-identical timing tables).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidur_jax.catalog.memory import DTYPE_BYTES
from vidur_jax.errors import require

#: Storage formats of weights and KV cache that run at the profiled (16-bit) speed.
SIXTEEN_BIT = ("fp16", "bf16")
#: Formats the precision keys accept.
DTYPES = tuple(DTYPE_BYTES)


def check_dtype(name: str, dtype: str) -> str:
    """``dtype`` lower-cased, or a :class:`ConfigError` naming the key ``name``."""
    key = str(dtype).strip().lower()
    require(key in DTYPES, f"{name}={dtype!r}; allowed: {', '.join(DTYPES)}")
    return key


def is_scaled(weight_dtype: str, kv_dtype: str, verify_queries: int = 1) -> bool:
    """Whether any op time of this variant is a roofline-scaled estimate."""
    return weight_dtype not in SIXTEEN_BIT or kv_dtype not in SIXTEEN_BIT or verify_queries != 1


def describe(weight_dtype: str, kv_dtype: str, verify_queries: int = 1) -> str:
    """One line saying which op times are scaled estimates ("profiled" when none)."""
    parts = []
    if weight_dtype not in SIXTEEN_BIT:
        parts.append(f"GEMMs at {weight_dtype} weights")
    if kv_dtype not in SIXTEEN_BIT:
        parts.append(f"attention on a {kv_dtype} KV cache")
    if verify_queries != 1:
        parts.append(f"decode attention with {verify_queries} query tokens (speculative verify)")
    if not parts:
        return "profiled"
    return "profiled bf16 x calibrated roofline ratio (estimate): " + ", ".join(parts)


def _fp8_peak(device: Any) -> float | None:
    """FP8 tensor FLOP/s of ``device`` (catalog name or spec), None without FP8 cores."""
    from vidur_jax.catalog import get_device

    tflops = get_device(device).fp8_tflops
    return None if tflops is None else float(tflops) * 1e12


def _fit(calibration: dict, op: str) -> dict:
    fits = calibration.get("ops", {})
    require(
        op in fits,
        f"roofline calibration has no fit for '{op}'; cannot scale it to another precision",
    )
    return fits[op]


def gemm_ratio(
    op: str,
    num_tokens: np.ndarray,
    model: Any,
    device: Any,
    tp: int,
    weight_dtype: str,
    calibration: dict | None = None,
) -> np.ndarray:
    """Time of GEMM ``op`` at ``weight_dtype`` over its time at BF16 (roofline ratio).

    Args:
        op: one of :data:`roofline.GEMM_OPS`.
        num_tokens: (N,) tokens of each call.
        model: catalog name / spec / shape dict; device: catalog GPU; tp: TP degree.
        weight_dtype: ``fp16``/``bf16`` (ratio 1) or ``fp8``.
        calibration: roofline calibration (default: the shipped one).

    Returns:
        (N,) float64 ratios (1 for 16-bit weights).
    """
    n = np.maximum(np.asarray(num_tokens, np.float64), 1.0)
    if weight_dtype in SIXTEEN_BIT:
        return np.ones_like(n)
    from vidur_jax.predictors import roofline

    cal = calibration if calibration is not None else roofline.DEFAULT_CALIBRATION
    shape, dev = roofline._shape(model), roofline._device(device)
    fit = _fit(cal, op)
    flops, total = roofline.op_work(op, shape, tp, num_tokens=n)
    _, weights = roofline.op_work(op, shape, tp, num_tokens=np.zeros_like(n))
    peak8 = _fp8_peak(device)
    base = roofline.roofline_ms(fit, flops, total, dev["peak_flops"], dev["hbm_bw"])
    fp8 = roofline.roofline_ms(
        fit, flops, total - weights / 2.0, peak8 or dev["peak_flops"], dev["hbm_bw"]
    )
    return fp8 / base


def decode_attention_ratio(
    batch_size: np.ndarray,
    kv_cache_size: np.ndarray,
    model: Any,
    device: Any,
    tp: int,
    kv_dtype: str,
    queries: int = 1,
    calibration: dict | None = None,
) -> np.ndarray:
    """attn_decode time with a ``kv_dtype`` cache and ``queries`` query tokens per sequence
    over its profiled time (BF16 cache, one query), broadcast over the features."""
    b, kv = np.broadcast_arrays(
        np.maximum(np.asarray(batch_size, np.float64), 1.0), np.asarray(kv_cache_size, np.float64)
    )
    if kv_dtype in SIXTEEN_BIT and queries == 1:
        return np.ones_like(b)
    from vidur_jax.predictors import roofline

    cal = calibration if calibration is not None else roofline.DEFAULT_CALIBRATION
    shape, dev = roofline._shape(model), roofline._device(device)
    fit = _fit(cal, "attn_decode")
    flops, total = roofline.op_work("attn_decode", shape, tp, batch_size=b, kv_cache_size=kv)
    _, query = roofline.op_work(
        "attn_decode", shape, tp, batch_size=b, kv_cache_size=np.zeros_like(kv)
    )
    cache = (total - query) * (0.5 if kv_dtype == "fp8" else 1.0)
    base = roofline.roofline_ms(fit, flops, total, dev["peak_flops"], dev["hbm_bw"])
    var = roofline.roofline_ms(
        fit, flops * queries, cache + query * queries, dev["peak_flops"], dev["hbm_bw"]
    )
    return var / base


def prefill_attention_ratio(
    kv_cache_size: np.ndarray,
    chunk: np.ndarray,
    model: Any,
    device: Any,
    tp: int,
    kv_dtype: str,
    calibration: dict | None = None,
) -> np.ndarray:
    """attn_prefill time with a ``kv_dtype`` cache over its profiled (BF16) time."""
    kv, c = np.broadcast_arrays(
        np.asarray(kv_cache_size, np.float64), np.maximum(np.asarray(chunk, np.float64), 1.0)
    )
    if kv_dtype in SIXTEEN_BIT:
        return np.ones_like(kv)
    from vidur_jax.predictors import roofline

    cal = calibration if calibration is not None else roofline.DEFAULT_CALIBRATION
    shape, dev = roofline._shape(model), roofline._device(device)
    fit = _fit(cal, "attn_prefill")
    flops, total = roofline.op_work(
        "attn_prefill", shape, tp, kv_cache_size=kv, prefill_chunk_size=c
    )
    _, fresh = roofline.op_work(
        "attn_prefill", shape, tp, kv_cache_size=np.zeros_like(kv), prefill_chunk_size=c
    )
    base = roofline.roofline_ms(fit, flops, total, dev["peak_flops"], dev["hbm_bw"])
    var = roofline.roofline_ms(
        fit, flops, fresh + (total - fresh) / 2.0, dev["peak_flops"], dev["hbm_bw"]
    )
    return var / base


def scale_slab(
    slab: dict[str, np.ndarray],
    steps: tuple[int, int, int],
    model: Any,
    device: Any,
    tp: int,
    weight_dtype: str,
    kv_dtype: str,
    verify_queries: int = 1,
    calibration: dict | None = None,
) -> dict[str, np.ndarray]:
    """Timing-table slab of a BF16 bundle scaled to another precision / verify width.

    Args:
        slab: :func:`vidur_jax.sim.tables.tabulate_one`'s dict (``token_ops`` (G, K),
            ``decode`` (B+1, KD), ``prefill`` (KP, C), ...), ms per layer.
        steps: ``(token_step, kv_step, chunk_step)`` of the table grids.
        model, device, tp: the bundle's model, GPU and TP degree.
        weight_dtype, kv_dtype: storage formats (see the module table).
        verify_queries: query tokens per decode sequence (``k + 1`` under speculative
            decoding, else 1).
        calibration: roofline calibration (default: the shipped one).

    Returns:
        ``slab`` itself when nothing is scaled, else a new dict with scaled float32 tables
        (the other entries shared).
    """
    if not is_scaled(weight_dtype, kv_dtype, verify_queries):
        return slab
    from vidur_jax.predictors import roofline
    from vidur_jax.sim.types import TOKEN_OPS

    token_step, kv_step, chunk_step = steps
    out = dict(slab)
    ops = np.array(slab["token_ops"], np.float64)
    n = np.arange(ops.shape[0]) * token_step
    for op in roofline.GEMM_OPS:
        col = TOKEN_OPS.index(op)
        ops[:, col] *= gemm_ratio(op, n, model, device, tp, weight_dtype, calibration)
    out["token_ops"] = ops.astype(np.float32)
    dec = np.array(slab["decode"], np.float64)
    b, kv = np.meshgrid(np.arange(dec.shape[0]), np.arange(dec.shape[1]) * kv_step, indexing="ij")
    out["decode"] = (
        dec
        * decode_attention_ratio(b, kv, model, device, tp, kv_dtype, verify_queries, calibration)
    ).astype(np.float32)
    pre = np.array(slab["prefill"], np.float64)
    kv, c = np.meshgrid(
        np.arange(pre.shape[0]) * kv_step, np.arange(pre.shape[1]) * chunk_step, indexing="ij"
    )
    out["prefill"] = (
        pre * prefill_attention_ratio(kv, c, model, device, tp, kv_dtype, calibration)
    ).astype(np.float32)
    return out
