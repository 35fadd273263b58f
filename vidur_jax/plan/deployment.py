"""A sweep point's deployment: its knobs read and checked with JAX-free code, then built
into a :class:`~vidur_jax.sim.build.DeploymentConfig` (which imports JAX).

:func:`check_deployment` runs the checks of ``DeploymentConfig.validate`` (names, ranges,
parallelism, context length) on the plain knob dict, and :func:`check_fits` the memory
planner's "does the model fit", so a bad config is refused before JAX is imported. ``validate`` still runs when
the config is built; ``tests/test_app.py`` holds the two lists of allowed names equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vidur_jax import catalog
from vidur_jax.errors import require
from vidur_jax.plan.tree import CONF_DIR, data_root, group, read_bool, read_float, read_int
from vidur_jax.sim.conf_defaults import value as _conf  # JAX-free: plain YAML

#: Replica schedulers: one ``conf/scheduler/<name>.yaml`` each (its ``replica_scheduler``),
#: the same names as the policy modules of :mod:`vidur_jax.sim.policies` (tested).
REPLICA_SCHEDULERS = tuple(
    sorted(
        _conf("scheduler", "replica_scheduler", path.stem)
        for path in (CONF_DIR / "scheduler").glob("*.yaml")
    )
)
#: Global schedulers (``vidur_jax.sim.types.ROUTERS``).
GLOBAL_SCHEDULERS = ("round_robin", "random", "lor", "prefix_affinity")
#: S3 output-length predictors (``vidur_jax.sim.s3.PREDICTORS``).
S3_PREDICTORS = ("oracle", "confusion", "learned")
#: S3 admission rules (``vidur_jax.sim.build.S3_ADMISSIONS``).
S3_ADMISSIONS = ("dff", "fcfs")
_POSITIVE_INTS = (
    "tensor_parallel_size",
    "num_pipeline_stages",
    "num_replicas",
    "batch_size_cap",
    "block_size",
    "chunk_size",
    "max_tokens_in_batch",
    "max_tokens",
    "max_waiting_iters",
    "batch_max_tokens",
    "s3_num_buckets",
    "s3_lookahead",
    "s3_error_buckets",
)


def deployment_fields(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The ``DeploymentConfig`` keyword arguments of one (swept) config tree, typed.

    Raises:
        ConfigError: a missing group, unknown key or a value of the wrong type.
    """
    model, hw, cl = group(tree, "model"), group(tree, "hardware"), group(tree, "cluster")
    sch, pred, wl = group(tree, "scheduler"), group(tree, "predictor"), group(tree, "workload")
    require("name" in model, "model.name is missing")
    spec = group(tree, "speculative") if "speculative" in tree else {}
    num_blocks = sch.get("num_blocks")
    return dict(
        model=model["config"] if model.get("config") else model["name"],
        device=hw["device"],
        network_device=hw["network_device"],
        tensor_parallel_size=read_int("cluster.tp", cl["tp"]),
        num_pipeline_stages=read_int("cluster.pp", cl["pp"]),
        **_pool_fields(cl),
        global_scheduler=cl["global_scheduler"],
        affinity_imbalance=read_int(
            "cluster.affinity_imbalance", cl.get("affinity_imbalance", _conf("cluster", "affinity_imbalance"))
        ),
        replica_scheduler=sch["replica_scheduler"],
        batch_size_cap=read_int("scheduler.batch_size_cap", sch["batch_size_cap"]),
        block_size=read_int("scheduler.block_size", sch["block_size"]),
        watermark_blocks_fraction=read_float(
            "scheduler.watermark_blocks_fraction", sch["watermark_blocks_fraction"]
        ),
        chunk_size=read_int("scheduler.chunk_size", sch["chunk_size"]),
        max_tokens_in_batch=read_int("scheduler.max_tokens_in_batch", sch["max_tokens_in_batch"]),
        max_waiting_iters=read_int("scheduler.max_waiting_iters", sch["max_waiting_iters"]),
        memory_margin_fraction=read_float(
            "scheduler.memory_margin_fraction", sch["memory_margin_fraction"]
        ),
        max_tokens=read_int("workload.max_tokens", wl["max_tokens"]),
        num_blocks=None if num_blocks is None else read_int("scheduler.num_blocks", num_blocks),
        vidur_compat_memory=bool(
            sch.get("vidur_compat_memory", _conf("scheduler", "vidur_compat_memory"))
        ),
        prefix_caching=read_bool(
            "scheduler.prefix_caching", sch.get("prefix_caching", _conf("scheduler", "prefix_caching"))
        ),
        batch_timeout_s=read_float(
            "scheduler.batch_timeout_s",
            sch.get("batch_timeout_s", _conf("scheduler", "batch_timeout_s", "static_batching")),
        ),
        batch_max_tokens=read_int(
            "scheduler.batch_max_tokens",
            sch.get("batch_max_tokens", _conf("scheduler", "batch_max_tokens", "static_batching")),
        ),
        s3_predictor=str(sch.get("s3_predictor", _conf("scheduler", "s3_predictor", "s3"))),
        s3_accuracy=read_float(
            "scheduler.s3_accuracy", sch.get("s3_accuracy", _conf("scheduler", "s3_accuracy", "s3"))
        ),
        s3_error_buckets=read_int(
            "scheduler.s3_error_buckets",
            sch.get("s3_error_buckets", _conf("scheduler", "s3_error_buckets", "s3")),
        ),
        s3_num_buckets=read_int(
            "scheduler.s3_num_buckets",
            sch.get("s3_num_buckets", _conf("scheduler", "s3_num_buckets", "s3")),
        ),
        s3_admission=str(sch.get("s3_admission", _conf("scheduler", "s3_admission", "s3"))),
        s3_lookahead=read_int(
            "scheduler.s3_lookahead",
            sch.get("s3_lookahead", _conf("scheduler", "s3_lookahead", "s3")),
        ),
        cpu_overhead_ms=read_float("predictor.cpu_overhead_ms", pred["cpu_overhead_ms"]),
        cpu_overhead=read_bool(
            "predictor.cpu_overhead", pred.get("cpu_overhead", _conf("predictor", "cpu_overhead"))
        ),
        cpu_overhead_dir=data_root(tree),
        attn_scale=read_float("predictor.attn_scale", pred["attn_scale"]),
        compute_scale=read_float("predictor.compute_scale", pred["compute_scale"]),
        network_scale=read_float("predictor.network_scale", pred["network_scale"]),
        expert_parallel=read_int("cluster.ep", cl.get("ep", 1)),
        attention_dp=read_int("cluster.attention_dp", cl.get("attention_dp", 1)),
        moe_imbalance=read_float("predictor.moe_imbalance", pred.get("moe_imbalance", 1.0)),
        seed=read_int("seed", tree.get("seed", _conf("", "seed"))),
        weight_dtype=str(model.get("weight_dtype", _conf("model", "weight_dtype"))).lower(),
        kv_cache_dtype=str(model.get("kv_cache_dtype", _conf("model", "kv_cache_dtype"))).lower(),
        spec_tokens=read_int("speculative.num_tokens", spec.get("num_tokens", _conf("speculative", "num_tokens"))),
        spec_acceptance=read_float(
            "speculative.acceptance", spec.get("acceptance", _conf("speculative", "acceptance"))
        ),
        spec_acceptance_spread=read_float(
            "speculative.acceptance_spread",
            spec.get("acceptance_spread", _conf("speculative", "acceptance_spread")),
        ),
        spec_draft=str(spec.get("draft", _conf("speculative", "draft"))),
    )


def _pool_fields(cl: Mapping[str, Any]) -> dict[str, Any]:
    """Disaggregated pools (docs/disaggregation.md): both counts > 0 make ``num_replicas``
    their sum (whatever ``cluster.num_replicas`` says); 0 and 0 leave it."""
    p = read_int("cluster.prefill_replicas", cl.get("prefill_replicas", _conf("cluster", "prefill_replicas")))
    d = read_int("cluster.decode_replicas", cl.get("decode_replicas", _conf("cluster", "decode_replicas")))
    out = {
        "num_replicas": p + d if p > 0 and d > 0 else read_int("cluster.num_replicas", cl["num_replicas"]),
        "prefill_replicas": p,
        "decode_replicas": d,
        "kv_inter_node_gbps": read_float(
            "cluster.kv_inter_node_gbps", cl.get("kv_inter_node_gbps", _conf("cluster", "kv_inter_node_gbps"))),
        "kv_transfer_latency_s": read_float(
            "cluster.kv_transfer_latency_s",
            cl.get("kv_transfer_latency_s", _conf("cluster", "kv_transfer_latency_s"))),
    }
    for pool in ("prefill", "decode"):
        cap = cl.get(f"{pool}_batch_cap", _conf("cluster", f"{pool}_batch_cap"))
        out[f"{pool}_batch_cap"] = None if cap is None else read_int(f"cluster.{pool}_batch_cap", cap)
        tp = cl.get(f"{pool}_tp", _conf("cluster", f"{pool}_tp"))
        out[f"{pool}_tp"] = None if tp is None else read_int(f"cluster.{pool}_tp", tp)
        pp = cl.get(f"{pool}_pp", _conf("cluster", f"{pool}_pp"))
        out[f"{pool}_pp"] = None if pp is None else read_int(f"cluster.{pool}_pp", pp)
        for key in ("tp", "pp"):  # before GPUs and cost are counted from them
            v = out[f"{pool}_{key}"]
            require(v is None or v >= 1, f"cluster.{pool}_{key}={v!r} must be null or an integer >= 1")
        device = cl.get(f"{pool}_device", _conf("cluster", f"{pool}_device"))
        out[f"{pool}_device"] = None if device is None else str(device).lower()
    return out


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    require(value in allowed, f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


#: replica schedulers that model prefix caching (``Policy.prefix_caching``; a test keeps
#: this JAX-free copy equal to the policies' flags)
PREFIX_CACHING_SCHEDULERS = ("vllm", "sarathi")


def check_deployment(f: Mapping[str, Any]) -> None:
    """Refuse a bad deployment (fields of :func:`deployment_fields`) with one line.

    Raises:
        ConfigError: unknown scheduler / model / GPU / node, a value out of range, TP not
            dividing the heads, PP not dividing the layers or a context longer than the
            model's.
    """
    _one_of("replica_scheduler", f["replica_scheduler"], REPLICA_SCHEDULERS)
    _one_of("global_scheduler", f["global_scheduler"], GLOBAL_SCHEDULERS)
    require(f.get("affinity_imbalance", 0) >= 0,
            f"cluster.affinity_imbalance={f.get('affinity_imbalance')!r} must be an integer >= 0")
    model = catalog.get_model(f["model"])
    catalog.get_device(f["device"])
    catalog.get_node(f["network_device"])
    for name in _POSITIVE_INTS:
        require(f[name] >= 1, f"{name}={f[name]!r} must be an integer >= 1")
    require(
        0.0 <= f["watermark_blocks_fraction"] < 1.0,
        f"watermark_blocks_fraction={f['watermark_blocks_fraction']} must be in [0, 1)",
    )
    require(
        0.0 <= f["memory_margin_fraction"] < 1.0,
        f"scheduler.memory_margin_fraction={f['memory_margin_fraction']} must be in [0, 1)",
    )
    for name in ("attn_scale", "compute_scale", "network_scale"):
        require(f[name] > 0, f"{name}={f[name]} must be > 0")
    require(
        f["batch_timeout_s"] >= 0 and math.isfinite(f["batch_timeout_s"]),
        f"batch_timeout_s={f['batch_timeout_s']} must be a finite number >= 0",
    )
    _one_of("s3_predictor", f["s3_predictor"], S3_PREDICTORS)
    require(0.0 <= f["s3_accuracy"] <= 1.0, f"s3_accuracy={f['s3_accuracy']} must be in [0, 1]")
    _one_of("s3_admission", f["s3_admission"], S3_ADMISSIONS)
    require(f["cpu_overhead_ms"] >= 0, f"cpu_overhead_ms={f['cpu_overhead_ms']} must be >= 0")
    tp, pp = f["tensor_parallel_size"], f["num_pipeline_stages"]
    catalog.validate_parallelism(model, tp, pp)
    catalog.validate_max_tokens(model, f["max_tokens"])
    catalog.validate_expert_parallel(model, tp, f.get("expert_parallel", 1), f.get("attention_dp", 1))
    require(
        f.get("moe_imbalance", 1.0) >= 1.0,
        f"predictor.moe_imbalance={f.get('moe_imbalance')} must be >= 1 (busiest EP rank / mean)",
    )
    require(
        f["replica_scheduler"] != "lightllm" or pp == 1,
        "replica_scheduler=lightllm does not support pipeline parallelism (num_pipeline_stages must be 1)",
    )
    for key, name in (("weight_dtype", "model.weight_dtype"), ("kv_cache_dtype", "model.kv_cache_dtype")):
        _one_of(name, f.get(key, "bf16"), tuple(catalog.memory.DTYPE_BYTES))
    check_speculative(f)
    require(
        not f.get("prefix_caching") or f["replica_scheduler"] in PREFIX_CACHING_SCHEDULERS,
        f"replica_scheduler={f['replica_scheduler']} does not support prefix_caching yet "
        f"(supported: {', '.join(PREFIX_CACHING_SCHEDULERS)})",
    )


#: replica schedulers whose speculative decoding is modelled (they never read a request's
#: total length, which the verify-step engine counts in steps)
SPECULATIVE_SCHEDULERS = ("vllm", "sarathi")


def check_speculative(f: Mapping[str, Any]) -> None:
    """Refuse bad speculative-decoding knobs (fields of :func:`deployment_fields`).

    Raises:
        ConfigError: negative k, alpha outside [0, 1), a spread no Beta distribution has,
            pipeline parallelism, an unsupported scheduler or a draft the TP cannot split.
    """
    k = f.get("spec_tokens", 0)
    require(k >= 0, f"speculative.num_tokens={k!r} must be an integer >= 0")
    if k == 0:
        return
    a, s = f["spec_acceptance"], f["spec_acceptance_spread"]
    require(0.0 <= a < 1.0, f"speculative.acceptance={a} must be in [0, 1)")
    require(s >= 0.0, f"speculative.acceptance_spread={s} must be >= 0")
    require(s == 0.0 or s * s < a * (1.0 - a),
            f"speculative.acceptance_spread={s} must be below sqrt(alpha (1 - alpha)) = "
            f"{math.sqrt(a * (1.0 - a)):.3f} (no Beta distribution has a larger spread)")
    require(f["num_pipeline_stages"] == 1,
            "speculative decoding is modelled without pipeline parallelism (num_pipeline_stages must be 1)")
    require(f["replica_scheduler"] in SPECULATIVE_SCHEDULERS,
            f"replica_scheduler={f['replica_scheduler']} does not support speculative decoding "
            f"(supported: {', '.join(SPECULATIVE_SCHEDULERS)})")
    if f["spec_draft"] != catalog.memory.EAGLE_DRAFT:
        catalog.validate_parallelism(catalog.get_model(f["spec_draft"]), f["tensor_parallel_size"], 1)


def _memory_knobs(f: Mapping[str, Any]) -> dict[str, Any]:
    """Precision and draft keywords of the memory planner (as ``build.memory_knobs``)."""
    out = {"weight_dtype": f.get("weight_dtype", "bf16"), "kv_dtype": f.get("kv_cache_dtype", "bf16")}
    if f.get("spec_tokens", 0) > 0:
        w, kv = catalog.memory.draft_memory(f["model"], f["spec_draft"], f["tensor_parallel_size"],
                                            weight_dtype=out["weight_dtype"], kv_dtype=out["kv_dtype"])
        out.update(extra_weight_bytes=w, extra_kv_bytes_per_token=kv)
    return out


def check_fits(f: Mapping[str, Any]) -> None:
    """Refuse a deployment (checked fields) whose model does not fit in GPU memory.

    Separate from :func:`check_deployment`: a search's base config may not fit, its grid
    points are sized apart.

    Raises:
        ConfigError: "model does not fit in GPU memory" (what it needs and has).
    """
    catalog.max_batch_size(
        catalog.get_model(f["model"]),
        catalog.get_device(f["device"]),
        f["tensor_parallel_size"],
        f["num_pipeline_stages"],
        f["max_tokens"],
        f["memory_margin_fraction"],
        vidur_compat=f["vidur_compat_memory"],
        **_memory_knobs(f),
    )


def deployment_from(tree: Mapping[str, Any]):
    """The validated :class:`~vidur_jax.sim.build.DeploymentConfig` of one config tree."""
    fields = deployment_fields(tree)
    check_deployment(fields)
    from vidur_jax.sim.build import DeploymentConfig

    cfg = DeploymentConfig(**fields)
    cfg.validate()
    return cfg
