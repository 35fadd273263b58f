"""Hydra callbacks: the sweep-level files of a multirun.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``. At the end of a multirun it
concatenates every job's ``summary.csv`` (adding ``job`` and ``overrides`` columns) into
``<sweep dir>/sweep_summary.csv``, lists every job's status (``ok`` / ``failed`` /
``skipped``) in ``sweep_status.csv``, draws comparison plots across the jobs' configs
(``plots/ttft_cdf.png``, ``plots/e2e_cdf.png`` from the jobs' ``requests.parquet``,
``plots/metrics.png``: TTFT p90, TBT p99, e2e p90 and throughput per config), labelled by
the knobs that vary across the whole sweep, and writes the sweep's ``report.html``. All
are written atomically, so a failing job never hides the results of the others.
``python -m vidur_jax.callbacks DIR`` rebuilds them.
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
    if frames:  # knobs of every job first (a job's extra knobs would land after the metrics)
        from vidur_jax.metrics.table import knob_part

        knobs = []
        for df in frames:
            knobs += [c for c in knob_part(df.columns) if c not in knobs]
        sweep = sweep[[*knobs, *(c for c in sweep.columns if c not in knobs)]]
    status_df = pd.DataFrame(status, columns=["job", "status", "overrides"])
    atomic_write_csv(sweep, root / "sweep_summary.csv")
    atomic_write_csv(status_df, root / "sweep_status.csv")
    return sweep, status_df


def compare_jobs(sweep_dir: str | Path, sweep: Any, plots: bool = True) -> list[Path]:
    """Comparison plots across a multirun's jobs and the sweep's ``report.html``.

    Args:
        sweep_dir: the sweep dir (job folders ``0/``, ``1/``, ...).
        sweep: its ``sweep_summary`` frame (:func:`collect_sweep`).
        plots: draw ``plots/`` (the jobs' ``plots=`` setting).

    Returns:
        The paths written.
    """
    import pandas as pd

    from vidur_jax.metrics import plots as plots_mod
    from vidur_jax.metrics import table
    from vidur_jax.metrics.report import write_report
    from vidur_jax.metrics.terminal import describe_run

    root = Path(sweep_dir)
    written: list[Path] = []
    if plots and len(sweep) and {"job", "config_id"} <= set(sweep.columns):
        labels = table.config_labels(sweep.drop(columns=["config_id"]), ignore=("job", "overrides"))
        frames = []
        for pos, (job, cid) in enumerate(zip(sweep["job"], sweep["config_id"], strict=True)):
            path = root / str(job) / "requests.parquet"
            if path.is_file():
                req = pd.read_parquet(path)
                req = req[req["config_id"] == cid].assign(config_id=pos)
                frames.append(req)
        title = describe_run(sweep)
        if frames:
            written += plots_mod.plot_cdfs(
                pd.concat(frames, ignore_index=True), None, root / "plots", labels=labels, title=title
            )
        written.append(plots_mod.plot_metrics(sweep, labels, root / "plots" / "metrics.png", title))
    written.append(write_report(root, title=f"sweep {root.name}"))
    return written


class SweepSummary(Callback):
    """Writes ``sweep_summary.csv`` and ``sweep_status.csv`` when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:  # noqa: D102
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            sweep, _ = collect_sweep(sweep_dir)
            try:  # the jobs' results are written; a figure that fails must not hide them
                compare_jobs(sweep_dir, sweep, plots=bool(config.get("plots", True)))
            except Exception as err:  # noqa: BLE001 - one line, the sweep files stay
                sys.stderr.write(f"warning: sweep comparison plots/report failed: {err}\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vidur_jax.callbacks SWEEP_DIR")
    compare_jobs(sys.argv[1], collect_sweep(sys.argv[1])[0])
