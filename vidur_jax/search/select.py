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

from vidur_jax.errors import ConfigError, require
from vidur_jax.search.capacity import CapacityResult
from vidur_jax.search.grid import Candidate, describe, label, pool_hardware
from vidur_jax.sim import policies

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


def slos_from(primary: Any, extra: Any = None) -> list[Slo]:
    """The SLOs of a ``search:`` block.

    Args:
        primary: ``search.slo``: ``{ttft_p90_s, tbt_p99_s}`` (the capacity criterion
            under ``criterion=slo`` and ``meets_slo``), named ``default``.
        extra: ``search.slos``: more named SLOs ``[{name, ttft_p90_s, tbt_p99_s}]``,
            each checked at capacity (``meets_slo_<name>``, a best per SLO).

    Raises:
        ConfigError: malformed SLO (one line).
    """
    primary = {} if primary is None else primary
    require(isinstance(primary, Mapping), f"search.slo={primary!r} must be a mapping")
    extra = [] if extra is None else extra
    items = [
        {"name": "default", **dict(primary)},
        *(extra if isinstance(extra, (list, tuple)) else [extra]),
    ]
    out = []
    for i, it in enumerate(items):
        where = "search.slo" if i == 0 else f"search.slos[{i - 1}]"
        require(isinstance(it, Mapping), f"{where}={it!r} must be a mapping")
        unknown = sorted(set(it) - {"name", "ttft_p90_s", "tbt_p99_s"})
        require(
            not unknown,
            f"{where} has unknown key(s) {unknown}; allowed: ttft_p90_s, tbt_p99_s"
            + ("" if i == 0 else ", name"),
        )
        try:
            slo = Slo(
                str(it.get("name", f"slo{i}")),
                float(it.get("ttft_p90_s", 2.0)),
                float(it.get("tbt_p99_s", 0.2)),
            )
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: bounds must be numbers (seconds), got {dict(it)}"
            ) from None
        require(slo.ttft_p90_s > 0 and slo.tbt_p99_s > 0, f"{where}: bounds must be > 0")
        out.append(slo)
    require(len({s.name for s in out}) == len(out), "search.slos: names must be unique")
    return out


def _against(name: str, value: float, bound: float) -> tuple[float, str]:
    """``(value / bound, phrase)`` of one latency metric against its SLO bound."""
    if not math.isfinite(value):
        return math.nan, ""
    ratio = value / bound
    if ratio > 1:
        return ratio, f"{name} {value:.3g} s exceeds the SLO {bound:g} s ({ratio:.2g}x)"
    return ratio, f"{name} {value:.3g} s is {ratio:.0%} of the SLO {bound:g} s"


def bottleneck(row: Mapping[str, Any], slo: Slo) -> str:
    """Why the config's capacity is not higher, naming the SLO it violates (or is close
    to) and by how much, plus Vidur's analyzer remedy.

    Uses the metrics at capacity: TTFT P90 / TBT P99 against the SLO, mean batch size vs
    the cap, KV-cache use, busy fraction under pipeline parallelism.
    """
    if not row.get("feasible", True):
        return "infeasible"
    status = str(row.get("search_status", "ok"))
    if status not in ("ok", "below_min"):
        return f"not measured ({status})"
    if not (row.get("capacity_qps", 0) > 0):
        at_low = row.get("below_min_note") or ""
        return "cannot meet the criterion even at the lowest QPS" + (
            f": {at_low}" if at_low else ""
        )
    cap = float(row["batch_cap"])
    batch = float(row.get("batch_size_mean", math.nan))
    kv = float(row.get("kv_util_mean", math.nan))
    busy = float(row.get("busy_fraction", math.nan))
    bubbles = row["pp"] > 1 and math.isfinite(busy) and 1 - busy > PIPELINE_IDLE
    hints = []
    r_ttft, ttft = _against("TTFT P90", float(row["ttft_p90"]), slo.ttft_p90_s)
    r_tbt, tbt = _against("TBT P99", float(row["tbt_p99"]), slo.tbt_p99_s)
    if r_ttft > NEAR_SLO:
        if batch > BATCH_SATURATED * cap:
            fix = "batch size saturated, raise the batch cap"
        elif kv > MEMORY_HIGH and batch < BATCH_LOW * cap:
            fix = "KV memory limits the batch, raise TP/PP"
        elif bubbles:
            fix = "low prefill throughput from pipeline bubbles"
        else:
            fix = "low prefill throughput"
        hints.append(f"{ttft}: {fix}")
    if r_tbt > NEAR_SLO:
        if row.get("tbt_p50", 0) > EXEC_LATENCY * slo.tbt_p99_s:
            fix = "slow model execution" + (" (pipeline bubbles)" if bubbles else ", raise TP")
        elif pd.notna(row.get("chunk_size")):  # a policy that chunks prefills
            fix = "large chunk size, lower it"
        else:
            fix = "prefills stall decodes (non-chunked scheduler)"
        hints.append(f"{tbt}: {fix}")
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


#: ``flag`` of a row by search status: why the config is not a candidate for "best".
FLAGS = {
    "ok": "",
    "below_min": "cannot_meet",
    "capped": "capped",
    "filling": "too_few_requests",
    "unresolved": "unresolved",
}


def plan_replicas(
    capacity_per_replica: float,
    gpus_per_replica: int,
    price_per_gpu_hour: float,
    target_qps: float,
    max_gpus: int,
) -> dict[str, Any]:
    """Replicas, GPUs and cost of serving ``target_qps`` with one replica type.

    ``replicas = ceil(target / capacity per replica)``: each replica of a round-robin
    cluster receives 1/N of the arrivals, a smoother stream than the Poisson stream the
    per-replica capacity was measured with, so N replicas carry at least N times it.

    Args:
        capacity_per_replica: requests/s one replica sustains under the criterion.
        gpus_per_replica: TP x PP.
        price_per_gpu_hour: $ per GPU-hour.
        target_qps: requests/s to serve.
        max_gpus: most GPUs the deployment may use.

    Returns:
        ``{replicas, num_gpus, cost_per_hour, capacity_qps, fits}`` (replicas 0 and NaN
        cost when the capacity is 0 or unknown).
    """
    if not (capacity_per_replica > 0 and math.isfinite(capacity_per_replica)):
        return {
            "replicas": 0,
            "num_gpus": 0,
            "cost_per_hour": math.nan,
            "capacity_qps": 0.0,
            "fits": False,
        }
    n = max(1, math.ceil(target_qps / capacity_per_replica - 1e-9))
    gpus = n * gpus_per_replica
    return {
        "replicas": n,
        "num_gpus": gpus,
        "cost_per_hour": gpus * price_per_gpu_hour,
        "capacity_qps": n * capacity_per_replica,
        "fits": gpus <= max_gpus,
    }


def search_table(
    cands: Sequence[Candidate],
    results: Mapping[int, CapacityResult],
    slos: Sequence[Slo],
    extra: Mapping[str, Any] | None = None,
    target_qps: float | None = None,
    max_gpus: Mapping[int, int] | None = None,
) -> pd.DataFrame:
    """``search.csv``: one row per grid point.

    Args:
        cands: every grid point (infeasible ones too).
        results: capacity result per feasible candidate index.
        slos: user SLOs; the first one gives ``meets_slo``, each gives ``meets_slo_<name>``.
        extra: constant columns (e.g. ``workload``).
        target_qps: the load to plan for (candidates are one replica each; replicas,
            GPUs and cost are those serving the target); None = cluster mode.
        max_gpus: GPU limit per candidate index (target mode).

    Returns:
        Columns: ``config_id, name, label, model, device, network_device, tp, pp,
        replicas, scheduler, chunk_size, batch_cap, num_gpus, price_per_hour,
        cost_per_hour, feasible, infeasible_reason, capacity_qps,
        capacity_per_replica_qps, capacity_upper_qps, search_status, flag, num_probes,
        num_requests, qps_per_dollar, ttft_p90, tbt_p99, meets_slo,
        meets_slo_<name>..., bottleneck`` (+ ``target_qps``, ``fits_max_gpus`` in
        target mode), then every summary metric at capacity. ``flag`` is empty for a
        config that can be chosen as best, else why not (``infeasible``,
        ``cannot_meet``, ``capped``, ``too_few_requests``, ``unresolved``, ``error``,
        ``over_max_gpus``). ``qps_per_dollar`` is capacity QPS per $/hour.
    """
    rows = []
    for i, cand in enumerate(cands):
        c = cand.config
        row: dict[str, Any] = {
            "config_id": i,
            "name": describe(c),
            "label": label(c),
            "model": c.model,
            "device": c.device,
            "network_device": c.network_device,
            "tp": c.tensor_parallel_size,
            "pp": c.num_pipeline_stages,
            "ep": c.expert_parallel,
            "replicas": c.num_replicas,
            "prefill_replicas": c.prefill_replicas,
            "decode_replicas": c.decode_replicas,
            **pool_hardware(c),
            "scheduler": c.replica_scheduler,
            "chunk_size": policies.get(c.replica_scheduler).prefill_chunk(c) or np.nan,
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
            status = res.status
            row.update(
                capacity_qps=res.capacity_qps,
                capacity_per_replica_qps=res.capacity_qps / c.num_replicas,
                capacity_upper_qps=res.upper_qps,
                search_status=status,
                flag=FLAGS.get(status, "error"),
                num_probes=res.num_probes,
                num_requests=res.num_requests,
            )
            if status == "below_min":
                row["below_min_note"] = _below_min_note(res, slos[0])
        else:
            row.update(
                capacity_qps=np.nan,
                capacity_per_replica_qps=np.nan,
                capacity_upper_qps=np.nan,
                search_status="infeasible",
                flag="infeasible",
                num_probes=0,
                num_requests=0,
            )
        if target_qps is not None and res is not None:
            plan = plan_replicas(
                res.capacity_qps if res.measured else math.nan,
                c.tensor_parallel_size * c.num_pipeline_stages,
                cand.price_per_hour,
                target_qps,
                (max_gpus or {}).get(i, 8),
            )
            row.update(
                replicas=plan["replicas"],
                num_gpus=plan["num_gpus"],
                cost_per_hour=plan["cost_per_hour"],
                capacity_qps=plan["capacity_qps"] if res.measured else res.capacity_qps,
                target_qps=target_qps,
                fits_max_gpus=plan["fits"],
            )
            if not row["flag"] and not plan["fits"]:
                row["flag"] = "over_max_gpus"
        per_gpu_cost = cand.price_per_hour * c.tensor_parallel_size * c.num_pipeline_stages
        row["qps_per_dollar"] = (
            row["capacity_per_replica_qps"] / per_gpu_cost if per_gpu_cost > 0 else np.nan
        )
        row["ttft_p90"] = summ.get("ttft_p90", np.nan)
        row["tbt_p99"] = summ.get("tbt_p99", np.nan)
        for k, slo in enumerate(slos):
            ok = bool(
                res is not None
                and res.measured
                and res.capacity_qps > 0
                and row["ttft_p90"] <= slo.ttft_p90_s
                and row["tbt_p99"] <= slo.tbt_p99_s
            )
            if k == 0:
                row["meets_slo"] = ok
            row[f"meets_slo_{slo.name}"] = ok
        row.update({k: v for k, v in summ.items() if k not in row and not k.startswith("_")})
        row["bottleneck"] = bottleneck(row, slos[0])
        row.pop("below_min_note", None)
        if extra:
            row.update(extra)
        rows.append(row)
    return pd.DataFrame(rows)


def _below_min_note(res: CapacityResult, slo: Slo) -> str:
    """What failed at the lowest QPS probed (the SLO and by how much, when known)."""
    low = min(res.probes, key=lambda p: p.qps, default=None)
    if low is None:
        return ""
    if low.summary:
        parts = [
            _against("TTFT P90", low.summary.get("ttft_p90", math.nan), slo.ttft_p90_s),
            _against("TBT P99", low.summary.get("tbt_p99", math.nan), slo.tbt_p99_s),
        ]
        bad = [txt for r, txt in parts if r > 1]
        if bad:
            return f"at {low.qps:.3g} req/s " + "; ".join(bad)
    if low.error:
        return low.error
    return f"at {low.qps:.3g} req/s the criterion's quantile is >= {low.delay_s:.3g} s"


def selectable(df: pd.DataFrame) -> pd.Series:
    """Rows that may be chosen as best: measured, capacity > 0, no flag."""
    return (df["flag"] == "") & (df["capacity_qps"] > 0)


def best_configs(df: pd.DataFrame, slos: Sequence[Slo]) -> dict[str, Any]:
    """Best (highest ``qps_per_dollar``) measured config meeting each SLO, as plain dicts.

    Returns:
        ``{slo name: {"slo": {...}, "best": row dict or None, "num_meeting": int}}``.
    """
    out = {}
    for slo in slos:
        ok = df[df[f"meets_slo_{slo.name}"] & selectable(df) & (df["qps_per_dollar"] > 0)]
        best = None
        if len(ok):
            r = ok.sort_values(["qps_per_dollar", "capacity_qps"], ascending=False).iloc[0]
            best = _plain(r.to_dict())
        out[slo.name] = {"slo": dataclasses.asdict(slo), "best": best, "num_meeting": int(len(ok))}
    return out


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """A row as JSON-ready values (NaN -> None, numpy scalars -> Python)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return out


def cheapest_for_target(df: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """The ``top`` cheapest selectable deployments serving the target (cost per hour,
    then higher capacity, then fewer GPUs)."""
    ok = df[selectable(df) & df["meets_slo"]]
    return ok.sort_values(
        ["cost_per_hour", "capacity_qps", "num_gpus"], ascending=[True, False, True]
    ).head(top)


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
