"""TP x PP trade-off of a large model (e.g. Llama-2-70B) on A100 vs H100.

Every ``hardware/`` option in ``study.devices`` x every ``[tp, pp]`` in ``study.shapes``
runs every point of the experiment's ``sweep`` (arrival rates). Writes
``parallelism.csv`` (device, tp, pp, GPUs, qps: TTFT p90, TBT p99, e2e p90, achieved
throughput, cost per hour and requests per dollar) and ``parallelism.png``: TTFT p90 and
TBT p99 against the load, one panel per device, one line per shape.

Tensor parallelism cuts every iteration's time (lower TBT) but pays all-reduces;
pipeline parallelism keeps per-GPU work large and overlaps micro-batches (more
throughput per GPU) at a higher per-token latency. Shapes whose weights do not fit the
GPU are reported in ``study.json`` and skipped. Vidur's data has no attention profiles of
the 70B models, so their attention times are transferred from other models' profiles
(``study.json`` lists the transferred operations).
"""

from __future__ import annotations

from typing import Any

from vidur_jax.errors import ConfigError, require
from vidur_jax.studies import common

COLUMNS = [
    "device",
    "tp",
    "pp",
    "num_gpus",
    "qps",
    "ttft_p90",
    "tbt_p99",
    "e2e_p90",
    "throughput_rps",
    "num_completed",
    "cost_per_hour",
    "requests_per_dollar",
    "batch_size_mean",
    "kv_util_mean",
]


def run(tree: dict[str, Any], study: dict[str, Any], out_dir: str) -> None:
    """Simulate every (device, shape, load) and write the files (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vidur_jax import app

    sr = common.StudyRun("parallelism", out_dir, study)
    devices = list(study.get("devices") or [])
    shapes = [tuple(int(v) for v in s) for s in (study.get("shapes") or [])]
    require(devices and shapes, "study.devices and study.shapes ([[tp, pp], ...]) are required")
    trees, tags, notes = [], [], []
    for dev in devices:
        for tp, pp in shapes:
            t = common.with_values(
                common.with_option(tree, "hardware", dev), {"cluster.tp": tp, "cluster.pp": pp}
            )
            try:
                app.deployment_from(t)
            except ConfigError as err:
                notes.append(f"skipped {dev} tp{tp} pp{pp}: {err}")
                continue
            trees.append(t)
            tags.append({"variant": f"{dev} tp{tp} pp{pp}"})
    plan = common.combine(trees, tags)
    summary, _, _ = common.simulate(plan)
    summary["requests_per_dollar"] = summary.throughput_rps * 3600.0 / summary.cost_per_hour
    results = summary[COLUMNS].copy()

    fig, axes = plt.subplots(
        3, len(devices), figsize=(5.2 * len(devices), 9.5), squeeze=False, sharey="row"
    )
    for j, dev in enumerate(devices):
        dev_name = app.to_container(common.with_option(tree, "hardware", dev))["hardware"]["device"]
        for tp, pp in shapes:
            g = results[(results.device == dev_name) & (results.tp == tp) & (results.pp == pp)]
            if g.empty:
                continue
            g = g.sort_values("qps")
            lab = f"TP{tp} PP{pp} ({tp * pp} GPUs)"
            ls = "-" if pp == 1 else "--"
            axes[0, j].plot(g.qps, g.ttft_p90, "o" + ls, label=lab, ms=4)
            axes[1, j].plot(g.qps, g.tbt_p99, "o" + ls, label=lab, ms=4)
            axes[2, j].plot(g.qps, g.requests_per_dollar, "o" + ls, label=lab, ms=4)
        axes[0, j].set_title(dev_name.upper())
        for ax in axes[:, j]:
            ax.set_xlabel("offered load (QPS)")
            ax.grid(alpha=0.3, which="both")
        axes[0, j].set_yscale("log")
        axes[1, j].set_yscale("log")
    axes[0, 0].set_ylabel("TTFT p90 (s)")
    axes[1, 0].set_ylabel("TBT p99 (s)")
    axes[2, 0].set_ylabel("requests per $ (at achieved throughput)")
    axes[0, 0].legend(fontsize="small")
    c = plan.configs[0]
    fig.suptitle(
        f"{c.model.split('/')[-1]}, {c.replica_scheduler} (chunk {c.chunk_size}, cap "
        f"{c.batch_size_cap}), {tree['workload']['name']} workload, "
        f"{plan.workloads[0].num_requests} requests",
        fontsize=10,
    )
    fig.tight_layout()
    common.save_figure(fig, sr.path(".png"))
    sr.finish(results, summary, plan, notes)
