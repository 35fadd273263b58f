"""Turn profile tables into fit jobs (internal features + median times).

Internal feature conventions (3 dims; see :mod:`vidur_jax.predictors.hybrid`):

=====================  ==========================================  =====================
op                     user features                               internal x
=====================  ==========================================  =====================
token ops              ``num_tokens``                              (tokens, 1, 1)
all_reduce/send_recv   ``num_tokens``                              (bytes = 2*E*tokens, 1, 1)
attn_prefill           ``kv_cache_size, prefill_chunk_size``       (kv, chunk, heads/dev)
attn_decode            ``batch_size, kv_cache_size``               (batch, kv, heads/dev)
attn_decode transfer   ``batch_size, kv_cache_size``               (batch x heads/dev, kv, 1)
shape transfer (GEMM)  ``num_tokens``                              (tokens, K, N) per device
shape transfer (elem)  ``num_tokens``                              (tokens, width, 1)
=====================  ==========================================  =====================

"heads/dev" is the *effective* number of 128-dim heads per device: query heads for
prefill (compute-bound), KV heads for decode (FlashAttention reads each KV head once for
its query group, so decode is bound by KV bytes). The A100 Llama-2-7B table spans
32/16/8/4 heads per device.

Attention *transfer* jobs (one model over all TPs, heads varying; see
``attention_transfer_job``) use physical coordinates in which the head count
generalizes. Decode runs one thread block per (sequence, KV head): its time is a function
of the block count ``batch x heads`` and ``kv`` alone (the A100 table agrees to ~1% across
TPs at equal ``batch x heads``), so heads enter only through that product. Prefill is
*latency + throughput*: ``t = A(kv, chunk) + heads x B(kv, chunk)`` -- a heads-free part
(one wave of blocks: launch, per-block work ~ kv + chunk) plus per-head work (FLOPs
``chunk x kv``, ``chunk^2``); affine in heads, so a head count beyond the profiled ones
extrapolates like the measured saturation (the time ratio of 2h to h heads is ~1.05 for
small work, ~1.85 for large) rather than proportionally. Its MLP correction sees kv,
chunk and ``log((1 + chunk)(1 + heads))`` (~ the thread-block count, heads x query
tiles; ``FitJob.mlp_inputs``) instead of heads on their own: the kernel's efficiency
depends on the per-block work (kv, chunk) and the occupancy (blocks).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from vidur_jax.predictors.train import FitJob
from vidur_jax.profiles.loader import COMPUTE_OPS

#: Ops whose only feature is ``num_tokens``.
TOKEN_OPS: tuple[str, ...] = (
    "attn_pre_proj",
    "attn_post_proj",
    "attn_rope",
    "attn_kv_cache_save",
    "mlp_up_proj",
    "mlp_down_proj",
    "mlp_act",
    "input_layernorm",
    "post_attention_layernorm",
    "add",
    "all_reduce",
    "send_recv",
)
#: Every op a predictor answers, in a fixed order.
OPS: tuple[str, ...] = (*TOKEN_OPS[:10], "attn_prefill", "attn_decode", "all_reduce", "send_recv")
#: User feature names per op (keyword arguments of ``Predictor.predict``).
OP_FEATURES: dict[str, tuple[str, ...]] = {op: ("num_tokens",) for op in TOKEN_OPS}
OP_FEATURES["attn_prefill"] = ("kv_cache_size", "prefill_chunk_size")
OP_FEATURES["attn_decode"] = ("batch_size", "kv_cache_size")
#: Ops fitted on mlp.csv (the loader's compute ops, in file order).
MLP_CSV_OPS: tuple[str, ...] = COMPUTE_OPS
REFERENCE_HEAD_DIM = 128.0


def _basis(*rows: tuple[int, int, int]) -> np.ndarray:
    return np.array(rows, np.float32)


#: Physical monomial bases (exponents of the 3 internal features).
BASIS_TOKENS = _basis((0, 0, 0), (1, 0, 0))  # launch/weight-streaming floor + per-token work
#: prefill: overhead, KV bytes (kv), chunk (Q/O bytes), FLOPs c*kv and c^2 -- all x heads.
BASIS_PREFILL = _basis((0, 0, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1), (0, 2, 1))
#: decode: overhead, per-sequence launch work b, KV bytes b*kv -- x heads.
BASIS_DECODE = _basis((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))
#: prefill transfer (kv, chunk, heads): heads-free latency part A(kv, c) (one wave of
#: blocks: overhead, kv, c, and the FLOP terms c*kv, c^2 of a block-limited wave) plus
#: heads x the per-head throughput part B(kv, c) = BASIS_PREFILL's heads terms.
BASIS_PREFILL_TRANSFER = _basis(
    *BASIS_PREFILL.astype(int).tolist(), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 2, 0)
)
#: prefill transfer MLP inputs (``FitJob.mlp_inputs``): log1p of kv, of chunk, and
#: log1p chunk + log1p heads (~ log thread blocks).
PREFILL_TRANSFER_MLP_INPUTS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 1.0, 1.0))
#: decode transfer (blocks = batch x heads, kv): overhead, per-block launch, per-wave KV
#: read (kv), KV bytes blocks*kv.
BASIS_DECODE_TRANSFER = _basis((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0))
#: GEMM (n, K, N): overhead, weight bytes K*N, FLOPs n*K*N, activation bytes n*K, n*N.
BASIS_GEMM = _basis((0, 0, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0), (1, 0, 1), (1, 0, 0))
#: elementwise (n, W): overhead, n, bytes n*W.
BASIS_ELEMENTWISE = _basis((0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0))
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
#: Upper-range emphasis of the polynomial fit (row weight (size/max)**a, see
#: ``train.fit_physical``). Token and network ops are affine in size but their slope grows
#: until the GPU is saturated (L2 spill, full waves), so the extrapolating line is the one
#: through the largest sizes: a = 4. Attention needs its small-size terms too: a = 0.25.
#: Fixed values, chosen on the held-out extrapolation split of every profiled table
#: (a search on an inner split picked worse values: the regime changes inside the range).
TOKEN_EMPHASIS = (4.0,)
ATTENTION_EMPHASIS = (0.25,)
#: Residual-grid coordinates of attention (``FitJob.grid``, rows of ``log1p(A @ x)``):
#: prefill ``(kv + chunk, chunk)`` -- the attended length and the query length, in which
#: the profiled grid is closest to a tensor grid and held-out rows interpolate best
#: (``(kv, chunk)`` was 0.1-0.6 points worse); decode ``(batch, kv)``.
ATTENTION_GRID = {
    "prefill": ((1.0, 1.0, 0.0), (0.0, 1.0, 0.0)),
    "decode": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
}


#: True: compute token ops (mlp.csv) train an MLP under their knots (``FitJob.mlp``);
#: network ops (all_reduce, send_recv) follow :data:`NETWORK_MLP`. False (shipped) is
#: knots only: no seed enters any fitted parameter, so the spread over training seeds is
#: 0. Read at call time; ``experiments/predictor_seed_spread.py`` measures both settings.
TOKEN_MLP = False
NETWORK_MLP = False
#: True (shipped): knots-only compute token ops fit wave-quantization steps where their
#: rows' cross-validation prefers them (``train.fit_step_knots``); network ops never (their
#: small messages are noise, not tile steps). Read at call time.
TOKEN_STEPS = True


def mlp_key() -> str:
    """The token/network MLP switches, for cache keys (one tag per switch, e.g.
    ``"|token_mlp=0|network_mlp=0"`` at the shipped defaults)."""
    out = "" if TOKEN_MLP else "|token_mlp=0"
    out += "" if TOKEN_STEPS else "|token_steps=0"
    return out + ("" if NETWORK_MLP else "|network_mlp=0")


def token_job(
    num_tokens: np.ndarray, y: np.ndarray, bytes_per_token: float = 1.0, network: bool = False
) -> FitJob:
    """Fit job for a 1-feature op.

    Args:
      num_tokens: ``(N,)`` tokens (or bytes for network ops with ``bytes_per_token=1``).
      y: ``(N,)`` ms.
      bytes_per_token: user-to-internal scale (``2 * embedding_dim`` for collectives).
      network: a network op (all_reduce, send_recv): MLP per :data:`NETWORK_MLP`, else
        per :data:`TOKEN_MLP`.
    """
    n = np.asarray(num_tokens, np.float64)
    x = np.stack([n, np.ones_like(n), np.ones_like(n)], axis=1)
    return FitJob(
        x,
        np.asarray(y, np.float64),
        np.array([bytes_per_token, 0.0, 0.0]),
        np.array([0.0, 1.0, 1.0]),
        BASIS_TOKENS,
        TOKEN_EMPHASIS,
        knots=True,
        mlp=NETWORK_MLP if network else TOKEN_MLP,
        steps=TOKEN_STEPS and not network,
    )


def effective_heads(shape: dict, tp: int, kind: str) -> float:
    """Effective 128-dim heads per device for attention ``kind`` ("prefill" or "decode")."""
    head_dim = shape["embedding_dim"] / shape["num_q_heads"]
    heads = shape["num_q_heads"] if kind == "prefill" else shape["num_kv_heads"]
    return heads / tp * head_dim / REFERENCE_HEAD_DIM


def attention_job(
    rows: pd.DataFrame, kind: str, heads: np.ndarray | float, grid: bool = True
) -> FitJob:
    """Fit job for prefill/decode attention.

    Args:
      rows: attention rows of one kind (see ``profiles.load_attention``).
      kind: "prefill" or "decode".
      heads: effective heads per device, scalar or ``(N,)`` (transfer fits vary it).
      grid: residual grid (:data:`ATTENTION_GRID`) instead of the MLP correction.
    """
    if kind == "prefill":
        f0, f1, y = rows["kv_cache_size"], rows["prefill_chunk_size"], rows["attn_prefill"]
    else:
        f0, f1, y = rows["batch_size"], rows["kv_cache_size"], rows["attn_decode"]
    f0 = f0.to_numpy(np.float64)
    h = np.broadcast_to(np.asarray(heads, np.float64), f0.shape)
    x = np.stack([f0, f1.to_numpy(np.float64), h], axis=1)
    const_h = float(h[0]) if np.unique(h).size == 1 else 0.0
    basis = BASIS_PREFILL if kind == "prefill" else BASIS_DECODE
    return FitJob(
        x,
        y.to_numpy(np.float64),
        np.array([1.0, 1.0, 0.0]),
        np.array([0.0, 0.0, const_h]),
        basis,
        ATTENTION_EMPHASIS,
        grid=ATTENTION_GRID[kind] if grid else None,
    )


def attention_transfer_job(rows: pd.DataFrame, kind: str, heads: np.ndarray) -> FitJob:
    """Fit job for one attention model over several head counts (for transfer).

    Prefill: internal ``(kv, chunk, heads)`` with :data:`BASIS_PREFILL_TRANSFER` (affine in
    heads) and an MLP on (kv, chunk, chunk x heads). Decode: internal
    ``(batch x heads, kv, 1)`` with :data:`BASIS_DECODE_TRANSFER` (heads only through the
    block count). The job's ``feat_scale``/``feat_const`` are placeholders:
    ``transfer.specialize_attention`` sets them for a target's heads.

    Args:
      rows: attention rows of one kind (see ``profiles.load_attention``).
      kind: "prefill" or "decode".
      heads: ``(N,)`` effective heads per device (:func:`effective_heads`) of each row.
    """
    job = attention_job(rows, kind, np.asarray(heads, np.float64), grid=False)
    if kind == "prefill":
        return dataclasses.replace(
            job,
            feat_const=np.zeros(3),
            basis=BASIS_PREFILL_TRANSFER,
            mlp_inputs=PREFILL_TRANSFER_MLP_INPUTS,
        )
    x = job.x.copy()
    x[:, 0] *= x[:, 2]  # thread blocks = sequences x heads
    x[:, 2] = 1.0
    return dataclasses.replace(
        job, x=x, feat_const=np.array([0.0, 0.0, 1.0]), basis=BASIS_DECODE_TRANSFER
    )


def shape_dims(op: str, shape: dict, tp: int) -> tuple[float, float]:
    """Per-device shape features (K, N) of a GEMM op, or (width, 1) of an elementwise op.

    Args:
      op: an op of :data:`MLP_CSV_OPS`.
      shape: ``{num_q_heads, num_kv_heads, embedding_dim, mlp_hidden_dim, use_gated_mlp}``.
      tp: tensor-parallel degree.
    """
    e = float(shape["embedding_dim"])
    hd = e / shape["num_q_heads"]
    q = shape["num_q_heads"] * hd / tp
    kv = shape["num_kv_heads"] * hd / tp
    f = shape["mlp_hidden_dim"] / tp
    gate = 2.0 if shape["use_gated_mlp"] else 1.0
    return {
        "attn_pre_proj": (e, q + 2 * kv),
        "attn_post_proj": (q, e),
        "mlp_up_proj": (e, gate * f),
        "mlp_down_proj": (f, e),
        "mlp_act": (gate * f, 1.0),
        "attn_rope": (q + kv, 1.0),
        "input_layernorm": (e, 1.0),
        "post_attention_layernorm": (e, 1.0),
        "add": (e, 1.0),
    }[op]


def shape_job(frames: list[tuple[dict, int, pd.DataFrame]], op: str, row_stride: int = 1) -> FitJob:
    """Fit job for one token op across models/TPs with shape features (for transfer).

    Args:
      frames: ``(shape, tp, rows)`` triples, rows from ``profiles.load_compute`` for one TP.
      op: the op.
      row_stride: keep every ``row_stride``-th row per frame (cheaper fits).
    """
    xs, ys = [], []
    for shape, tp, rows in frames:
        rows = rows.iloc[::row_stride]
        y = rows[op].to_numpy(np.float64)
        if not np.any(y > 0):
            continue
        a, b = shape_dims(op, shape, tp)
        n = rows["num_tokens"].to_numpy(np.float64)
        xs.append(np.stack([n, np.full_like(n, a), np.full_like(n, b)], axis=1))
        ys.append(y)
    x = np.concatenate(xs)
    basis = BASIS_GEMM if op in GEMM_OPS else BASIS_ELEMENTWISE
    return FitJob(
        x, np.concatenate(ys), np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0]), basis
    )
