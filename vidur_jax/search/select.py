"""Selection: cost, QPS per dollar, SLO checks, best config per SLO, bottleneck hints.

The table built here is ``search.csv`` (DESIGN.md section 5): one row per grid point,
infeasible points included (``feasible = False``, ``infeasible_reason`` set, capacity
NaN). Latencies are the simulator's summary at the config's capacity, in seconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vidur_jax.errors import require
from vidur_jax.search.capacity import CapacityResult
from vidur_jax.search.grid import Candidate, describe

# Vidur's analyzer thresholds (vidur/config_optimizer/analyzer/bottleneck_cases.py).
NEAR_SLO = 0.8  # a latency above 80% of its SLO is a violation risk
BATCH_SATURATED = 0.9  # mean batch >= 90% of the cap: the cap limits the batch
MEMORY_HIGH = 0.7  # mean KV use above 70% ...
BATCH_LOW = 0.7  # ... with the batch below 70% of the cap: memory limits the batch
PIPELINE_IDLE = 0.4  # idle fraction above 40% with PP > 1: pipeline bubbles
EXEC_LATENCY = 0.75  # TBT P50 above 75% of the TBT SLO: slow model execution


@dataclasses.dataclass(frozen=True)
class Slo:
    """User latency SLO at capacity: TTFT P90 and TBT P99 bounds, seconds."""

    name: str = "default"
    ttft_p90_s: float = 2.0
    tbt_p99_s: float = 0.2


def slos_from(spec: Any) -> list[Slo]:
    """Parse ``search.slos``: a mapping or a list of mappings ``{name, ttft_p90_s,
    tbt_p99_s}``; the first one is the primary SLO (``meets_slo``)."""
    items = spec if isinstance(spec, (list, tuple)) else [spec or {}]
    require(len(items) >= 1, "search.slos is an empty list")
    out = []
    for i, it in enumerate(items):
        require(isinstance(it, Mapping), f"search.slos[{i}]={it!r} must be a mapping")
        unknown = sorted(set(it) - {"name", "ttft_p90_s", "tbt_p99_s"})
        require(
            not unknown,
            f"search.slos[{i}] has unknown key(s) {unknown}; allowed: name, ttft_p90_s, tbt_p99_s",
        )
        slo = Slo(
            str(it.get("name", "default" if i == 0 else f"slo{i}")),
            float(it.get("ttft_p90_s", 2.0)),
            float(it.get("tbt_p99_s", 0.2)),
        )
        require(slo.ttft_p90_s > 0 and slo.tbt_p99_s > 0, f"search.slos[{i}]: bounds must be > 0")
        out.append(slo)
    require(len({s.name for s in out}) == len(out), "search.slos: names must be unique")
    return out


def bottleneck(row: Mapping[str, Any], slo: Slo) -> str:
    """A hint why the config's capacity is not higher (Vidur's analyzer categories).

    Uses the metrics at capacity: TTFT / TBT near the SLO, mean batch size vs the cap,
    KV-cache use, busy fraction under pipeline parallelism.
    """
    if not row.get("feasible", True):
        return "infeasible"
    if not (row.get("capacity_qps", 0) > 0):
        return "cannot meet the scheduling-delay bound even at the lowest QPS"
    cap = float(row["batch_cap"])
    batch = float(row.get("batch_size_mean", math.nan))
    kv = float(row.get("kv_util_mean", math.nan))
    busy = float(row.get("busy_fraction", math.nan))
    bubbles = row["pp"] > 1 and math.isfinite(busy) and 1 - busy > PIPELINE_IDLE
    hints = []
    if row["ttft_p90"] > NEAR_SLO * slo.ttft_p90_s:
        if batch > BATCH_SATURATED * cap:
            hints.append("TTFT near SLO: batch size saturated, raise the batch cap")
        elif kv > MEMORY_HIGH and batch < BATCH_LOW * cap:
            hints.append("TTFT near SLO: KV memory limits the batch, raise TP/PP")
        elif bubbles:
            hints.append("TTFT near SLO: low prefill throughput from pipeline bubbles")
        else:
            hints.append("TTFT near SLO: low prefill throughput")
    if row["tbt_p99"] > NEAR_SLO * slo.tbt_p99_s:
        if row.get("tbt_p50", 0) > EXEC_LATENCY * slo.tbt_p99_s:
            hints.append(
                "TBT near SLO: slow model execution"
                + (" (pipeline bubbles)" if bubbles else ", raise TP")
            )
        elif row["scheduler"] == "sarathi":
            hints.append("TBT tail near SLO: large chunk size, lower it")
        else:
            hints.append("TBT tail near SLO: prefills stall decodes (non-chunked scheduler)")
    if hints:
        return "; ".join(hints)
    if batch > BATCH_SATURATED * cap:
        return "batch cap saturated (queueing delay bound): raise the batch cap"
    if kv > MEMORY_HIGH and batch < BATCH_LOW * cap:
        return "memory-bound batch: KV cache full below the batch cap"
    if bubbles:
        return "pipeline bubbles: replicas idle between micro-batches"
    if math.isfinite(batch) and batch < 0.25 * cap:
        return "low batch size: prefill-bound (compute per request)"
    return "queueing delay bound: replica compute saturated"


def search_table(
    cands: Sequence[Candidate],
    results: Mapping[int, CapacityResult],
    slos: Sequence[Slo],
    extra: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """``search.csv``: one row per grid point.

    Args:
        cands: every grid point (infeasible ones too).
        results: capacity result per feasible candidate index.
        slos: user SLOs; the first one gives ``meets_slo``, each gives ``meets_slo_<name>``.
        extra: constant columns (e.g. ``workload``).

    Returns:
        Columns: ``config_id, name, model, device, network_device, tp, pp, replicas,
        scheduler, chunk_size, batch_cap, num_gpus, price_per_hour, cost_per_hour,
        feasible, infeasible_reason, capacity_qps, capacity_upper_qps, search_status,
        num_probes, qps_per_dollar, ttft_p90, tbt_p99, meets_slo, meets_slo_<name>...,
        bottleneck``, then every summary metric at capacity. ``qps_per_dollar`` is
        capacity QPS per $/hour of the deployment (Vidur's QPS per dollar).
    """
    rows = []
    for i, cand in enumerate(cands):
        c = cand.config
        row: dict[str, Any] = {
            "config_id": i,
            "name": describe(c),
            "model": c.model,
            "device": c.device,
            "network_device": c.network_device,
            "tp": c.tensor_parallel_size,
            "pp": c.num_pipeline_stages,
            "replicas": c.num_replicas
            if cand.feasible
            else cand.num_gpus // (c.tensor_parallel_size * c.num_pipeline_stages),
            "scheduler": c.replica_scheduler,
            "chunk_size": c.chunk_size if c.replica_scheduler == "sarathi" else np.nan,
            "batch_cap": c.batch_size_cap,
            "num_gpus": cand.num_gpus,
            "price_per_hour": cand.price_per_hour,
            "cost_per_hour": cand.cost_per_hour,
            "feasible": cand.feasible,
            "infeasible_reason": cand.reason,
        }
        res = results.get(i)
        summ: dict[str, Any] = {}
        if res is not None:
            summ = res.at_capacity
            row.update(
                capacity_qps=res.capacity_qps,
                capacity_upper_qps=res.upper_qps,
                search_status=res.status,
                num_probes=res.num_probes,
            )
        else:
            row.update(
                capacity_qps=np.nan,
                capacity_upper_qps=np.nan,
                search_status="infeasible",
                num_probes=0,
            )
        cost = cand.cost_per_hour
        row["qps_per_dollar"] = row["capacity_qps"] / cost if cost > 0 else np.nan
        row["ttft_p90"] = summ.get("ttft_p90", np.nan)
        row["tbt_p99"] = summ.get("tbt_p99", np.nan)
        for k, slo in enumerate(slos):
            ok = bool(
                res is not None
                and res.capacity_qps > 0
                and row["ttft_p90"] <= slo.ttft_p90_s
                and row["tbt_p99"] <= slo.tbt_p99_s
            )
            if k == 0:
                row["meets_slo"] = ok
            row[f"meets_slo_{slo.name}"] = ok
        row.update({k: v for k, v in summ.items() if k not in row and not k.startswith("_")})
        row["bottleneck"] = bottleneck(row, slos[0])
        if extra:
            row.update(extra)
        rows.append(row)
    return pd.DataFrame(rows)


def best_configs(df: pd.DataFrame, slos: Sequence[Slo]) -> dict[str, Any]:
    """Best (highest ``qps_per_dollar``) config meeting each SLO, as plain dicts.

    Returns:
        ``{slo name: {"slo": {...}, "best": row dict or None, "num_meeting": int}}``.
    """
    out = {}
    for slo in slos:
        ok = df[df[f"meets_slo_{slo.name}"] & (df["qps_per_dollar"] > 0)]
        best = None
        if len(ok):
            r = ok.sort_values(["qps_per_dollar", "capacity_qps"], ascending=False).iloc[0]
            best = {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in r.to_dict().items()
            }
        out[slo.name] = {"slo": dataclasses.asdict(slo), "best": best, "num_meeting": int(len(ok))}
    return out


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated by another with lower-or-equal ``x`` (latency)
    and higher-or-equal ``y`` (QPS per dollar), sorted by ``x``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = ok[np.lexsort((-y[ok], x[ok]))]
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)
