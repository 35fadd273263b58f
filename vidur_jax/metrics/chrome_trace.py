"""Chrome trace export: the batches of a simulated config as Trace Event Format JSON.

Open ``chrome_trace.json`` in https://ui.perfetto.dev or ``chrome://tracing``. Layout
(like Vidur's ``chrome_trace.json``):

- one *process* per simulated configuration (``pid = config_id``, named after it);
- one *track* (thread) per replica (``tid = replica``, named ``replica r``);
- one *complete event* (``"ph": "X"``) per batch the replica launched, from its start to
  its end (last pipeline stage), in microseconds, with ``args``: ``size`` (requests in
  the batch; a fused run's first iteration), ``prefill_tokens``, ``decode_tokens``
  (summed over fused iterations) and ``iterations`` (> 1 when a run of iterations was
  fused into one simulator step, see :mod:`vidur_jax.sim.engine`).

With pipeline parallelism a replica has several micro-batches in flight, and complete
events on one track must nest, so overlapping batches are put on extra tracks of the
same replica (``tid = replica + lane * 10_000``, named ``replica r / lane k``); each
lane then holds non-overlapping batches. Without PP every replica has exactly one track.

The batch records come from ``ConfigOutput.batch_log`` (``simulate_configs(...,
trace_capacity=B)``); :func:`simulate_traced` picks ``B`` and re-runs with a larger one
if the log was truncated, so a trace never silently misses batches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidur_jax.errors import ConfigError, require
from vidur_jax.metrics.io import atomic_write_json

#: Fields of a batch log (``ConfigOutput.batch_log``), each (B,).
LOG_FIELDS = ("start", "end", "replica", "size", "prefill_tokens", "decode_tokens", "iters")
#: Track id offset of the extra lanes of a replica (overlapping pipeline micro-batches).
LANE_STRIDE = 10_000


def batch_name(prefill_tokens: int, decode_tokens: int, iters: int) -> str:
    """Short event name: ``prefill``, ``decode``, ``mixed``, with ``x N`` for fused runs."""
    kind = (
        "mixed" if prefill_tokens and decode_tokens else ("prefill" if prefill_tokens else "decode")
    )
    return f"{kind} x{iters}" if iters > 1 else kind


def _lanes(start: np.ndarray, end: np.ndarray, replica: np.ndarray) -> np.ndarray:
    """Greedy interval partitioning per replica: lane of each batch so that batches on
    one (replica, lane) never overlap. All zeros when batches do not overlap."""
    lanes = np.zeros(start.shape, dtype=np.int64)
    for r in np.unique(replica):
        idx = np.flatnonzero(replica == r)
        idx = idx[np.lexsort((end[idx], start[idx]))]
        free_at: list[float] = []  # end time of the last batch on each lane
        for i in idx:
            for lane, t in enumerate(free_at):
                if start[i] >= t - 1e-12:
                    free_at[lane] = end[i]
                    lanes[i] = lane
                    break
            else:
                free_at.append(end[i])
                lanes[i] = len(free_at) - 1
    return lanes


def trace_events(
    batch_log: Mapping[str, np.ndarray],
    config_id: int = 0,
    label: str | None = None,
    num_replicas: int | None = None,
) -> list[dict[str, Any]]:
    """Trace events (metadata + one complete event per batch) of one config.

    Args:
        batch_log: ``ConfigOutput.batch_log`` (arrays of :data:`LOG_FIELDS`, seconds).
        config_id: process id of this config in the trace.
        label: process name (default ``config <id>``).
        num_replicas: name this many replica tracks even if some launched no batch.

    Returns:
        Trace Event Format dicts; timestamps ``ts``/``dur`` in microseconds.

    Raises:
        ConfigError: a missing field or a truncated log.
    """
    missing = [f for f in LOG_FIELDS if f not in batch_log]
    require(not missing, f"batch log lacks field(s) {missing}; simulate with trace_capacity > 0")
    require(
        not bool(np.asarray(batch_log.get("truncated", False))),
        f"batch log of config {config_id} is truncated; re-run with a larger trace_capacity",
    )
    log = {f: np.asarray(batch_log[f]) for f in LOG_FIELDS}
    start, end = log["start"].astype(np.float64), log["end"].astype(np.float64)
    replica = log["replica"].astype(np.int64)
    lanes = _lanes(start, end, replica)
    pid = int(config_id)
    events: list[dict[str, Any]] = [
        {
            "name": "process_name",
            "ph": "M",
            "pid": pid,
            "tid": 0,
            "args": {"name": label or f"config {pid}"},
        },
        {
            "name": "process_sort_index",
            "ph": "M",
            "pid": pid,
            "tid": 0,
            "args": {"sort_index": pid},
        },
    ]
    reps = set(range(num_replicas or 0)) | set(replica.tolist())
    tracks = {(r, 0) for r in reps} | set(zip(replica.tolist(), lanes.tolist(), strict=True))
    for r, lane in sorted(tracks):
        tid = r + lane * LANE_STRIDE
        name = f"replica {r}" if lane == 0 else f"replica {r} / lane {lane}"
        events.append(
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}
        )
        events.append(
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": pid,
                "tid": tid,
                "args": {"sort_index": tid},
            }
        )
    for i in np.argsort(start, kind="stable"):
        p, d, k = int(log["prefill_tokens"][i]), int(log["decode_tokens"][i]), int(log["iters"][i])
        events.append(
            {
                "name": batch_name(p, d, k),
                "cat": "batch",
                "ph": "X",
                "pid": pid,
                "tid": int(replica[i] + lanes[i] * LANE_STRIDE),
                "ts": float(start[i]) * 1e6,
                "dur": max(float(end[i] - start[i]), 0.0) * 1e6,
                "args": {
                    "size": int(log["size"][i]),
                    "prefill_tokens": p,
                    "decode_tokens": d,
                    "iterations": k,
                },
            }
        )
    return events


def chrome_trace(outputs: Sequence[Any], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The trace document (``{"traceEvents": [...], "displayTimeUnit": "ms"}``) of every
    output that carries a batch log (``ConfigOutput``s of :func:`simulate_configs`).

    Raises:
        ConfigError: no output has a batch log, or one is truncated.
    """
    events: list[dict[str, Any]] = []
    for i, o in enumerate(outputs):
        if o.batch_log is None:
            continue
        c = o.config
        label = (labels[i] if labels is not None else None) or (
            f"config {i}: {c.replica_scheduler} {c.model} {c.device} "
            f"tp{c.tensor_parallel_size} pp{c.num_pipeline_stages}"
        )
        events += trace_events(o.batch_log, i, label, c.num_replicas)
    require(events, "no batch log to export; simulate with trace_capacity > 0")
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(
    outputs: Sequence[Any], path: str | os.PathLike, labels: Sequence[str] | None = None
) -> Path:
    """Write :func:`chrome_trace` of ``outputs`` to ``path`` atomically (strict JSON)."""
    return atomic_write_json(chrome_trace(outputs, labels), path, indent=None)


def default_capacity(workloads: Sequence[Any]) -> int:
    """Initial batch-log capacity: 8 batches per request (>= 4096); grown on overflow."""
    return max(4096, 8 * max(int(w.num_requests) for w in workloads))


def simulate_traced(
    cfgs: Sequence[Any],
    workloads: Sequence[Any],
    profiles_dir: str | None = None,
    capacity: int | None = None,
    max_grow: int = 4,
    **kwargs: Any,
) -> list[Any]:
    """:func:`~vidur_jax.sim.run.simulate_configs` with a batch log that is complete.

    Starts at ``capacity`` (default :func:`default_capacity`) and doubles it until no
    config's log is truncated.

    Raises:
        ConfigError: still truncated after ``max_grow`` doublings.
    """
    from vidur_jax.sim.run import simulate_configs

    cap = int(capacity or default_capacity(workloads))
    for _ in range(max_grow + 1):
        outs = simulate_configs(
            cfgs, workloads, profiles_dir=profiles_dir, trace_capacity=cap, **kwargs
        )
        if not any(bool(o.batch_log["truncated"]) for o in outs):
            return outs
        cap *= 2
    raise ConfigError(f"batch log still truncated at trace capacity {cap // 2}")
