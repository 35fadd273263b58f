"""Leave-one-GPU-out error of the calibrated roofline (issue #30, item 5).

The roofline times every op of a GPU without profiles (H200, B200, L40S, MI300X) and of
every MoE / MLA model on any GPU. Its per-op efficiencies are fitted on profiled GPUs, so
its honest error is on a GPU left out of the fit: calibrate on A100's profiles, predict
every profiled row of H100 from H100's spec-sheet peaks alone, and the other way round.

Two errors per direction:

* **per op**: MAPE over every row of the held-out GPU's ``mlp.csv`` tables (all models,
  all TP degrees) and its collective tables (:func:`roofline.evaluate`), also per model;
* **per layer**: MAPE of the sum of the nine token ops of one layer (what the simulator
  adds per layer for a batch of ``num_tokens`` tokens; collectives apart), row by row,
  where errors of single ops partly cancel.

Usage::

    python experiments/roofline_leave_one_gpu_out.py [--profiles-dir ../shared/data]
        [--out experiments/results/roofline_leave_one_gpu_out]

Writes ``op_mape.csv`` (direction, model, op, rows, mape_pct, median_ape_pct,
p90_ape_pct, bias_pct), ``layer_mape.csv`` (direction, model, tp, rows, mape_pct,
p90_ape_pct, bias_pct) and ``summary.json`` (flat) into ``--out``; prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

from vidur_jax.predictors import roofline
from vidur_jax.profiles import loader
from vidur_jax.sim.types import LAYER_COMPUTE_OPS

DEFAULT_PROFILES = os.environ.get(
    "VIDUR_JAX_PROFILES", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "results", "roofline_leave_one_gpu_out")
#: (calibrated on, predicted) pairs
DIRECTIONS = (("a100", "h100"), ("h100", "a100"))
#: The token ops one layer adds up (collectives and attention kernels apart).
LAYER_OPS = LAYER_COMPUTE_OPS


def _errors(pred: np.ndarray, true: np.ndarray) -> dict:
    rel = pred / true - 1.0
    ape = 100.0 * np.abs(rel)
    return {
        "rows": int(rel.size),
        "mape_pct": float(ape.mean()),
        "p90_ape_pct": float(np.percentile(ape, 90)),
        "bias_pct": float(100.0 * rel.mean()),
    }


def layer_errors(calibration: dict, profiles_dir: str, device: str) -> list[dict]:
    """Per-layer token-op sum error on ``device``'s compute tables, per (model, TP)."""
    out = []
    for model in loader.list_compute_models(profiles_dir, device):
        comp = loader.load_compute(profiles_dir, device, model)
        shape = loader.model_shape(comp)
        ops = [op for op in LAYER_OPS if (comp[op] > 0).any()]  # phi-2: no post-attn norm
        for tp in sorted(int(t) for t in comp["num_tensor_parallel_workers"].unique()):
            rows = comp[comp["num_tensor_parallel_workers"] == tp]
            pred = roofline.RooflinePredictor(shape, device, tp, calibration)
            n = rows["num_tokens"].to_numpy(float)
            total = sum(pred.predict(op, num_tokens=n) for op in ops)
            true = rows[ops].to_numpy(float).sum(axis=1)
            out.append({"model": model, "tp": tp, **_errors(total, true)})
    return out


def run(profiles_dir: str, out: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Fit on one GPU, evaluate on the other; write and return (op, layer, summary)."""
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    op_rows, layer_rows = [], []
    for src, dst in DIRECTIONS:
        cal = roofline.calibrate(profiles_dir, (src,))
        direction = f"{src}->{dst}"
        for r in roofline.evaluate(cal, profiles_dir, dst):
            op_rows.append({"direction": direction, "model": "all", **r})
        for model in loader.list_compute_models(profiles_dir, dst):
            for r in roofline.evaluate(cal, profiles_dir, dst, models=[model]):
                if r["op"] in LAYER_OPS:
                    op_rows.append({"direction": direction, "model": model, **r})
        for r in layer_errors(cal, profiles_dir, dst):
            layer_rows.append({"direction": direction, **r})
    ops, layers = pd.DataFrame(op_rows), pd.DataFrame(layer_rows)
    ops.to_csv(os.path.join(out, "op_mape.csv"), index=False)
    layers.to_csv(os.path.join(out, "layer_mape.csv"), index=False)
    summary: dict = {}
    for r in ops[ops.model == "all"].itertuples():
        summary[f"op_mape_pct.{r.direction}.{r.op}"] = round(r.mape_pct, 2)
    for direction, g in layers.groupby("direction"):
        w = g["rows"].to_numpy(float)
        summary[f"layer_mape_pct.{direction}"] = round(float(np.average(g.mape_pct, weights=w)), 2)
        summary[f"layer_bias_pct.{direction}"] = round(float(np.average(g.bias_pct, weights=w)), 2)
        summary[f"layer_worst_mape_pct.{direction}"] = round(float(g.mape_pct.max()), 2)
    summary["wall_s"] = round(time.time() - t0, 1)
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True)
    return ops, layers, summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--profiles-dir", default=DEFAULT_PROFILES)
    args = p.parse_args(argv)
    if not os.path.isdir(args.profiles_dir):
        print(f"error: profiles dir not found: {args.profiles_dir}", file=sys.stderr)
        return 2
    ops, layers, summary = run(args.profiles_dir, args.out)
    table = ops[ops.model == "all"].pivot(index="op", columns="direction", values="mape_pct")
    print("roofline MAPE % per op, calibrated on one GPU, predicting the other")
    print(table.round(1).to_string())
    print("\nper-layer token-op sum, MAPE % per (model, tp)")
    print(layers.round(1).to_string(index=False))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
