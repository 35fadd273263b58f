"""S3 study: throughput at a latency SLO, max-length reservation vs S3 (task ``s3_study``).

For each model in ``s3_study.models`` (one A100 replica, ``{name, tp}``) and each policy
variant — ``orca`` (max-length reservation: every request reserves ``max_tokens`` of KV),
``s3`` (decreasing first-fit admission) with the oracle, with confusion predictors at
several accuracies and with the learned prompt-length classifier, ``s3 oracle fcfs``
(the oracle's reservations admitted in arrival order, to separate the two parts of S3;
``s3_study.fcfs: false`` drops it), and ``vllm`` (paging, no reservation) — every arrival
rate of ``s3_study.qps`` (per model) is simulated; all variants of one policy and all
models and rates run in one vmapped call. The **capacity** of a variant is the highest
rate whose TTFT p90 and TBT p99 meet ``s3_study.slo`` (or the model entry's ``slo``); its row reports the achieved
throughput there, mean / max batch size, latencies and mispredictions (S3 preemptions).

Writes ``s3_study.csv`` (``model, policy, predictor_accuracy, throughput_rps,
mean_batch_size, max_batch_size, ttft_p90, tbt_p99, num_mispredictions`` plus
``capacity_qps, recomputed_tokens, speedup_vs_max_length``), ``s3_study_points.csv``
(every simulated point) and ``s3_study.png`` (throughput at the SLO per variant).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import numpy as np
import pandas as pd

from vidur_jax import app
from vidur_jax.errors import require
from vidur_jax.metrics import atomic_write_csv
from vidur_jax.sim import s3

COLUMNS = ["model", "policy", "predictor_accuracy", "throughput_rps", "mean_batch_size", "max_batch_size",
           "ttft_p90", "tbt_p99", "num_mispredictions"]


def _variants(study: dict[str, Any]) -> list[dict[str, Any]]:
    out = [{"label": "max_length (orca)", "replica_scheduler": "orca"}]
    out.append({"label": "s3 oracle", "replica_scheduler": "s3", "s3_predictor": "oracle"})
    if study.get("fcfs", True):  # S3's reservations without its first-fit packing
        out.append({"label": "s3 oracle fcfs", "replica_scheduler": "s3", "s3_predictor": "oracle",
                    "s3_admission": "fcfs"})
    for p in study.get("accuracies", [0.9, 0.7, 0.5]):
        out.append({"label": f"s3 p={p:g}", "replica_scheduler": "s3", "s3_predictor": "confusion",
                    "s3_accuracy": float(p)})
    if study.get("learned", True):
        out.append({"label": "s3 learned", "replica_scheduler": "s3", "s3_predictor": "learned"})
    if study.get("vllm", True):
        out.append({"label": "vllm (paging)", "replica_scheduler": "vllm"})
    return out


def run_task(cfg: dict[str, Any], out_dir: str) -> None:
    """``task: s3_study`` entry (see :mod:`vidur_jax.tasks` and the module docstring)."""
    from vidur_jax.sim.run import simulate_configs

    study = dict(cfg.get("s3_study") or {})
    models = list(study.get("models") or [])
    require(models, "s3_study.models must list {name, tp, qps: [...]} entries")
    slo = dict(study.get("slo") or {"ttft_p90": 2.0, "tbt_p99": 0.25})
    base = app.deployment_from(cfg)
    variants = _variants(study)
    cfgs, wls, tags = [], [], []
    cache: dict[float, Any] = {}
    for m in models:
        require(isinstance(m, dict) and "name" in m and "qps" in m, f"s3_study.models entry {m!r} needs name and qps")
        for qps in m["qps"]:
            if float(qps) not in cache:
                tree = copy.deepcopy(cfg)
                tree["workload"]["qps"] = float(qps)
                cache[float(qps)] = app.build_workload(app.workload_spec(tree))
            for v in variants:
                knobs = {k: v[k] for k in v if k != "label"}
                c = dataclasses.replace(base, model=m["name"], tensor_parallel_size=int(m.get("tp", 1)),
                                        batch_size_cap=int(study.get("batch_size_cap", 256)), **knobs)
                c.validate()
                cfgs.append(c)
                wls.append(cache[float(qps)])
                tags.append({"model": m["name"], "tp": int(m.get("tp", 1)), "policy": v["label"], "qps": float(qps)})
    outs = simulate_configs(cfgs, wls, profiles_dir=cfg.get("profiles_dir"), progress=bool(study.get("progress", False)))
    rows = []
    for c, wl, tag, o in zip(cfgs, wls, tags, outs, strict=False):
        s = o.summary
        acc = float("nan")
        if c.replica_scheduler == "s3":
            width = s3.bucket_width(c.max_tokens, c.s3_num_buckets)
            mask = np.asarray(wl.mask)
            pred = s3.predict_buckets(c.s3_predictor, np.asarray(wl.num_prefill), np.asarray(wl.num_decode), mask,
                                      width, c.s3_num_buckets, c.s3_accuracy, c.s3_error_buckets, c.seed)
            acc = s3.accuracy_of(pred, np.asarray(wl.num_decode), mask, width, c.s3_num_buckets)
        rows.append({**tag, "predictor_accuracy": acc, "throughput_rps": s["throughput_rps"],
                     "mean_batch_size": s["batch_size_mean"], "max_batch_size": s["batch_size_max"],
                     "ttft_p90": s["ttft_p90"], "tbt_p99": s["tbt_p99"],
                     "num_mispredictions": s["num_restarts"] if c.replica_scheduler == "s3" else 0,
                     "num_restarts": s["num_restarts"], "recomputed_tokens": s["recomputed_tokens"],
                     "num_completed": s["num_completed"]})
    points = pd.DataFrame(rows)
    slos = {m["name"]: dict(m.get("slo") or slo) for m in models}
    write_results(points, slos, models, out_dir)


def write_results(points: pd.DataFrame, slos: dict[str, dict[str, float]], models: list[dict[str, Any]],
                  out_dir: str) -> pd.DataFrame:
    """Capacity at the SLO per (model, variant) from the simulated ``points``; writes the
    csv files and the plot (also usable to re-derive them from ``s3_study_points.csv``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = points["model"].map(lambda m: slos[m]["ttft_p90"]), points["model"].map(lambda m: slos[m]["tbt_p99"])
    points = points.assign(meets_slo=(points["ttft_p90"] <= lim[0]) & (points["tbt_p99"] <= lim[1]))
    best = []
    for (_model, _policy), g in points.groupby(["model", "policy"], sort=False):
        ok = g[g["meets_slo"]]
        if ok.empty:
            row = g.sort_values("qps").iloc[0].copy()
            row[["throughput_rps"]] = 0.0
            row["capacity_qps"] = 0.0
        else:
            row = ok.sort_values("qps").iloc[-1].copy()
            row["capacity_qps"] = row["qps"]
        best.append(row)
    result = pd.DataFrame(best).reset_index(drop=True)
    ref = result[result["policy"] == "max_length (orca)"].set_index("model")["throughput_rps"]
    result["speedup_vs_max_length"] = [
        r.throughput_rps / ref[r.model] if ref.get(r.model, 0) > 0 else float("nan") for r in result.itertuples()
    ]
    cols = COLUMNS + ["capacity_qps", "recomputed_tokens", "speedup_vs_max_length", "tp"]
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_csv(result[cols], os.path.join(out_dir, "s3_study.csv"))
    atomic_write_csv(points, os.path.join(out_dir, "s3_study_points.csv"))

    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=False):
        sub = result[result["model"] == m["name"]]
        ax.bar(range(len(sub)), sub["throughput_rps"], color="tab:blue")
        ax.set_xticks(range(len(sub)))
        ax.set_xticklabels(sub["policy"], rotation=30, ha="right", fontsize=8)
        for i, (t, b) in enumerate(zip(sub["throughput_rps"], sub["max_batch_size"], strict=False)):
            ax.text(i, t, f"max batch {b:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{m['name'].split('/')[-1]} TP{m.get('tp', 1)} A100")
        slo = slos[m["name"]]
        ax.set_ylabel(f"req/s at SLO (TTFT p90 <= {slo['ttft_p90']} s, TBT p99 <= {slo['tbt_p99']} s)")
    fig.tight_layout()
    tmp = os.path.join(out_dir, "s3_study.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, os.path.join(out_dir, "s3_study.png"))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result[cols].to_string(index=False))
    return result
