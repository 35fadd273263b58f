"""Turn plain deployment configs + workloads into ``(SimStatic, SimParams, TimingTables)``.

This is the one place where derived values are computed (KV blocks from the memory
planner, layers per stage, micro-batch caps, FLOPs per token, capacities); the Hydra
config is converted to :class:`DeploymentConfig` once at the edge and never mutated.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from collections.abc import Callable, Sequence

import jax
import numpy as np

from vidur_jax import catalog
from vidur_jax.catalog.memory import draft_memory
from vidur_jax.errors import ConfigError, require
from vidur_jax.sim import (
    cpu_overhead,
    disagg,
    disagg_pools,
    policies,
    precision,
    s3,
    sessions,
    speculative,
)
from vidur_jax.sim.conf_defaults import value as _conf
from vidur_jax.sim.tables import PredictorLike, TableSpec, stack_tables, tabulate_one
from vidur_jax.sim.types import ROUTERS, TOKEN_OPS, SimParams, SimStatic, TimingTables
from vidur_jax.workload.types import Workload

jax.config.update("jax_enable_x64", True)

#: S3 admission rules: decreasing first fit (S3's bin packing) or arrival-order prefix.
S3_ADMISSIONS = ("dff", "fcfs")


@dataclasses.dataclass(frozen=True)
class DeploymentConfig:
    """One deployment to simulate (Vidur's knobs, Vidur's defaults).

    Attributes mirror Vidur's config names; ``conf/`` documents them and holds their
    defaults, which are read from there (:mod:`vidur_jax.sim.conf_defaults`: the groups
    ``conf/config.yaml`` selects by default, a scheduler's own knobs from its file).
    ``vidur_compat_memory`` keeps Vidur's memory planner, which counts every model
    layer's KV cache on each pipeline stage (an overcount); set it False for the
    correct per-stage accounting. ``cpu_overhead`` adds Vidur's per-batch-size CPU
    overheads (:mod:`vidur_jax.sim.cpu_overhead`) from the profile under
    ``cpu_overhead_dir`` (a Vidur data root) when there is one, else a documented
    parametric default. ``batch_timeout_s`` and ``batch_max_tokens`` are the knobs of
    Alpa-style request batching (``replica_scheduler="static_batching"``): a batch is
    launched when its oldest request has waited ``batch_timeout_s`` or its prompt + output
    tokens reach ``batch_max_tokens`` (or it holds ``batch_size_cap`` requests).
    ``s3_*`` are S3's output-length predictor (:mod:`vidur_jax.sim.s3`): ``oracle``,
    ``confusion`` (right with probability ``s3_accuracy``, else off by
    ``s3_error_buckets``) or ``learned``, over ``s3_num_buckets`` buckets of
    ``max_tokens / s3_num_buckets`` output tokens; and its admission rule
    ``s3_admission``: ``dff`` (S3's decreasing first fit over the first
    ``s3_lookahead`` waiting requests) or ``fcfs`` (arrival order, stop at the first
    request that does not fit). ``weight_dtype`` / ``kv_cache_dtype`` are the storage
    formats of weights and KV cache (docs/precision.md); ``spec_*`` the speculative
    decoding knobs of ``conf/speculative/`` (docs/speculative.md; ``spec_tokens = 0``: off).
    """

    model: str = _conf("model", "name")
    device: str = _conf("hardware", "device")
    network_device: str = _conf("hardware", "network_device")
    tensor_parallel_size: int = _conf("cluster", "tp")
    num_pipeline_stages: int = _conf("cluster", "pp")
    num_replicas: int = _conf("cluster", "num_replicas")
    global_scheduler: str = _conf("cluster", "global_scheduler")
    affinity_imbalance: int = _conf("cluster", "affinity_imbalance")
    prefill_replicas: int = _conf("cluster", "prefill_replicas")
    decode_replicas: int = _conf("cluster", "decode_replicas")
    kv_inter_node_gbps: float = _conf("cluster", "kv_inter_node_gbps")
    kv_transfer_latency_s: float = _conf("cluster", "kv_transfer_latency_s")
    prefill_batch_cap: int | None = _conf("cluster", "prefill_batch_cap")
    decode_batch_cap: int | None = _conf("cluster", "decode_batch_cap")
    prefill_device: str | None = _conf("cluster", "prefill_device")
    prefill_tp: int | None = _conf("cluster", "prefill_tp")
    prefill_pp: int | None = _conf("cluster", "prefill_pp")
    decode_device: str | None = _conf("cluster", "decode_device")
    decode_tp: int | None = _conf("cluster", "decode_tp")
    decode_pp: int | None = _conf("cluster", "decode_pp")
    replica_scheduler: str = _conf("scheduler", "replica_scheduler")
    batch_size_cap: int = _conf("scheduler", "batch_size_cap")
    block_size: int = _conf("scheduler", "block_size")
    watermark_blocks_fraction: float = _conf("scheduler", "watermark_blocks_fraction")
    chunk_size: int = _conf("scheduler", "chunk_size")
    max_tokens_in_batch: int = _conf("scheduler", "max_tokens_in_batch")
    max_waiting_iters: int = _conf("scheduler", "max_waiting_iters")
    memory_margin_fraction: float = _conf("scheduler", "memory_margin_fraction")
    max_tokens: int = _conf("workload", "max_tokens")
    batch_timeout_s: float = _conf("scheduler", "batch_timeout_s", "static_batching")
    batch_max_tokens: int = _conf("scheduler", "batch_max_tokens", "static_batching")
    s3_predictor: str = _conf("scheduler", "s3_predictor", "s3")
    s3_accuracy: float = _conf("scheduler", "s3_accuracy", "s3")
    s3_error_buckets: int = _conf("scheduler", "s3_error_buckets", "s3")
    s3_num_buckets: int = _conf("scheduler", "s3_num_buckets", "s3")
    s3_admission: str = _conf("scheduler", "s3_admission", "s3")
    s3_lookahead: int = _conf("scheduler", "s3_lookahead", "s3")
    num_blocks: int | None = _conf("scheduler", "num_blocks")
    vidur_compat_memory: bool = _conf("scheduler", "vidur_compat_memory")
    prefix_caching: bool = _conf("scheduler", "prefix_caching")
    cpu_overhead_ms: float = _conf("predictor", "cpu_overhead_ms")
    cpu_overhead: bool = _conf("predictor", "cpu_overhead")
    cpu_overhead_dir: str | None = None
    attn_scale: float = _conf("predictor", "attn_scale")
    compute_scale: float = _conf("predictor", "compute_scale")
    network_scale: float = _conf("predictor", "network_scale")
    expert_parallel: int = 1  # EP degree of a MoE model's experts (divides tp), docs/models.md
    moe_imbalance: float = 1.0  # busiest EP rank's routed tokens over the mean (>= 1)
    attention_dp: int = 1  # replicas (attention ranks) per expert group, docs/models.md; 1 = off
    seed: int = _conf("", "seed")
    weight_dtype: str = _conf("model", "weight_dtype")
    kv_cache_dtype: str = _conf("model", "kv_cache_dtype")
    spec_tokens: int = _conf("speculative", "num_tokens")
    spec_acceptance: float = _conf("speculative", "acceptance")
    spec_acceptance_spread: float = _conf("speculative", "acceptance_spread")
    spec_draft: str = _conf("speculative", "draft")

    @property
    def bundle_key(self) -> tuple:
        """Identity of the timing tables this config needs."""
        key = (
            self.model,
            self.device,
            self.network_device,
            self.tensor_parallel_size,
            self.num_pipeline_stages > 1,
            self.cpu_overhead_dir,
            self.expert_parallel,
            self.moe_imbalance,
        )
        variant = self.timing_variant
        if self.attention_dp > 1:
            key = (*key, ("attention_dp", self.attention_dp))
        return key if not precision.is_scaled(*variant) else (*key, variant)

    @property
    def timing_variant(self) -> tuple[str, str, int]:
        """``(weight_dtype, kv_cache_dtype, verify queries)`` its op times are scaled to."""
        return (self.weight_dtype, self.kv_cache_dtype, self.spec_tokens + 1)

    def validate(self) -> None:
        """Raise :class:`ConfigError` on the first bad value (one clear line)."""
        require(
            self.replica_scheduler in policies.POLICIES,
            f"unknown replica_scheduler {self.replica_scheduler!r}; allowed: {', '.join(policies.POLICIES)}",
        )
        require(
            self.global_scheduler in ROUTERS,
            f"unknown global_scheduler {self.global_scheduler!r}; allowed: {', '.join(ROUTERS)}",
        )
        model = catalog.get_model(self.model)
        catalog.get_device(self.device)
        catalog.get_node(self.network_device)
        for name in ("tensor_parallel_size", "num_pipeline_stages", "num_replicas",
                     "batch_size_cap", "block_size", "chunk_size", "max_tokens_in_batch",
                     "max_tokens", "max_waiting_iters", "batch_max_tokens", "s3_num_buckets",
                     "s3_lookahead"):
            value = getattr(self, name)
            require(
                isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
                f"{name}={value!r} must be an integer >= 1",
            )
        require(isinstance(self.affinity_imbalance, (int, np.integer)) and self.affinity_imbalance >= 0,
                f"affinity_imbalance={self.affinity_imbalance!r} must be an integer >= 0")
        require(0.0 <= self.watermark_blocks_fraction < 1.0,
                f"watermark_blocks_fraction={self.watermark_blocks_fraction} must be in [0, 1)")
        for name in ("attn_scale", "compute_scale", "network_scale"):
            require(getattr(self, name) > 0, f"{name}={getattr(self, name)} must be > 0")
        require(self.batch_timeout_s >= 0 and np.isfinite(self.batch_timeout_s),
                f"batch_timeout_s={self.batch_timeout_s} must be a finite number >= 0")
        require(self.s3_predictor in s3.PREDICTORS,
                f"s3_predictor={self.s3_predictor!r}; allowed: {', '.join(s3.PREDICTORS)}")
        require(0.0 <= self.s3_accuracy <= 1.0, f"s3_accuracy={self.s3_accuracy} must be in [0, 1]")
        require(isinstance(self.s3_error_buckets, (int, np.integer)) and self.s3_error_buckets >= 1,
                f"s3_error_buckets={self.s3_error_buckets!r} must be an integer >= 1")
        require(self.s3_admission in S3_ADMISSIONS,
                f"s3_admission={self.s3_admission!r}; allowed: {', '.join(S3_ADMISSIONS)}")
        require(self.cpu_overhead_ms >= 0, f"cpu_overhead_ms={self.cpu_overhead_ms} must be >= 0")
        catalog.validate_parallelism(model, self.tensor_parallel_size, self.num_pipeline_stages)
        catalog.validate_max_tokens(model, self.max_tokens)
        catalog.validate_expert_parallel(model, self.tensor_parallel_size, self.expert_parallel,
                                         self.attention_dp)
        require(self.num_replicas % self.attention_dp == 0,
                f"num_replicas={self.num_replicas} must be a multiple of attention_dp={self.attention_dp}")
        require(self.moe_imbalance >= 1.0, f"moe_imbalance={self.moe_imbalance} must be >= 1")
        policies.get(self.replica_scheduler).validate(self)
        precision.check_dtype("model.weight_dtype", self.weight_dtype)
        precision.check_dtype("model.kv_cache_dtype", self.kv_cache_dtype)
        speculative.validate(self)
        disagg.validate(self)


@dataclasses.dataclass(frozen=True)
class DerivedConfig:
    """Values the simulator needs that follow from a :class:`DeploymentConfig`."""

    num_blocks: int
    max_batch_size: int
    max_micro_batch: int
    watermark_blocks: int
    max_blocks_per_seq: int
    layers_per_stage: int
    gqa_overhead: float
    flops_per_token: float
    attn_flops_coef: float
    peak_flops: float


def derive(cfg: DeploymentConfig) -> DerivedConfig:
    """Vidur's memory planner and per-device sizes for ``cfg`` (validated first)."""
    cfg.validate()
    disagg.derive_pools(cfg, derive)
    model = catalog.get_model(cfg.model)
    device = catalog.get_device(cfg.device)
    tp, pp = cfg.tensor_parallel_size, cfg.num_pipeline_stages
    memory = memory_knobs(cfg)
    mbs = catalog.max_batch_size(model, device, tp, pp, cfg.max_tokens, cfg.memory_margin_fraction,
                                 vidur_compat=cfg.vidur_compat_memory, **memory)
    num_blocks = cfg.num_blocks or catalog.num_kv_blocks(
        model, device, tp, pp, cfg.max_tokens, cfg.block_size, cfg.memory_margin_fraction,
        vidur_compat=cfg.vidur_compat_memory, **memory,
    )
    require(num_blocks >= 1, f"num_blocks={num_blocks} must be >= 1")
    micro = cfg.batch_size_cap // pp
    require(micro >= 1, f"batch_size_cap={cfg.batch_size_cap} must be >= num_pipeline_stages={pp}")
    return DerivedConfig(
        num_blocks=int(num_blocks),
        max_batch_size=int(min(mbs, cfg.batch_size_cap)),
        max_micro_batch=int(micro),
        watermark_blocks=int(cfg.watermark_blocks_fraction * num_blocks),
        max_blocks_per_seq=cfg.max_tokens // cfg.block_size,
        layers_per_stage=model.num_layers // pp,
        gqa_overhead=0.1 if model.num_kv_heads < model.num_q_heads else 0.0,
        flops_per_token=catalog.flops_per_token(model, tp),
        # QK^T and PV: 2 matmuls x 2 FLOPs x head_dim per (query, key) pair per head
        attn_flops_coef=catalog.attn_flops_coef(model, tp),
        # MFU against the peak of the GEMMs' precision (FP8 tensor cores with FP8 weights)
        peak_flops=(device.fp8_tflops if cfg.weight_dtype == "fp8" and device.fp8_tflops else
                    device.fp16_tflops) * 1e12,
    )


def memory_knobs(cfg: DeploymentConfig) -> dict:
    """The memory planner's precision and draft-model keywords for ``cfg``."""
    out = {"weight_dtype": cfg.weight_dtype, "kv_dtype": cfg.kv_cache_dtype}
    if cfg.spec_tokens > 0:
        w, kv = draft_memory(cfg.model, cfg.spec_draft, cfg.tensor_parallel_size,
                             weight_dtype=cfg.weight_dtype, kv_dtype=cfg.kv_cache_dtype)
        out.update(extra_weight_bytes=w, extra_kv_bytes_per_token=kv)
    if cfg.attention_dp > 1:  # experts spread over the expert group (catalog/moe.py)
        out["attention_dp"] = cfg.attention_dp
    return out


def slot_bound(cfg: DeploymentConfig, derived: DerivedConfig) -> int:
    """Most requests one replica can hold at once under ``cfg``'s policy."""
    return max(policies.get(cfg.replica_scheduler).slot_bound(cfg, derived), disagg.slot_bound(cfg))


def table_spec_for(cfgs: Sequence[DeploymentConfig], num_slots: int) -> TableSpec:
    """Table extents covering every batch the configs can form (grown on overflow)."""
    max_tokens = max(c.max_tokens for c in cfgs)
    # a speculative verify step carries k + 1 tokens per decode
    batch_tokens = max(policies.get(c.replica_scheduler).batch_token_bound(c, num_slots) + num_slots * c.spec_tokens
                       for c in cfgs)
    batch_tokens = min(batch_tokens, num_slots * max_tokens)
    return TableSpec(
        max_batch_tokens=int(batch_tokens),
        max_decode_batch=int(num_slots),
        max_kv=int(max_tokens + 64),
        max_prefill_kv=int(2 * max_tokens),
        max_chunk=int(min(batch_tokens, 2 * max_tokens)),
    )


#: Tabulated slabs per predictor object (by identity: predictors need not be hashable),
#: by (spec, TP, PP). Tabulating runs the predictors over every grid point (~8 ms for
#: Llama-2-7B), which repeated calls on one config would redo.
_SLABS: dict[int, tuple[weakref.ref, dict[tuple, dict[str, np.ndarray]]]] = {}


def _tabulated(predictor: PredictorLike, spec: TableSpec, tp: int, pp: int) -> dict[str, np.ndarray]:
    """:func:`tabulate_one`, cached per predictor object (a fresh dict of read-only arrays)."""
    entry = _SLABS.get(id(predictor))
    if entry is None or entry[0]() is not predictor:  # new, or a dead object's id reused
        try:
            entry = _SLABS[id(predictor)] = (weakref.ref(predictor), {})
        except TypeError:  # not weak-referenceable: no cache
            return tabulate_one(predictor, spec, tp, pp)
    slabs = entry[1]
    if (spec, tp, pp) not in slabs:
        slab = tabulate_one(predictor, spec, tp, pp)
        for table in slab.values():
            table.setflags(write=False)
        slabs[(spec, tp, pp)] = slab
    return dict(slabs[(spec, tp, pp)])


def build_tables(
    cfgs: Sequence[DeploymentConfig],
    spec: TableSpec,
    predictor_for: Callable[[DeploymentConfig], PredictorLike],
) -> tuple[TimingTables, list[int]]:
    """Tabulate each distinct predictor bundle once; return tables and each config's row.

    A config at another precision or verify width gets its bundle's tables scaled
    (:func:`vidur_jax.sim.precision.scale_slab`); a speculative config's row is a
    :class:`TableRow` whose ``draft`` is the row timing its draft."""
    keys: dict[tuple, int] = {}
    slabs = []

    def row_of(c: DeploymentConfig, lookup: Callable[[DeploymentConfig], PredictorLike]) -> int:
        if c.bundle_key not in keys:
            keys[c.bundle_key] = len(slabs)
            slab = _tabulated(lookup(c), spec, c.tensor_parallel_size, c.num_pipeline_stages)
            slab = precision.scale_slab(slab, (spec.token_step, spec.kv_step, spec.chunk_step), c.model, c.device,
                                        c.tensor_parallel_size, *c.timing_variant)
            if precision.is_scaled(*c.timing_variant):  # said where the user reads it (and in op_times)
                warnings.warn(f"{c.model} on {c.device} tp={c.tensor_parallel_size}: op times are "
                              f"{precision.describe(*c.timing_variant)}", stacklevel=2)
            slab["cpu_overhead"] = cpu_overhead.table(c.model, c.network_device, c.tensor_parallel_size,
                                                      spec.max_decode_batch, c.cpu_overhead_dir)
            slabs.append(slab)
        return keys[c.bundle_key]

    index: list[int] = []
    for c in cfgs:
        row = row_of(c, predictor_for)
        if c.spec_tokens > 0:
            row = TableRow(row, row_of(speculative.draft_config(c), speculative.draft_predictor(predictor_for)))
        if disagg_pools.has_pool_hardware(c):  # each pool's replicas read their pool's row
            row = TableRow(row, row, tuple(row_of(disagg_pools.pool_config(c, p), predictor_for)
                                           for p in disagg_pools.POOLS))
        index.append(row)
    return stack_tables(slabs, spec), index


class TableRow(int):
    """A config's row of the timing tables (an ``int``) that also names the row timing
    its speculative-decoding draft (``draft``; the row itself when there is none) and the
    rows of its prefill and decode pools (``pools``; empty without pool hardware)."""

    draft: int
    pools: tuple[int, ...]

    def __new__(cls, row: int, draft: int, pools: tuple[int, ...] = ()) -> TableRow:
        obj = super().__new__(cls, row)
        obj.draft = int(draft)
        obj.pools = tuple(int(p) for p in pools)
        return obj


def max_steps_for(workload: Workload) -> int:
    """A step budget no valid run reaches (every replica step makes progress)."""
    valid = np.asarray(workload.mask)
    tokens = int(np.asarray(workload.num_prefill)[valid].sum() + np.asarray(workload.num_decode)[valid].sum())
    return 8 * tokens + 8 * int(valid.sum()) + 1000


def prefix_static(
    cfgs: Sequence[DeploymentConfig], derived: Sequence[DerivedConfig], workloads: Sequence[Workload]
) -> dict[str, int]:
    """``SimStatic`` prefix-cache fields of one call: the table holds a replica's KV
    blocks (the largest ``num_blocks`` of the configs with ``prefix_caching``), K the
    widest ``prefix_hashes`` of their workloads; both 0 when no config caches."""
    on = [(d, w) for c, d, w in zip(cfgs, derived, workloads, strict=True) if c.prefix_caching]
    for c, w in zip(cfgs, workloads, strict=True):
        require(not c.prefix_caching or w.prefix_hashes is not None,
                "prefix_caching needs a workload with shared prefixes (workload.system_prompt or a trace with "
                "prefix ids); this workload has none")
    if not on:
        return {"prefix_capacity": 0, "prefix_blocks": 0}
    return {
        "prefix_capacity": max(d.num_blocks for d, _ in on),
        "prefix_blocks": max(max(int(np.shape(w.prefix_hashes)[1]) for _, w in on), 1),
    }


def _prefix_hashes(cfg: DeploymentConfig, workload: Workload, num_requests: int, k: int) -> np.ndarray:
    """(num_requests, k) i64 block hashes; all -1 (never a hit) for a config without caching."""
    out = np.full((num_requests, k), -1, np.int64)
    if not cfg.prefix_caching or k == 0:
        return out
    require(workload.prefix_block_size == cfg.block_size,
            f"workload prefix hashes are for block_size={workload.prefix_block_size}, "
            f"the config has block_size={cfg.block_size}")
    h = np.asarray(workload.prefix_hashes, np.int64)
    mask = np.asarray(workload.mask)
    out[: h.shape[0], : h.shape[1]] = np.where(mask[:, None], h, -1)[:, :k]
    return out


def build_params(
    cfg: DeploymentConfig,
    derived: DerivedConfig,
    workload: Workload,
    table_index: int,
    num_requests: int,
    prefix_blocks: int = 0,
    with_sessions: bool = False,
) -> SimParams:
    """Host-side :class:`SimParams` (numpy leaves) of one config, padded to ``num_requests``
    (``prefix_blocks``: K, columns of ``prefix_hashes``; ``SimStatic.prefix_blocks``;
    ``with_sessions``: ``SimStatic.session_capacity > 0``)."""
    n = workload.num_requests
    require(n <= num_requests, f"workload has {n} requests > capacity {num_requests}")
    pad = num_requests - n
    mask = np.asarray(workload.mask)
    arrived = np.where(mask, np.asarray(workload.arrived_at, np.float64), np.inf)
    prefill = np.where(mask, np.asarray(workload.num_prefill), 0).astype(np.int32)
    decode = np.where(mask, np.asarray(workload.num_decode), 0).astype(np.int32)
    seqs = np.ones(n, np.int32) if workload.num_seqs is None else np.asarray(workload.num_seqs, np.int32)
    seqs = np.where(mask, seqs, 1)
    require(bool(np.all(np.diff(arrived[mask]) >= 0)), "workload arrivals must be sorted by time")
    rng = np.random.default_rng(cfg.seed)
    route = rng.integers(0, disagg.entry_count(cfg), size=num_requests).astype(np.int32)
    op_scale = np.full(len(TOKEN_OPS), cfg.compute_scale, np.float32)
    for name in ("all_reduce", "send_recv"):
        op_scale[TOKEN_OPS.index(name)] = 1.0 / cfg.network_scale
    f32, i32 = np.float32, np.int32
    spec = speculative.params_fields(cfg, decode, mask)
    decode = spec["num_decode"]  # speculative: verify steps + 1, else unchanged
    width = s3.bucket_width(cfg.max_tokens, cfg.s3_num_buckets)
    pred = s3.predict_buckets(cfg.s3_predictor, prefill, decode, mask, width, cfg.s3_num_buckets,
                              cfg.s3_accuracy, cfg.s3_error_buckets, cfg.seed)
    return SimParams(
        arrived_at=np.concatenate([arrived, np.full(pad, np.inf)]),
        num_prefill=np.concatenate([prefill, np.zeros(pad, i32)]),
        num_decode=np.concatenate([decode, np.zeros(pad, i32)]),
        num_seqs=np.concatenate([seqs, np.ones(pad, i32)]),
        num_valid=i32(mask.sum()),
        random_route=route,
        affinity_imbalance=i32(cfg.affinity_imbalance),
        prefix_hashes=_prefix_hashes(cfg, workload, num_requests, prefix_blocks),
        **sessions.param_fields(workload, num_requests, with_sessions),
        num_replicas=i32(cfg.num_replicas),
        num_stages=i32(cfg.num_pipeline_stages),
        layers_per_stage=f32(derived.layers_per_stage),
        table_index=i32(table_index),
        **disagg.param_fields(cfg, derived, table_index, derive),
        batch_cap=i32(cfg.batch_size_cap),
        max_batch_size=i32(derived.max_batch_size),
        max_micro_batch=i32(derived.max_micro_batch),
        chunk_size=i32(cfg.chunk_size),
        max_tokens_in_batch=i32(cfg.max_tokens_in_batch),
        max_waiting_iters=i32(cfg.max_waiting_iters),
        num_blocks=i32(derived.num_blocks),
        block_size=i32(cfg.block_size),
        watermark_blocks=i32(derived.watermark_blocks),
        max_blocks_per_seq=i32(derived.max_blocks_per_seq),
        batch_timeout=np.float64(cfg.batch_timeout_s),
        batch_max_tokens=i32(cfg.batch_max_tokens),
        pred_bucket=np.concatenate([pred, np.zeros(pad, i32)]),
        bucket_tokens=i32(width),
        num_buckets=i32(cfg.s3_num_buckets),
        s3_first_fit=np.bool_(cfg.s3_admission == "dff"),
        s3_lookahead=i32(cfg.s3_lookahead),
        max_tokens=i32(cfg.max_tokens),
        gqa_overhead=f32(derived.gqa_overhead),
        op_scale=op_scale,
        attn_scale=f32(cfg.attn_scale * cfg.compute_scale),
        cpu_overhead_ms=f32(cfg.cpu_overhead_ms),
        cpu_overhead_on=f32(1.0 if cfg.cpu_overhead else 0.0),
        flops_per_token=f32(derived.flops_per_token),
        attn_flops_coef=f32(derived.attn_flops_coef),
        peak_flops=f32(derived.peak_flops),
        max_steps=np.int64(max_steps_for(workload)),
        spec_k=i32(cfg.spec_tokens),
        spec_gain=np.concatenate([spec["spec_gain"], np.ones(pad, f32)]),
        draft_table_index=i32(getattr(table_index, "draft", table_index)),
        draft_layers=f32(speculative.draft_layers(cfg) if cfg.spec_tokens > 0 else 0),
        draft_flops_per_token=f32(catalog.flops_per_token(catalog.get_model(speculative.draft_config(cfg).model),
                                                          cfg.tensor_parallel_size)
                                  if cfg.spec_tokens > 0 else 0.0),
        draft_lm_head_scale=f32(speculative.lm_head_scale(cfg) if cfg.spec_tokens > 0 else 0.0),
    )


def stack_params(params: Sequence[SimParams]) -> SimParams:
    """Stack per-config params along a new leading axis (as device arrays, one transfer)."""
    return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *params))


def make_static(
    cfgs: Sequence[DeploymentConfig],
    derived: Sequence[DerivedConfig],
    num_requests: int,
    num_slots: int | None = None,
    num_tbt_bins: int = 2048,
    window: int | None = None,
    initial_slots: int = 32,
) -> SimStatic:
    """The shared :class:`SimStatic` of configs with one policy and one router."""
    schedulers = {c.replica_scheduler for c in cfgs}
    routers = {c.global_scheduler for c in cfgs}
    if len(schedulers) != 1 or len(routers) != 1:
        raise ConfigError(
            f"one simulation call needs one replica_scheduler and one global_scheduler; got "
            f"{sorted(schedulers)} and {sorted(routers)} (run them as separate jobs)"
        )
    if num_slots is None:
        # start small (per-step cost is O(slots)); the host doubles it on overflow
        num_slots = max(slot_bound(c, d) for c, d in zip(cfgs, derived, strict=True))
        num_slots = int(min(num_slots, num_requests, initial_slots))
    num_slots = max(8, int(math.ceil(num_slots / 8) * 8))
    window = int(min(window or 16, num_slots))
    # a policy may need to see more queued requests than the window would hold
    window = max([window, *(policies.get(c.replica_scheduler).min_window(c) for c in cfgs)])
    spec = any(c.spec_tokens > 0 for c in cfgs)
    return SimStatic(
        speculative=spec,
        # one engine iteration per verify step: fused runs assume one token per iteration
        **({"fuse_iters": 1} if spec else {}),
        policy=schedulers.pop(),
        router=routers.pop(),
        num_requests=int(num_requests),
        num_slots=num_slots,
        max_replicas=max(c.num_replicas for c in cfgs),
        max_stages=max(disagg_pools.max_pp(c) for c in cfgs),
        num_tbt_bins=num_tbt_bins,
        window=window,
        disagg=any(c.prefill_replicas > 0 for c in cfgs),
    )
