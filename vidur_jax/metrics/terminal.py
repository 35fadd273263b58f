"""The terminal's summary of a run: a title naming what every config shares (model, GPU,
parallelism, scheduler, workload), the knobs that vary between configs, the main
metrics, and where the files went (rich)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidur_jax.metrics import table

#: Metric columns of the terminal table: (column, heading).
PRINT_METRICS = (
    ("ttft_p90", "ttft p90 s"),
    ("tbt_p99", "tbt p99 s"),
    ("e2e_p90", "e2e p90 s"),
    ("throughput_rps", "req/s"),
    ("arrival_rate_rps", "arrived req/s"),
    ("num_completed", "done"),
    ("sim_duration_s", "sim s"),
)
#: Knobs named in the terminal table's title when every config shares them.
TITLE_KNOBS = ("model", "device", "tp", "pp", "replicas", "scheduler", "workload", "qps")


def describe_run(summary_df: pd.DataFrame) -> str:
    """One line naming what every config of ``summary_df`` shares: model, GPU,
    parallelism, scheduler, workload and load (e.g. ``Llama-2-7b-hf on a100, TP1 PP1 x1
    replica, sarathi, synthetic_conv at 2 QPS``; disaggregated: ``Llama-2-7b-hf, 1
    prefill h100 TP1 PP1 : 3 decode a100 TP1 PP1, vllm, ...``)."""
    k = table.constant_knobs(summary_df, TITLE_KNOBS)
    shape = _pools_shape(summary_df)  # the pools name their own GPUs
    parts = []
    if "model" in k:
        on_device = f" on {k['device']}" if "device" in k and shape is None else ""
        parts.append(str(k["model"]).split("/")[-1] + on_device)
    if shape is None:
        shape = " ".join(f"{name.upper()}{k[name]}" for name in ("tp", "pp") if name in k)
        if "replicas" in k:
            shape += f" x{k['replicas']} replica{'s' if k['replicas'] != 1 else ''}"
    if shape:
        parts.append(shape.strip())
    if "scheduler" in k:
        parts.append(str(k["scheduler"]))
    if "workload" in k:
        parts.append(str(k["workload"]) + (f" at {k['qps']:g} QPS" if "qps" in k else ""))
    return ", ".join(parts)


#: summary.csv columns that give a disaggregated deployment's pools (sim/disagg.py).
POOL_KNOBS = tuple(
    f"{pool}_{part}" for pool in ("prefill", "decode")
    for part in ("replicas", "pool_device", "pool_tp", "pool_pp")
)


def _pools_shape(summary_df: pd.DataFrame) -> str | None:
    """``"2 prefill a100 TP1 PP1 : 2 decode a100 TP1 PP2"`` when every config is
    disaggregated with the same pools; None otherwise (a colocated run, or pools that
    differ between configs, which the table's columns then show)."""
    k = table.constant_knobs(summary_df, POOL_KNOBS)
    if len(k) != len(POOL_KNOBS) or not all(
        float(k[f"{pool}_replicas"]) >= 1 for pool in ("prefill", "decode")
    ):
        return None
    return " : ".join(
        f"{int(k[f'{pool}_replicas'])} {pool} {k[f'{pool}_pool_device']} "
        f"TP{int(k[f'{pool}_pool_tp'])} PP{int(k[f'{pool}_pool_pp'])}"
        for pool in ("prefill", "decode")
    )


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value).split("/")[-1]


def print_summary(
    summary_df: pd.DataFrame,
    out_dir: str | os.PathLike | None,
    max_rows: int = 20,
    written: Sequence[str] = ("summary.csv", "requests.parquet"),
) -> None:
    """One-screen table (rich): a title with what the configs share, the knobs that
    vary between them, the main metrics; then where the files went (``written``)."""
    from rich.console import Console
    from rich.table import Table

    knobs = table.varying_knobs(summary_df) or ["scheduler"]
    cols = [("config_id", "id"), *((k, k) for k in knobs), *PRINT_METRICS]
    cols = [(key, head) for key, head in cols if key in summary_df.columns]
    n = len(summary_df)
    title = f"{n} configuration{'s' if n != 1 else ''}: {describe_run(summary_df)}"
    out = Table()
    for _, head in cols:
        out.add_column(head, justify="right")
    for _, row in summary_df.head(max_rows).iterrows():
        out.add_row(*(_cell(row[key]) for key, _ in cols))
    console = Console(width=max(120, Console().width))
    console.print(title, highlight=False)  # above the table: a table title wraps to its width
    console.print(out)
    if len(summary_df) > max_rows:
        console.print(f"... {len(summary_df) - max_rows} more rows in summary.csv")
    if out_dir is not None:
        first, *rest = written
        console.print(f"wrote {Path(out_dir) / first}" + "".join(f", {w}" for w in rest))
