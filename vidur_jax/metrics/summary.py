"""Per-configuration summaries and request tables from simulator outputs (host, numpy).

Request-level latencies follow Vidur's definitions and, like Vidur (which records them
when a request finishes), are taken over **completed** requests only:

* TTFT = first_token_at - arrived_at
* e2e = completed_at - arrived_at; norm_e2e = e2e / num_decode
* sched_delay = scheduled_at (first time scheduled) - arrived_at

Percentiles use numpy's ``linear`` method, the same as pandas' ``Series.quantile`` that
Vidur uses. TBT (time between consecutive output tokens, preemption included) comes from
the simulator's fixed-bin histogram.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from vidur_jax.errors import require
from vidur_jax.metrics.histogram import histogram_mean, histogram_quantile, tbt_bin_edges

REQUEST_FIELDS = (
    "arrived_at",
    "num_prefill",
    "num_decode",
    "scheduled_at",
    "first_token_at",
    "completed_at",
    "num_restarts",
)
#: ``kv_transfer_s``: disaggregated pools' KV transfer per request (NaN when colocated)
REQUEST_COLUMNS = ("config_id", "request_id", *REQUEST_FIELDS, "kv_transfer_s")
QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}
LATENCY_METRICS = ("ttft", "tbt", "e2e", "norm_e2e", "sched_delay")
PASS_THROUGH = ("mfu", "kv_util", "batch_size")


def _arrays(requests: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [f for f in REQUEST_FIELDS if f not in requests]
    require(not missing, f"request arrays lack {missing}; required: {list(REQUEST_FIELDS)}")
    out = {f: np.asarray(requests[f], dtype=np.float64).reshape(-1) for f in REQUEST_FIELDS}
    n = out["arrived_at"].size
    require(
        all(v.size == n for v in out.values()),
        f"request arrays must all have length {n}: { {k: v.size for k, v in out.items()} }",
    )
    mask = requests.get("mask")
    valid = np.isfinite(out["arrived_at"])
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool).reshape(-1)
    out["valid"] = valid
    return out


def percentiles(x: np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix}_p50/_p90/_p99/_mean`` of ``x`` (NaN when empty), numpy linear method."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {
            **{f"{prefix}_{k}": float("nan") for k in QUANTILES},
            f"{prefix}_mean": float("nan"),
        }
    qs = np.percentile(x, list(QUANTILES.values()), method="linear")
    out = {f"{prefix}_{k}": float(v) for k, v in zip(QUANTILES, qs, strict=True)}
    out[f"{prefix}_mean"] = float(np.mean(x))
    return out


def _counter_mean(counters: Mapping[str, float], name: str) -> float:
    """``{name}_mean``, else ``{name}_sum / ({name}_count or num_batches)``, else NaN."""
    if f"{name}_mean" in counters:
        return float(counters[f"{name}_mean"])
    denom = counters.get(f"{name}_count", counters.get("num_batches"))
    if f"{name}_sum" in counters and denom is not None and float(denom) > 0:
        return float(counters[f"{name}_sum"]) / float(denom)
    return float("nan")


def summarize(
    requests: Mapping[str, np.ndarray],
    tbt_hist: np.ndarray | None = None,
    counters: Mapping[str, float] | None = None,
    edges: np.ndarray | None = None,
) -> dict[str, float]:
    """Summary metrics of one simulated configuration (all times in seconds).

    Args:
        requests: (R,) arrays ``arrived_at, num_prefill, num_decode, scheduled_at,
            first_token_at, completed_at, num_restarts`` (NaN = never happened), and
            optionally a bool ``mask`` and ``num_seqs`` (sequences per request, default 1); rows with non-finite ``arrived_at`` are padding.
        tbt_hist: (B,) TBT counts over ``edges`` (None = no TBT data).
        counters: scalar counters from the simulator. Recognised keys:
            ``tbt_sum_s``/``tbt_count`` (exact TBT mean; else the histogram's),
            ``{mfu,kv_util,batch_size}_mean`` or ``..._sum`` with ``..._count`` /
            ``num_batches``, and ``busy_time_s`` with ``num_replicas`` (default 1).
        edges: (B + 1,) bin edges; default :func:`tbt_bin_edges`.

    Returns:
        Flat dict: ``{ttft,tbt,e2e,norm_e2e,sched_delay}_{p50,p90,p99,mean}``,
        ``throughput_rps`` (completed / makespan), ``throughput_tps`` (prefill + decode
        tokens of completed requests / makespan, decode tokens of every sequence: n x
        decode with ``num_seqs``), ``throughput_output_tps`` (decode tokens of every
        sequence / makespan), ``num_requests``, ``num_completed``,
        ``num_restarts``, ``makespan_s`` (last completion - first arrival),
        ``arrival_rate_rps`` (the workload's achieved arrival rate: (requests - 1) /
        (last arrival - first arrival), NaN with fewer than 2 requests or one arrival
        instant), ``sim_duration_s`` (simulated time from 0 to the last arrival or
        completion), ``mfu_mean``, ``kv_util_mean``, ``batch_size_mean`` and, with
        ``busy_time_s``, ``busy_fraction``. With parallel sampling (some request with
        more than one sequence) also ``throughput_request_output_tps`` (decode tokens
        counted once per request / makespan) and ``num_sequences`` (sequences of completed
        requests); with one sequence per request they would equal
        ``throughput_output_tps`` and ``num_completed``, so they are left out.
        Undefined values are NaN.
    """
    a = _arrays(requests)
    counters = dict(counters or {})
    valid = a["valid"]
    done = valid & np.isfinite(a["completed_at"])
    arr = a["arrived_at"][done]
    out: dict[str, float] = {}
    out.update(percentiles(a["first_token_at"][done] - arr, "ttft"))

    if edges is None:
        edges = tbt_bin_edges()
    hist = np.zeros(len(edges) - 1) if tbt_hist is None else np.asarray(tbt_hist, np.float64)
    require(
        hist.shape == (len(edges) - 1,),
        f"tbt_hist has shape {hist.shape}; expected ({len(edges) - 1},) for the bin edges",
    )
    for k, q in QUANTILES.items():
        out[f"tbt_{k}"] = histogram_quantile(hist, edges, q / 100.0)
    if counters.get("tbt_count", 0) and float(counters["tbt_count"]) > 0:
        out["tbt_mean"] = float(counters["tbt_sum_s"]) / float(counters["tbt_count"])
    else:
        out["tbt_mean"] = histogram_mean(hist, edges)

    e2e = a["completed_at"][done] - arr
    out.update(percentiles(e2e, "e2e"))
    out.update(percentiles(e2e / a["num_decode"][done], "norm_e2e"))
    out.update(percentiles(a["scheduled_at"][done] - arr, "sched_delay"))

    num_completed = int(done.sum())
    if num_completed:
        makespan = float(a["completed_at"][done].max() - a["arrived_at"][valid].min())
    else:
        makespan = float("nan")
    rate = 1.0 / makespan if num_completed and makespan > 0 else float("nan")
    out["throughput_rps"] = num_completed * rate
    # parallel sampling / beam search: n sequences per request each produce num_decode tokens
    all_seqs = np.asarray(requests.get("num_seqs", np.ones_like(a["num_decode"])), np.float64)
    seqs = all_seqs.reshape(-1)[done]
    seq_decode = float((seqs * a["num_decode"][done]).sum())
    out["throughput_tps"] = (float(a["num_prefill"][done].sum()) + seq_decode) * rate
    out["throughput_output_tps"] = seq_decode * rate
    if np.any(all_seqs.reshape(-1)[valid] != 1):
        out["throughput_request_output_tps"] = float(a["num_decode"][done].sum()) * rate
    if "throughput_request_output_tps" in out:
        out["num_sequences"] = int(seqs.sum())
    out["num_requests"] = int(valid.sum())
    out["num_completed"] = num_completed
    out["num_restarts"] = int(np.nansum(a["num_restarts"][valid]))
    out["makespan_s"] = makespan
    out["arrival_rate_rps"] = arrival_rate(a["arrived_at"][valid])
    ends = np.concatenate([a["arrived_at"][valid], a["completed_at"][done]])
    out["sim_duration_s"] = float(ends.max()) if ends.size else float("nan")
    for name in PASS_THROUGH:
        out[f"{name}_mean"] = _counter_mean(counters, name)
    if "busy_time_s" in counters:
        denom = makespan * float(counters.get("num_replicas", 1))
        out["busy_fraction"] = float(counters["busy_time_s"]) / denom if denom > 0 else float("nan")
    return out


def arrival_rate(arrived_at: np.ndarray) -> float:
    """Achieved arrival rate (requests/s) of arrival times ``arrived_at`` (N,) in seconds.

    The inverse of the mean gap, (N - 1) / (last - first): what the workload actually
    offered, which differs from the configured QPS by sampling noise (and by Vidur's
    capped Poisson gaps). NaN when N < 2 or every request arrives at one instant.
    """
    t = np.asarray(arrived_at, dtype=np.float64).reshape(-1)
    t = t[np.isfinite(t)]
    if t.size < 2:
        return float("nan")
    span = float(t.max() - t.min())
    return (t.size - 1) / span if span > 0 else float("nan")


def requests_frame(config_id: int, requests: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per real (non-padding) request of one configuration.

    Args:
        config_id: index of the configuration in the sweep.
        requests: the (R,) arrays described in :func:`summarize`.

    Returns:
        DataFrame with columns ``config_id, request_id, arrived_at, num_prefill,
        num_decode, scheduled_at, first_token_at, completed_at, num_restarts,
        kv_transfer_s`` (disaggregated pools: first token to KV landed on the decode
        replica; NaN when not transferred or colocated);
        ``request_id`` is the row index in the (arrival-sorted) request table; times in
        seconds, NaN where the event never happened.
    """
    a = _arrays(requests)
    idx = np.flatnonzero(a["valid"])
    df = pd.DataFrame(
        {
            "config_id": np.full(idx.size, int(config_id), dtype=np.int64),
            "request_id": idx.astype(np.int64),
            "arrived_at": a["arrived_at"][idx],
            "num_prefill": a["num_prefill"][idx].astype(np.int64),
            "num_decode": a["num_decode"][idx].astype(np.int64),
            "scheduled_at": a["scheduled_at"][idx],
            "first_token_at": a["first_token_at"][idx],
            "completed_at": a["completed_at"][idx],
            "num_restarts": np.nan_to_num(a["num_restarts"][idx]).astype(np.int64),
            "kv_transfer_s": np.asarray(requests.get("kv_transfer_s", a["arrived_at"] * np.nan), np.float64)[idx],
        }
    )
    return df[list(REQUEST_COLUMNS)]
