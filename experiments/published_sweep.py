"""Shared steps of the experiments that pair published measurements with a sweep
(``fp8.py``, ``speculative.py``): run ``+experiment=NAME`` and write its sweep table,
flatten the published-measurement rows for the results JSON."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd


def run_sweep(
    experiment: str,
    profiles_dir: str | None,
    num_requests: int | None,
    columns: Sequence[str],
    out: str,
) -> pd.DataFrame:
    """Simulate ``+experiment=experiment`` (no plots) and write ``out/sweep.csv`` with the
    ``columns`` the summary has; returns that table."""
    import vidur_jax
    from vidur_jax.metrics import atomic_write_csv

    overrides = [f"+experiment={experiment}", "plots=false"]
    if profiles_dir:
        overrides.append(f"profiles_dir={profiles_dir}")
    if num_requests:
        overrides.append(f"workload.num_requests={num_requests}")
    summary, _ = vidur_jax.simulate(overrides)
    sweep = summary[[c for c in columns if c in summary]]
    atomic_write_csv(sweep, os.path.join(out, "sweep.csv"))
    return sweep


def flat_published(pub: pd.DataFrame, keys: Sequence[str]) -> dict[str, float]:
    """``published_<case>_<key>``: value, for every published row and key."""
    return {f"published_{r['case']}_{k}": float(r[k]) for r in pub.to_dict("records") for k in keys}
