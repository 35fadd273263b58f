"""The files of a run dir: ``summary.csv`` (one row per config), ``requests.parquet``,
``plots/``, ``chrome_trace.json`` on request, and ``report.html`` (DESIGN.md section 5),
every one written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidur_jax.metrics import table


def summary_table(plan: Any, outputs: Sequence[Any]) -> pd.DataFrame:
    """``summary.csv``: knobs (:data:`SUMMARY_KNOBS`, then every other knob that varies
    across the configs; a knob that does not apply to a config is empty), metrics
    (:data:`SUMMARY_METRICS`), then the remaining summary statistics
    (:func:`vidur_jax.metrics.table.summary_table`)."""
    specs = plan.specs or ({},) * len(outputs)
    knobs = []
    for i, (o, lab, spec) in enumerate(zip(outputs, plan.labels, specs, strict=True)):
        row: dict[str, Any] = {"config_id": i, **table.deployment_knobs(o.config)}
        row.update(table.workload_knobs(spec) if spec else {})
        row.update(lab)
        if isinstance(row.get("qps"), float) and np.isnan(row["qps"]):
            row["qps"] = None
        knobs.append(row)
    return table.summary_table(knobs, [o.summary for o in outputs])


def write_outputs(
    out_dir: str | os.PathLike,
    summary_df: pd.DataFrame,
    requests_df: pd.DataFrame,
    outputs: Sequence[Any],
    plots: bool = True,
) -> list[Path]:
    """Write ``summary.csv``, ``requests.parquet``, ``plots/*.png`` (CDFs labelled by the
    knobs that vary, titled with what the configs share), ``chrome_trace.json`` when the
    outputs carry batch logs (``chrome_trace=true``) and ``report.html``, atomically.

    Returns:
        The paths written.
    """
    from vidur_jax import metrics
    from vidur_jax.metrics.report import write_report
    from vidur_jax.metrics.terminal import describe_run

    out = Path(out_dir)
    written = [
        metrics.atomic_write_csv(summary_df, out / "summary.csv"),
        metrics.atomic_write_parquet(requests_df, out / "requests.parquet"),
    ]
    if any(getattr(o, "batch_log", None) is not None for o in outputs):
        from vidur_jax.metrics.chrome_trace import write_chrome_trace

        written.append(write_chrome_trace(outputs, out / "chrome_trace.json"))
    if plots:
        hist = {i: o.tbt_hist for i, o in enumerate(outputs)}
        labels = table.config_labels(summary_df)
        written += metrics.plot_cdfs(
            requests_df, hist, out / "plots", labels=labels, title=describe_run(summary_df)
        )
    written.append(write_report(out))
    return written


def written_names(out_dir: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> list[str]:
    """``paths`` relative to ``out_dir``, files in sub-folders shown once as ``folder/``."""
    names: list[str] = []
    for p in paths:
        rel = Path(p).relative_to(out_dir)
        name = f"{rel.parts[0]}/" if len(rel.parts) > 1 else rel.as_posix()
        if name not in names:
            names.append(name)
    return names
