"""Search plots (matplotlib, Agg): capacity-per-dollar Pareto frontiers and capacity per
config (measured configs only: flagged ones are left out)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vidur_jax.metrics import atomic_path  # noqa: E402
from vidur_jax.search.select import Slo, pareto_front  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_pareto(df: pd.DataFrame, slo: Slo, path: str | os.PathLike) -> Path:
    """QPS per dollar vs TTFT P90 (left) and TBT P99 (right) at capacity, one colour per
    device, the Pareto frontier as a line and the SLO as a dashed bound."""
    ok = df[df["feasible"] & (df["flag"] == "") & (df["capacity_qps"] > 0)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, col, bound, label in (
        (axes[0], "ttft_p90", slo.ttft_p90_s, "TTFT P90 at capacity (s)"),
        (axes[1], "tbt_p99", slo.tbt_p99_s, "TBT P99 at capacity (s)"),
    ):
        for dev, g in ok.groupby("device"):
            ax.scatter(g[col], g["qps_per_dollar"], s=14, alpha=0.6, label=str(dev))
        front = pareto_front(ok[col].to_numpy(), ok["qps_per_dollar"].to_numpy())
        if front.size:
            f = ok.iloc[front]
            ax.step(
                f[col],
                f["qps_per_dollar"],
                where="post",
                color="k",
                lw=1.2,
                label="Pareto frontier",
            )
        ax.axvline(bound, color="r", ls="--", lw=1, label=f"SLO {bound:g} s")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("capacity QPS per $/hour")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Capacity per dollar vs latency (each point: one deployment at its capacity)")
    return _save(fig, Path(path))


def plot_capacity(df: pd.DataFrame, path: str | os.PathLike, top: int = 40) -> Path:
    """Horizontal bars: capacity QPS of the ``top`` configs by QPS per dollar (bars
    coloured by whether they meet the SLO; label = QPS per dollar)."""
    ok = df[df["feasible"] & (df["flag"] == "") & (df["capacity_qps"] > 0)].sort_values(
        "qps_per_dollar", ascending=False
    )
    ok = ok.head(top)
    fig, ax = plt.subplots(figsize=(9, 0.28 * max(len(ok), 4) + 1.2))
    y = np.arange(len(ok))
    colors = ["tab:green" if m else "tab:gray" for m in ok["meets_slo"]]
    ax.barh(y, ok["capacity_qps"], color=colors)
    ax.set_yticks(y, [str(n) for n in ok["name"]], fontsize=7)
    ax.invert_yaxis()
    for yi, (q, d) in enumerate(zip(ok["capacity_qps"], ok["qps_per_dollar"], strict=True)):
        ax.text(q, yi, f" {d:.3g}/$", va="center", fontsize=6)
    ax.set_xlabel(
        "capacity (QPS under the search criterion)  —  green: meets SLO; label: QPS per $/hour"
    )
    n_all = int(df["feasible"].sum())
    ax.set_title(f"Capacity per config (top {len(ok)} of {n_all} feasible by QPS per dollar)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, Path(path))


def plot_all(df: pd.DataFrame, slos: Sequence[Slo], out_dir: str | os.PathLike) -> list[Path]:
    """Both plots into ``out_dir/plots``."""
    plots = Path(out_dir) / "plots"
    return [
        plot_pareto(df, slos[0], plots / "search_pareto.png"),
        plot_capacity(df, plots / "search_capacity.png"),
    ]
