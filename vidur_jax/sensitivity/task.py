"""``task: sensitivity`` — the ``python -m vidur_jax +experiment=sensitivity`` run.

Reads the usual deployment/workload groups plus a ``sensitivity`` block::

    sensitivity:
      loads: [1.0, 2.0, 3.0]        # arrival rates (qps) to differentiate at
      knobs: [qps, compute_speed, memory_bandwidth, interconnect_speed, ...]
      mode: forward                 # forward (jvp) | reverse (checkpointed scan + vjp)
      smooth_continuous: true       # also the schedule-aware smoothed slopes
      num_nodes: 4                  # Gauss-Hermite nodes of the smoothing
      smoothing: {}                 # {knob: absolute width}
      plot_metrics: [ttft_p90, tbt_p99]

and writes into the run dir: ``sensitivity.csv`` (one row per load x metric x knob:
``qps, metric, knob, value, derivative, elasticity`` then ``knob_value, method,
derivative_smoothed, elasticity_smoothed, smoothing_width``) and
``plots/sensitivity_elasticities.png`` (bar chart of the elasticities of the plotted
metrics to each knob at each load).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vidur_jax.errors import ConfigError, require
from vidur_jax.metrics.io import atomic_path, atomic_write_csv

DEFAULT_BLOCK = {
    "loads": None,
    "knobs": None,
    "mode": "forward",
    "smooth_continuous": True,
    "num_nodes": 4,
    "smoothing": {},
    "plot_metrics": ["ttft_p90", "tbt_p99"],
}


def _settings(tree: Mapping[str, Any]) -> dict[str, Any]:
    from vidur_jax.sensitivity import core

    block = dict(DEFAULT_BLOCK)
    block.update(tree.get("sensitivity") or {})
    unknown = sorted(set(block) - set(DEFAULT_BLOCK))
    require(not unknown, f"unknown sensitivity keys {unknown}; allowed: {', '.join(DEFAULT_BLOCK)}")
    knobs = list(block["knobs"] or core.DEFAULT_KNOBS)
    allowed = (*core.CONTINUOUS_KNOBS, *core.DISCRETE_KNOBS)
    bad = [k for k in knobs if k not in allowed]
    require(not bad, f"unknown sensitivity.knobs {bad}; allowed: {', '.join(allowed)}")
    bad = [m for m in block["plot_metrics"] if m not in core.METRICS]
    require(not bad, f"unknown sensitivity.plot_metrics {bad}; allowed: {', '.join(core.METRICS)}")
    require(
        block["mode"] in ("forward", "reverse"),
        f"sensitivity.mode={block['mode']!r}; allowed: forward, reverse",
    )
    block["knobs"] = knobs
    return block


def sensitivity_table(tree: Mapping[str, Any]) -> pd.DataFrame:
    """Sensitivities of the composed config ``tree`` at each load (no files written)."""
    from vidur_jax import app
    from vidur_jax.sensitivity import core
    from vidur_jax.sim.run import default_predictor_for

    block = _settings(tree)
    cfg = app.deployment_from(tree)
    spec = app.workload_spec(tree)
    require(
        spec["kind"] == "synthetic" and spec["arrival"]["kind"] in app.RATE_ARRIVALS,
        "sensitivity needs a synthetic workload with poisson or gamma arrivals "
        "(the qps knob rescales its arrival times)",
    )
    loads = block["loads"] or [spec["qps"]]
    for q in loads:
        require(
            isinstance(q, (int, float)) and q > 0, f"sensitivity.loads: {q!r} must be a number > 0"
        )
    price = (tree.get("hardware") or {}).get("price_per_hour")
    predictor = default_predictor_for(tree.get("profiles_dir"))(cfg)
    smoothing = dict(block["smoothing"] or {})
    max_chunk = int(
        cfg.chunk_size
        + 4 * core.smoothing_width("chunk_size", cfg.chunk_size, smoothing.get("chunk_size"))
    )
    max_cap = int(
        cfg.batch_size_cap
        + 4 * core.smoothing_width("batch_cap", cfg.batch_size_cap, smoothing.get("batch_cap"))
    )
    frames = []
    for q in loads:
        s = dict(spec)
        s["arrival"] = dict(spec["arrival"], qps=float(q))
        s["qps"] = float(q)
        wl = app.build_workload(s)
        case = core.make_case(
            cfg, wl, predictor, float(q), price, max_chunk=max_chunk, max_batch_cap=max_cap
        )
        sens = core.sensitivities(
            case,
            block["knobs"],
            mode=block["mode"],
            smoothing=smoothing,
            num_nodes=int(block["num_nodes"]),
            smooth_continuous=bool(block["smooth_continuous"]),
        )
        frames.append(sens.frame(qps=float(q)))
    return pd.concat(frames, ignore_index=True)


def plot_elasticities(df: pd.DataFrame, metrics: Sequence[str], path: str | os.PathLike) -> None:
    """Bar chart: elasticity of each metric (one panel each) to every knob, bars per load.

    Solid bars are the derivative with the schedule held fixed (jvp; integer knobs:
    their relaxation); hatched bars, where present, the schedule-aware smoothed slope.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted(df["qps"].unique())
    fig, axes = plt.subplots(len(metrics), 1, figsize=(11, 3.6 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        sub = df[df["metric"] == metric]
        knobs = list(dict.fromkeys(sub["knob"]))
        x = np.arange(len(knobs))
        relaxed = sub["method"].str.startswith("smoothed")
        smooth = sub["elasticity_smoothed"].notna() & ~relaxed
        has_smooth = bool(smooth.any())
        per = len(loads) * (2 if has_smooth else 1)
        width = 0.8 / per
        for i, q in enumerate(loads):
            row = sub[sub["qps"] == q].set_index("knob").reindex(knobs)
            off = (i * (2 if has_smooth else 1)) * width - 0.4 + width / 2
            color = plt.cm.viridis(i / max(1, len(loads) - 1) * 0.85)
            ax.bar(
                x + off,
                row["elasticity"].fillna(0.0),
                width,
                color=color,
                label=f"{q:g} qps (schedule fixed)",
            )
            if has_smooth:
                e = row["elasticity_smoothed"].where(~row["method"].str.startswith("smoothed"))
                ax.bar(
                    x + off + width,
                    e.fillna(0.0),
                    width,
                    color=color,
                    alpha=0.45,
                    hatch="//",
                    label=f"{q:g} qps (smoothed)",
                )
        # schedule-fixed and schedule-aware slopes can differ by orders of magnitude
        ax.set_yscale("symlog", linthresh=0.1)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xticks(x, knobs, rotation=20, ha="right")
        ax.set_ylabel(f"elasticity of {metric}")
        ax.set_title(f"d log {metric} / d log knob")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_task(cfg: dict[str, Any], out_dir: str) -> None:
    """Write ``sensitivity.csv`` and ``plots/sensitivity_elasticities.png`` into ``out_dir``."""
    block = _settings(cfg)
    df = sensitivity_table(cfg)
    if df.empty:
        raise ConfigError("sensitivity: nothing to compute")
    atomic_write_csv(df, os.path.join(out_dir, "sensitivity.csv"))
    if cfg.get("plots", True):
        plot_elasticities(
            df,
            block["plot_metrics"],
            os.path.join(out_dir, "plots", "sensitivity_elasticities.png"),
        )
    show = df[df["metric"].isin(block["plot_metrics"])]
    cols = ["qps", "metric", "knob", "value", "derivative", "elasticity", "elasticity_smoothed"]
    with atomic_path(os.path.join(out_dir, "sensitivity_settings.json")) as tmp:
        tmp.write_text(json.dumps({k: v for k, v in block.items()}, indent=1, default=str))
    print(show[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {os.path.join(out_dir, 'sensitivity.csv')}")
