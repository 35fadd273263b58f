"""Hydra callbacks: the sweep-level ``sweep_summary.csv`` of a multirun.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``. At the end of a multirun it
concatenates every job's ``summary.csv`` (adding ``job`` and ``overrides`` columns) into
``<sweep dir>/sweep_summary.csv`` and lists every job's status (``ok`` / ``failed`` /
``skipped``) in ``sweep_status.csv``; both are written atomically, so a failing job never
hides the results of the others. ``python -m vidur_jax.callbacks DIR`` rebuilds them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:  # Hydra is a dependency of the app, not of the library
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


def _overrides(job_dir: Path) -> str:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    lines = [ln[2:].strip() for ln in path.read_text().splitlines() if ln.startswith("- ")]
    return " ".join(lines)


def collect_sweep(sweep_dir: str | Path) -> tuple[Any, Any]:
    """Concatenate the jobs' summaries under ``sweep_dir`` and write the sweep files.

    Returns:
        ``(sweep_summary, sweep_status)`` data frames.
    """
    import pandas as pd  # lazily: the callback is built when any run starts

    from vidur_jax.metrics import atomic_write_csv

    root = Path(sweep_dir)
    frames, status = [], []
    jobs = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for job in jobs:
        summary = job / "summary.csv"
        overrides = _overrides(job)
        if summary.exists():
            df = pd.read_csv(summary)
            df.insert(0, "overrides", overrides)
            df.insert(0, "job", int(job.name))
            frames.append(df)
            state = "skipped" if (job / ".skipped").exists() else "ok"
        else:
            state = "failed"
        status.append({"job": int(job.name), "status": state, "overrides": overrides})
    sweep = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    status_df = pd.DataFrame(status, columns=["job", "status", "overrides"])
    atomic_write_csv(sweep, root / "sweep_summary.csv")
    atomic_write_csv(status_df, root / "sweep_status.csv")
    return sweep, status_df


class SweepSummary(Callback):
    """Writes ``sweep_summary.csv`` and ``sweep_status.csv`` when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:  # noqa: D102
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            collect_sweep(sweep_dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vidur_jax.callbacks SWEEP_DIR")
    collect_sweep(sys.argv[1])
