"""Vidur's README scenario: the latency and batch-size distributions of one deployment.

Vidur's README shows, for Llama-3-8B on one A100 serving the (Splitwise) chat trace at
6.45 QPS with Sarathi-Serve (chunk 512, batch cap 512), the CDFs of TTFT, time between
tokens, request end-to-end time and batch size. This study simulates that config (the
experiment ``study_readme_scenario`` holds it; any override applies) and writes
``readme_scenario.png`` (2 x 2 CDFs), ``readme_scenario.csv`` (per metric: mean, p50,
p90, p99, max) and the config's ``chrome_trace.json``.

Batch sizes come from the batch log: a fused run of ``k`` identical decode iterations
counts as ``k`` batches, so the CDF is over scheduler iterations, as in Vidur. Llama-3-8B
has no attention profiles in Vidur's data, so its predictor is transferred (study.json).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vidur_jax.metrics import histogram_quantile, tbt_bin_edges
from vidur_jax.metrics.chrome_trace import write_chrome_trace
from vidur_jax.studies import common


def batch_sizes(batch_log: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, weights): requests per batch and the iterations each record stands for."""
    return np.asarray(batch_log["size"]), np.asarray(batch_log["iters"], dtype=np.float64)


def weighted_quantiles(x: np.ndarray, w: np.ndarray, qs: list[float]) -> list[float]:
    """Quantiles of ``x`` with integer-like weights ``w`` (lower empirical quantile)."""
    order = np.argsort(x, kind="stable")
    cw = np.cumsum(w[order])
    return [float(x[order][min(np.searchsorted(cw, q * cw[-1]), len(x) - 1)]) for q in qs]


def run(tree: dict[str, Any], study: dict[str, Any], out_dir: str) -> None:
    """Simulate the scenario and write its files (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sr = common.StudyRun("readme_scenario", out_dir, study)
    tree = {**tree, "chrome_trace": True}
    plan = common.combine([tree], [{}])
    summary, requests, outputs = common.simulate(plan)
    o = outputs[0]
    label = (
        f"{o.config.model.split('/')[-1]} {o.config.device.upper()} {o.config.replica_scheduler} "
        f"chunk {o.config.chunk_size} cap {o.config.batch_size_cap} @ {plan.labels[0]['qps']} QPS"
    )
    write_chrome_trace(outputs[:1], sr.path("").parent / "chrome_trace.json", [label])

    req = requests[requests["config_id"] == 0]
    done = req[np.isfinite(req["completed_at"].to_numpy(dtype=float))]
    ttft = (done["first_token_at"] - done["arrived_at"]).to_numpy(dtype=float)
    e2e = (done["completed_at"] - done["arrived_at"]).to_numpy(dtype=float)
    sizes, weights = batch_sizes(o.batch_log)
    edges = tbt_bin_edges()
    hist = np.asarray(o.tbt_hist, dtype=np.float64)
    qs = [0.5, 0.9, 0.99]
    rows = []
    for name, x in (("ttft_s", ttft), ("e2e_s", e2e)):
        rows.append(
            {
                "metric": name,
                "count": x.size,
                "mean": x.mean(),
                "max": x.max(),
                **{f"p{int(q * 100)}": float(np.quantile(x, q)) for q in qs},
            }
        )
    rows.append(
        {
            "metric": "tbt_s",
            "count": hist.sum(),
            "mean": o.counters["tbt_sum_s"] / max(o.counters["tbt_count"], 1.0),
            "max": float(edges[1:][np.flatnonzero(hist)[-1]]) if hist.any() else np.nan,
            **{f"p{int(q * 100)}": float(histogram_quantile(hist, edges, q)) for q in qs},
        }
    )
    rows.append(
        {
            "metric": "batch_size",
            "count": weights.sum(),
            "mean": float((sizes * weights).sum() / weights.sum()),
            "max": float(sizes.max()),
            **dict(
                zip(
                    [f"p{int(q * 100)}" for q in qs],
                    weighted_quantiles(sizes, weights, qs),
                    strict=True,
                )
            ),
        }
    )
    results = pd.DataFrame(rows)
    results.insert(0, "scenario", label)

    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    for ax, x, title in ((axes[0, 0], ttft, "TTFT (s)"), (axes[1, 0], e2e, "request e2e time (s)")):
        x = np.sort(x)
        ax.plot(x, np.arange(1, x.size + 1) / x.size, lw=1.5)
        ax.set_xlabel(title)
    nz = np.flatnonzero(hist)
    sl = slice(max(nz[0] - 1, 0), nz[-1] + 1)
    axes[0, 1].step(edges[1:][sl] * 1e3, np.cumsum(hist)[sl] / hist.sum(), where="post", lw=1.5)
    axes[0, 1].set_xlabel("time between tokens (ms)")
    order = np.argsort(sizes, kind="stable")
    axes[1, 1].step(sizes[order], np.cumsum(weights[order]) / weights.sum(), where="post", lw=1.5)
    axes[1, 1].set_xlabel("batch size (requests per iteration)")
    for ax in axes.flat:
        ax.set_ylabel("CDF")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{label}, {len(req)} requests ({tree['workload']['name']} workload)", fontsize=10)
    fig.tight_layout()
    common.save_figure(fig, sr.path(".png"))
    sr.finish(results, summary, plan)
