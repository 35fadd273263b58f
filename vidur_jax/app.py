"""The edge between configuration and library: config tree -> plan -> run -> run dir.

A composed config (Hydra ``DictConfig`` or a plain nested dict with the layout of
``vidur_jax/conf/config.yaml``) is converted **once** by :func:`plan_from_config` into a
:class:`RunPlan`: a tuple of :class:`~vidur_jax.sim.build.DeploymentConfig`, one
:class:`~vidur_jax.workload.Workload` per config, and per-config labels (qps, workload
name, price). The numeric ``sweep`` axes are expanded here, so every point of a sweep
runs in one :func:`~vidur_jax.sim.run.simulate_configs` call (one ``jit(vmap)`` per
replica scheduler). Nothing below this module sees the config tree.

Only ``omegaconf`` is imported here; Hydra itself is imported lazily by
:func:`compose` (the Python API) and by ``vidur_jax.__main__``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidur_jax.errors import ConfigError, require

#: Folder holding the Hydra config groups (shipped as package data).
CONF_DIR = Path(__file__).resolve().parent / "conf"

#: Leading ``summary.csv`` columns: the knobs of each config (DESIGN.md section 5).
SUMMARY_KNOBS = (
    "config_id",
    "model",
    "device",
    "tp",
    "pp",
    "replicas",
    "scheduler",
    "batch_cap",
    "chunk_size",
    "qps",
    "seed",
    "global_scheduler",
    "network_device",
    "block_size",
    "max_tokens_in_batch",
    "watermark_blocks_fraction",
    "max_tokens",
    "workload",
    "num_gpus",
    "price_per_hour",
    "cost_per_hour",
)
#: Metric columns of ``summary.csv`` in seconds / counts (DESIGN.md section 5), in order.
SUMMARY_METRICS = (
    *(
        f"{m}_{q}"
        for m in ("ttft", "tbt", "e2e", "norm_e2e", "sched_delay")
        for q in ("p50", "p90", "p99")
    ),
    "throughput_rps",
    "throughput_tps",
    "num_completed",
    "num_restarts",
    "mfu_mean",
    "kv_util_mean",
    "batch_size_mean",
    "makespan_s",
)

# Keys each config group may hold (a typo is an error, not a silently ignored knob).
GROUP_KEYS: dict[str, frozenset[str]] = {
    "model": frozenset({"name"}),
    "hardware": frozenset({"device", "network_device", "price_per_hour"}),
    "cluster": frozenset({"tp", "pp", "num_replicas", "global_scheduler"}),
    "scheduler": frozenset(
        {
            "replica_scheduler",
            "batch_size_cap",
            "block_size",
            "watermark_blocks_fraction",
            "chunk_size",
            "max_tokens_in_batch",
            "max_waiting_iters",
            "memory_margin_fraction",
            "num_blocks",
            "vidur_compat_memory",
            "batch_timeout_s",
            "batch_max_tokens",
            "s3_predictor",
            "s3_accuracy",
            "s3_error_buckets",
            "s3_num_buckets",
            "s3_admission",
            "s3_lookahead",
        }
    ),
    "predictor": frozenset(
        {"cpu_overhead_ms", "cpu_overhead", "attn_scale", "compute_scale", "network_scale"}
    ),
    "workload": frozenset(
        {
            "name",
            "kind",
            "num_requests",
            "qps",
            "max_tokens",
            "arrival",
            "lengths",
            "path",
            "prefill_scale_factor",
            "decode_scale_factor",
            "time_scale_factor",
            "num_seqs",
        }
    ),
}
# Other names a sweep may use for a knob.
SWEEP_ALIASES = {
    "tensor_parallel_size": "cluster.tp",
    "num_pipeline_stages": "cluster.pp",
    "replicas": "cluster.num_replicas",
    "batch_cap": "scheduler.batch_size_cap",
    "model": "model.name",
    "device": "hardware.device",
}
WORKLOAD_KINDS = ("synthetic", "replay")
RATE_ARRIVALS = ("poisson", "gamma")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything one run simulates, derived once from the config tree.

    Attributes:
        configs: one deployment per sweep point.
        workloads: the workload of each config (identical specs share one object).
        labels: per config, the ``summary.csv`` columns that are not deployment fields
            (``qps``, ``workload``, ``price_per_hour``).
        profiles_dir: Vidur data root to train predictors from; None = shipped params.
        name: run name.
        chrome_trace: also record every batch and write ``chrome_trace.json``
            (:mod:`vidur_jax.metrics.chrome_trace`).
        chunk_configs: configs per compiled call (None = as many as fit in memory).
    """

    configs: tuple[Any, ...]  # DeploymentConfig
    workloads: tuple[Any, ...]  # Workload
    labels: tuple[dict[str, Any], ...]
    profiles_dir: str | None
    name: str = "default"
    chrome_trace: bool = False
    chunk_configs: int | None = None


# ----------------------------------------------------------------------------- config


def to_container(cfg: Any) -> dict[str, Any]:
    """A resolved plain-dict copy of ``cfg`` (DictConfig or mapping), without ``hydra``."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, DictConfig):
        try:
            tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"config: {one_line(err)}") from None
    elif isinstance(cfg, Mapping):
        tree = copy.deepcopy(dict(cfg))
    else:
        raise ConfigError(f"expected a config mapping, got {type(cfg).__name__}")
    tree.pop("hydra", None)
    return tree


def one_line(err: BaseException) -> str:
    """The message of ``err`` squeezed onto one line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return "; ".join(lines) if lines else type(err).__name__


def _group(tree: Mapping[str, Any], name: str) -> dict[str, Any]:
    g = tree.get(name)
    require(isinstance(g, Mapping), f"config group '{name}' is missing (got {g!r})")
    unknown = sorted(set(g) - GROUP_KEYS[name])
    require(
        not unknown,
        f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
        f"allowed: {', '.join(sorted(GROUP_KEYS[name]))}",
    )
    return dict(g)


def _sweep_path(tree: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """Resolve a sweep knob (dotted path, alias or unique short key) to a path."""
    key = SWEEP_ALIASES.get(key, key)
    if "." in key:
        path = tuple(key.split("."))
        node: Any = tree
        for part in path[:-1]:
            require(
                isinstance(node, Mapping) and part in node,
                f"sweep knob '{key}' is not in the config",
            )
            node = node[part]
        require(
            isinstance(node, Mapping) and path[-1] in node,
            f"sweep knob '{key}' is not in the config",
        )
        return path
    if key in tree and not isinstance(tree[key], Mapping) and key not in ("sweep", "sweep_mode"):
        return (key,)
    hits = [g for g in GROUP_KEYS if isinstance(tree.get(g), Mapping) and key in tree[g]]
    require(
        len(hits) == 1,
        f"sweep knob '{key}' "
        + (
            f"is ambiguous ({', '.join(f'{g}.{key}' for g in hits)}); use the dotted name"
            if hits
            else "matches no config key; use a dotted name such as scheduler.chunk_size"
        ),
    )
    return (hits[0], key)


def _flatten(sweep: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{scheduler: {chunk_size: [..]}}`` (from ``+sweep.scheduler.chunk_size=``) ->
    ``{"scheduler.chunk_size": [..]}``."""
    out: dict[str, Any] = {}
    for key, value in sweep.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def expand_sweep(tree: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One config tree per sweep point (``sweep``/``sweep_mode``), the base tree if none.

    Raises:
        ConfigError: unknown knob, empty list, unknown mode or unequal zip lengths.
    """
    sweep = tree.get("sweep") or {}
    mode = tree.get("sweep_mode", "product")
    require(
        isinstance(sweep, Mapping), f"sweep must be a mapping {{knob: [values]}}, got {sweep!r}"
    )
    require(mode in ("product", "zip"), f"sweep_mode={mode!r}; allowed: product, zip")
    if not sweep:
        return [copy.deepcopy(dict(tree))]
    paths, values = [], []
    for key, vals in _flatten(sweep).items():
        paths.append(_sweep_path(tree, str(key)))
        vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
        require(len(vals) >= 1, f"sweep.{key} is an empty list")
        values.append(vals)
    if mode == "zip":
        lens = {len(v) for v in values}
        require(
            len(lens) == 1,
            "sweep_mode=zip needs lists of one length; got "
            + ", ".join(f"{'.'.join(p)}: {len(v)}" for p, v in zip(paths, values, strict=True)),
        )
        points = list(zip(*values, strict=True))
    else:
        points = list(itertools.product(*values))
    out = []
    for point in points:
        t = copy.deepcopy(dict(tree))
        for path, value in zip(paths, point, strict=True):
            node = t
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
        out.append(t)
    return out


def _int(name: str, value: Any) -> int:
    require(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool),
        f"{name}={value!r} must be an integer",
    )
    return int(value)


def _float(name: str, value: Any) -> float:
    try:
        require(not isinstance(value, bool), "")
        return float(value)
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(f"{name}={value!r} must be a number") from None


def _bool(name: str, value: Any) -> bool:
    require(isinstance(value, (bool, np.bool_)), f"{name}={value!r} must be true or false")
    return bool(value)


def _data_root(tree: Mapping[str, Any]) -> str | None:
    """Vidur data root searched for CPU-overhead profiles (profiles_dir, else data_dir)."""
    root = tree.get("profiles_dir") or tree.get("data_dir")
    if not isinstance(root, str) or not root:
        return None
    return os.path.abspath(os.path.expanduser(root))


def deployment_from(tree: Mapping[str, Any]):
    """The validated :class:`DeploymentConfig` of one (swept) config tree."""
    from vidur_jax.sim.build import DeploymentConfig

    model, hw, cl = _group(tree, "model"), _group(tree, "hardware"), _group(tree, "cluster")
    sch, pred, wl = _group(tree, "scheduler"), _group(tree, "predictor"), _group(tree, "workload")
    require("name" in model, "model.name is missing")
    num_blocks = sch.get("num_blocks")
    cfg = DeploymentConfig(
        model=model["name"],
        device=hw["device"],
        network_device=hw["network_device"],
        tensor_parallel_size=_int("cluster.tp", cl["tp"]),
        num_pipeline_stages=_int("cluster.pp", cl["pp"]),
        num_replicas=_int("cluster.num_replicas", cl["num_replicas"]),
        global_scheduler=cl["global_scheduler"],
        replica_scheduler=sch["replica_scheduler"],
        batch_size_cap=_int("scheduler.batch_size_cap", sch["batch_size_cap"]),
        block_size=_int("scheduler.block_size", sch["block_size"]),
        watermark_blocks_fraction=_float(
            "scheduler.watermark_blocks_fraction", sch["watermark_blocks_fraction"]
        ),
        chunk_size=_int("scheduler.chunk_size", sch["chunk_size"]),
        max_tokens_in_batch=_int("scheduler.max_tokens_in_batch", sch["max_tokens_in_batch"]),
        max_waiting_iters=_int("scheduler.max_waiting_iters", sch["max_waiting_iters"]),
        memory_margin_fraction=_float(
            "scheduler.memory_margin_fraction", sch["memory_margin_fraction"]
        ),
        max_tokens=_int("workload.max_tokens", wl["max_tokens"]),
        num_blocks=None if num_blocks is None else _int("scheduler.num_blocks", num_blocks),
        vidur_compat_memory=bool(sch.get("vidur_compat_memory", True)),
        batch_timeout_s=_float("scheduler.batch_timeout_s", sch.get("batch_timeout_s", 0.1)),
        batch_max_tokens=_int("scheduler.batch_max_tokens", sch.get("batch_max_tokens", 65536)),
        s3_predictor=str(sch.get("s3_predictor", "oracle")),
        s3_accuracy=_float("scheduler.s3_accuracy", sch.get("s3_accuracy", 1.0)),
        s3_error_buckets=_int("scheduler.s3_error_buckets", sch.get("s3_error_buckets", 1)),
        s3_num_buckets=_int("scheduler.s3_num_buckets", sch.get("s3_num_buckets", 10)),
        s3_admission=str(sch.get("s3_admission", "dff")),
        s3_lookahead=_int("scheduler.s3_lookahead", sch.get("s3_lookahead", 16)),
        cpu_overhead_ms=_float("predictor.cpu_overhead_ms", pred["cpu_overhead_ms"]),
        cpu_overhead=_bool("predictor.cpu_overhead", pred.get("cpu_overhead", False)),
        cpu_overhead_dir=_data_root(tree),
        attn_scale=_float("predictor.attn_scale", pred["attn_scale"]),
        compute_scale=_float("predictor.compute_scale", pred["compute_scale"]),
        network_scale=_float("predictor.network_scale", pred["network_scale"]),
        seed=_int("seed", tree.get("seed", 42)),
    )
    require(
        0.0 <= cfg.memory_margin_fraction < 1.0,
        f"scheduler.memory_margin_fraction={cfg.memory_margin_fraction} must be in [0, 1)",
    )
    cfg.validate()
    return cfg


def _path(value: Any, what: str) -> str:
    require(isinstance(value, str) and value, f"{what} must be a file path, got {value!r}")
    path = os.path.abspath(os.path.expanduser(value))
    require(
        os.path.isfile(path),
        f"{what}: file not found: {path} (set data_dir= or VIDUR_JAX_DATA to the Vidur data root)",
    )
    return path


def workload_spec(tree: Mapping[str, Any], check_files: bool = True) -> dict[str, Any]:
    """Checked, self-contained workload spec (absolute paths, qps injected, seed)."""
    path = _path if check_files else (lambda value, what: value)
    wl = _group(tree, "workload")
    kind = wl.get("kind", "synthetic")
    require(kind in WORKLOAD_KINDS, f"workload.kind={kind!r}; allowed: {', '.join(WORKLOAD_KINDS)}")
    spec: dict[str, Any] = {
        "kind": kind,
        "name": str(wl.get("name", kind)),
        "num_requests": _int("workload.num_requests", wl.get("num_requests")),
        "max_tokens": _int("workload.max_tokens", wl.get("max_tokens")),
        "seed": _int("seed", tree.get("seed", 42)),
        # parallel sampling / beam width per request: int or {kind: fixed|choice, ...}
        "num_seqs": wl.get("num_seqs"),
    }
    require(spec["num_requests"] >= 1, f"workload.num_requests={spec['num_requests']} must be >= 1")
    qps = wl.get("qps")
    if qps is not None:
        qps = _float("workload.qps", qps)
        require(qps > 0 and np.isfinite(qps), f"workload.qps={qps} must be > 0")
    spec["qps"] = qps
    if kind == "replay":
        spec["path"] = path(wl.get("path"), "workload.path")
        for k in ("prefill_scale_factor", "decode_scale_factor", "time_scale_factor"):
            spec[k] = _float(f"workload.{k}", wl.get(k, 1.0))
            require(spec[k] > 0, f"workload.{k}={spec[k]} must be > 0")
        return spec
    arrival = dict(wl.get("arrival") or {})
    lengths = dict(wl.get("lengths") or {})
    require("kind" in arrival, "workload.arrival.kind is missing (poisson, gamma, static, trace)")
    require("kind" in lengths, "workload.lengths.kind is missing (fixed, uniform, zipf, trace)")
    if arrival["kind"] in RATE_ARRIVALS:
        require(qps is not None, f"workload.qps is needed by {arrival['kind']} arrivals")
        arrival.setdefault("qps", qps)
    for part, what in ((arrival, "arrival"), (lengths, "lengths")):
        if part.get("kind") == "trace":
            part["path"] = path(part.get("path"), f"workload.{what}.path")
    spec["arrival"], spec["lengths"] = arrival, lengths
    return spec


def build_workload(spec: Mapping[str, Any]):
    """The :class:`Workload` of a :func:`workload_spec`."""
    import jax

    from vidur_jax import workload

    wl = _build_requests(spec)
    if spec.get("num_seqs") is not None:
        wl = workload.with_num_seqs(wl, spec["num_seqs"], jax.random.fold_in(jax.random.PRNGKey(spec["seed"]), 7))
    return wl


def _build_requests(spec: Mapping[str, Any]):
    import jax

    from vidur_jax import workload

    if spec["kind"] == "replay":
        return workload.load_trace(
            spec["path"],
            max_tokens=spec["max_tokens"],
            prefill_scale_factor=spec["prefill_scale_factor"],
            decode_scale_factor=spec["decode_scale_factor"],
            time_scale_factor=spec["time_scale_factor"],
            num_requests=spec["num_requests"],
        )
    return workload.synthetic(
        jax.random.PRNGKey(spec["seed"]),
        spec["num_requests"],
        spec["arrival"],
        spec["lengths"],
        spec["max_tokens"],
    )


def plan_from_config(cfg: Any) -> RunPlan:
    """Convert a composed config (DictConfig or dict) into a :class:`RunPlan`.

    This is the only place the config tree is read; it is copied, never mutated.

    Raises:
        ConfigError: any bad value (one line naming it and what is allowed).
    """
    from vidur_jax import catalog

    tree = to_container(cfg)
    # Check the base values too, so a bad override of a swept knob is not hidden by the sweep.
    deployment_from(tree)
    workload_spec(tree, check_files=False)
    points = expand_sweep(tree)
    configs, workloads, labels = [], [], []
    cache: dict[str, Any] = {}
    for t in points:
        dep = deployment_from(t)
        spec = workload_spec(t)
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = build_workload(spec)
        price = t["hardware"].get("price_per_hour")
        if price is None:
            price = catalog.get_device(dep.device).price_per_hour
        price = _float("hardware.price_per_hour", price)
        require(price >= 0, f"hardware.price_per_hour={price} must be >= 0")
        num_gpus = dep.tensor_parallel_size * dep.num_pipeline_stages * dep.num_replicas
        configs.append(dep)
        workloads.append(cache[key])
        labels.append(
            {
                "qps": spec["qps"] if spec["qps"] is not None else float("nan"),
                "workload": spec["name"],
                "num_gpus": num_gpus,
                "price_per_hour": price,
                "cost_per_hour": price * num_gpus,
            }
        )
    profiles_dir = tree.get("profiles_dir")
    if profiles_dir is not None:
        require(
            isinstance(profiles_dir, str), f"profiles_dir={profiles_dir!r} must be a path or null"
        )
        profiles_dir = os.path.abspath(os.path.expanduser(profiles_dir))
        require(os.path.isdir(profiles_dir), f"profiles_dir does not exist: {profiles_dir}")
    chrome_trace = tree.get("chrome_trace", False)
    require(
        isinstance(chrome_trace, bool), f"chrome_trace={chrome_trace!r} must be true or false"
    )
    chunk_configs = tree.get("chunk_configs")
    require(
        chunk_configs is None or (isinstance(chunk_configs, int) and chunk_configs >= 1),
        f"chunk_configs={chunk_configs!r} must be an integer >= 1 or null",
    )
    return RunPlan(
        tuple(configs),
        tuple(workloads),
        tuple(labels),
        profiles_dir,
        str(tree.get("name", "default")),
        chrome_trace,
        chunk_configs,
    )


# -------------------------------------------------------------------------------- run


def enable_compile_cache() -> None:
    """Use JAX's persistent compilation cache (``$VIDUR_JAX_CACHE/jax``, default
    ``~/.cache/vidur_jax/jax``) unless the user configured one or set
    ``VIDUR_JAX_COMPILE_CACHE=0``; repeat runs skip the simulator's compile."""
    import jax

    if (
        os.environ.get("VIDUR_JAX_COMPILE_CACHE", "1") == "0"
        or jax.config.jax_compilation_cache_dir
    ):
        return
    base = os.environ.get(
        "VIDUR_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vidur_jax")
    )
    jax.config.update("jax_compilation_cache_dir", os.path.join(base, "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def summary_table(plan: RunPlan, outputs: Sequence[Any]) -> pd.DataFrame:
    """``summary.csv``: knobs (:data:`SUMMARY_KNOBS`), metrics (:data:`SUMMARY_METRICS`),
    then the remaining summary statistics (means, busy fraction, ...)."""
    rows = []
    for i, (o, lab) in enumerate(zip(outputs, plan.labels, strict=True)):
        c = o.config
        row: dict[str, Any] = {
            "config_id": i,
            "model": c.model,
            "device": c.device,
            "tp": c.tensor_parallel_size,
            "pp": c.num_pipeline_stages,
            "replicas": c.num_replicas,
            "scheduler": c.replica_scheduler,
            "batch_cap": c.batch_size_cap,
            "chunk_size": c.chunk_size,
            "qps": lab["qps"],
            "seed": c.seed,
            "global_scheduler": c.global_scheduler,
            "network_device": c.network_device,
            "block_size": c.block_size,
            "max_tokens_in_batch": c.max_tokens_in_batch,
            "watermark_blocks_fraction": c.watermark_blocks_fraction,
            "max_tokens": c.max_tokens,
            "workload": lab["workload"],
            "num_gpus": lab["num_gpus"],
            "price_per_hour": lab["price_per_hour"],
            "cost_per_hour": lab["cost_per_hour"],
        }
        row.update({k: o.summary.get(k, float("nan")) for k in SUMMARY_METRICS})
        row.update({k: v for k, v in o.summary.items() if k not in row})
        rows.append(row)
    return pd.DataFrame(rows)


def run_plan(plan: RunPlan) -> tuple[pd.DataFrame, pd.DataFrame, list[Any]]:
    """Simulate every config of ``plan`` in one :func:`simulate_configs` call.

    Returns:
        ``(summary_df, requests_df, outputs)``.
    """
    from vidur_jax.sim.run import requests_frame, simulate_configs

    if plan.chrome_trace:
        from vidur_jax.metrics.chrome_trace import simulate_traced

        outputs = simulate_traced(
            list(plan.configs), list(plan.workloads), profiles_dir=plan.profiles_dir
        )
    else:
        outputs = simulate_configs(
            list(plan.configs),
            list(plan.workloads),
            profiles_dir=plan.profiles_dir,
            chunk_configs=plan.chunk_configs,
            progress=sys.stderr.isatty(),
        )
    return summary_table(plan, outputs), requests_frame(outputs), outputs


def write_outputs(
    out_dir: str | os.PathLike,
    summary_df: pd.DataFrame,
    requests_df: pd.DataFrame,
    outputs: Sequence[Any],
    plots: bool = True,
) -> list[Path]:
    """Write ``summary.csv``, ``requests.parquet`` and ``plots/*.png`` atomically, and
    ``chrome_trace.json`` when the outputs carry batch logs (``chrome_trace=true``)."""
    from vidur_jax import metrics

    out = Path(out_dir)
    written = [
        metrics.atomic_write_csv(summary_df, out / "summary.csv"),
        metrics.atomic_write_parquet(requests_df, out / "requests.parquet"),
    ]
    if any(getattr(o, "batch_log", None) is not None for o in outputs):
        from vidur_jax.metrics.chrome_trace import write_chrome_trace

        written.append(write_chrome_trace(outputs, out / "chrome_trace.json"))
    if plots:
        hist = {i: o.tbt_hist for i, o in enumerate(outputs)}
        written += metrics.plot_cdfs(requests_df, hist, out / "plots")
    return written


def print_summary(
    summary_df: pd.DataFrame, out_dir: str | os.PathLike | None, max_rows: int = 20
) -> None:
    """One-screen table of the main metrics (rich), plus where the files went."""
    from rich.console import Console
    from rich.table import Table

    cols = [
        ("config_id", "id"),
        ("scheduler", "sched"),
        ("tp", "tp"),
        ("pp", "pp"),
        ("replicas", "repl"),
        ("batch_cap", "cap"),
        ("chunk_size", "chunk"),
        ("qps", "qps"),
        ("ttft_p90", "ttft p90 s"),
        ("tbt_p99", "tbt p99 s"),
        ("e2e_p90", "e2e p90 s"),
        ("throughput_rps", "req/s"),
        ("num_completed", "done"),
    ]
    table = Table(title=f"{len(summary_df)} configuration(s)", title_justify="left")
    for _, head in cols:
        table.add_column(head, justify="right")
    for _, row in summary_df.head(max_rows).iterrows():
        cells = []
        for key, _ in cols:
            v = row[key]
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        table.add_row(*cells)
    console = Console(width=max(120, Console().width))
    console.print(table)
    if len(summary_df) > max_rows:
        console.print(f"... {len(summary_df) - max_rows} more rows in summary.csv")
    if out_dir is not None:
        console.print(f"wrote {Path(out_dir) / 'summary.csv'}, requests.parquet, plots/")


# ----------------------------------------------------------------------- Python API


def list_experiments() -> list[str]:
    """Names of the shipped experiments (``conf/experiment/*.yaml``)."""
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def compose(overrides: Sequence[str] = ()) -> Any:
    """Compose the packaged config with Hydra overrides (e.g. ``+experiment=quickstart``).

    Raises:
        ConfigError: unknown group option, experiment or key (one line).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    require(
        not isinstance(overrides, str),
        "overrides must be a list of strings such as ['+experiment=quickstart']",
    )
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(describe_hydra_error(err)) from None


def describe_hydra_error(err: BaseException) -> str:
    """One line for a Hydra composition error (unknown option lists the allowed ones)."""
    import re

    msg = str(err)
    m = re.search(r"Could not find '([^']+)/([^']+)'", msg)
    if m:
        group, option = m.group(1).lstrip("/"), m.group(2)
        options = getattr(err, "options", None) or sorted(
            p.stem for p in (CONF_DIR / group).glob("*.yaml")
        )
        what = "experiment" if group == "experiment" else f"{group} option"
        return f"unknown {what} '{option}'; available: {', '.join(options)}"
    return one_line(err)


def simulate(cfg_or_overrides: Any = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate a config and return its tables (no files written).

    Args:
        cfg_or_overrides: a list of Hydra override strings, e.g.
            ``["+experiment=quickstart", "scheduler=vllm", "workload.num_requests=100"]``
            (composed with the packaged ``conf/``), or an already composed
            ``DictConfig`` / plain dict with the same layout.

    Returns:
        ``(summary_df, requests_df)``: the ``summary.csv`` and ``requests.parquet``
        tables (DESIGN.md section 5).

    Raises:
        ConfigError: bad input, as one line.
    """
    require(
        not isinstance(cfg_or_overrides, str),
        "overrides must be a list of strings such as ['+experiment=quickstart']",
    )
    if isinstance(cfg_or_overrides, (list, tuple)):
        cfg = compose(cfg_or_overrides)
    else:
        cfg = cfg_or_overrides
    plan = plan_from_config(cfg)
    enable_compile_cache()
    summary_df, requests_df, _ = run_plan(plan)
    return summary_df, requests_df
