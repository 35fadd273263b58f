"""Replica schedulers compared: latency-throughput curves of vLLM, Sarathi, Orca,
FasterTransformer and LightLLM on one model across loads.

Every scheduler in ``study.schedulers`` (a ``scheduler/`` option) runs every point of the
experiment's ``sweep`` (the arrival rates); knobs in ``study.scheduler_values`` (batch
cap, block size, chunk) are applied to every scheduler so they compete on equal terms.
Writes ``scheduler_comparison.csv`` (scheduler x qps: TTFT p50/p90, TBT p50/p99, e2e
p50/p90, achieved throughput, restarts) and ``scheduler_comparison.png``: TTFT p90 and
TBT p99 against the offered load, and e2e p90 against the achieved throughput.

LightLLM in Vidur only runs with ``block_size=1``; this simulator accepts any block size
(token accounting is per token, blocks only round the memory), so all schedulers here
share one block size; ``study.json`` notes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidur_jax.errors import require
from vidur_jax.studies import common

COLUMNS = [
    "scheduler",
    "qps",
    "ttft_p50",
    "ttft_p90",
    "tbt_p50",
    "tbt_p99",
    "e2e_p50",
    "e2e_p90",
    "throughput_rps",
    "throughput_tps",
    "num_completed",
    "num_restarts",
    "batch_size_mean",
    "kv_util_mean",
]


def run(tree: dict[str, Any], study: dict[str, Any], out_dir: str) -> None:
    """Simulate every (scheduler, load) and write the files (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sr = common.StudyRun("scheduler_comparison", out_dir, study)
    schedulers = list(study.get("schedulers") or [])
    require(schedulers, "study.schedulers must list scheduler/ options (e.g. vllm, sarathi)")
    values = {f"scheduler.{k}": v for k, v in (study.get("scheduler_values") or {}).items()}
    trees = [
        common.with_values(common.with_option(tree, "scheduler", s), values) for s in schedulers
    ]
    plan = common.combine(trees, [{"variant": s} for s in schedulers])
    summary, _, _ = common.simulate(plan)
    results = summary[COLUMNS].copy()
    notes = []
    if "lightllm" in schedulers:
        notes.append(
            "LightLLM runs with block_size="
            f"{int(summary.loc[summary.scheduler == 'lightllm', 'block_size'].iloc[0])}; "
            "Vidur's LightLLM scheduler requires block_size=1 (this simulator accepts any)"
        )

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for s in schedulers:
        g = results[results.scheduler == s].sort_values("qps")
        axes[0].plot(g.qps, g.ttft_p90, "o-", label=s, ms=4)
        axes[1].plot(g.qps, g.tbt_p99, "o-", label=s, ms=4)
        axes[2].plot(g.throughput_rps, g.e2e_p90, "o-", label=s, ms=4)
    for ax, ylab, xlab in (
        (axes[0], "TTFT p90 (s)", "offered load (QPS)"),
        (axes[1], "TBT p99 (s)", "offered load (QPS)"),
        (axes[2], "e2e p90 (s)", "achieved throughput (req/s)"),
    ):
        ax.set_yscale("log")
        ax.set_xlabel(xlab)
        ax.set_ylabel(ylab)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="small")
    c = plan.configs[0]
    n = int(np.max([w.num_requests for w in plan.workloads]))
    fig.suptitle(
        f"{c.model.split('/')[-1]} on 1 x {c.device.upper()} (tp{c.tensor_parallel_size}), "
        f"{tree['workload']['name']} workload, {n} requests, batch cap {c.batch_size_cap}",
        fontsize=10,
    )
    fig.tight_layout()
    common.save_figure(fig, sr.path(".png"))
    sr.finish(results, summary, plan, notes)
