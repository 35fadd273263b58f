"""State, knobs and static shape of one simulated deployment.

The simulator is a pure function of three things:

* :class:`SimStatic` — hashable Python values that fix array shapes and the code path
  (policy name, router name, capacities). Changing one is a new compile.
* :class:`SimParams` — every numeric knob as an array leaf (qps-dependent workload,
  batch cap, chunk size, memory blocks, prices, scale factors...). Stacked along a
  leading config axis and ``vmap``-ped.
* :class:`TimingTables` — dense per-operation execution-time tables (milliseconds),
  tabulated from the trained predictors, one slab per (model, device, TP, network)
  bundle; configs index their bundle with ``SimParams.table_index``. They are shared by
  all configs (not vmapped), so 1,000 configs on one model cost one copy.

:class:`SimState` is everything that changes while simulating one config.

Conventions: ``-1`` is the "none" sentinel for indices; times are float64 seconds and
``nan`` means "has not happened"; ``inf`` is "no event scheduled".
"""

from __future__ import annotations

import dataclasses

import jax

from vidur_jax.struct import pytree_dataclass, static_field

#: Global schedulers (request routing to replicas), Vidur's names.
ROUTERS = ("round_robin", "random", "lor", "prefix_affinity")
#: Routers whose decision depends only on the request index: requests are routed up front
#: and an arrival is not a simulator step of its own (the replica's queue simply grows).
STATIC_ROUTERS = ("round_robin", "random")

# Error bits of ``SimState.error`` (checked on the host after a run).
ERR_SLOTS = 1  # more admitted requests than running-set slots: grow num_slots
ERR_STALLED = 2  # work left but nothing can ever be scheduled (e.g. a request larger than KV memory)
ERR_STEPS = 4  # step budget exhausted (should not happen; indicates a bug)
ERR_TOKENS = 8  # a batch larger than the timing tables cover: grow the tables
ERR_OOM = 16  # LightLLM decode could not allocate (Vidur raises "OOM handling not implemented")
ERR_WINDOW = 32  # a batch could admit more queued requests than the window holds: grow window
ERR_PREFIX = 64  # prefix caching: allocations exceeded free + evictable blocks (a bug)

ERROR_NAMES = {
    ERR_SLOTS: "running-set slots overflowed",
    ERR_STALLED: "simulation stalled: requests remain that can never be scheduled",
    ERR_STEPS: "step budget exhausted",
    ERR_TOKENS: "batch larger than the timing tables cover",
    ERR_OOM: "LightLLM decode ran out of KV memory",
    ERR_WINDOW: "admission window overflowed",
    ERR_PREFIX: "prefix cache: KV memory overcommitted",
}


@dataclasses.dataclass(frozen=True)
class SimStatic:
    """Static (hashable) part of a simulation: shapes and code paths.

    Attributes:
        policy: replica scheduler name, one of :data:`vidur_jax.sim.policies.POLICIES`.
        router: global scheduler name, one of :data:`ROUTERS`.
        num_requests: request capacity R (valid rows + padding).
        num_slots: running-set capacity S per replica (>= max concurrent requests).
        max_replicas: replica capacity N (configs may use fewer).
        max_stages: pipeline-stage capacity (configs may use fewer).
        num_tbt_bins: number of TBT histogram bins H.
        window: admission window W: queued requests one batch may admit at most
            (overflow is detected and the host re-runs with a larger window); at least
            S3's ``s3_lookahead`` under first-fit admission.
        fuse_iters: longest run of iterations of the same batch (decode-only, or
            Sarathi's decodes plus one chunked prefill, then decodes with it)
            simulated as one step (exact; 1 disables fusion). Every step pays for
            this many iterations, so larger is not always faster (README, Performance).
        trace_capacity: batches recorded in the batch log (0 = no log); a fused run of
            iterations is one entry with ``log_iters`` iterations.
        scatter_free: the config runs unbatched (one lane): state updates are loops of
            ``dynamic_update_slice`` rather than scatters, so XLA:CPU compiles the
            whole event loop into one kernel (:mod:`vidur_jax.sim.indexed`). Same
            results; never under ``vmap``.
        prefix_capacity: C, prefix-cache table entries per replica (the largest
            ``num_blocks`` of the configs with ``prefix_caching``; 0 = caching off, every
            prefix-cache function a no-op and the results those of a build without it).
        prefix_blocks: K, leading KV-block hashes per request (``SimParams.prefix_hashes``).
        prefix_probes: P, table entries a block hash may occupy (open addressing).
        disagg: some config of the call splits its replicas into prefill and decode
            pools (:mod:`vidur_jax.sim.disagg`; False: every pool function a no-op and
            the results those of a build without pools).
        speculative: some config of the call decodes speculatively (``spec_k > 0``):
            the engine's decode iterations are verify steps
            (:mod:`vidur_jax.sim.speculative`); False = off, nothing of it traced.
        session_capacity: P, pending-turn table entries of closed-loop sessions
            (:mod:`vidur_jax.sim.sessions`); 0 = no sessions, nothing of it traced.
    """

    policy: str
    router: str
    num_requests: int
    num_slots: int
    max_replicas: int = 1
    max_stages: int = 1
    num_tbt_bins: int = 2048
    window: int = 16
    fuse_iters: int = 32
    trace_capacity: int = 0
    scatter_free: bool = False
    prefix_capacity: int = 0
    prefix_blocks: int = 0
    prefix_probes: int = 8
    disagg: bool = False
    speculative: bool = False
    session_capacity: int = 0


@pytree_dataclass
class TimingTables:
    """Dense execution-time tables, milliseconds, one slab per predictor bundle P.

    Token-indexed tables use a grid of ``token_step`` tokens (Vidur rounds batch
    token counts up to a multiple of 8); attention tables use ``kv_step`` for KV
    lengths (Vidur's 64-token prediction granularity).
    """

    token_ops: jax.Array  # (P, G, K) f32 ms per layer at num_tokens = g * token_step; K = len(TOKEN_OPS)
    kv_save: jax.Array  # (P, G) f32 ms per layer, attn_kv_cache_save at g * token_step tokens
    decode: jax.Array  # (P, B + 1, KD) f32 ms per layer, attn_decode at (batch b, kv = k * kv_step)
    prefill: jax.Array  # (P, KP, C) f32 ms per layer, attn_prefill at (kv = k * kv_step, chunk = c * chunk_step)
    cpu_overhead: jax.Array  # (P, B + 1) f32 ms per iteration at batch size b (Vidur's 5 CPU ops summed; 0 at b=0)
    token_step: int = static_field(default=8)
    kv_step: int = static_field(default=64)
    chunk_step: int = static_field(default=16)


#: A layer's compute ops whose time depends only on its token count (no collectives).
LAYER_COMPUTE_OPS = (
    "attn_pre_proj",
    "attn_post_proj",
    "attn_rope",
    "mlp_up_proj",
    "mlp_down_proj",
    "mlp_act",
    "input_layernorm",
    "post_attention_layernorm",
    "add",
)
#: Per-layer token-count operations, in the column order of ``TimingTables.token_ops``.
TOKEN_OPS = LAYER_COMPUTE_OPS + ("all_reduce", "send_recv")
OP_INDEX = {name: i for i, name in enumerate(TOKEN_OPS)}


@pytree_dataclass
class SimParams:
    """Numeric knobs of one config (leading config axis when stacked)."""

    # workload
    arrived_at: jax.Array  # (R,) f64 s, sorted; +inf on padding rows
    num_prefill: jax.Array  # (R,) i32 tokens (0 on padding)
    num_decode: jax.Array  # (R,) i32 tokens (0 on padding)
    num_seqs: jax.Array  # (R,) i32 output sequences per request (parallel sampling / beam width; 1 = Vidur)
    num_valid: jax.Array  # () i32 real (non-padding) requests
    random_route: jax.Array  # (R,) i32 replica id per request for router="random"
    affinity_imbalance: jax.Array  # () i32 prefix_affinity router: outstanding requests above the least loaded replica it tolerates
    prefix_hashes: jax.Array  # (R, K) i64 hash of each full prompt KV block (-1 = none; K = 0: caching off)
    session_next: jax.Array  # (R,) i32 row of the request's next session turn (-1 = none); (0,) no sessions
    think_s: jax.Array  # (R,) f64 s a turn's think time after its previous turn completes; (0,) no sessions
    open_next: jax.Array  # (R,) i32 first row >= i arriving open loop (not a later turn; R = none); (0,) no sessions
    # deployment
    num_replicas: jax.Array  # () i32, <= SimStatic.max_replicas
    num_stages: jax.Array  # () i32 pipeline stages, <= SimStatic.max_stages
    layers_per_stage: jax.Array  # () f32
    table_index: jax.Array  # () i32 row of TimingTables
    # disaggregated pools (vidur_jax.sim.disagg; prefill_replicas 0 = colocated)
    prefill_replicas: jax.Array  # () i32 P: replicas 0..P-1 prefill, P..num_replicas-1 decode
    kv_bytes_per_token: jax.Array  # (2,) f64 bytes of KV per prompt token on one GPU (its TP shard), per pool (prefill, decode)
    kv_link_intra: jax.Array  # (2,) f64 bytes/s per GPU between replicas in one node (NVLink), per pool
    kv_link_inter: jax.Array  # () f64 bytes/s per GPU between nodes
    kv_latency_s: jax.Array  # () f64 s fixed cost per KV transfer
    gpus_per_replica: jax.Array  # (2,) i32 TP x PP per pool (replicas packed on nodes in index order)
    gpus_per_node: jax.Array  # () i32
    pools_share_nodes: jax.Array  # () bool both pools on one node type (else every transfer crosses nodes)
    pool_table_index: jax.Array  # (2,) i32 row of TimingTables per pool (= table_index without pool hardware)
    pool_num_blocks: jax.Array  # (2,) i32 KV blocks per replica of each pool
    pool_watermark_blocks: jax.Array  # (2,) i32
    pool_flops_per_token: jax.Array  # (2,) f32 dense FLOPs per token per layer per device, per pool
    pool_attn_flops_coef: jax.Array  # (2,) f32
    pool_num_stages: jax.Array  # (2,) i32 pipeline stages of each pool's replicas
    pool_layers_per_stage: jax.Array  # (2,) f32 layers per pipeline stage, per pool
    prefill_batch_cap: jax.Array  # () i32 batch_cap of the prefill pool's replicas
    decode_batch_cap: jax.Array  # () i32 batch_cap of the decode pool's replicas
    # replica scheduler
    batch_cap: jax.Array  # () i32 Vidur batch_size_cap
    max_batch_size: jax.Array  # () i32 min(memory-bound batch size, cap) (Orca/FT admission)
    max_micro_batch: jax.Array  # () i32 batch_cap // num_stages (vLLM/Sarathi/LightLLM)
    chunk_size: jax.Array  # () i32 Sarathi token budget per iteration
    max_tokens_in_batch: jax.Array  # () i32 vLLM/LightLLM token cap
    max_waiting_iters: jax.Array  # () i32 LightLLM
    num_blocks: jax.Array  # () i32 KV blocks per replica
    block_size: jax.Array  # () i32 tokens per block
    watermark_blocks: jax.Array  # () i32
    max_blocks_per_seq: jax.Array  # () i32 max_tokens // block_size (Orca/FT reservation)
    batch_timeout: jax.Array  # () f64 s static batching: launch a waiting batch this long after its oldest arrival
    batch_max_tokens: jax.Array  # () i32 static batching: prompt + output tokens that complete a batch
    pred_bucket: jax.Array  # (R,) i32 S3 predicted output-length bucket per request (0-based)
    bucket_tokens: jax.Array  # () i32 S3 bucket width, output tokens
    num_buckets: jax.Array  # () i32 S3 number of buckets
    s3_first_fit: jax.Array  # () bool S3 admission: decreasing first fit (True) or arrival-order prefix
    s3_lookahead: jax.Array  # () i32 waiting requests S3's first fit considers per iteration (<= SimStatic.window)
    max_tokens: jax.Array  # () i32 longest request (prompt + output), tokens
    # timing
    gqa_overhead: jax.Array  # () f32 Vidur's attention batching overhead fraction (0.1 for GQA, else 0)
    op_scale: jax.Array  # (K,) f32 multiplier per token op (sensitivity knobs; 1 = as profiled)
    attn_scale: jax.Array  # () f32 multiplier on attention kernels
    cpu_overhead_ms: jax.Array  # () f32 fixed CPU time added per iteration (0 = Vidur default)
    cpu_overhead_on: jax.Array  # () f32 1 = add TimingTables.cpu_overhead[batch size] to every stage, 0 = off
    flops_per_token: jax.Array  # () f32 dense FLOPs per token per layer per device (MFU)
    attn_flops_coef: jax.Array  # () f32 attention FLOPs per (query token x kv token) per layer per device
    peak_flops: jax.Array  # () f32 device peak FLOP/s
    max_steps: jax.Array  # () i64 step budget
    # speculative decoding (vidur_jax.sim.speculative; k = 0: off)
    spec_k: jax.Array  # () i32 draft tokens per verify step (0 = off)
    spec_gain: jax.Array  # (R,) f32 output tokens per verify step of each request (1 when off)
    draft_table_index: jax.Array  # () i32 row of TimingTables timing the draft
    draft_layers: jax.Array  # () f32 decoder layers of one draft step
    draft_flops_per_token: jax.Array  # () f32 draft dense FLOPs per token per layer per device
    draft_lm_head_scale: jax.Array  # () f32 draft LM-head GEMM time / its mlp_up_proj time at equal tokens (vocab / up-proj width)


@pytree_dataclass
class SimState:
    """Everything that changes during one config's simulation."""

    # --- requests (R)
    scheduled_at: jax.Array  # (R,) f64 s, first time in a batch (nan = never)
    first_token_at: jax.Array  # (R,) f64 s, prefill completion (nan = never)
    completed_at: jax.Array  # (R,) f64 s (nan = never)
    num_restarts: jax.Array  # (R,) i32
    restart_tokens: jax.Array  # () i64 tokens discarded by preemptions (recomputed on restart)
    # --- routing / waiting queues: queue[r, head:tail] are request ids waiting at replica r
    next_arrival: jax.Array  # () i32 index of the next request to arrive
    sess_req: jax.Array  # (P,) i32 pending session turns (sim/sessions.py), -1 = empty; (0,) off
    sess_at: jax.Array  # (P,) f64 s their arrival time (inf = empty)
    sess_arrived: jax.Array  # (R,) f64 s arrival time of each request (nan = not yet); (0,) off
    queue: jax.Array  # (N, R) i32 request ids, -1 = empty
    queue_arrival: jax.Array  # (N, R) f64 s arrival of queue[r, k] (inf = none); static routers
    q_head: jax.Array  # (N,) i32
    q_tail: jax.Array  # (N,) i32
    # --- running set per replica (S slots); a restarted request keeps its slot with 0 blocks
    slot_req: jax.Array  # (N, S) i32 request id, -1 = free slot
    slot_prefill: jax.Array  # (N, S) i32 current prefill length (grows on restart)
    slot_processed: jax.Array  # (N, S) i32 tokens processed (Vidur: +1 when prefill completes)
    slot_blocks: jax.Array  # (N, S) i32 KV blocks held
    slot_restarted: jax.Array  # (N, S) bool waiting for re-admission after a restart
    slot_mb: jax.Array  # (N, S) i32 in-flight micro-batch index, -1 = not in flight
    slot_ntok: jax.Array  # (N, S) i32 tokens this slot processes in its in-flight batch
    slot_last_done: jax.Array  # (N, S) f64 s, end of the request's latest iteration
    slot_group: jax.Array  # (N, S) i32 FasterTransformer batch group (-1 = none)
    slot_held: jax.Array  # (N, S) i32 leading prompt blocks held through the prefix cache ((N, 0): off)
    # --- replicas
    free_blocks: jax.Array  # (N,) i32 (prefix caching: free blocks not counting evictable cached ones)
    pc_hash: jax.Array  # (N, C) i64 prefix cache: block hash per entry (-1 = empty); C = 0: off
    pc_refs: jax.Array  # (N, C) i32 running requests using each cached block
    pc_last: jax.Array  # (N, C) f64 s last use of each cached block (LRU eviction)
    inflight_end: jax.Array  # (N, M) f64 s end time per in-flight micro-batch (inf = empty)
    stage_free_at: jax.Array  # (N, M) f64 s when each pipeline stage becomes free
    next_event: jax.Array  # (N,) f64 s next time this replica acts (inf = idle)
    waiting_iters: jax.Array  # (N,) i32 LightLLM decode iterations since last prefill
    # --- disaggregated pools (sim/disagg.py; zero-sized when SimStatic.disagg is False)
    slot_xfer_end: jax.Array  # (N, S) f64 s end of the slot's KV transfer (inf = none); (N, 0) off
    slot_xfer_dst: jax.Array  # (N, S) i32 decode replica it goes to (-1 = none)
    kv_ready_at: jax.Array  # (R,) f64 s KV landed on the decode replica (nan = never); (0,) off
    kv_tokens: jax.Array  # (R,) i32 KV tokens transferred (the prefill replica's prompt length)
    rep_busy_s: jax.Array  # (N,) f64 s busy time per replica (last stage); (0,) off
    rep_batches: jax.Array  # (N,) i64 batches launched per replica
    rep_batch_size_sum: jax.Array  # (N,) f64 requests per batch, summed per replica
    rep_kv_util_sum: jax.Array  # (N,) f64 fraction of blocks allocated at launch, summed per replica
    rep_flops_sum: jax.Array  # (N,) f64 FLOPs per device summed per replica (MFU of pools on other GPUs)
    # --- metrics accumulators
    tbt_hist: jax.Array  # (H,) i32 counts of TBT samples per bin
    tbt_sum: jax.Array  # () f64 s
    tbt_bin_sum: jax.Array  # (H,) f64 s, sum of the TBT samples in each bin (differentiable TBT quantiles)
    tbt_count: jax.Array  # () i64
    num_batches: jax.Array  # () i64
    batch_size_sum: jax.Array  # () f64 requests
    batch_size_max: jax.Array  # () i32 largest batch launched, requests
    batch_tokens_sum: jax.Array  # () f64 tokens
    kv_util_sum: jax.Array  # () f64 fraction of blocks allocated, summed over batches
    busy_s: jax.Array  # () f64 s stage-busy time summed over batches (one stage)
    flops_sum: jax.Array  # () f64 FLOPs per device summed over batches
    prefix_admits: jax.Array  # () i64 admissions (restarts included) while prefix caching is on
    prefix_hit_admits: jax.Array  # () i64 of which found at least one cached block
    prefix_prompt_tokens: jax.Array  # () i64 prefill tokens of those admissions
    prefix_hit_tokens: jax.Array  # () i64 of which cached (prefill compute saved)
    # --- control
    clock: jax.Array  # () f64 s time of the last processed event
    step: jax.Array  # () i64
    num_completed: jax.Array  # () i32
    error: jax.Array  # () i32 bit set of ERR_*
    # --- batch log (SimStatic.trace_capacity entries; for Chrome traces)
    log_count: jax.Array  # () i32 batches launched (may exceed capacity: the rest is dropped)
    log_start: jax.Array  # (B,) f64 s batch formation time
    log_end: jax.Array  # (B,) f64 s batch end (last pipeline stage)
    log_replica: jax.Array  # (B,) i32
    log_size: jax.Array  # (B,) i32 requests in the batch
    log_prefill_tokens: jax.Array  # (B,) i32 prefill tokens
    log_decode_tokens: jax.Array  # (B,) i32 decode tokens (all fused iterations)
    log_iters: jax.Array  # (B,) i32 iterations (> 1 for a fused run)
