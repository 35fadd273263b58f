"""The engine's hooks for disaggregated prefill/decode pools (Splitwise / DistServe style).

A pooled config (``SimParams.prefill_replicas`` P > 0) splits its ``num_replicas``
replicas into a **prefill pool** (replicas ``0..P-1``) and a **decode pool** (replicas
``P..N-1``), same GPU, model, TP and scheduler. A request's life:

1. it arrives and is routed (the config's global scheduler) to a prefill replica, whose
   policy prefills it as usual; its prefill's last iteration gives its first token
   (``first_token_at``: TTFT ends in the prefill pool);
2. at that moment the least loaded decode replica is chosen (fewest running + waiting +
   incoming requests; ties to the lowest index) and its KV transfer starts: it takes
   ``latency + bytes / bandwidth`` seconds, ``bytes`` the prompt's KV on one GPU of the
   replica (every TP worker sends its shard in parallel), over NVLink when both
   replicas sit in one node, else over the inter-node link. The prefill slot keeps its
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
from vidur_jax.errors import require
from vidur_jax.sim import scan
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


def transfer_seconds(
    params: SimParams, tokens: jax.Array, src: jax.Array, dst: jax.Array
) -> jax.Array:
    """Seconds to move the KV of ``tokens`` prompt tokens from replica ``src`` to ``dst``.

    Each GPU of the replica sends its TP shard (``kv_bytes_per_token`` bytes per token)
    in parallel: ``latency + tokens x kv_bytes_per_token / bandwidth``, NVLink
    (``kv_link_intra``) when both replicas lie inside one node, else ``kv_link_inter``.
    Replicas are packed on nodes in index order, ``gpus_per_replica`` GPUs each.

    Args:
        tokens: i32 KV tokens (any shape, broadcast with ``src``/``dst``).
        src, dst: i32 replica ids.

    Returns:
        f64 seconds, the broadcast shape.
    """
    g, n = params.gpus_per_replica, params.gpus_per_node

    def nodes(r):
        return (r * g) // n, (r * g + g - 1) // n

    s0, s1 = nodes(src)
    d0, d1 = nodes(dst)
    intra = (s0 == s1) & (d0 == d1) & (s0 == d0)
    bw = jnp.where(intra, params.kv_link_intra, params.kv_link_inter)
    return params.kv_latency_s + tokens.astype(jnp.float64) * params.kv_bytes_per_token / bw


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
        free_stage = jnp.isfinite(st.inflight_end[d]).sum() < params.num_stages
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
) -> SimState:
    """Per-replica batch statistics (for the per-pool summary): busy seconds, batches,
    requests per batch and KV utilization at launch (a no-op when off).

    Args:
        launched: () bool a batch was launched.
        seconds: () f64 its last stage's time (the replica's busy time, as ``busy_s``).
        size: () i32 requests in it.
        kv_util: () f64 fraction of the replica's blocks allocated at launch.
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
    }


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
) -> dict[str, float]:
    """Per-pool summary of config ``i`` (its ``DeploymentConfig`` ``cfg``) of a finished
    (stacked) state.

    ``kv_transfer_time_*``: seconds from a request's first token (end of its prefill) to
    its KV landing on its decode replica, over the requests that were transferred
    (``kv_transfers`` of them; nan when none was); ``*_busy_fraction``: busy seconds of the
    pool's replicas / (replicas x ``makespan_s``); ``*_batch_size_mean`` and
    ``*_kv_util_mean``: per batch launched in the pool; ``*_batch_cap``: the pools' caps. A
    colocated config (``prefill_replicas`` 0) has 0 replicas in both pools and nan for the
    rest.
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
    return out


#: replica schedulers that run in pools (on-demand paged memory; their admission rule
#: is the one :func:`admit_decodes` applies)
SCHEDULERS = ("vllm", "sarathi")


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
        cap = getattr(cfg, f"{pool}_batch_cap")
        require(
            cap is None
            or (isinstance(cap, (int, np.integer)) and not isinstance(cap, bool) and cap >= 1),
            f"cluster.{pool}_batch_cap={cap!r} must be null or an integer >= 1",
        )
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
        cfg.num_pipeline_stages == 1,
        "prefill/decode pools need num_pipeline_stages=1 (pp > 1 not modelled)",
    )


def entry_count(cfg) -> int:
    """Replicas arrivals are routed to: the prefill pool, or all replicas (colocated)."""
    return cfg.prefill_replicas if cfg.prefill_replicas > 0 else cfg.num_replicas


def param_fields(cfg) -> dict[str, np.ndarray]:
    """The :class:`SimParams` pool fields of a ``DeploymentConfig`` (numpy scalars)."""
    model = catalog.get_model(cfg.model)
    node = catalog.get_node(cfg.network_device)
    device = catalog.get_device(cfg.device)
    kv = catalog.kv_bytes_per_token(
        model,
        cfg.tensor_parallel_size,
        cfg.num_pipeline_stages,
        vidur_compat=False,
        kv_dtype=cfg.kv_cache_dtype,
    )
    # a GPU without NVLink figures (link_gbps 0) moves KV at the inter-node rate
    intra = device.link_gbps if device.link_gbps > 0 else cfg.kv_inter_node_gbps
    return {
        "prefill_replicas": np.int32(cfg.prefill_replicas),
        "kv_bytes_per_token": np.float64(kv),
        "kv_link_intra": np.float64(intra * 1e9),
        "kv_link_inter": np.float64(cfg.kv_inter_node_gbps * 1e9),
        "kv_latency_s": np.float64(cfg.kv_transfer_latency_s),
        "gpus_per_replica": np.int32(cfg.tensor_parallel_size * cfg.num_pipeline_stages),
        "gpus_per_node": np.int32(node.devices_per_node),
        "prefill_batch_cap": np.int32(pool_cap(cfg, "prefill")),
        "decode_batch_cap": np.int32(pool_cap(cfg, "decode")),
    }


def pool_cap(cfg, pool: str) -> int:
    """Batch cap of a pool's replicas: ``cluster.<pool>_batch_cap``, else the scheduler's."""
    cap = getattr(cfg, f"{pool}_batch_cap")
    return cfg.batch_size_cap if cap is None else cap


def slot_bound(cfg) -> int:
    """Most requests a replica of a pool holds at once (0 for a colocated config)."""
    return max(pool_cap(cfg, "prefill"), pool_cap(cfg, "decode")) if cfg.prefill_replicas > 0 else 0


def pool_params(static: SimStatic, params: SimParams, r: jax.Array) -> SimParams:
    """``params`` as replica ``r`` sees them: its pool's batch cap (``batch_cap`` and,
    with one pipeline stage, ``max_micro_batch``); unchanged for colocated configs."""
    if not on(static):
        return params
    cap = jnp.where(r < params.prefill_replicas, params.prefill_batch_cap, params.decode_batch_cap)
    cap = jnp.where(pooled(params), cap, params.batch_cap).astype(params.batch_cap.dtype)
    micro = jnp.where(pooled(params), cap, params.max_micro_batch).astype(
        params.max_micro_batch.dtype
    )
    return params.replace(batch_cap=cap, max_micro_batch=micro)
