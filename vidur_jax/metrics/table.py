"""The ``summary.csv`` table: one row per configuration, its knobs, then its metrics.

Knob columns follow three rules (DESIGN.md section 5):

* the standard knobs (:data:`STANDARD_KNOBS`) are always columns, in that order;
* every other knob whose value differs between the run's configs is a column too,
  whatever its name (``batch_timeout_s``, ``s3_accuracy``, ``time_scale_factor``, ...),
  as is every scheduler-specific knob (:func:`policy_knobs`) that applies to one of them;
* a knob that does not apply to a config is empty (NaN / None), never a value the
  simulation ignored: ``chunk_size`` only for Sarathi, ``qps`` only for synthetic
  workloads with rate-driven (Poisson, Gamma) arrivals, trace scale factors only for
  trace replay.

Pure host code (no JAX): the rows come as flat knob dicts (:func:`deployment_knobs`,
:func:`workload_knobs`) and summary dicts (:func:`vidur_jax.metrics.summarize`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Knob columns written for every run, in order (DESIGN.md section 5).
STANDARD_KNOBS = (
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
#: Metric columns right after the knobs (seconds / counts), in order; the summary's other
#: statistics (means, busy fraction, ...) follow them.
STANDARD_METRICS = (
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
    "arrival_rate_rps",
    "sim_duration_s",
)
#: Column names of :class:`~vidur_jax.sim.build.DeploymentConfig` fields that differ
#: from the field name.
DEPLOYMENT_COLUMNS = {
    "tensor_parallel_size": "tp",
    "num_pipeline_stages": "pp",
    "num_replicas": "replicas",
    "replica_scheduler": "scheduler",
    "batch_size_cap": "batch_cap",
    "expert_parallel": "ep",
}
#: Knobs read by some replica schedulers only: knob -> the schedulers that read it
#: (from ``vidur_jax/sim/policies.py``).
@functools.cache
def policy_knobs() -> dict[str, tuple[str, ...]]:
    """``{knob: schedulers that read it}``, from the knobs each policy module declares
    (:attr:`vidur_jax.sim.policies.base.Policy.knobs`), so a new policy needs no edit here."""
    from vidur_jax.sim import policies  # tables are built after a simulation: JAX is loaded

    out: dict[str, list[str]] = {}
    for name, policy in policies.REGISTRY.items():
        for knob in policy.knobs:
            out.setdefault(knob, []).append(name)
    return {k: tuple(v) for k, v in out.items()}
# Knobs that only matter under another knob's value: knob -> (knob, value it needs).
_CONDITIONAL = {
    "s3_accuracy": ("s3_predictor", "confusion"),
    "s3_error_buckets": ("s3_predictor", "confusion"),
    "s3_lookahead": ("s3_admission", "dff"),
}


def applies(knob: str, knobs: Mapping[str, Any]) -> bool:
    """Whether ``knob`` affects the config whose knob values are ``knobs``."""
    users = policy_knobs().get(knob)
    if users is not None and knobs.get("scheduler") not in users:
        return False
    if knob in _CONDITIONAL:
        other, needed = _CONDITIONAL[knob]
        return knobs.get(other) == needed
    return True


def deployment_knobs(config: Any) -> dict[str, Any]:
    """The knobs of a ``DeploymentConfig`` (a dataclass), under their column names."""
    return {DEPLOYMENT_COLUMNS.get(k, k): v for k, v in dataclasses.asdict(config).items()}


def workload_knobs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs of a checked workload spec (:func:`vidur_jax.app.workload_spec`).

    ``name`` becomes ``workload``, ``kind`` ``workload_kind``, nested arrival / lengths /
    num_seqs settings ``arrival.<key>``, ``lengths.<key>``, ``num_seqs.<key>``. ``qps`` is
    set only where it drives the arrivals (synthetic Poisson / Gamma arrivals), else None.
    ``max_tokens`` and ``seed`` are deployment knobs and are left out.
    """
    out: dict[str, Any] = {"workload": spec.get("name"), "workload_kind": spec.get("kind")}
    arrival = spec.get("arrival") or {}
    rate_driven = spec.get("kind") == "synthetic" and arrival.get("kind") in ("poisson", "gamma")
    out["qps"] = spec.get("qps") if rate_driven else None
    for key, value in spec.items():
        if key in ("name", "kind", "qps", "max_tokens", "seed"):
            continue
        if isinstance(value, Mapping):
            for sub, v in value.items():
                if not (key == "arrival" and sub == "qps"):
                    out[f"{key}.{sub}"] = v
        elif value is not None:
            out[key] = value
    return out


def _blank(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _varies(values: Sequence[Any]) -> bool:
    seen = {repr(v) for v in values if not _blank(v)}
    return len(seen) > 1 or (len(seen) == 1 and any(_blank(v) for v in values))


def knob_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Knob columns of a run: :data:`STANDARD_KNOBS`, then every other knob that varies
    across ``rows`` or is a scheduler knob (:func:`policy_knobs`) applying to some row,
    in first-seen order."""
    extra: list[str] = []
    for row in rows:
        for key in row:
            if key not in STANDARD_KNOBS and key not in extra:
                extra.append(key)
    keep = []
    for key in extra:
        values = [row.get(key) for row in rows]
        policy = key in policy_knobs() and any(applies(key, row) for row in rows)
        if policy or _varies(values):
            keep.append(key)
    return [*STANDARD_KNOBS, *keep]


def blank_inapplicable(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """``knobs`` with every knob that does not apply to the config set to None."""
    return {k: (v if applies(k, knobs) else None) for k, v in knobs.items()}


def summary_table(
    knobs: Sequence[Mapping[str, Any]], summaries: Sequence[Mapping[str, Any]]
) -> pd.DataFrame:
    """``summary.csv`` as a frame: knob columns (:func:`knob_columns`), then
    :data:`STANDARD_METRICS`, then the summaries' other keys in first-seen order.

    Args:
        knobs: per config, its knob values (``config_id`` included); a knob that does
            not apply to the config (:func:`applies`) is written empty.
        summaries: per config, its metrics (:func:`vidur_jax.metrics.summarize` plus the
            simulator's counters).

    Returns:
        One row per config; missing values are NaN / None.
    """
    rows = [blank_inapplicable(k) for k in knobs]
    cols = knob_columns(rows)
    metric_cols = list(STANDARD_METRICS)
    for s in summaries:
        metric_cols += [k for k in s if k not in metric_cols and k not in cols]
    data = [
        {**{c: row.get(c) for c in cols}, **{m: s.get(m, math.nan) for m in metric_cols}}
        for row, s in zip(rows, summaries, strict=True)
    ]
    df = pd.DataFrame(data, columns=[*cols, *metric_cols])
    for col in cols:  # integer knobs with empty cells stay integers (pandas Int64)
        values = [row.get(col) for row in rows]
        present = [v for v in values if not _blank(v)]
        if len(present) < len(values) and present and all(_is_int(v) for v in present):
            df[col] = pd.array([None if _blank(v) else int(v) for v in values], dtype="Int64")
    return df


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def constant_knobs(summary_df: pd.DataFrame, names: Sequence[str]) -> dict[str, Any]:
    """Of ``names``, the knobs with one value across every row of ``summary_df``."""
    out = {}
    for name in names:
        if name in summary_df.columns:
            values = summary_df[name].tolist()
            if values and not _varies(values) and not _blank(values[0]):
                out[name] = values[0]
    return out


def varying_knobs(summary_df: pd.DataFrame, strict: bool = False) -> list[str]:
    """The knob columns of ``summary_df`` whose value differs between its rows.

    Args:
        summary_df: a ``summary.csv`` frame.
        strict: count only differences between set values, not set vs empty (a knob
            that applies to some schedulers only is then left to the scheduler column).
    """
    knobs = [c for c in knob_part(summary_df.columns) if c != "config_id"]
    if strict:
        return [c for c in knobs if len({repr(v) for v in summary_df[c] if not _blank(v)}) > 1]
    return [c for c in knobs if _varies(summary_df[c].tolist())]


def knob_part(columns: Sequence[str]) -> list[str]:
    """The knob columns of a summary frame's ``columns``: those before the first metric."""
    cols = list(columns)
    end = cols.index(STANDARD_METRICS[0]) if STANDARD_METRICS[0] in cols else len(cols)
    return cols[:end]


def config_labels(summary_df: pd.DataFrame, ignore: Sequence[str] = ()) -> dict[int, str]:
    """Legend label per row of ``summary_df`` (keyed by ``config_id``, else the row
    position) from the knobs whose set values differ between rows (``scheduler=vllm,
    qps=2``; :func:`varying_knobs` with ``strict``); the scheduler alone when none does."""
    knobs = [k for k in varying_knobs(summary_df, strict=True) if k not in ignore] or ["scheduler"]
    ids = summary_df["config_id"] if "config_id" in summary_df else range(len(summary_df))
    out = {}
    for cid, (_, row) in zip(ids, summary_df.iterrows(), strict=True):
        parts = []
        for k in knobs:
            v = row.get(k)
            if _blank(v):
                continue
            v = f"{v:g}" if isinstance(v, (float, np.floating)) else str(v).split("/")[-1]
            parts.append(v if k == "scheduler" and len(knobs) == 1 else f"{k}={v}")
        out[int(cid)] = ", ".join(parts) or f"config {cid}"
    return out
