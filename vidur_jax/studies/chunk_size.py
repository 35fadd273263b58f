"""Sarathi's chunked-prefill trade-off: TTFT against TBT over chunk sizes.

The experiment's ``sweep`` lists chunk sizes (and loads); all points run in one vmapped
call. Small chunks interleave prompts with ongoing decodes in short iterations (low time
between tokens, but a prompt needs many iterations: higher TTFT); large chunks finish
prompts fast but stall the decodes batched with them. Writes ``chunk_size.csv`` (qps x
chunk: TTFT p50/p90, TBT p50/p99, e2e p90, throughput) and ``chunk_size.png``: TTFT p90
against TBT p99, one curve per load, each point labelled with its chunk size.
"""

from __future__ import annotations

from typing import Any

from vidur_jax.studies import common

COLUMNS = [
    "qps",
    "chunk_size",
    "ttft_p50",
    "ttft_p90",
    "tbt_p50",
    "tbt_p99",
    "e2e_p90",
    "throughput_rps",
    "batch_size_mean",
]


def run(tree: dict[str, Any], study: dict[str, Any], out_dir: str) -> None:
    """Simulate the sweep and write the files (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sr = common.StudyRun("chunk_size", out_dir, study)
    plan = common.combine([tree], [{}])
    summary, _, _ = common.simulate(plan)
    results = summary[COLUMNS].sort_values(["qps", "chunk_size"]).reset_index(drop=True)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tbt_ax = axes[1].twinx()
    for qps, g in results.groupby("qps"):
        line = axes[0].plot(g.tbt_p99 * 1e3, g.ttft_p90, "o-", label=f"{qps:g} QPS", ms=4)[0]
        color = line.get_color()
        for _, r in g.iterrows():
            axes[0].annotate(
                str(int(r.chunk_size)),
                (r.tbt_p99 * 1e3, r.ttft_p90),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
                color=color,
            )
        axes[1].plot(
            g.chunk_size, g.ttft_p90, "o-", color=color, ms=4, label=f"TTFT p90, {qps:g} QPS"
        )
        tbt_ax.plot(
            g.chunk_size, g.tbt_p99 * 1e3, "s--", color=color, ms=4, label=f"TBT p99, {qps:g} QPS"
        )
    axes[0].set_xlabel("TBT p99 (ms)")
    axes[0].set_ylabel("TTFT p90 (s)")
    axes[0].set_yscale("log")
    axes[0].set_title("trade-off (labels: chunk size)", fontsize=9)
    axes[0].legend(fontsize="small")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("chunk size (tokens)")
    axes[1].set_ylabel("TTFT p90 (s), solid")
    axes[1].set_yscale("log")
    tbt_ax.set_ylabel("TBT p99 (ms), dashed")
    h0, l0 = axes[1].get_legend_handles_labels()
    h1, l1 = tbt_ax.get_legend_handles_labels()
    axes[1].legend(h0 + h1, l0 + l1, fontsize="x-small", loc="upper center")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    c = plan.configs[0]
    fig.suptitle(
        f"Sarathi chunk size: {c.model.split('/')[-1]} on {c.device.upper()}, batch cap "
        f"{c.batch_size_cap}, {tree['workload']['name']} workload, "
        f"{plan.workloads[0].num_requests} requests",
        fontsize=10,
    )
    fig.tight_layout()
    common.save_figure(fig, sr.path(".png"))
    sr.finish(results, summary, plan)
