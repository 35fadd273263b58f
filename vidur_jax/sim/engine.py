"""The simulation loop: ``init``, ``step`` and ``run`` of one config, vmapped over many.

One :func:`step` processes the earliest event of the config:

* an **arrival** — the global scheduler routes the request to a replica's waiting
  queue (round robin, random, or least outstanding requests), and wakes the replica if
  it has a free pipeline slot; or
* a **replica event** — the end of an in-flight micro-batch (progress is applied,
  finished requests free their memory and get their timestamps) and/or the formation
  of the next batch by the replica policy, whose execution time comes from the timing
  tables and flows through the pipeline stages.

Arrivals come first at equal times (Vidur creates all arrival events first). Every
state update is a scatter whose index is pushed out of bounds (``mode="drop"``) when the
event does not apply, so a step costs O(slots + window), never O(requests), and a
finished config is a no-op under ``vmap``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vidur_jax.metrics.histogram import tbt_bin_index
from vidur_jax.sim import (
    disagg,
    indexed,
    policies,
    prefix_engine,
    scan,
    sessions,
    speculative,
    timing,
)
from vidur_jax.sim.policies import Candidates, ReplicaView, seq_blocks
from vidur_jax.sim.types import (
    ERR_OOM,
    ERR_SLOTS,
    ERR_STALLED,
    ERR_STEPS,
    ERR_TOKENS,
    ERR_WINDOW,
    STATIC_ROUTERS,
    SimParams,
    SimState,
    SimStatic,
    TimingTables,
)

_INF = jnp.inf


class Simulator(NamedTuple):
    """A simulator as a pair of pure functions (jax-md style)."""

    init: callable  # (params) -> SimState
    step: callable  # (params, state) -> SimState


def _put(static: SimStatic, arr: jax.Array, index, values, op: str = "set") -> jax.Array:
    """``arr.at[index].<op>(values, mode="drop")``: a scatter, or a scatter-free loop
    when the config runs unbatched (``static.scatter_free``; see :mod:`indexed`)."""
    return indexed.update(arr, index, values, op, static.scatter_free)


def _region(gate: jax.Array | None, fn, carry, *inputs):
    """``fn(carry, *inputs) -> (carry, extra)`` as its own XLA conditional when ``gate``.

    Why: on XLA:CPU one step is ~300 small kernels run back to back, so the per-kernel
    dispatch cost sets the speed. Grouping them into a dozen regions, each the taken
    branch of a ``lax.cond``, bounds what XLA fuses across stages and gives every region
    its own (short) thunk sequence; measured on the 2-core machine (bench config,
    2,000 requests): 41.5 -> 29-34 us per step for one config, 1,323 -> 1,032-1,049 us
    per step for 128 vmapped lanes, same results. ``gate`` is an unbatched,
    always-true () bool the event loop derives from its counter: not a constant (XLA
    would fold the conditional away) and unbatched (so ``vmap`` keeps a conditional
    rather than a select of both branches). The other branch returns ``carry`` unchanged
    and zeros for ``extra``; it never runs. ``gate=None`` (step-by-step use,
    differentiation) calls ``fn`` inline.

    Args:
        gate: () bool, or None.
        fn: ``(carry, *inputs) -> (carry, extra)``; ``carry`` keeps its structure and
            shapes (dtypes may widen), ``extra`` is any pytree of new arrays.
    """
    if gate is None:
        return fn(carry, *inputs)
    carry_shape, extra_shape = jax.eval_shape(fn, carry, *inputs)

    def skipped(carry, *_):
        return (
            jax.tree.map(lambda a, like: a.astype(like.dtype), carry, carry_shape),
            jax.tree.map(lambda like: jnp.zeros(like.shape, like.dtype), extra_shape),
        )

    return jax.lax.cond(gate, fn, skipped, carry, *inputs)


def init_state(static: SimStatic, params: SimParams) -> SimState:
    """Initial state of one config: nothing arrived, all replicas idle."""
    r, s, n, m = static.num_requests, static.num_slots, static.max_replicas, static.max_stages
    f64, i32 = jnp.float64, jnp.int32
    nan_r = jnp.full(r, jnp.nan, f64)
    queues = _prerouted_queues(static, params)
    return SimState(
        scheduled_at=nan_r,
        first_token_at=nan_r,
        completed_at=nan_r,
        num_restarts=jnp.zeros(r, i32),
        restart_tokens=jnp.array(0, jnp.int64),
        next_arrival=jnp.array(0, i32),
        **sessions.init_fields(static),
        **queues,
        q_head=jnp.zeros(n, i32),
        q_tail=jnp.zeros(n, i32),
        slot_req=jnp.full((n, s), -1, i32),
        slot_prefill=jnp.zeros((n, s), i32),
        slot_processed=jnp.zeros((n, s), i32),
        slot_blocks=jnp.zeros((n, s), i32),
        slot_restarted=jnp.zeros((n, s), bool),
        slot_mb=jnp.full((n, s), -1, i32),
        slot_ntok=jnp.zeros((n, s), i32),
        slot_last_done=jnp.zeros((n, s), f64),
        slot_group=jnp.full((n, s), -1, i32),
        slot_held=jnp.zeros((n, s if prefix_engine.on(static) else 0), i32),
        free_blocks=disagg.initial_blocks(static, params),
        pc_hash=jnp.full((n, static.prefix_capacity), -1, jnp.int64),
        pc_refs=jnp.zeros((n, static.prefix_capacity), i32),
        pc_last=jnp.zeros((n, static.prefix_capacity), f64),
        inflight_end=jnp.full((n, m), _INF, f64),
        stage_free_at=jnp.zeros((n, m), f64),
        next_event=queues["queue_arrival"][:, 0],  # static routers: each replica's first arrival
        waiting_iters=jnp.zeros(n, i32),
        **disagg.init_fields(static),
        tbt_hist=jnp.zeros(static.num_tbt_bins, i32),
        tbt_sum=jnp.array(0.0, f64),
        tbt_bin_sum=jnp.zeros(static.num_tbt_bins, f64),
        tbt_count=jnp.array(0, jnp.int64),
        num_batches=jnp.array(0, jnp.int64),
        batch_size_sum=jnp.array(0.0, f64),
        batch_size_max=jnp.array(0, i32),
        batch_tokens_sum=jnp.array(0.0, f64),
        kv_util_sum=jnp.array(0.0, f64),
        busy_s=jnp.array(0.0, f64),
        flops_sum=jnp.array(0.0, f64),
        prefix_admits=jnp.array(0, jnp.int64),
        prefix_hit_admits=jnp.array(0, jnp.int64),
        prefix_prompt_tokens=jnp.array(0, jnp.int64),
        prefix_hit_tokens=jnp.array(0, jnp.int64),
        clock=jnp.array(0.0, f64),
        step=jnp.array(0, jnp.int64),
        num_completed=jnp.array(0, i32),
        error=jnp.array(0, i32),
        log_count=jnp.array(0, i32),
        log_start=jnp.zeros(static.trace_capacity, f64),
        log_end=jnp.zeros(static.trace_capacity, f64),
        log_replica=jnp.zeros(static.trace_capacity, i32),
        log_size=jnp.zeros(static.trace_capacity, i32),
        log_prefill_tokens=jnp.zeros(static.trace_capacity, i32),
        log_decode_tokens=jnp.zeros(static.trace_capacity, i32),
        log_iters=jnp.zeros(static.trace_capacity, i32),
    )


def _prerouted(static: SimStatic) -> bool:
    """Requests are routed up front (static routers; with sessions every router decides at arrival)."""
    return static.router in STATIC_ROUTERS and not sessions.on(static)


def _prerouted_queues(static: SimStatic, params: SimParams) -> dict[str, jax.Array]:
    """Per-replica request lists (and their arrival times) for static routers.

    Round robin and random routing depend only on the request index, so every request is
    routed once here, in arrival order; at a replica event, the requests of its list that
    have arrived form its waiting queue. For LOR the lists start empty and grow with the
    arrival events.
    """
    n, r = static.max_replicas, static.num_requests
    empty = {"queue": jnp.full((n, r), -1, jnp.int32), "queue_arrival": jnp.full((n, r), _INF, jnp.float64)}
    if not _prerouted(static):
        return empty
    idx = jnp.arange(r, dtype=jnp.int32)
    valid = jnp.isfinite(params.arrived_at)
    if static.router == "round_robin":
        n_entry = disagg.entry_replicas(static, params)
        route, pos = idx % n_entry, idx // n_entry
    else:
        route = params.random_route
        onehot = (route[None, :] == jnp.arange(n)[:, None]) & valid[None, :]  # (N, R)
        pos = (scan.cumsum(onehot) - onehot)[jnp.clip(route, 0, n - 1), idx]
    route = jnp.where(valid, route, n)  # padding rows -> dropped
    return {
        "queue": empty["queue"].at[route, pos].set(idx, mode="drop"),
        "queue_arrival": empty["queue_arrival"].at[route, pos].set(params.arrived_at, mode="drop"),
    }


def _arrived_count(static: SimStatic, state: SimState, r: jax.Array, t: jax.Array) -> jax.Array:
    """() i32: how many requests of replica ``r``'s list have arrived by ``t`` (inclusive).

    Bisection from ``q_tail[r]`` with scalar gathers: ``searchsorted`` on the row would
    copy the whole (R,) row per config and step under ``vmap``.
    """
    lo = state.q_tail[r]  # arrived before; t never decreases for a replica
    hi = jnp.int32(static.num_requests)
    for _ in range(max(int(static.num_requests).bit_length(), 1)):
        mid = (lo + hi) // 2
        arrived = state.queue_arrival[r, jnp.minimum(mid, static.num_requests - 1)] <= t
        go_right = (mid < hi) & arrived
        lo, hi = jnp.where(go_right, mid + 1, lo), jnp.where(go_right, hi, mid)
    return lo


def _next_arrival_at(static: SimStatic, params: SimParams, state: SimState, r: jax.Array) -> jax.Array:
    """() s: the next arrival that can change replica ``r``'s queue (after its q_tail).

    Static routers: the next request of r's own list. LOR: the next arrival anywhere
    (routing is decided on arrival).
    """
    if _prerouted(static):
        k = jnp.minimum(state.q_tail[r], static.num_requests - 1)
        return jnp.where(state.q_tail[r] < static.num_requests, state.queue_arrival[r, k], _INF)
    return sessions.next_arrival(static, params, state).at


def is_done(params: SimParams, state: SimState) -> jax.Array:
    """() bool: all requests completed, an error was raised, or the step budget ran out."""
    return (
        (state.num_completed >= params.num_valid)
        | (state.error != 0)
        | (state.step >= params.max_steps)
    )


def _route(static: SimStatic, params: SimParams, state: SimState, i: jax.Array) -> jax.Array:
    """Replica id for arriving request ``i`` (Vidur's global schedulers)."""
    n_rep = disagg.entry_replicas(static, params)
    if static.router == "round_robin":
        return i % n_rep
    if static.router == "random":
        return params.random_route[jnp.minimum(i, static.num_requests - 1)]
    if static.router == "lor":
        # Vidur's LOR counts each replica's waiting queue (restarted requests included)
        pending = state.q_tail - state.q_head + state.slot_restarted.sum(axis=1)
        pending = jnp.where(jnp.arange(static.max_replicas) < n_rep, pending, jnp.iinfo(jnp.int32).max)
        return jnp.argmin(pending).astype(jnp.int32)
    if static.router == "prefix_affinity":
        return prefix_engine.route(static, params, state, i)
    raise ValueError(f"unknown router {static.router!r}")


def _arrival_update(static: SimStatic, params: SimParams, state: SimState, apply: jax.Array) -> SimState:
    """Route the next arriving request (no-op unless ``apply``)."""
    n = static.max_replicas
    arr = sessions.next_arrival(static, params, state)
    i, t = arr.req, arr.at
    rep = _route(static, params, state, i)
    rep_w = jnp.where(apply, rep, n)  # out of bounds -> dropped
    inflight = jnp.isfinite(state.inflight_end[rep]).sum()
    wake = apply & (inflight < disagg.num_stages(static, params, rep))
    return state.replace(
        queue=_put(static, state.queue, (rep_w, state.q_tail[rep]), i),
        q_tail=_put(static, state.q_tail, rep_w, 1, "add"),
        **sessions.arrived(static, state, arr, apply),
        next_event=_put(static, state.next_event, jnp.where(wake, rep, n), t, "min"),
    )


class _Row(NamedTuple):
    """One replica's slot arrays (S,) plus its scalars, gathered for a replica event."""

    req: jax.Array
    prefill: jax.Array
    processed: jax.Array
    blocks: jax.Array
    restarted: jax.Array
    mb: jax.Array
    ntok: jax.Array
    last_done: jax.Array
    group: jax.Array
    free_blocks: jax.Array
    inflight_end: jax.Array  # (M,)
    stage_free_at: jax.Array  # (M,)
    waiting_iters: jax.Array
    held: jax.Array  # (S,) prefix cache (zero-sized when off), as the pc_* tables (C,)
    pc_hash: jax.Array
    pc_refs: jax.Array
    pc_last: jax.Array
    xfer_end: jax.Array  # (S,) disaggregated pools (zero-sized when off)
    xfer_dst: jax.Array


def _gather_row(state: SimState, r: jax.Array) -> _Row:
    return _Row(
        req=state.slot_req[r],
        prefill=state.slot_prefill[r],
        processed=state.slot_processed[r],
        blocks=state.slot_blocks[r],
        restarted=state.slot_restarted[r],
        mb=state.slot_mb[r],
        ntok=state.slot_ntok[r],
        last_done=state.slot_last_done[r],
        group=state.slot_group[r],
        free_blocks=state.free_blocks[r],
        inflight_end=state.inflight_end[r],
        stage_free_at=state.stage_free_at[r],
        waiting_iters=state.waiting_iters[r],
        held=state.slot_held[r],
        pc_hash=state.pc_hash[r],
        pc_refs=state.pc_refs[r],
        pc_last=state.pc_last[r],
        xfer_end=state.slot_xfer_end[r],
        xfer_dst=state.slot_xfer_dst[r],
    )


_ROW_TO_STATE = {
    "req": "slot_req", "prefill": "slot_prefill", "processed": "slot_processed",
    "blocks": "slot_blocks", "restarted": "slot_restarted", "mb": "slot_mb", "ntok": "slot_ntok",
    "last_done": "slot_last_done", "group": "slot_group", "free_blocks": "free_blocks",
    "inflight_end": "inflight_end", "stage_free_at": "stage_free_at", "waiting_iters": "waiting_iters",
}
_PREFIX_ROW_TO_STATE = {"held": "slot_held", "pc_hash": "pc_hash", "pc_refs": "pc_refs", "pc_last": "pc_last"}
_DISAGG_ROW_TO_STATE = {"xfer_end": "slot_xfer_end", "xfer_dst": "slot_xfer_dst"}


def _scatter_row(static: SimStatic, state: SimState, r_w: jax.Array, row: _Row) -> SimState:
    """Write a replica row back; ``r_w`` out of bounds drops the write."""
    updates = {}
    fields = {**_ROW_TO_STATE, **_PREFIX_ROW_TO_STATE} if prefix_engine.on(static) else _ROW_TO_STATE
    fields = {**fields, **_DISAGG_ROW_TO_STATE} if disagg.on(static) else fields
    for field, name in fields.items():
        target = getattr(state, name)
        updates[name] = _put(static, target, r_w, getattr(row, field).astype(target.dtype))
    return state.replace(**updates)


def _set_first(
    static: SimStatic, arr: jax.Array, idx: jax.Array, mask: jax.Array, value: jax.Array
) -> jax.Array:
    """``arr[idx] = value`` where ``mask`` and ``arr[idx]`` is still nan (first event only)."""
    r = arr.shape[0]
    safe = jnp.clip(idx, 0, r - 1)
    write = mask & jnp.isnan(arr[safe])
    return _put(static, arr, jnp.where(write, idx, r), value)


def _end_batch(
    static: SimStatic, params: SimParams, state: SimState, row: _Row, t: jax.Array, apply: jax.Array
) -> tuple[SimState, _Row]:
    """Finish the replica's earliest in-flight micro-batch if it ends at ``t``."""
    r_total = static.num_requests
    m = jnp.argmin(row.inflight_end)
    ends = apply & (row.inflight_end[m] <= t)
    inb = ends & (row.mb == m) & (row.req >= 0)
    safe_req = jnp.clip(row.req, 0, r_total - 1)
    total = params.num_prefill[safe_req] + params.num_decode[safe_req]

    processed = row.processed + jnp.where(inb, row.ntok, 0)
    prefill_done = inb & (processed == row.prefill)
    processed = processed + prefill_done.astype(jnp.int32)
    finished = inb & (processed >= total)

    # TBT: one sample per decode iteration = gap to the request's previous iteration end
    # (a fused run's early completions had their samples and nothing left: ntok 0)
    is_decode_iter = inb & (processed > row.prefill + 1) & (row.ntok > 0)
    gap = t - row.last_done
    bins = tbt_bin_index(gap, static.num_tbt_bins)
    bins_w = jnp.where(is_decode_iter, bins, static.num_tbt_bins)
    hist = _put(static, state.tbt_hist, bins_w, 1, "add")

    state = state.replace(
        first_token_at=_set_first(static, state.first_token_at, row.req, prefill_done, t),
        completed_at=_set_first(static, state.completed_at, row.req, finished, t),  # early completions keep theirs
        num_completed=state.num_completed + finished.sum().astype(jnp.int32),
        tbt_hist=hist,
        tbt_sum=state.tbt_sum + jnp.where(is_decode_iter, gap, 0.0).sum(),
        tbt_bin_sum=_put(static, state.tbt_bin_sum, bins_w, gap, "add"),
        tbt_count=state.tbt_count + is_decode_iter.sum(),
    )
    state = sessions.spawn(static, params, state, row.req, finished)  # their next turns are due
    if prefix_engine.on(static):  # prompts computed by now are published (completions: their output too)
        row = prefix_engine.publish(static, params, row, row.req, (row.req >= 0) & ~row.restarted
                                    & (processed >= row.prefill), t, finished)
    row = row._replace(
        req=jnp.where(finished, -1, row.req),
        processed=jnp.where(finished, 0, processed),
        free_blocks=row.free_blocks + jnp.where(finished, row.blocks, 0).sum(),
        blocks=jnp.where(finished, 0, row.blocks),
        mb=jnp.where(inb, -1, row.mb),
        ntok=jnp.where(inb, 0, row.ntok),
        last_done=jnp.where(inb, t, row.last_done),
        group=jnp.where(finished, -1, row.group),
        inflight_end=_put(static, row.inflight_end, jnp.where(ends, m, row.inflight_end.shape[0]), _INF),
    )
    if prefix_engine.on(static):  # completions release their cached blocks
        row = prefix_engine.release(static, params, row, safe_req, finished, t)
    return state, _compact(static, row)


_SLOT_FIELDS = ("req", "prefill", "processed", "blocks", "restarted", "mb", "ntok", "last_done", "group")


def _compact(static: SimStatic, row: _Row) -> _Row:
    """Move occupied slots to the front, keeping their (arrival) order.

    Invariant: a replica's occupied slots are a prefix sorted by request id, so every
    "in arrival order" walk of a policy is a walk in slot order (no sorting per step).
    (Not sorted under S3's first fit, which admits out of arrival order and does not
    depend on slot order.)
    """
    keep = row.req >= 0
    n_keep = keep.sum()
    dest = jnp.where(keep, scan.cumsum(keep) - 1, n_keep + scan.cumsum(~keep) - 1)
    fields = _SLOT_FIELDS + ("held",) if prefix_engine.on(static) else _SLOT_FIELDS
    fields = fields + ("xfer_end", "xfer_dst") if disagg.on(static) else fields
    moved = {f: indexed.permute(getattr(row, f), dest, static.scatter_free) for f in fields}
    return row._replace(**moved)


def _candidates(static: SimStatic, params: SimParams, state: SimState, row: _Row, r: jax.Array) -> Candidates:
    """Queue head for admission: restarted requests (by arrival) if any, else the queue."""
    w, r_total = static.window, static.num_requests
    restarted = row.restarted & (row.req >= 0)
    # restarted slots, in slot (= arrival) order, compacted to the front
    dest = jnp.where(restarted, scan.cumsum(restarted) - 1, w)
    order = _put(static, jnp.full(w, 0, jnp.int32), dest, jnp.arange(row.req.shape[0], dtype=jnp.int32))
    rs_valid = jnp.arange(w) < restarted.sum()
    rs_req = jnp.where(rs_valid, row.req[order], -1)
    pos = state.q_head[r] + jnp.arange(w)
    q_valid = disagg.queue_valid(static, params, r, pos < state.q_tail[r])
    q_req = jnp.where(q_valid, state.queue[r, jnp.clip(pos, 0, r_total - 1)], -1)
    use_restarted = rs_valid.any()
    req = jnp.where(use_restarted, rs_req, q_req)
    valid = jnp.where(use_restarted, rs_valid, q_valid)
    safe = jnp.clip(req, 0, r_total - 1)
    total = params.num_prefill[safe] + params.num_decode[safe]
    prefill = jnp.where(use_restarted, row.prefill[order], params.num_prefill[safe])
    hits = {}
    if prefix_engine.on(static):
        cached, reuse = prefix_engine.candidate_hits(static, params, row, jnp.where(valid, req, -1), prefill)
        hits = {"cached": cached, "reuse": reuse}
    return Candidates(
        req=req,
        prefill=jnp.where(valid, prefill, 0),
        total=jnp.where(valid, total, 0),
        src_slot=jnp.where(use_restarted & rs_valid, order, -1),
        valid=valid,
        arrived_at=jnp.where(valid, sessions.arrival_time(static, params, state, safe), _INF),
        seqs=jnp.where(valid, params.num_seqs[safe], 1),
        prompt=jnp.where(valid, params.num_prefill[safe], 0),
        bucket=_s3_reserve_bucket(params, state, safe),
        **hits,
    )


def _s3_reserve_bucket(params: SimParams, state: SimState, req: jax.Array) -> jax.Array:
    """S3 bucket to reserve for: the predicted one, one higher per preemption so far."""
    return jnp.minimum(params.pred_bucket[req] + state.num_restarts[req], params.num_buckets - 1)


class _FusedRun(NamedTuple):
    """A run of iterations of the same requests fused into one step (k = 1: no fusion)."""

    num_iters: jax.Array  # () i32 k >= 1 iterations
    seconds: jax.Array  # () f64 total duration of the k iterations
    iter_s: jax.Array  # (J,) f64 duration of each possible iteration
    iter_decodes: jax.Array  # (J,) i32 decoding requests in each iteration
    members: jax.Array  # (S,) bool slots in the batch (running and just admitted)
    decodes: jax.Array  # (S,) bool members that decode from iteration 1 (one token per iteration)
    decoding_at_end: jax.Array  # (S,) bool members that decode in iteration k (their last TBT gap starts at last_done)
    first_token: jax.Array  # (S,) bool the prefill whose first token comes inside the run (then it decodes)
    first_token_at: jax.Array  # () f64 end of that prefill's last chunk
    early: jax.Array  # (S,) bool decodes that complete before iteration k
    done_at: jax.Array  # (S,) f64 end of each early decode's last iteration
    early_tokens: jax.Array  # (S,) i32 tokens each early decode processes (its last ones)
    ntok: jax.Array  # (S,) i32 tokens left for the end of the step (early decodes: 0)
    ntok1: jax.Array  # (S,) i32 tokens each member processes in iteration 1
    alloc: jax.Array  # (S,) i32 blocks each decode needs over its iterations
    last_done: jax.Array  # () f64 end of iteration k-1 (the last TBT gap starts there)
    first_end: jax.Array  # () f64 end of iteration 1
    tokens: jax.Array  # () i32 tokens of the k iterations (every sequence counted)
    prefill_tokens: jax.Array  # () i32 of which prefill
    size_sum: jax.Array  # () i32 sum over the k iterations of the requests in the batch
    flops: jax.Array  # () f64 FLOPs per device of the k iterations
    overflow: jax.Array  # () bool an iteration of the k is beyond the tables


def _run_decode_sums(
    static: SimStatic, decodes: jax.Array, remaining: jax.Array, seqs: jax.Array, processed: jax.Array,
    j_max: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-iteration decode counts, sequences and KV sums of a run of ``j_max`` iterations.

    A decode with ``remaining`` iterations left is in iterations 1..remaining (it leaves
    the batch when it completes); in iteration ``j`` each of its ``seqs`` sequences has
    ``processed + j - 1`` KV tokens. Computed from a histogram of ``min(remaining, J)``
    and a suffix sum, O(S + J) rather than a (J, S) table.

    Args:
        decodes: (S,) bool slots that decode.
        remaining, seqs, processed: (S,) i32 per slot.
        j_max: J, the longest run.

    Returns:
        ``(iter_decodes, n, sum_kv)``: (J,) i32 decoding requests, decoding sequences
        and the sum of their KV lengths in iterations 1..J.
    """
    last = jnp.where(decodes, jnp.clip(remaining, 0, j_max), 0)  # bin 0: in no iteration
    weights = jnp.stack([decodes.astype(jnp.int32), seqs, processed * seqs]) * decodes  # (3, S)
    hist = _put(static, jnp.zeros((3, j_max + 1), jnp.int32), (slice(None), last), weights, "add")
    upto = scan.cumsum(hist)  # (3, J+1)
    in_iter = upto[:, -1:] - upto[:, :-1]  # (3, J): over the decodes with last >= j
    iter_decodes, n, kv_at_start = in_iter[0], in_iter[1], in_iter[2]
    return iter_decodes, n, kv_at_start + (jnp.arange(j_max, dtype=jnp.int32)) * n


def _fused_run(
    static: SimStatic,
    tables: TimingTables,
    params: SimParams,
    state: SimState,
    row: _Row,
    r: jax.Array,
    t: jax.Array,
    plan,
    adm: _Admission,
    schedulable: jax.Array,
) -> _FusedRun:
    """How many iterations of the batch just formed at ``t`` follow predictably.

    Exactness: Vidur's next batch is the previous one minus its completed requests as
    long as nothing else it depends on changes. Two kinds of runs are fused:

    * **decode runs** — every running request of the replica is in the batch, all
      decoding, nothing waits in the queue: the batch repeats, shrinking as requests
      complete, until (a) a request arrives (anywhere: routing may send it here),
      (b) memory runs short or (c) every request completed;
    * **chunked-prefill runs** (policies with a ``run_prefill_budget``, Sarathi) — the
      batch holds every running request: the decodes plus exactly one prefill
      (continuing, or admitted in this iteration), which then takes the policy's
      per-iteration budget (Sarathi: what the decodes leave of ``chunk_size``) every
      iteration until its last, shorter chunk. A full chunk leaves no budget, so arrivals
      and the queue cannot change it; the last chunk needs an empty queue and no arrival
      before it starts. After its last chunk (which gives its first token) the request
      decodes with the others, and the run goes on as a decode run, (a)-(c) as above;
      (b) bounds the whole run.

    A policy with ``closed_batches`` runs a launched batch to completion: arrivals and
    the queue never cut its run. Memory bounds a run as the policy's ``memory`` says.

    The first ``k`` iterations, ``k`` bounded by those events, are one step here: their
    durations (mean KV grows by one token per iteration, the prefill's KV by a chunk),
    completion times and TBT samples are exactly Vidur's. Memory freed by completions
    inside the run is not counted before the run ends (a conservative bound).
    Pipeline parallelism is not fused.
    """
    policy = policies.get(static.policy)
    j_max = static.fuse_iters
    r_total = static.num_requests
    # admitted this iteration: their slot already joined the new micro-batch
    admitted = (row.mb == adm.m_new) & (row.req >= 0) & ~adm.slot_in
    members = adm.slot_in | admitted
    ntok1 = jnp.where(adm.slot_in, plan.slot_ntok, jnp.where(admitted, row.ntok, 0))
    decoding = row.processed > row.prefill  # prefill done (Vidur's +1 token)
    decodes = members & decoding
    prefills = members & ~decoding
    zeros = jnp.zeros(row.req.shape, jnp.int32)
    if j_max <= 1:
        zero = jnp.int32(0)
        no = jnp.zeros(row.req.shape, bool)
        return _FusedRun(
            num_iters=jnp.int32(1), seconds=jnp.float64(0.0), iter_s=jnp.zeros(1),
            iter_decodes=jnp.zeros(1, jnp.int32), members=members, decodes=decodes,
            decoding_at_end=no, first_token=no, first_token_at=t, early=no, done_at=jnp.zeros(row.req.shape),
            early_tokens=zeros, ntok=ntok1, ntok1=ntok1, alloc=zeros, last_done=t, first_end=t,
            tokens=zero, prefill_tokens=zero, size_sum=zero, flops=jnp.float64(0.0), overflow=jnp.array(False),
        )
    waiting = (state.q_tail[r] != state.q_head[r]) | (row.restarted & (row.req >= 0)).any()
    # a closed batch (Alpa-style batching) runs to completion whatever arrives meanwhile
    closed = policy.closed_batches
    eligible = disagg.fusable(static, params, (
        adm.launched
        & ~adm.victim.any()
        & ~adm.slot_overflow
        & (params.num_stages == 1)
        & (adm.slot_in == schedulable).all()
    ))
    n_pre = prefills.sum()
    decode_mode = (n_pre == 0) & ~adm.admit.any() & (~waiting | closed)
    safe = jnp.clip(row.req, 0, r_total - 1)
    seqs = jnp.where(row.req >= 0, params.num_seqs[safe], 1)
    total = params.num_prefill[safe] + params.num_decode[safe]
    remaining = jnp.where(decodes, total - row.processed, 0)  # (S,) iterations each decode has left
    iters = jnp.arange(1, j_max + 1)
    iter_decodes, n, sum_kv = _run_decode_sums(static, decodes, remaining, seqs, row.processed, j_max)
    budget = policy.run_prefill_budget(params, iter_decodes)  # (J,) prefill tokens per iteration
    if budget is not None:
        rem0 = jnp.where(prefills, row.prefill - row.processed, 0).sum()
        done_before = scan.cumsum(budget) - budget
        chunks = jnp.clip(rem0 - done_before, 0, budget)
        prefill_mode = (n_pre == 1) & (adm.admit.sum() <= 1) & (chunks[0] == jnp.where(prefills, ntok1, 0).sum())
        chunks = jnp.where(prefill_mode, chunks, 0)
        pre_kv = jnp.where(prefills, row.processed, 0).sum() + done_before
        full = chunks == budget
        # The prefill's last chunk ends iteration j_last (its first token, Vidur's +1);
        # from iteration j_last + 1 it decodes with the batch, like a decode of KV
        # prefill + j - j_last in iteration j, for its num_decode - 1 iterations.
        j_last = (chunks > 0).sum().astype(jnp.int32)
        completes = prefill_mode & (chunks.sum() == rem0)  # within the J iterations
        new_decode = prefills & completes  # (S,) at most one slot
        p_seqs = jnp.where(new_decode, seqs, 0).sum()
        p_prefill = jnp.where(new_decode, row.prefill, 0).sum()
        p_iters = jnp.where(new_decode, total - row.prefill - 1, 0).sum()
        p_in = completes & (iters > j_last) & (iters <= j_last + p_iters)  # (J,)
        iter_decodes = iter_decodes + p_in
        n = n + p_in * p_seqs
        sum_kv = sum_kv + p_in * (p_prefill + iters - j_last) * p_seqs
        # as a decode of the whole run: in iterations 1..run_remaining from KV run_p0
        run_decodes = decodes | new_decode
        run_remaining = jnp.where(new_decode, j_last + p_iters, remaining)
        run_p0 = jnp.where(new_decode, row.prefill + 1 - j_last, row.processed)
    else:
        prefill_mode = completes = jnp.array(False)
        j_last = jnp.int32(j_max)
        chunks = pre_kv = jnp.zeros(j_max, jnp.int32)
        full = jnp.zeros(j_max, bool)
        new_decode = jnp.zeros(row.req.shape, bool)
        run_decodes, run_remaining, run_p0 = decodes, remaining, row.processed
    ok = eligible & (decode_mode | prefill_mode)
    pre_seqs = jnp.where(prefills, seqs, 0).sum()
    iter_s, iter_flops, iter_over = timing.run_times(
        tables, params, n, sum_kv, chunks, pre_kv, n + jnp.where(chunks > 0, pre_seqs, 0))
    iter_s = iter_s.astype(jnp.float64)
    ends = t + scan.cumsum(iter_s)  # (J,) end of iteration j+1
    starts = jnp.concatenate([jnp.reshape(t, (1,)), ends[:-1]])
    t_arr = _next_arrival_at(static, params, state, r)
    # Memory bounds the run: the largest j whose block growth still fits (vLLM grows a
    # request to ceil(processed / block_size)), found by bisection over j (monotone in j),
    # O(S log J) instead of materializing a (J, S) table of block counts.
    shared = params.num_prefill[safe] // params.block_size
    free = row.free_blocks - jnp.where(adm.admit, plan.cand_blocks, 0).sum()
    if prefix_engine.on(static):
        free = free + prefix_engine.evictable(static, row)

    def blocks_after(j):  # (S,) blocks each decode holds after iteration j (or its last)
        return seq_blocks(run_p0 + jnp.minimum(j, run_remaining) - 1, seqs, shared, params.block_size)

    def largest_ok(pred) -> jax.Array:
        lo, hi = jnp.int32(1), jnp.int32(j_max)  # j = 1 was checked by the policy itself
        for _ in range(max(int(j_max - 1).bit_length(), 1)):
            mid = (lo + hi + 1) // 2
            good = pred(mid)
            lo, hi = jnp.where(good, mid, lo), jnp.where(good, hi, mid - 1)
        return lo

    if policy.memory.bounds_runs:
        mem_k = largest_ok(lambda j: policy.memory.run_fits(blocks_after(j), row.blocks, run_decodes, free))
    else:  # the blocks for the whole length were reserved at admission
        mem_k = jnp.int32(j_max)
    allocates = policy.memory.grows
    no_change = (starts < t_arr) | closed
    decoding = (iter_decodes > 0) & no_change
    after_prefill = completes & (iters > j_last)  # the prefill decodes: a decode run goes on
    same_batch = jnp.where(prefill_mode & ~after_prefill, (chunks > 0) & (full | (~waiting & no_change)),
                           decoding & (~waiting | ~prefill_mode))
    run_ok = same_batch & ((iters <= mem_k) | (iters == 1))
    if sessions.on(static):  # a completion that sends a session's next turn ends the run
        run_ok = run_ok & (iters <= sessions.run_limit(static, params, row.req, run_decodes, run_remaining, j_max))
    k = jnp.where(ok, jnp.maximum(scan.prefix_true(run_ok).sum(), 1), 1).astype(jnp.int32)
    in_run = iters <= k
    fused = k > 1
    early = run_decodes & fused & (run_remaining < k)
    prefill_run = jnp.where(in_run, chunks, 0).sum()
    # the prefill that got its first token inside the run and decodes in iteration k
    first_token = new_decode & fused & (k > j_last)
    prefill_ntok = prefill_run + jnp.where(first_token, 1 + k - j_last, 0)  # + its +1 and decode tokens
    return _FusedRun(
        num_iters=k,
        seconds=ends[k - 1] - t,
        iter_s=iter_s,
        iter_decodes=iter_decodes,
        members=members,
        decodes=decodes,
        decoding_at_end=fused & (decodes | first_token),
        first_token=first_token,
        first_token_at=ends[jnp.clip(j_last - 1, 0, j_max - 1)],
        early=early,
        done_at=ends[jnp.clip(run_remaining - 1, 0, j_max - 1)],
        early_tokens=jnp.where(early, total - row.processed, 0).astype(jnp.int32),
        ntok=jnp.where(fused, jnp.where(early, 0, jnp.where(decodes, k, jnp.where(prefills, prefill_ntok, 0))), ntok1),
        ntok1=ntok1,
        alloc=jnp.where(run_decodes & allocates, jnp.maximum(blocks_after(k) - row.blocks, 0), 0).astype(jnp.int32),
        last_done=jnp.where(fused, ends[jnp.maximum(k - 2, 0)], t),
        first_end=ends[0],
        tokens=jnp.where(in_run, n + chunks, 0).sum().astype(jnp.int32),
        prefill_tokens=prefill_run.astype(jnp.int32),
        size_sum=jnp.where(in_run, iter_decodes + (chunks > 0), 0).sum().astype(jnp.int32),
        flops=jnp.where(in_run, iter_flops, 0.0).sum().astype(jnp.float64),
        overflow=(in_run & iter_over).any(),
    )


def _record_fused_tbt(static: SimStatic, state: SimState, row: _Row, run: _FusedRun) -> SimState:
    """TBT samples of iterations 1..k-1 of a fused run (the k-th is recorded at its end).

    Only the run's decodes sample TBT. Iteration 1's gap is per request (from its
    previous iteration's end); iterations 2..k-1 give every decode still in the batch
    the same gap, the iteration's duration. A decode that completes before iteration k
    thus has all its samples recorded here (and none at the end of the step).
    """
    k = run.num_iters
    h = static.num_tbt_bins
    fused = run.decodes & (k > 1)
    gap1 = jnp.where(fused, run.first_end - row.last_done, 0.0)
    bins1 = jnp.where(fused, tbt_bin_index(gap1, h), h)
    hist = _put(static, state.tbt_hist, bins1, 1, "add")
    j = jnp.arange(run.iter_s.shape[0])
    mid = (j >= 1) & (j < k - 1)
    n = jnp.where(mid, run.iter_decodes, 0)  # (J,) samples of iteration j+1
    bins_mid = jnp.where(mid, tbt_bin_index(run.iter_s, h), h)
    hist = _put(static, hist, bins_mid, n, "add")
    return state.replace(
        tbt_hist=hist,
        tbt_sum=state.tbt_sum + gap1.sum() + (n * run.iter_s).sum(),
        tbt_bin_sum=_put(static, _put(static, state.tbt_bin_sum, bins1, gap1, "add"), bins_mid, n * run.iter_s, "add"),
        tbt_count=state.tbt_count + fused.sum() + n.sum(),
    )


class _Admission(NamedTuple):
    """What applying the policy's plan decided (scalars and (S,)/(W,) masks)."""

    slot_in: jax.Array  # (S,) bool running requests in the batch
    victim: jax.Array  # (S,) bool preempted
    admit: jax.Array  # (W,) bool candidates admitted
    launched: jax.Array  # () bool a batch starts
    m_new: jax.Array  # () i32 its micro-batch slot
    slot_overflow: jax.Array  # () bool an admitted request found no free slot
    window_full: jax.Array  # () bool the whole window was admitted and more waited


def _replica_view(static: SimStatic, params: SimParams, state: SimState, row: _Row, t: jax.Array) -> ReplicaView:
    """The policy's view of the replica's slots at time ``t``."""
    r_total = static.num_requests
    safe_req = jnp.clip(row.req, 0, r_total - 1)
    view = ReplicaView(
        req=row.req,
        prefill=row.prefill,
        processed=row.processed,
        total=jnp.where(row.req >= 0, params.num_prefill[safe_req] + params.num_decode[safe_req], 0),
        blocks=row.blocks,
        restarted=row.restarted,
        in_flight=disagg.in_flight(static, row, row.mb >= 0),
        group=row.group,
        free_blocks=row.free_blocks,
        waiting_iters=row.waiting_iters,
        now=t,
        seqs=jnp.where(row.req >= 0, params.num_seqs[safe_req], 1),
        shared=params.num_prefill[safe_req] // params.block_size,
        prompt=params.num_prefill[safe_req],
        bucket=_s3_reserve_bucket(params, state, safe_req),
    )
    if prefix_engine.on(static):
        view = view._replace(**prefix_engine.view_fields(static, params, row))
    if speculative.on(static):  # decodes hold their KV in tokens, not verify steps
        view = view._replace(**speculative.view_fields(static, params, row))
    return view


def _apply_plan(
    static: SimStatic,
    state: SimState,
    row: _Row,
    cands: Candidates,
    plan,
    can: jax.Array,
    r: jax.Array,
    t: jax.Array,
    params: SimParams | None = None,
) -> tuple[tuple[SimState, _Row], _Admission]:
    """Preempt the plan's victims and admit its candidates into slots (no-op unless ``can``)."""
    policy = policies.get(static.policy)
    s, w, r_total = static.num_slots, static.window, static.num_requests
    slot_in = plan.slot_in & can
    victim = plan.slot_victim & can
    admit = plan.cand_admit & can
    launched = slot_in.any() | admit.any()

    # 1. preemption victims restart by recomputation (Vidur: prefill := processed)
    req_w = jnp.where(victim, row.req, r_total)
    state = state.replace(
        num_restarts=_put(static, state.num_restarts, req_w, 1, "add"),
        restart_tokens=state.restart_tokens + jnp.where(victim, row.processed, 0).sum(),
    )
    freed = jnp.where(victim, row.blocks, 0).sum()
    row = row._replace(
        restarted=row.restarted | victim,
        prefill=jnp.where(victim, row.processed, row.prefill),
        processed=jnp.where(victim, 0, row.processed),
        blocks=jnp.where(victim, 0, row.blocks),
        free_blocks=row.free_blocks + freed,
    )
    if prefix_engine.on(static):  # the victims' cached prompt blocks stay cached
        row = prefix_engine.release(static, params, row, row.req, victim, t)

    # 2. admitted candidates take their restarted slot or the next free slots
    m_new = jnp.argmin(jnp.isfinite(row.inflight_end)).astype(jnp.int32)  # first empty micro-batch
    from_queue = admit & (cands.src_slot < 0)
    # occupied slots are a prefix: new requests append after it (arrival order kept)
    queue_rank = scan.cumsum(from_queue) - 1
    target = jnp.where(from_queue, (row.req >= 0).sum() + queue_rank, cands.src_slot)
    overflow = (from_queue & (target >= s)).any()
    # the whole window was admitted and more requests were waiting: W was too small
    n_waiting = jnp.where((row.restarted & (row.req >= 0)).any(), (row.restarted & (row.req >= 0)).sum(),
                          state.q_tail[r] - state.q_head[r])
    window_full = admit.all() & (n_waiting > w) & (w < s)
    target = jnp.where(admit & (target < s), target, s)  # s -> dropped
    group_id = jnp.min(jnp.where(admit, cands.req, jnp.iinfo(jnp.int32).max))
    row = row._replace(
        req=_put(static, row.req, target, cands.req),
        prefill=_put(static, row.prefill, target, cands.prefill),
        processed=_put(static, row.processed, target, 0 if cands.cached is None else cands.cached),
        blocks=_put(static, row.blocks, target, plan.cand_blocks),
        restarted=_put(static, row.restarted, target, False),
        ntok=_put(static, row.ntok, target, plan.cand_ntok),
        mb=_put(static, row.mb, target, m_new),
        group=_put(static, row.group, target, group_id),
    )
    if prefix_engine.on(static):
        state, row = prefix_engine.admit(static, params, state, row, cands, admit, target, t)
    # the admitted leave the queue. A policy that skips queued candidates (S3's first fit)
    # has them close up behind the new head, in arrival order (for a prefix admission
    # each skipped entry is rewritten in place, a no-op)
    n_from_queue = from_queue.sum().astype(jnp.int32)
    skipped = cands.valid & (cands.src_slot < 0) & ~from_queue
    pos = jnp.where(skipped & can, state.q_head[r] + n_from_queue + scan.cumsum(skipped) - 1, r_total)
    state = state.replace(
        scheduled_at=_set_first(static, state.scheduled_at, cands.req, admit, t),
        queue=_put(static, state.queue, (r, pos), cands.req) if policy.skips_queue else state.queue,
        q_head=_put(static, state.q_head, jnp.where(can, r, static.max_replicas), n_from_queue, "add"),
    )
    return (state, row), _Admission(slot_in, victim, admit, launched, m_new, overflow, window_full)


def _advance_running(
    static: SimStatic, state: SimState, row: _Row, plan, adm: _Admission, run: _FusedRun, can: jax.Array
) -> tuple[SimState, _Row]:
    """Put the running requests of the batch (or of its fused run) in flight.

    Their blocks were counted before admission. For a fused run the first k-1 TBT
    samples are recorded now, and decodes that complete before its last iteration get
    their completion time now: they hold their slot with all tokens processed and
    nothing left to do (``ntok`` 0) until the step ends, where their slot is freed."""
    k = run.num_iters
    fused = k > 1
    slot_in = adm.slot_in
    alloc = jnp.where(slot_in, jnp.where(fused, run.alloc, plan.slot_alloc), 0)
    state = _record_fused_tbt(static, state, row, run)
    state = state.replace(
        completed_at=_set_first(static, state.completed_at, row.req, run.early, run.done_at),
        first_token_at=_set_first(static, state.first_token_at, row.req, run.first_token, run.first_token_at),
    )
    row = row._replace(
        processed=row.processed + run.early_tokens,
        blocks=row.blocks + alloc,
        mb=jnp.where(slot_in, adm.m_new, row.mb),
        ntok=jnp.where(fused & run.members, run.ntok, jnp.where(slot_in, plan.slot_ntok, row.ntok)),
        free_blocks=row.free_blocks - alloc.sum() - jnp.where(adm.admit, plan.cand_blocks, 0).sum(),
        waiting_iters=jnp.where(can, plan.waiting_iters + (k - 1), row.waiting_iters),
        last_done=jnp.where(run.decoding_at_end, run.last_done, row.last_done),
    )
    return state, row


class _BatchShape(NamedTuple):
    """The launched batch's slots, as its execution time sees them."""

    in_batch: jax.Array  # (S,) bool
    seqs: jax.Array  # (S,) i32 sequences per request (beam width)
    is_prefill: jax.Array  # (S,) bool


def _batch_shape(static: SimStatic, params: SimParams, row: _Row, adm: _Admission) -> _BatchShape:
    r_total = static.num_requests
    return _BatchShape(
        in_batch=(row.mb == adm.m_new) & (row.req >= 0) & adm.launched,
        seqs=jnp.where(row.req >= 0, params.num_seqs[jnp.clip(row.req, 0, r_total - 1)], 1),  # slots moved
        is_prefill=row.processed < row.prefill,
    )


def _launch(
    static: SimStatic,
    params: SimParams,
    state: SimState,
    row: _Row,
    plan,
    adm: _Admission,
    run: _FusedRun,
    shape: _BatchShape,
    times,
    can: jax.Array,
    r: jax.Array,
    t: jax.Array,
) -> tuple[SimState, _Row]:
    """Send the batch through the pipeline stages; count it and its errors.

    ``times``: ``(stage_s, last_s, flops, tok_overflow)`` of :func:`timing.batch_stage_time`.
    """
    stage_s, last_s, flops, tok_overflow = times
    k = run.num_iters
    fused = k > 1
    launched, m_new = adm.launched, adm.m_new
    last_s = jnp.where(fused, run.seconds, last_s)
    tok_overflow |= fused & run.overflow
    stage_free = row.stage_free_at
    cur = t
    for stage in range(static.max_stages):
        active = launched & (stage < params.num_stages)
        dur = jnp.where(stage < params.num_stages - 1, stage_s, last_s)
        end = jnp.maximum(cur, stage_free[stage]) + dur
        stage_free = _put(static, stage_free, stage, jnp.where(active, end, stage_free[stage]))
        cur = jnp.where(active, end, cur)
    row = row._replace(
        stage_free_at=stage_free,
        inflight_end=_put(static, row.inflight_end, jnp.where(launched, m_new, static.max_stages), cur),
    )

    in_batch, seqs, is_prefill = shape
    n_in = in_batch.sum()
    err = (
        jnp.where(adm.slot_overflow & can, ERR_SLOTS, 0)
        | jnp.where(adm.window_full, ERR_WINDOW, 0)
        | jnp.where(tok_overflow & launched, ERR_TOKENS, 0)
        | jnp.where(plan.oom & can, ERR_OOM, 0)
    )
    lf = launched.astype(jnp.float64) * k
    # a fused run's totals come from the run (its early completions have no tokens left)
    prefill_tokens = jnp.where(fused, run.prefill_tokens, jnp.where(in_batch & is_prefill, row.ntok, 0).sum())
    tokens = jnp.where(fused, run.tokens, jnp.where(in_batch, jnp.where(is_prefill, row.ntok, row.ntok * seqs), 0).sum())
    state = state.replace(
        num_batches=state.num_batches + launched * k,
        batch_size_sum=state.batch_size_sum + launched * jnp.where(fused, run.size_sum, n_in),
        batch_size_max=jnp.maximum(state.batch_size_max, jnp.where(launched, n_in, 0).astype(jnp.int32)),
        batch_tokens_sum=state.batch_tokens_sum + launched * tokens,
        kv_util_sum=state.kv_util_sum + lf * (params.num_blocks - row.free_blocks) / params.num_blocks,
        busy_s=state.busy_s + launched * last_s,
        flops_sum=state.flops_sum + launched * jnp.where(fused, run.flops, flops),
        error=state.error | err,
    )
    state = disagg.count_batch(static, state, r, launched, last_s, n_in,
                               (params.num_blocks - row.free_blocks) / params.num_blocks,
                               jnp.where(fused, run.flops, flops))
    state = _log_batch(static, state, launched, r, t, cur, n_in, prefill_tokens, tokens - prefill_tokens, k)
    return state, row


def _form_batch(
    static: SimStatic,
    tables: TimingTables,
    params: SimParams,
    state: SimState,
    row: _Row,
    r: jax.Array,
    t: jax.Array,
    apply: jax.Array,
    gate: jax.Array | None = None,
) -> tuple[SimState, _Row, jax.Array, jax.Array]:
    """Let the policy form the replica's next batch at time ``t`` and launch it.

    A pipeline of stages, each one :func:`_region`: the policy's view and candidates,
    the policy, applying its plan (preemption, admission), the fused run, the
    running requests, the execution time, the launch.

    Returns the updated state and row, whether a batch was launched, and the time the
    policy asked to be woken at (``inf`` = none; static batching's timeout).
    """
    can = apply & (jnp.isfinite(row.inflight_end).sum() < params.num_stages)
    if disagg.on(static):  # a decode replica takes in transferred requests first
        (state, row), _ = _region(gate, lambda c: (disagg.admit_decodes(static, params, *c, r, can), ()),
                                  (state, row))

    def plan_stage(c, st, rw):
        view = _replica_view(static, params, st, rw, t)
        return c, (view, _candidates(static, params, st, rw, r))

    def policy_stage(c, view, cands):
        plan = policies.get(static.policy).plan(view, cands, params)
        # x64 arithmetic promotes counts to int64; the state keeps int32
        return c, jax.tree.map(lambda x: x.astype(jnp.int32) if x.dtype == jnp.int64 else x, plan)

    _, (view, cands) = _region(gate, plan_stage, (), state, row)
    _, plan = _region(gate, policy_stage, (), view, cands)
    (state, row), adm = _region(gate, lambda c: _apply_plan(static, *c, cands, plan, can, r, t, params), (state, row))

    # a run of iterations of the same batch is fused into this one step
    _, run = _region(gate, lambda c, st, rw: (c, _fused_run(
        static, tables, params, st, rw, r, t, plan, adm, view.schedulable)), (), state, row)
    (state, row), _ = _region(
        gate, lambda c: (_advance_running(static, *c, plan, adm, run, can), ()), (state, row))
    if prefix_engine.on(static):  # evict LRU cached blocks the allocations need
        (state, row), _ = _region(gate, lambda c: (prefix_engine.settle(static, *c), ()), (state, row))

    def time_stage(c, rw):
        shape = _batch_shape(static, params, rw, adm)
        ntok = jnp.where(run.num_iters > 1, run.ntok1, rw.ntok)  # iteration 1's tokens
        if speculative.on(static):  # a verify step of k + 1 tokens per decode, plus the draft's steps
            times = speculative.batch_stage_time(tables, params, rw, shape.in_batch, ntok, shape.is_prefill,
                                                 shape.seqs)
        else:
            times = timing.batch_stage_time(tables, params, shape.in_batch, ntok, rw.processed, shape.is_prefill,
                                            shape.seqs)
        return c, (shape, times)

    _, (shape, times) = _region(gate, time_stage, (), row)
    (state, row), _ = _region(
        gate, lambda c: (_launch(static, params, *c, plan, adm, run, shape, times, can, r, t), ()), (state, row))
    return state, row, adm.launched, jnp.where(can, plan.wake_at, _INF)


def _log_batch(
    static: SimStatic,
    state: SimState,
    launched: jax.Array,
    r: jax.Array,
    t: jax.Array,
    end: jax.Array,
    size: jax.Array,
    prefill_tokens: jax.Array,
    decode_tokens: jax.Array,
    k: jax.Array,
) -> SimState:
    """Append the launched batch to the batch log (only when ``trace_capacity > 0``).

    ``size``: requests in its first iteration; tokens over all ``k`` iterations, decode
    tokens counting every sequence (n per request per iteration)."""
    if static.trace_capacity <= 0:
        return state
    i = jnp.where(launched, state.log_count, static.trace_capacity)  # out of bounds -> dropped
    return state.replace(
        log_count=state.log_count + launched.astype(jnp.int32),
        log_start=_put(static, state.log_start, i, t),
        log_end=_put(static, state.log_end, i, end),
        log_replica=_put(static, state.log_replica, i, r),
        log_size=_put(static, state.log_size, i, size.astype(jnp.int32)),
        log_prefill_tokens=_put(static, state.log_prefill_tokens, i, prefill_tokens.astype(jnp.int32)),
        log_decode_tokens=_put(static, state.log_decode_tokens, i, decode_tokens.astype(jnp.int32)),
        log_iters=_put(static, state.log_iters, i, k.astype(jnp.int32)),
    )


def _replica_update(
    static: SimStatic,
    tables: TimingTables,
    params: SimParams,
    state: SimState,
    r: jax.Array,
    t: jax.Array,
    apply: jax.Array,
    gate: jax.Array | None = None,
) -> SimState:
    """Process replica ``r``'s event at time ``t`` (no-op unless ``apply``)."""
    params = disagg.pool_params(static, params, r)
    row = _gather_row(state, r)
    (state, row), _ = _region(gate, lambda c: (_end_batch(static, params, *c, t, apply), ()), (state, row))
    if disagg.on(static):  # KV transfers: land the due ones, start those of prefills just completed
        def transfers(c):
            st, rw = disagg.transfers(static, params, *c, r, t, apply)
            return (st, _compact(static, rw)), ()

        (state, row), _ = _region(gate, transfers, (state, row))
    state, row, launched, wake_at = _form_batch(static, tables, params, state, row, r, t, apply, gate)
    n_inflight = jnp.isfinite(row.inflight_end).sum()
    # Vidur forms batches until all pipeline slots are busy: try again at the same time
    again = launched & (n_inflight < params.num_stages)
    nxt = jnp.where(again, t, jnp.minimum(jnp.min(row.inflight_end), wake_at))
    nxt = disagg.next_event(static, row, nxt)
    if _prerouted(static):
        # an arrival wakes the replica when a pipeline slot is free (Vidur's arrival event)
        wake_arrival = jnp.where(n_inflight < params.num_stages, _next_arrival_at(static, params, state, r), _INF)
        nxt = jnp.minimum(nxt, wake_arrival)
    r_w = jnp.where(apply, r, static.max_replicas)
    state, _ = _region(gate, lambda st, rw: (_scatter_row(static, st, r_w, rw), ()), state, row)
    return state.replace(next_event=_put(static, state.next_event, r_w, nxt))


def step(
    static: SimStatic, tables: TimingTables, params: SimParams, state: SimState, gate: jax.Array | None = None
) -> SimState:
    """Process the earliest event of one config (a no-op once the config is done).

    ``gate``: an unbatched always-true () bool from the event loop that groups the step's
    kernels into XLA conditionals (:func:`_region`); ``None`` runs them inline. The result
    is the same either way.
    """
    active = ~is_done(params, state)
    r = jnp.argmin(state.next_event).astype(jnp.int32)
    t_rep = state.next_event[r]
    if _prerouted(static):
        # requests routed up front: the replica's arrived requests join its queue now
        is_arrival = jnp.array(False)
        t_arr = _INF
        _, tail = _region(gate, lambda c, st: (c, _arrived_count(static, st, r, t_rep)), (), state)
        state = state.replace(q_tail=_put(static, state.q_tail, jnp.where(active, r, static.max_replicas), tail, "max"))
    else:
        t_arr = sessions.next_arrival(static, params, state).at
        is_arrival = active & (t_arr <= t_rep) & jnp.isfinite(t_arr)
    is_replica = active & ~is_arrival & jnp.isfinite(t_rep)
    stalled = active & ~is_arrival & ~is_replica

    if not _prerouted(static):
        state, _ = _region(gate, lambda st: (_arrival_update(static, params, st, is_arrival), ()), state)
    state = _replica_update(static, tables, params, state, r, t_rep, is_replica, gate)
    t = jnp.where(is_arrival, t_arr, jnp.where(is_replica, t_rep, state.clock))
    steps = state.step + active
    err = jnp.where(stalled, ERR_STALLED, 0) | jnp.where(active & (steps >= params.max_steps), ERR_STEPS, 0)
    return state.replace(clock=t, step=steps, error=state.error | err)


def simulate_one(static: SimStatic, tables: TimingTables, params: SimParams) -> SimState:
    """Run one config to completion (``lax.while_loop`` over events)."""
    state = init_state(static, params)
    return jax.lax.while_loop(
        lambda st: ~is_done(params, st),
        lambda st: step(static, tables, params, st),
        state,
    )


def simulate_many(static: SimStatic, tables: TimingTables, params: SimParams) -> SimState:
    """Run a stack of configs to completion in one loop over their events (unjitted).

    The loop steps every config together (``vmap`` of :func:`step`) while any config is
    unfinished; a finished config's step is a no-op by construction (every update is a
    masked scatter). This is deliberately *not* ``vmap(simulate_one)``: vmapping a
    ``while_loop`` with a per-config predicate makes XLA ``select`` the whole carried
    state every iteration, O(requests) per step, which dominated large runs.
    """
    state = jax.vmap(init_state, in_axes=(None, 0))(static, params)
    step_all = jax.vmap(step, in_axes=(None, None, 0, 0, None))
    done_all = jax.vmap(is_done)
    _, state = jax.lax.while_loop(
        lambda c: ~done_all(params, c[1]).all(),
        lambda c: (c[0] + 1, step_all(static, tables, params, c[1], c[0] >= 0)),
        (jnp.int32(0), state),
    )
    return state


def simulate_until(
    static: SimStatic,
    tables: TimingTables,
    params: SimParams,
    state: SimState,
    stop_at: jax.Array,
    max_iters: jax.Array,
    axis_name: str | None = None,
) -> SimState:
    """Advance stacked configs until all are done, at least ``stop_at`` of them are, or
    ``max_iters`` loop iterations ran.

    The resumable form of :func:`simulate_many` behind the host's lane pool: the host
    stops the loop once some lanes have finished, reads them out, puts pending configs in
    their place (:func:`reset_lanes`) and resumes, so lanes do not idle behind one long
    config.

    Args:
        static, tables: as :func:`simulate_many`.
        params: :class:`SimParams` with a leading lane axis L.
        state: the lanes' current :class:`SimState` (leading axis L).
        stop_at: () i32 — return once this many lanes are done (done lanes included).
        max_iters: () i32 — return after this many iterations (steps of every lane), so
            the host regains control (progress, Ctrl-C); resuming gives the same states.
        axis_name: inside ``shard_map``, the mapped axis: the done count (and so the
            stop) is over the lanes of all devices, which therefore stop together.

    Returns:
        The advanced state (leading axis L).
    """
    step_all = jax.vmap(step, in_axes=(None, None, 0, 0, None))
    done_all = jax.vmap(is_done)

    def running(c):
        st = c[1]
        done = done_all(params, st)
        counts = jnp.stack([done.sum(dtype=jnp.int32), jnp.int32(done.size)])
        if axis_name is not None:
            counts = jax.lax.psum(counts, axis_name)
        return (counts[0] < counts[1]) & (counts[0] < stop_at) & (c[0] < max_iters)

    _, state = jax.lax.while_loop(
        running, lambda c: (c[0] + 1, step_all(static, tables, params, c[1], c[0] >= 0)), (jnp.int32(0), state)
    )
    return state


def reset_lanes(static: SimStatic, params: SimParams, state: SimState, fresh: jax.Array) -> SimState:
    """``state`` with the lanes where ``fresh`` ((L,) bool) set to the initial state of
    their (new) ``params``; other lanes unchanged."""
    new = jax.vmap(init_state, in_axes=(None, 0))(static, params)

    def pick(a, b):
        return jnp.where(fresh.reshape(fresh.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, state)


@functools.partial(jax.jit, static_argnums=0)
def simulate_single(static: SimStatic, tables: TimingTables, params: SimParams) -> SimState:
    """Run one config unbatched and scatter-free (its ``params`` have a leading axis of 1).

    Same results as :func:`simulate_batch` on one config (up to float rounding of the
    generated code), but the event loop holds no scatter, so XLA:CPU compiles it into
    one kernel instead of dispatching ~400 small ones per event (see
    :mod:`vidur_jax.sim.indexed`).

    Returns:
        The final :class:`SimState`, leading axis 1.
    """
    one = jax.tree.map(lambda x: x[0], params)
    state = simulate_one(dataclasses.replace(static, scatter_free=True), tables, one)
    return jax.tree.map(lambda x: x[None], state)


@functools.partial(jax.jit, static_argnums=0)
def simulate_batch(static: SimStatic, tables: TimingTables, params: SimParams) -> SimState:
    """Run a stack of configs (leading axis of every ``params`` leaf) in one call.

    Args:
        static: shapes and code path shared by all configs.
        tables: timing tables shared by all configs (not vmapped).
        params: :class:`SimParams` with a leading config axis C.

    Returns:
        The final :class:`SimState` of every config, leading axis C.
    """
    return simulate_many(static, tables, params)


def make_simulator(static: SimStatic, tables: TimingTables) -> Simulator:
    """``Simulator(init, step)`` for one config, for step-by-step use and tests."""
    return Simulator(
        init=lambda params: init_state(static, params),
        step=lambda params, state: step(static, tables, params, state),
    )
