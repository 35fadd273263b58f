"""The engine's hooks for disaggregated prefill/decode pools (Splitwise / DistServe style).

A pooled config (``SimParams.prefill_replicas`` P > 0) splits its ``num_replicas``
replicas into a **prefill pool** (replicas ``0..P-1``) and a **decode pool** (replicas
``P..N-1``), same model and scheduler; each pool may have its own GPU type and TP
degree and its own pipeline stages (:mod:`vidur_jax.sim.disagg_pools`: its replicas
read their pool's timing-table row, KV blocks, stages and FLOPs, :func:`pool_params`). A request's life:

1. it arrives and is routed (the config's global scheduler) to a prefill replica, whose
   policy prefills it as usual; its prefill's last iteration gives its first token
   (``first_token_at``: TTFT ends in the prefill pool);
2. at that moment the least loaded decode replica is chosen (fewest running + waiting +
   incoming requests; ties to the lowest index) and its KV transfer starts: it takes
   ``latency + bytes / bandwidth`` seconds on the slower side, ``bytes`` the prompt's
   KV on one GPU of the sending or of the receiving replica (every TP worker moves its
   shard in parallel, :func:`transfer_seconds`), over NVLink when both replicas sit in
   one node, else over the inter-node link. The prefill slot keeps its
   KV blocks until the transfer completes (it is out of every batch meanwhile);
3. when the transfer completes the prefill slot frees its blocks and the request joins
   the decode replica's waiting queue (``kv_ready_at``); the decode replica admits
   waiting requests in order at its next batch boundary while a slot, the batch cap
   and its free blocks (above the watermark) allow, each holding its prompt's blocks,
   already decoding (:func:`admit_decodes`); its policy then decodes them, growing and
   preempting as usual (a preempted request is recomputed on the decode replica);
4. the decode pool's first iteration gives its second token: that TBT gap starts at
   the first token, so it includes the transfer and the wait for a decode slot.

A request with one output token completes in the prefill pool (no transfer).

The engine calls these functions at a handful of points; each is a no-op that traces
nothing when ``SimStatic.disagg`` is False, so colocated configs run today's program.
Configs with and without pools may share one vmapped call (P = 0 lanes are colocated).
Pooled configs never fuse iterations (:func:`fusable`): a fused decode run cannot know
when a transfer will land.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vidur_jax import catalog
from vidur_jax.errors import ConfigError, require
from vidur_jax.sim import disagg_pools, scan
from vidur_jax.sim.indexed import update
from vidur_jax.sim.types import ERR_SLOTS, ERR_WINDOW, SimParams, SimState, SimStatic

if TYPE_CHECKING:
    from vidur_jax.sim.engine import _Row

_BIG = jnp.iinfo(jnp.int32).max


def on(static: SimStatic) -> bool:
    """Pools are compiled in (some config of the call is pooled)."""
    return static.disagg


def pooled(params: SimParams) -> jax.Array:
    """() bool: this config splits its replicas into a prefill and a decode pool."""
    return params.prefill_replicas > 0


def is_decode_replica(params: SimParams, r: jax.Array) -> jax.Array:
    """() bool: replica ``r`` is in the decode pool (False for colocated configs)."""
    return pooled(params) & (r >= params.prefill_replicas)


def entry_replicas(static: SimStatic, params: SimParams) -> jax.Array:
    """() i32: replicas ``0..n-1`` that arrivals are routed to (the prefill pool, or all)."""
    if not on(static):
        return params.num_replicas
    return jnp.where(pooled(params), params.prefill_replicas, params.num_replicas)


def queue_valid(static: SimStatic, params: SimParams, r: jax.Array, valid: jax.Array) -> jax.Array:
    """(W,) bool the policy's queue candidates of replica ``r``: none on a decode replica
    (its queue holds transferred requests, admitted by :func:`admit_decodes`)."""
    if not on(static):
        return valid
    return valid & ~is_decode_replica(params, r)


def fusable(static: SimStatic, params: SimParams, eligible: jax.Array) -> jax.Array:
    """() bool a fused run is allowed: never for a pooled config (a decode run cannot
    know when a transfer will land)."""
    if not on(static):
        return eligible
    return eligible & ~pooled(params)


def transferring(row: _Row) -> jax.Array:
    """(S,) bool prefill slots whose KV transfer is under way (out of every batch)."""
    return jnp.isfinite(row.xfer_end)


def in_flight(static: SimStatic, row: _Row, in_flight: jax.Array) -> jax.Array:
    """(S,) bool the policy view's ``in_flight``: transferring slots hold memory but
    take part in no batch."""
    if not on(static):
        return in_flight
    return in_flight | transferring(row)


def next_event(static: SimStatic, row: _Row, nxt: jax.Array) -> jax.Array:
    """() f64 s the replica's next event: ``nxt``, or earlier if a transfer of one of its
    slots completes before."""
    if not on(static):
        return nxt
    return jnp.minimum(nxt, jnp.min(row.xfer_end, initial=jnp.inf))


def _first_gpu(params: SimParams, r: jax.Array) -> jax.Array:
    """i32 index of replica ``r``'s first GPU: replicas are packed in index order, the
    prefill pool's (``gpus_per_replica[0]`` GPUs each) first, then the decode pool's."""
    g, p = params.gpus_per_replica, params.prefill_replicas
    return jnp.where(r < p, r * g[0], p * g[0] + (r - p) * g[1])


def transfer_seconds(
    params: SimParams, tokens: jax.Array, src: jax.Array, dst: jax.Array
) -> jax.Array:
    """Seconds to move the KV of ``tokens`` prompt tokens from prefill replica ``src`` to
    decode replica ``dst``.

    Model: every GPU of the sender holds its TP shard of the prompt's KV
    (``kv_bytes_per_token[0]`` bytes per token) and every GPU of the receiver needs its
    own shard (``kv_bytes_per_token[1]``); all GPUs' links move data in parallel, so the
    transfer takes as long as the slower side: ``latency + tokens x max(bytes_side /
    bandwidth_side)`` over the two sides. Per GPU the bandwidth is the pool's GPU
    NVLink (``kv_link_intra``) when both replicas lie inside one node (pools on one node
    type only, ``pools_share_nodes``), else ``kv_link_inter``. E.g. a TP2 prefill
    replica feeding a TP1 decode replica: each sender GPU sends half the KV, the one
    receiver GPU takes all of it, so the receiver's link sets the time.

    Args:
        tokens: i32 KV tokens (any shape, broadcast with ``src``/``dst``).
        src, dst: i32 replica ids (``src`` in the prefill pool, ``dst`` in the decode pool).

    Returns:
        f64 seconds, the broadcast shape.
    """
    n = params.gpus_per_node

    def nodes(r, g):
        first = _first_gpu(params, r)
        return first // n, (first + g - 1) // n

    s0, s1 = nodes(src, params.gpus_per_replica[0])
    d0, d1 = nodes(dst, params.gpus_per_replica[1])
    intra = params.pools_share_nodes & (s0 == s1) & (d0 == d1) & (s0 == d0)
    bw_src = jnp.where(intra, params.kv_link_intra[0], params.kv_link_inter)
    bw_dst = jnp.where(intra, params.kv_link_intra[1], params.kv_link_inter)
    b = params.kv_bytes_per_token
    recv = b[1] * bw_src > b[0] * bw_dst  # the receiver's side is slower
    return params.kv_latency_s + tokens.astype(jnp.float64) * jnp.where(
        recv, b[1], b[0]
    ) / jnp.where(recv, bw_dst, bw_src)


def _decode_load(
    static: SimStatic, params: SimParams, state: SimState, row: _Row, r: jax.Array
) -> jax.Array:
    """(N,) i32 outstanding requests per decode replica (running + waiting + incoming);
    ``_BIG`` for the other replicas. Row ``r`` (being processed) is read from ``row``."""
    n = static.max_replicas
    idx = jnp.arange(n)
    running = (state.slot_req >= 0).sum(axis=1)
    waiting = state.q_tail - state.q_head
    others = jnp.where((idx != r)[:, None], state.slot_xfer_dst, -1).reshape(-1)
    mine = jnp.where(transferring(row), row.xfer_dst, -1)
    incoming = (jnp.concatenate([others, mine])[None, :] == idx[:, None]).sum(axis=1)
    decode = (idx >= params.prefill_replicas) & (idx < params.num_replicas)
    return jnp.where(decode, running + waiting + incoming, _BIG).astype(jnp.int32)


def _start(
    static: SimStatic,
    params: SimParams,
    state: SimState,
    row: _Row,
    r: jax.Array,
    t: jax.Array,
    apply: jax.Array,
) -> tuple[SimState, _Row]:
    """Prefills of this prefill replica that completed at ``t`` start their transfer,
    in slot (arrival) order, each to the then least loaded decode replica."""
    new = (
        apply
        & pooled(params)
        & (r < params.prefill_replicas)
        & (row.req >= 0)
        & ~row.restarted
        & (row.processed > row.prefill)
        & ~transferring(row)
    )
    s = row.req.shape[0]
    order = jnp.argsort(~new, stable=True)
    load = _decode_load(static, params, state, row, r)

    def one(j, carry):
        load, end, dst, kv_tokens = carry
        i = order[j]
        d = jnp.argmin(load).astype(jnp.int32)
        at_i = jnp.arange(s) == i
        end = jnp.where(at_i, t + transfer_seconds(params, row.prefill[i], r, d), end)
        dst = jnp.where(at_i, d, dst)
        kv_tokens = update(kv_tokens, row.req[i], row.prefill[i], "set", static.scatter_free)
        return update(load, d, 1, "add", static.scatter_free), end, dst, kv_tokens

    _, end, dst, kv_tokens = lax.fori_loop(
        0, new.sum(), one, (load, row.xfer_end, row.xfer_dst, state.kv_tokens)
    )
    return state.replace(kv_tokens=kv_tokens), row._replace(xfer_end=end, xfer_dst=dst)


def _land(
    static: SimStatic,
    params: SimParams,
    state: SimState,
    row: _Row,
    r: jax.Array,
    t: jax.Array,
    apply: jax.Array,
) -> tuple[SimState, _Row]:
    """Transfers of this replica's slots due by ``t``: the slot frees its blocks and the
    request joins its decode replica's queue (slot order), waking that replica when it
    has a free pipeline slot."""
    due = apply & transferring(row) & (row.xfer_end <= t)
    order = jnp.argsort(~due, stable=True)
    n = static.max_replicas
    sf = static.scatter_free

    def one(j, st):
        i = order[j]
        d, q = row.xfer_dst[i], row.req[i]
        tail = st.q_tail[d]
        free_stage = jnp.isfinite(st.inflight_end[d]).sum() < params.pool_num_stages[1]
        return st.replace(
            queue=update(st.queue, (d, tail), q, "set", sf),
            queue_arrival=update(st.queue_arrival, (d, tail), row.xfer_end[i], "set", sf),
            q_tail=update(st.q_tail, d, 1, "add", sf),
            kv_ready_at=update(st.kv_ready_at, q, row.xfer_end[i], "set", sf),
            next_event=update(st.next_event, jnp.where(free_stage, d, n), t, "min", sf),
        )

    state = lax.fori_loop(0, due.sum(), one, state)
    row = row._replace(
        req=jnp.where(due, -1, row.req),
        processed=jnp.where(due, 0, row.processed),
        free_blocks=row.free_blocks + jnp.where(due, row.blocks, 0).sum(),
        blocks=jnp.where(due, 0, row.blocks),
        xfer_end=jnp.where(due, jnp.inf, row.xfer_end),
        xfer_dst=jnp.where(due, -1, row.xfer_dst),
    )
    return state, row


def transfers(
    static: SimStatic,
    params: SimParams,
    state: SimState,
    row: _Row,
    r: jax.Array,
    t: jax.Array,
    apply: jax.Array,
) -> tuple[SimState, _Row]:
    """At replica ``r``'s event at ``t`` (after its batch ended): land the transfers due,
    start those of the prefills just completed. The engine compacts the row after."""
    state, row = _land(static, params, state, row, r, t, apply)
    return _start(static, params, state, row, r, t, apply)


def admit_decodes(
    static: SimStatic,
    params: SimParams,
    state: SimState,
    row: _Row,
    r: jax.Array,
    can: jax.Array,
) -> tuple[SimState, _Row]:
    """A decode replica admits transferred requests from its queue, in order, before
    its policy forms the batch (no-op elsewhere, or unless ``can``).

    vLLM's admission rule on the prompt's blocks: a prefix of the queue while the
    allocated requests stay under ``batch_cap`` and free blocks minus the admitted ones
    stay at or above the watermark; none while a preempted request waits for
    re-admission (it goes first). Admitted requests hold ``ceil(kv / block_size)``
    blocks, have processed ``kv + 1`` tokens (the first token came from the prefill
    pool) and their last token time is their first token's (the next TBT gap starts
    there). Slot or window overflow sets ``ERR_SLOTS`` / ``ERR_WINDOW`` (the host grows
    them and re-runs).
    """
    s, w, r_total = row.req.shape[0], static.window, static.num_requests
    sf = static.scatter_free
    occupied = row.req >= 0
    waiting_restart = (occupied & row.restarted).any()
    go = can & is_decode_replica(params, r) & ~waiting_restart
    k = jnp.arange(w)
    pos = state.q_head[r] + k
    valid = pos < state.q_tail[r]
    req = jnp.where(valid, state.queue[r, jnp.clip(pos, 0, r_total - 1)], -1)
    safe = jnp.clip(req, 0, r_total - 1)
    kv = jnp.where(valid, state.kv_tokens[safe], 0)
    blocks = (kv + params.block_size - 1) // params.block_size
    n_alloc = (occupied & ~row.restarted).sum()
    fits = (
        valid
        & (row.free_blocks - scan.cumsum(blocks) >= params.watermark_blocks)
        & (n_alloc + k < params.batch_cap)
    )
    admit = scan.prefix_true(fits) & go
    n_occ = occupied.sum()
    slot_ok = n_occ + k < s
    overflow = (admit & ~slot_ok).any()
    admit &= slot_ok
    window_full = admit.all() & (state.q_tail[r] - state.q_head[r] > w) & (w < s)
    target = jnp.where(admit, n_occ + k, s)  # s -> dropped
    n_admit = admit.sum().astype(jnp.int32)
    row = row._replace(
        req=update(row.req, target, req, "set", sf),
        prefill=update(row.prefill, target, kv, "set", sf),
        processed=update(row.processed, target, kv + 1, "set", sf),
        blocks=update(row.blocks, target, blocks, "set", sf),
        restarted=update(row.restarted, target, False, "set", sf),
        mb=update(row.mb, target, -1, "set", sf),
        ntok=update(row.ntok, target, 0, "set", sf),
        last_done=update(row.last_done, target, state.first_token_at[safe], "set", sf),
        group=update(row.group, target, -1, "set", sf),
        free_blocks=row.free_blocks - jnp.where(admit, blocks, 0).sum(),
    )
    err = jnp.where(overflow, ERR_SLOTS, 0) | jnp.where(window_full, ERR_WINDOW, 0)
    state = state.replace(
        q_head=update(state.q_head, jnp.where(go, r, static.max_replicas), n_admit, "add", sf),
        error=state.error | err,
    )
    return state, row


def count_batch(
    static: SimStatic,
    state: SimState,
    r: jax.Array,
    launched: jax.Array,
    seconds: jax.Array,
    size: jax.Array,
    kv_util: jax.Array,
    flops: jax.Array,
) -> SimState:
    """Per-replica batch statistics (for the per-pool summary): busy seconds, batches,
    requests per batch, KV utilization at launch and FLOPs (a no-op when off).

    Args:
        launched: () bool a batch was launched.
        seconds: () f64 its last stage's time (the replica's busy time, as ``busy_s``).
        size: () i32 requests in it.
        kv_util: () f64 fraction of the replica's blocks allocated at launch.
        flops: () FLOPs per device of the batch (as ``flops_sum``).
    """
    if not on(static):
        return state
    r_w = jnp.where(launched, r, static.max_replicas)
    sf = static.scatter_free
    return state.replace(
        rep_busy_s=update(state.rep_busy_s, r_w, seconds, "add", sf),
        rep_batches=update(state.rep_batches, r_w, 1, "add", sf),
        rep_batch_size_sum=update(
            state.rep_batch_size_sum, r_w, size.astype(jnp.float64), "add", sf
        ),
        rep_kv_util_sum=update(state.rep_kv_util_sum, r_w, kv_util, "add", sf),
        rep_flops_sum=update(state.rep_flops_sum, r_w, flops.astype(jnp.float64), "add", sf),
    )


def init_fields(static: SimStatic) -> dict[str, jax.Array]:
    """The :class:`SimState` fields of pools (zero-sized when off)."""
    n = static.max_replicas
    s, r, reps = (static.num_slots, static.num_requests, n) if on(static) else (0, 0, 0)
    f64, i32 = jnp.float64, jnp.int32
    return {
        "slot_xfer_end": jnp.full((n, s), jnp.inf, f64),
        "slot_xfer_dst": jnp.full((n, s), -1, i32),
        "kv_ready_at": jnp.full(r, jnp.nan, f64),
        "kv_tokens": jnp.zeros(r, i32),
        "rep_busy_s": jnp.zeros(reps, f64),
        "rep_batches": jnp.zeros(reps, jnp.int64),
        "rep_batch_size_sum": jnp.zeros(reps, f64),
        "rep_kv_util_sum": jnp.zeros(reps, f64),
        "rep_flops_sum": jnp.zeros(reps, f64),
    }


def initial_blocks(static: SimStatic, params: SimParams) -> jax.Array:
    """(N,) i32 free KV blocks of each replica at the start: its pool's ``num_blocks``
    (every replica the config's when colocated or when pools are off)."""
    n = static.max_replicas
    if not on(static):
        return jnp.full(n, params.num_blocks, jnp.int32)
    decode = jnp.arange(n) >= params.prefill_replicas
    pool = jnp.where(decode, params.pool_num_blocks[1], params.pool_num_blocks[0])
    return jnp.where(pooled(params), pool, params.num_blocks).astype(jnp.int32)


#: summary.csv columns (nan for a colocated config)
COLUMNS = (
    "prefill_replicas",
    "decode_replicas",
    "prefill_batch_cap",
    "decode_batch_cap",
    "kv_transfers",
    "kv_transfer_time_p50",
    "kv_transfer_time_p90",
    "kv_transfer_time_p99",
    "kv_transfer_time_mean",
    "prefill_busy_fraction",
    "decode_busy_fraction",
    "prefill_batch_size_mean",
    "decode_batch_size_mean",
    "prefill_kv_util_mean",
    "decode_kv_util_mean",
)


def summary(
    cfg,
    state: SimState,
    i: int,
    num_requests: int,
    makespan_s: float,
    peak_flops=None,
) -> dict[str, float]:
    """Per-pool summary of config ``i`` (its ``DeploymentConfig`` ``cfg``) of a finished
    (stacked) state.

    ``kv_transfer_time_*``: seconds from a request's first token (end of its prefill) to
    its KV landing on its decode replica, over the requests that were transferred
    (``kv_transfers`` of them; nan when none was); ``*_busy_fraction``: busy seconds of the
    pool's replicas / (replicas x ``makespan_s``); ``*_batch_size_mean`` and
    ``*_kv_util_mean``: per batch launched in the pool; ``*_batch_cap``: the pools' caps;
    ``*_pool_device``, ``*_pool_tp``, ``*_pool_pp``: the pools' hardware (pooled configs only). Pools on their own GPUs also replace
    ``mfu_mean`` (:func:`pools_mfu`; ``peak_flops``: ``pool config -> peak FLOP/s``). A
    colocated config (``prefill_replicas`` 0) has 0 replicas in both pools and nan (or
    empty) for the rest.
    """
    if cfg.prefill_replicas <= 0:
        return {
            **dict.fromkeys(COLUMNS, float("nan")),
            "prefill_replicas": 0.0,
            "decode_replicas": 0.0,
        }
    p, n = int(cfg.prefill_replicas), int(cfg.num_replicas)
    pick = lambda x: np.asarray(x[i])  # noqa: E731
    ready = pick(state.kv_ready_at)[:num_requests]
    first = pick(state.first_token_at)[:num_requests]
    xfer = (ready - first)[np.isfinite(ready)]
    q = (lambda f: float(np.percentile(xfer, f))) if xfer.size else (lambda f: float("nan"))
    busy, batches = pick(state.rep_busy_s), pick(state.rep_batches).astype(np.float64)
    size, kv = pick(state.rep_batch_size_sum), pick(state.rep_kv_util_sum)

    def per_batch(x, sl):
        nb = batches[sl].sum()
        return float(x[sl].sum() / nb) if nb > 0 else float("nan")

    pools = {"prefill": slice(0, p), "decode": slice(p, n)}
    out = {
        "prefill_replicas": float(p),
        "decode_replicas": float(n - p),
        "prefill_batch_cap": float(pool_cap(cfg, "prefill")),
        "decode_batch_cap": float(pool_cap(cfg, "decode")),
        "kv_transfers": float(xfer.size),
        "kv_transfer_time_p50": q(50),
        "kv_transfer_time_p90": q(90),
        "kv_transfer_time_p99": q(99),
        "kv_transfer_time_mean": float(xfer.mean()) if xfer.size else float("nan"),
    }
    for name, sl in pools.items():
        reps = sl.stop - sl.start
        frac = (
            busy[sl].sum() / (reps * makespan_s)
            if makespan_s > 0 and np.isfinite(makespan_s)
            else float("nan")
        )
        out[f"{name}_busy_fraction"] = float(frac)
        out[f"{name}_batch_size_mean"] = per_batch(size, sl)
        out[f"{name}_kv_util_mean"] = per_batch(kv, sl)
        out[f"{name}_pool_device"] = disagg_pools.pool_device(cfg, name)
        out[f"{name}_pool_tp"] = float(disagg_pools.pool_tp(cfg, name))
        out[f"{name}_pool_pp"] = float(disagg_pools.pool_pp(cfg, name))
    if disagg_pools.has_pool_hardware(cfg):  # each pool's FLOPs against its own GPU's peak
        out["mfu_mean"] = pools_mfu(cfg, pick(state.rep_flops_sum), busy, peak_flops)
    return out


def pools_mfu(cfg, flops: np.ndarray, busy: np.ndarray, peak_flops) -> float:
    """MFU of a pooled config whose pools run on different GPUs: each replica's FLOPs
    per device over its pool's peak, summed, over the replicas' busy seconds summed.

    Args:
        flops, busy: (N,) FLOPs per device and busy seconds per replica.
        peak_flops: ``pool config -> peak FLOP/s`` (``build.derive(c).peak_flops``).
    """
    p, n = int(cfg.prefill_replicas), int(cfg.num_replicas)
    peaks = [peak_flops(disagg_pools.pool_config(cfg, x)) for x in disagg_pools.POOLS]
    achieved = flops[:p].sum() / peaks[0] + flops[p:n].sum() / peaks[1]
    total = busy[:n].sum()
    return float(achieved / total) if total > 0 else float("nan")


def request_fields(cfg, state: SimState, i: int, num_requests: int) -> dict[str, np.ndarray]:
    """``requests.parquet`` column of config ``i``: ``kv_transfer_s`` (R,) f64 seconds
    from the request's first token to its KV landing on its decode replica; nan for a
    request not transferred (one output token, not finished) and for a colocated config."""
    if cfg.prefill_replicas <= 0 or np.shape(state.kv_ready_at)[-1] == 0:
        return {"kv_transfer_s": np.full(num_requests, np.nan)}
    ready = np.asarray(state.kv_ready_at[i])[:num_requests]
    return {"kv_transfer_s": ready - np.asarray(state.first_token_at[i])[:num_requests]}


#: replica schedulers that run in pools (on-demand paged memory; their admission rule
#: is the one :func:`admit_decodes` applies)
SCHEDULERS = ("vllm", "sarathi")


def _require_null_or_count(cfg, field: str) -> None:
    """``cluster.<field>`` is null or an integer >= 1 (one error line otherwise)."""
    v = getattr(cfg, field)
    require(
        v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1),
        f"cluster.{field}={v!r} must be null or an integer >= 1",
    )

def validate(cfg) -> None:
    """Refuse a bad pool setup of a ``DeploymentConfig`` with one line (ConfigError)."""
    p, d = cfg.prefill_replicas, cfg.decode_replicas
    for name, v in (("prefill_replicas", p), ("decode_replicas", d)):
        require(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0,
            f"cluster.{name}={v!r} must be an integer >= 0",
        )
    require(
        (p == 0) == (d == 0),
        f"cluster.prefill_replicas={p} and decode_replicas={d}: both 0 (colocated) or both >= 1",
    )
    require(
        cfg.kv_inter_node_gbps > 0 and np.isfinite(cfg.kv_inter_node_gbps),
        f"cluster.kv_inter_node_gbps={cfg.kv_inter_node_gbps} must be a finite number > 0",
    )
    require(
        cfg.kv_transfer_latency_s >= 0 and np.isfinite(cfg.kv_transfer_latency_s),
        f"cluster.kv_transfer_latency_s={cfg.kv_transfer_latency_s} must be a finite number >= 0",
    )
    for pool in ("prefill", "decode"):
        _require_null_or_count(cfg, f"{pool}_batch_cap")
    if p == 0:
        return
    require(
        cfg.num_replicas == p + d,
        f"num_replicas={cfg.num_replicas} must be prefill_replicas + decode_replicas = {p + d}",
    )
    require(
        cfg.replica_scheduler in SCHEDULERS,
        f"replica_scheduler={cfg.replica_scheduler} does not run in prefill/decode pools yet "
        f"(supported: {', '.join(SCHEDULERS)})",
    )
    require(
        cfg.global_scheduler != "prefix_affinity" and not cfg.prefix_caching,
        "prefill/decode pools do not support prefix caching or prefix_affinity routing yet",
    )
    require(
        cfg.spec_tokens == 0,
        "prefill/decode pools do not support speculative decoding yet (speculative.num_tokens must be 0)",
    )
    require(
        getattr(cfg, "attention_dp", 1) == 1,
        "prefill/decode pools need cluster.attention_dp=1 (attention data parallelism in pools not modelled)",
    )
    for pool in disagg_pools.POOLS:
        for key in ("tp", "pp"):
            _require_null_or_count(cfg, f"{pool}_{key}")
        device = getattr(cfg, f"{pool}_device")
        if device is not None:
            catalog.get_device(device)
        tp, pp = disagg_pools.pool_tp(cfg, pool), disagg_pools.pool_pp(cfg, pool)
        try:
            catalog.validate_parallelism(model_of(cfg), tp, pp)
        except ConfigError as err:
            raise ConfigError(f"{pool} pool: {err}") from None
        require(
            pool_cap(cfg, pool) >= pp,
            f"{pool} pool: batch cap {pool_cap(cfg, pool)} must be >= its pipeline stages {pp} "
            f"(cluster.{pool}_batch_cap / scheduler.batch_size_cap vs cluster.{pool}_pp)",
        )
        disagg_pools.pool_node(cfg, pool)


def model_of(cfg):
    """The catalog model of a ``DeploymentConfig``."""
    return catalog.get_model(cfg.model)


def entry_count(cfg) -> int:
    """Replicas arrivals are routed to: the prefill pool, or all replicas (colocated)."""
    return cfg.prefill_replicas if cfg.prefill_replicas > 0 else cfg.num_replicas


def param_fields(cfg, derived, table_index, derive) -> dict[str, np.ndarray]:
    """The :class:`SimParams` pool fields of a ``DeploymentConfig`` (numpy values).

    Args:
        cfg: the config.
        derived: its ``DerivedConfig``.
        table_index: its row of the timing tables; a ``TableRow`` with ``pools`` (the
            rows of its prefill and decode pools) when the pools have their own hardware.
        derive: ``vidur_jax.sim.build.derive`` (KV blocks, FLOPs of each pool's config).
    """
    pools = [disagg_pools.pool_config(cfg, p) for p in disagg_pools.POOLS]
    derived = [derived if pc is cfg else derive(pc) for pc in pools]
    rows = getattr(table_index, "pools", ()) or (int(table_index), int(table_index))
    model = catalog.get_model(cfg.model)
    node = catalog.get_node(pools[0].network_device)

    def kv_bytes(pc) -> float:
        return catalog.kv_bytes_per_token(
            model,
            pc.tensor_parallel_size,
            pc.num_pipeline_stages,
            vidur_compat=False,
            kv_dtype=cfg.kv_cache_dtype,
        )

    def intra(pc) -> float:
        # a GPU without NVLink figures (link_gbps 0) moves KV at the inter-node rate
        link = catalog.get_device(pc.device).link_gbps
        return (link if link > 0 else cfg.kv_inter_node_gbps) * 1e9

    f64, i32, f32 = np.float64, np.int32, np.float32
    return {
        "prefill_replicas": i32(cfg.prefill_replicas),
        "kv_bytes_per_token": np.array([kv_bytes(pc) for pc in pools], f64),
        "kv_link_intra": np.array([intra(pc) for pc in pools], f64),
        "kv_link_inter": f64(cfg.kv_inter_node_gbps * 1e9),
        "kv_latency_s": f64(cfg.kv_transfer_latency_s),
        "gpus_per_replica": np.array(
            [pc.tensor_parallel_size * pc.num_pipeline_stages for pc in pools], i32
        ),
        "gpus_per_node": i32(node.devices_per_node),
        "pools_share_nodes": np.bool_(
            disagg_pools.pools_share_nodes(cfg) if cfg.prefill_replicas > 0 else True
        ),
        "pool_table_index": np.array(rows, i32),
        "pool_num_blocks": np.array([d.num_blocks for d in derived], i32),
        "pool_watermark_blocks": np.array([d.watermark_blocks for d in derived], i32),
        "pool_flops_per_token": np.array([d.flops_per_token for d in derived], f32),
        "pool_attn_flops_coef": np.array([d.attn_flops_coef for d in derived], f32),
        "pool_num_stages": np.array([pc.num_pipeline_stages for pc in pools], i32),
        "pool_layers_per_stage": np.array([d.layers_per_stage for d in derived], f32),
        "prefill_batch_cap": i32(pool_cap(cfg, "prefill")),
        "decode_batch_cap": i32(pool_cap(cfg, "decode")),
    }


def derive_pools(cfg, derive) -> None:
    """Derive each pool config with hardware of its own (memory planner, parallelism),
    refusing a pool that cannot run with one line naming the pool."""
    if not disagg_pools.has_pool_hardware(cfg):
        return
    for pool in disagg_pools.POOLS:
        pc = disagg_pools.pool_config(cfg, pool)
        if pc is cfg:  # on the config's own hardware: derived with it
            continue
        try:
            derive(pc)
        except ConfigError as err:
            pp = f" pp={pc.num_pipeline_stages}" if pc.num_pipeline_stages > 1 else ""
            raise ConfigError(
                f"{pool} pool ({pc.device} tp={pc.tensor_parallel_size}{pp}): {err}"
            ) from None


def pool_cap(cfg, pool: str) -> int:
    """Batch cap of a pool's replicas: ``cluster.<pool>_batch_cap``, else the scheduler's."""
    cap = getattr(cfg, f"{pool}_batch_cap")
    return cfg.batch_size_cap if cap is None else cap


def slot_bound(cfg) -> int:
    """Most requests a replica of a pool holds at once (0 for a colocated config)."""
    return max(pool_cap(cfg, "prefill"), pool_cap(cfg, "decode")) if cfg.prefill_replicas > 0 else 0


def num_stages(static: SimStatic, params: SimParams, r: jax.Array) -> jax.Array:
    """() i32 pipeline stages of replica ``r``: its pool's, or the config's."""
    if not on(static):
        return params.num_stages
    pool = (r >= params.prefill_replicas).astype(jnp.int32)
    own = params.pool_num_stages[pool]
    return jnp.where(pooled(params), own, params.num_stages).astype(params.num_stages.dtype)


def pool_params(static: SimStatic, params: SimParams, r: jax.Array) -> SimParams:
    """``params`` as replica ``r`` sees them: its pool's batch cap (``batch_cap`` and
    ``max_micro_batch`` = cap // its pool's stages, as Vidur's) and its pool's hardware
    (timing-table row, pipeline stages and layers per stage, KV blocks and watermark,
    FLOPs per token); unchanged for colocated configs."""
    if not on(static):
        return params
    stages = num_stages(static, params, r)
    cap = jnp.where(r < params.prefill_replicas, params.prefill_batch_cap, params.decode_batch_cap)
    cap = jnp.where(pooled(params), cap, params.batch_cap).astype(params.batch_cap.dtype)
    micro = jnp.where(pooled(params), cap // stages, params.max_micro_batch).astype(
        params.max_micro_batch.dtype
    )
    pool = (r >= params.prefill_replicas).astype(jnp.int32)

    def own(field: jax.Array, per_pool: jax.Array) -> jax.Array:
        return jnp.where(pooled(params), per_pool[pool], field).astype(field.dtype)

    return params.replace(
        batch_cap=cap,
        max_micro_batch=micro,
        num_stages=stages,
        layers_per_stage=own(params.layers_per_stage, params.pool_layers_per_stage),
        table_index=own(params.table_index, params.pool_table_index),
        num_blocks=own(params.num_blocks, params.pool_num_blocks),
        watermark_blocks=own(params.watermark_blocks, params.pool_watermark_blocks),
        flops_per_token=own(params.flops_per_token, params.pool_flops_per_token),
        attn_flops_coef=own(params.attn_flops_coef, params.pool_attn_flops_coef),
    )
