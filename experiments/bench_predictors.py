"""Benchmark: wall time to train every predictor of one (model, GPU), all TP degrees.

Compares our hybrid predictors (one ``train_predictors`` call: every op x TP, MLPs
vmapped) with a Vidur-style scikit-learn ``GridSearchCV`` random forest (Vidur's grid
``n_estimators {250,500,750} x max_depth {8,16,32} x min_samples_split {2,5,10}``, 10-fold
CV, MAPE scorer) trained on the same tables in the same run.

Usage::

    python experiments/bench_predictors.py --out results/bench_predictors.json \
        [--profiles-dir ../shared/data] [--model meta-llama/Llama-2-7b-hf] [--device a100]
        [--forest-ops 3]

``--forest-ops N`` times the forest on only N of the tables and extrapolates its total
linearly by table count (``train_wall_s_vidur_rf`` is then an estimate; the key
``vidur_rf_tables_timed`` says how many were timed). Pass ``--forest-ops 0`` to time all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vidur_jax.predictors import api, datasets, evaluate, train  # noqa: E402
from vidur_jax.profiles import loader  # noqa: E402


def forest_tables(
    profiles_dir: str, device: str, model: str
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(op, Vidur features, target) for every table Vidur trains for this model/GPU."""
    comp = loader.load_compute(profiles_dir, device, model)
    shape = loader.model_shape(comp)
    tables = []
    for tp in sorted(int(t) for t in comp["num_tensor_parallel_workers"].unique()):
        rows = loader.select_tp(comp, tp, model)
        for op in datasets.MLP_CSV_OPS:
            tables.append((op, rows[["num_tokens"]].to_numpy(float), rows[op].to_numpy(float)))
        if os.path.isfile(loader.compute_path(profiles_dir, device, model, "attention")):
            att = loader.load_attention(profiles_dir, device, model)
            att = att[att["num_tensor_parallel_workers"] == tp]
            for kind in ("prefill", "decode"):
                job = datasets.attention_job(
                    att[att["is_prefill"] == (kind == "prefill")], kind, 1.0
                )
                tables.append(
                    (f"attn_{kind}", evaluate._vidur_features(f"attn_{kind}", job.x), job.y)
                )
        if tp > 1:
            net = api._network_for_tp(profiles_dir, device, tp, None)
            ar = loader.load_all_reduce(profiles_dir, net, tp)
            tables.append(
                (
                    "all_reduce",
                    (ar[["size"]].to_numpy(float) / shape["embedding_dim"] / 2),
                    ar["all_reduce"].to_numpy(float),
                )
            )
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES", "../shared/data")
    )
    parser.add_argument("--model", default="meta-llama/Llama-2-7b-hf")
    parser.add_argument("--device", default="a100")
    parser.add_argument("--forest-ops", type=int, default=3)
    args = parser.parse_args()

    t0 = time.perf_counter()
    preds = api.train_predictors(args.profiles_dir, [(args.device, args.model)])
    ours = time.perf_counter() - t0

    tables = forest_tables(args.profiles_dir, args.device, args.model)
    timed = (
        tables
        if args.forest_ops <= 0
        else tables[:: max(1, len(tables) // args.forest_ops)][: args.forest_ops]
    )
    t0 = time.perf_counter()
    for _, x, y in timed:
        evaluate.make_forest(True, len(y)).fit(x, y)
    rf_timed = time.perf_counter() - t0
    rf_total = rf_timed * len(tables) / len(timed)

    result = {
        "model": args.model,
        "device": args.device,
        "num_tp_degrees": len({k[2] for k in preds}),
        "num_predictors_ours": len(preds) * len(api.OPS),
        "num_tables_vidur_rf": len(tables),
        "vidur_rf_tables_timed": len(timed),
        "train_wall_s_ours": round(ours, 2),
        "train_wall_s_vidur_rf": round(rf_total, 2),
        "train_wall_s_vidur_rf_timed_part": round(rf_timed, 2),
        "speedup_x": round(rf_total / ours, 2),
        "mlp_train_steps": train.NUM_STEPS,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
