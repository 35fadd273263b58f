"""Plots of a run (matplotlib Agg): CDFs of TTFT, TBT and e2e latency with one line per
configuration, labelled by the knobs that vary (:func:`vidur_jax.metrics.table.config_labels`)
and titled with what the configs share (model, GPU, parallelism, workload); and a bar chart
comparing the configs' main metrics (the sweep dir of a multirun)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vidur_jax.errors import require  # noqa: E402
from vidur_jax.metrics.histogram import tbt_bin_edges  # noqa: E402
from vidur_jax.metrics.io import atomic_path  # noqa: E402

MAX_LEGEND_ENTRIES = 10


def _hist_rows(tbt_hist: Mapping[int, np.ndarray] | np.ndarray | None) -> dict[int, np.ndarray]:
    if tbt_hist is None:
        return {}
    if isinstance(tbt_hist, Mapping):
        return {int(k): np.asarray(v, dtype=np.float64) for k, v in tbt_hist.items()}
    arr = np.asarray(tbt_hist, dtype=np.float64)
    arr = arr[None] if arr.ndim == 1 else arr
    return {i: arr[i] for i in range(arr.shape[0])}


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _finish(ax: plt.Axes, xlabel: str, n_lines: int, log: bool, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("CDF")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    if log:
        ax.set_xscale("log")
    if 0 < n_lines <= MAX_LEGEND_ENTRIES:  # below the axes: labels can be long
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0.0, -0.15), frameon=False)
    elif n_lines:
        ax.text(0.99, 0.02, f"{n_lines} configs (legend in summary.csv order)",
                transform=ax.transAxes, ha="right", fontsize=7, alpha=0.7)


def plot_cdfs(
    requests_df: pd.DataFrame,
    tbt_hist: Mapping[int, np.ndarray] | np.ndarray | None,
    out_dir: str | os.PathLike,
    edges: np.ndarray | None = None,
    labels: Mapping[int, str] | None = None,
    title: str = "",
) -> list[Path]:
    """Write ``ttft_cdf.png``, ``tbt_cdf.png`` and ``e2e_cdf.png`` into ``out_dir``.

    Args:
        requests_df: frame from :func:`requests_frame` (any number of configs);
            only completed requests are plotted.
        tbt_hist: per-config TBT counts: a mapping ``config_id -> (B,)``, or a (C, B)
            array whose row i belongs to config_id i; None skips the TBT plot.
        out_dir: output folder (created).
        edges: (B + 1,) bin edges; default :func:`tbt_bin_edges`.
        labels: legend label per config_id (default ``config N``).
        title: what the configs share (model, GPU, parallelism, workload), shown under
            each plot's name.

    Returns:
        Paths of the PNGs written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    need = {"config_id", "arrived_at", "first_token_at", "completed_at"}
    require(
        need <= set(requests_df.columns),
        f"requests_df lacks columns {sorted(need - set(requests_df.columns))}",
    )
    done = requests_df[np.isfinite(requests_df["completed_at"].to_numpy(dtype=float))]
    configs = sorted(done["config_id"].unique())
    label = {int(c): f"config {c}" for c in configs} | dict(labels or {})
    heading = lambda name: f"{name} CDF" + (f"\n{title}" if title else "")  # noqa: E731
    written = []
    for metric, end_col in (("ttft", "first_token_at"), ("e2e", "completed_at")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for cid in configs:
            g = done[done["config_id"] == cid]
            x = np.sort((g[end_col] - g["arrived_at"]).to_numpy(dtype=float))
            if x.size:
                ax.plot(x, np.arange(1, x.size + 1) / x.size, label=label[int(cid)], lw=1)
        _finish(ax, f"{metric.upper()} (s)", len(configs), False, heading(metric.upper()))
        path = out / f"{metric}_cdf.png"
        _save(fig, path)
        written.append(path)

    rows = _hist_rows(tbt_hist)
    if rows:
        e = tbt_bin_edges() if edges is None else np.asarray(edges)
        fig, ax = plt.subplots(figsize=(6, 4))
        for cid, counts in sorted(rows.items()):
            require(
                counts.shape == (e.size - 1,),
                f"tbt_hist for config {cid} has shape {counts.shape}; expected ({e.size - 1},)",
            )
            total = counts.sum()
            if total > 0:
                nz = np.flatnonzero(counts)
                sl = slice(max(nz[0] - 1, 0), nz[-1] + 1)
                ax.step(
                    e[1:][sl],
                    np.cumsum(counts)[sl] / total,
                    where="post",
                    label=label.get(int(cid), f"config {cid}"),
                    lw=1,
                )
        _finish(ax, "TBT (s)", len(rows), True, heading("TBT"))
        path = out / "tbt_cdf.png"
        _save(fig, path)
        written.append(path)
    return written


#: Metrics compared across configs by :func:`plot_metrics`: (column, axis label).
COMPARED_METRICS = (
    ("ttft_p90", "TTFT p90 (s)"),
    ("tbt_p99", "TBT p99 (s)"),
    ("e2e_p90", "e2e p90 (s)"),
    ("throughput_rps", "throughput (req/s)"),
)


def plot_metrics(
    summary_df: pd.DataFrame, labels: Mapping[int, str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Bar charts of :data:`COMPARED_METRICS`, one bar per row of ``summary_df`` (keyed
    by ``labels``, in row order), written to ``path`` (PNG)."""
    metrics = [(c, name) for c, name in COMPARED_METRICS if c in summary_df.columns]
    require(metrics, f"summary has none of {[c for c, _ in COMPARED_METRICS]}")
    names = [labels.get(i, f"config {i}") for i in range(len(summary_df))]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 0.9 + 0.3 * len(names)),
                             squeeze=False)
    y = np.arange(len(names))
    for ax, (col, name) in zip(axes[0], metrics, strict=False):
        ax.barh(y, summary_df[col].to_numpy(dtype=float), color="tab:blue", alpha=0.8)
        ax.set_xlabel(name, fontsize=8)
        ax.set_yticks(y, names if ax is axes[0][0] else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, Path(path))
    return Path(path)
