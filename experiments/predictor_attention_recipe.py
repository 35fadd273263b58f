"""Attention recipes on predictor_eval's held-out protocol: residual grid vs MLP vs forest.

Usage::

    python experiments/predictor_attention_recipe.py [--profiles-dir ../shared/data]
        [--seeds 0 1 2 3 4] [--out experiments/results/predictor_attention_recipe.csv]

For every attention table (A100 Llama-2-7B, TP 1/2/4/8, prefill and decode; the only
attention profiles there are) and both splits of ``predictors.evaluate`` (in range: every
5th row held out; extrapolation: trained on kv, chunk <= 2048 / batch <= 64, kv <= 2048,
tested beyond), fits

* ``grid`` -- polynomial + residual grid (the shipped recipe, ``FitJob.grid``);
* ``mlp`` -- polynomial + MLP correction, one fit per base seed in ``--seeds``
  (``mlp_seed0`` is seed 0, ``mlp_seed_max``/``_min`` the worst/best seed,
  ``mlp_ensemble`` the mean of the seeds' predictions);
* ``forest`` -- ``evaluate.make_forest`` (Vidur's features), as in ``predictor_eval.csv``;

and writes their held-out MAPE (%) per (tp, op, split).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import pandas as pd

from vidur_jax.metrics import atomic_write_csv
from vidur_jax.predictors import datasets, evaluate, train
from vidur_jax.profiles import loader

MODEL = "meta-llama/Llama-2-7b-hf"
HERE = os.path.dirname(os.path.abspath(__file__))


def cases(profiles_dir: str) -> list[tuple[dict, train.FitJob, np.ndarray]]:
    """``(info, grid job, train mask)`` per (tp, op, split)."""
    att = loader.load_attention(profiles_dir, "a100", MODEL)
    shape = loader.model_shape(loader.load_compute(profiles_dir, "a100", MODEL))
    out = []
    for tp in sorted(int(t) for t in att["num_tensor_parallel_workers"].unique()):
        for kind in ("prefill", "decode"):
            sub = att[
                (att["num_tensor_parallel_workers"] == tp)
                & (att["is_prefill"] == (kind == "prefill"))
            ]
            job = datasets.attention_job(sub, kind, datasets.effective_heads(shape, tp, kind))
            op = f"attn_{kind}"
            idx = np.arange(len(job.y))
            for split, mask in (
                ("in_range", idx % 5 != 0),
                ("extrapolation", evaluate._extrap_mask(op, job.x)),
            ):
                out.append(({"tp": tp, "op": op, "split": split}, job, mask))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES", "../shared/data")
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--out", default=os.path.join(HERE, "results", "predictor_attention_recipe.csv")
    )
    args = parser.parse_args()
    todo = cases(args.profiles_dir)
    t0 = time.time()
    grid_jobs = [evaluate._subset(job, m) for _, job, m in todo]
    mlp_jobs = [dataclasses.replace(j, grid=None) for j in grid_jobs]
    grid_fits = train.fit_jobs(grid_jobs)
    print(f"grid fits: {time.time() - t0:.1f} s", flush=True)
    mlp_fits = []
    for seed in args.seeds:
        t1 = time.time()
        mlp_fits.append(train.fit_jobs(mlp_jobs, seed=seed))
        print(f"mlp fits, seed {seed}: {time.time() - t1:.1f} s", flush=True)
    rows = []
    for k, (info, job, mask) in enumerate(todo):
        te = ~mask
        x, y = job.x[te], job.y[te]
        row = dict(info, n_train=int(mask.sum()), n_test=int(te.sum()))
        row["grid"] = evaluate.mape(evaluate._predict(grid_fits[k], x), y)
        preds = [evaluate._predict(f[k], x) for f in mlp_fits]
        seed_mapes = [evaluate.mape(p, y) for p in preds]
        row["mlp_seed0"] = seed_mapes[0]
        row["mlp_seed_min"], row["mlp_seed_max"] = min(seed_mapes), max(seed_mapes)
        row["mlp_ensemble"] = evaluate.mape(np.mean(preds, axis=0), y)
        rf = evaluate.make_forest(False, int(mask.sum()))
        rf.fit(evaluate._vidur_features(info["op"], job.x[mask]), job.y[mask])
        row["forest"] = evaluate.mape(rf.predict(evaluate._vidur_features(info["op"], x)), y)
        rows.append(row)
    df = pd.DataFrame(rows)
    atomic_write_csv(df, args.out)
    print(df.round(2).to_string(index=False))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
