"""Iteration execution time from batch composition (Vidur's per-layer decomposition).

Per layer: attention (pre/post projection, rope, KV-cache save, prefill attention on
(sum of KV lengths, sqrt(sum of chunk^2)), decode attention on (decode batch size, mean
KV length)) + MLP (up, activation, down) + norms + residual add + two tensor-parallel
all-reduces; times layers per pipeline stage; plus send/recv on every stage but the
last; plus an optional CPU overhead per iteration. Vidur's rounding is kept: token
counts round up to a multiple of 8 (except the KV-cache save), KV lengths to 64.

Times are read from :class:`~vidur_jax.sim.types.TimingTables` by exact index on
grid points and linear interpolation between them, so the result is differentiable in
the table values (speed scale factors) and piecewise-linear in the features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vidur_jax.sim.types import LAYER_COMPUTE_OPS, OP_INDEX, SimParams, TimingTables

_CORE_OPS = jnp.array([OP_INDEX[name] for name in LAYER_COMPUTE_OPS])


def _ceil_to(x: jax.Array, step: int) -> jax.Array:
    """Round a non-negative integer array up to a multiple of ``step``."""
    return (x + step - 1) // step * step


def _lerp_index(x: jax.Array, step: int, size: int) -> tuple[jax.Array, jax.Array]:
    """Lower grid index and fraction for linear interpolation at ``x`` on a grid of
    ``size`` points spaced ``step`` apart (clipped to the grid)."""
    pos = jnp.clip(x.astype(jnp.float32) / step, 0.0, size - 1.0)
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, size - 2)
    return lo, pos - lo


def cpu_overhead_ms(tables: TimingTables, params: SimParams, batch_size: jax.Array) -> jax.Array:
    """Vidur's per-iteration CPU overhead (ms) at ``batch_size`` when switched on.

    Vidur adds it to every pipeline stage's time (``ExecutionTime.total_time``); batch
    sizes beyond the table use its last entry (Vidur tabulates up to its max batch size).
    """
    nb = tables.cpu_overhead.shape[1]
    ms = tables.cpu_overhead[params.table_index, jnp.clip(batch_size, 0, nb - 1)]
    return params.cpu_overhead_on * ms


def _token_part(tables: TimingTables, params: SimParams, total: jax.Array):
    """Per-layer ms of the token-count-driven operations of a batch of ``total`` tokens.

    Returns ``(dense_ms, kv_save_ms, send_recv_ms, overflow)`` (scalars, or arrays
    shaped like ``total``): the core operations plus two all-reduces, the KV-cache save
    (interpolated at the exact count), the stage-to-stage send/recv, and whether the
    token count is beyond the tables.
    """
    p = params.table_index
    token_step = tables.token_step
    rounded = _ceil_to(total, token_step)
    # index every table axis at once: t[p][i] would copy a whole slab per config under vmap
    g = tables.token_ops.shape[1]
    overflow = rounded // token_step > g - 1
    row = tables.token_ops[p, jnp.clip(rounded // token_step, 0, g - 1)] * params.op_scale  # (..., K)
    lo, frac = _lerp_index(total, token_step, g)
    kv_save = tables.kv_save[p, lo] * (1.0 - frac) + tables.kv_save[p, lo + 1] * frac
    dense = row[..., _CORE_OPS].sum(-1) + 2.0 * row[..., OP_INDEX["all_reduce"]]
    return dense, kv_save, row[..., OP_INDEX["send_recv"]], overflow


def _decode_attention_ms(tables: TimingTables, params: SimParams, n_dec: jax.Array, mean_kv: jax.Array):
    """Per-layer ms of decode attention over ``n_dec`` decodes of mean KV ``mean_kv``
    (elementwise; 0 without decodes) and its overflow flag."""
    kv_step = tables.kv_step
    kv_idx = _ceil_to(mean_kv, kv_step) // kv_step
    nb, nk = tables.decode.shape[1:]
    overflow = (n_dec > nb - 1) | (kv_idx > nk - 1)
    ms = tables.decode[params.table_index, jnp.clip(n_dec, 0, nb - 1), jnp.clip(kv_idx, 0, nk - 1)]
    return jnp.where(n_dec > 0, ms * (1.0 + params.gqa_overhead * (n_dec > 1)), 0.0), overflow


def _prefill_attention_ms(
    tables: TimingTables, params: SimParams, n_pre: jax.Array, agg_kv: jax.Array, agg_chunk: jax.Array
):
    """Per-layer ms of prefill attention of ``n_pre`` chunks on (sum of their KV lengths
    rounded to ``kv_step``, round(sqrt(sum chunk^2))) (elementwise; 0 without chunks) and
    its overflow flag."""
    kv_step, chunk_step = tables.kv_step, tables.chunk_step
    nkp, nc = tables.prefill.shape[1:]
    kvp = agg_kv // kv_step
    overflow = (kvp > nkp - 1) | (agg_chunk > (nc - 1) * chunk_step)
    kvp = jnp.clip(kvp, 0, nkp - 1)
    lo, frac = _lerp_index(agg_chunk, chunk_step, nc)
    p = params.table_index
    ms = tables.prefill[p, kvp, lo] * (1.0 - frac) + tables.prefill[p, kvp, lo + 1] * frac
    return jnp.where(n_pre > 0, ms * (1.0 + params.gqa_overhead * (n_pre > 1)), 0.0), overflow


def _flops(params: SimParams, total: jax.Array, attn_pairs: jax.Array) -> jax.Array:
    """FLOPs per device for one stage: ``total`` tokens, ``attn_pairs`` (query, key) pairs."""
    return params.layers_per_stage * (
        params.flops_per_token * total.astype(jnp.float32)
        + params.attn_flops_coef * attn_pairs.astype(jnp.float32)
    )


def batch_stage_time(
    tables: TimingTables,
    params: SimParams,
    active: jax.Array,
    num_tokens: jax.Array,
    processed: jax.Array,
    is_prefill: jax.Array,
    num_seqs: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Execution time of one batch on one pipeline stage.

    Args:
        tables: timing tables (all bundles); ``params.table_index`` picks one.
        params: the config's knobs.
        active: (E,) bool, entries that take part in the batch.
        num_tokens: (E,) i32 tokens each entry processes in this iteration.
        processed: (E,) i32 tokens each entry had processed before (its KV length).
        is_prefill: (E,) bool, entry is (a chunk of) a prefill; else one decode token.
        num_seqs: (E,) i32 output sequences per entry (parallel sampling / beam search):
            a decode entry is ``num_seqs`` decodes of KV length ``processed`` (they share
            the prompt, which is prefilled once); None = 1 each (Vidur).

    Returns:
        ``(stage_s, last_stage_s, flops, overflow)``: seconds on a non-last stage
        (includes the send/recv to the next stage), seconds on the last stage, FLOPs
        per device for one stage, and a bool that is True when the batch is larger than
        the tables cover.
    """
    kv_step = tables.kv_step
    seqs = jnp.ones_like(num_tokens) if num_seqs is None else num_seqs
    ntok = jnp.where(active, jnp.where(is_prefill, num_tokens, num_tokens * seqs), 0)
    total = ntok.sum()
    dense_ms, kv_save, send_recv, overflow = _token_part(tables, params, total)

    # decode attention: (decode batch size, mean KV length rounded up to kv_step)
    dec = active & ~is_prefill
    n_dec = jnp.where(dec, seqs, 0).sum()
    mean_kv = jnp.where(dec, processed * seqs, 0).sum() // jnp.maximum(n_dec, 1)
    decode_ms, over = _decode_attention_ms(tables, params, n_dec, mean_kv)
    overflow |= over

    # prefill attention: (sum of KV lengths rounded to kv_step, round(sqrt(sum chunk^2)))
    pre = active & is_prefill
    agg_kv = jnp.where(pre, _ceil_to(processed, kv_step), 0).sum()
    agg_chunk = jnp.round(jnp.sqrt(jnp.where(pre, ntok.astype(jnp.float32) ** 2, 0.0).sum()))
    prefill_ms, over = _prefill_attention_ms(tables, params, pre.sum(), agg_kv, agg_chunk)
    overflow |= over

    block_ms = dense_ms + params.attn_scale * (kv_save + decode_ms + prefill_ms)
    last_ms = block_ms * params.layers_per_stage + params.cpu_overhead_ms + cpu_overhead_ms(tables, params, jnp.where(active, seqs, 0).sum())
    stage_ms = last_ms + send_recv

    attn_pairs = jnp.where(dec, processed * seqs, 0).sum() + jnp.where(
        pre, ntok * (processed + (ntok + 1) // 2), 0
    ).sum()
    return stage_ms * 1e-3, last_ms * 1e-3, _flops(params, total, attn_pairs), overflow


def run_times(
    tables: TimingTables,
    params: SimParams,
    n_dec: jax.Array,
    sum_kv: jax.Array,
    chunks: jax.Array,
    pre_kv: jax.Array,
    batch_seqs: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Last-stage seconds, FLOPs and overflow of J consecutive iterations of a batch.

    Iteration ``j`` holds ``n_dec[j]`` decodes (one token each) whose KV lengths sum to
    ``sum_kv[j]`` (mean KV ``sum_kv[j] // n_dec[j]``) and at most one prefill, which
    processes ``chunks[j]`` tokens on top of a KV of ``pre_kv[j]`` tokens (0 = no
    prefill). Each iteration is what :func:`batch_stage_time` gives for that batch. Used
    to fuse runs of iterations of the same requests into one simulator step.

    Args:
        tables: timing tables.
        params: the config's knobs.
        n_dec: (J,) i32 decoding sequences of each iteration.
        sum_kv: (J,) i32 sum of their KV lengths.
        chunks: (J,) i32 prefill tokens of each iteration.
        pre_kv: (J,) i32 KV length of the prefill before each iteration.
        batch_seqs: (J,) i32 sequences in each batch (the CPU-overhead batch size).

    Returns:
        ``(seconds, flops, overflow)``: (J,) f32 seconds, (J,) f32 FLOPs per device and
        (J,) bool table overflow of each iteration.
    """
    total = n_dec + chunks
    dense_ms, kv_save, _, overflow = _token_part(tables, params, total)

    decode_ms, over = _decode_attention_ms(tables, params, n_dec, sum_kv // jnp.maximum(n_dec, 1))
    overflow |= over

    has_pre = chunks > 0
    agg_kv = jnp.where(has_pre, _ceil_to(pre_kv, tables.kv_step), 0)
    agg_chunk = jnp.round(jnp.sqrt(jnp.where(has_pre, chunks.astype(jnp.float32) ** 2, 0.0)))
    prefill_ms, over = _prefill_attention_ms(tables, params, has_pre.astype(jnp.int32), agg_kv, agg_chunk)
    overflow |= over

    block_ms = dense_ms + params.attn_scale * (kv_save + decode_ms + prefill_ms)
    last_ms = block_ms * params.layers_per_stage + params.cpu_overhead_ms + cpu_overhead_ms(tables, params, batch_seqs)
    attn_pairs = sum_kv + jnp.where(has_pre, chunks * (pre_kv + (chunks + 1) // 2), 0)
    return last_ms * 1e-3, _flops(params, total, attn_pairs), overflow
