"""Decode attention between profiled KV lengths: leave one KV length out, hybrid vs forest.

Usage::

    python experiments/fidelity_decode_kv.py [--profiles-dir ../shared/data] [--tps 1 2]
        [--out experiments/results/fidelity_decode_kv.csv]

The TBT p90 gaps of the TP1 reference cases come from decode attention at KV lengths
between the profiled ones (``docs/fidelity.md``): the forest is piecewise constant in KV
there, the hybrid's residual grid interpolates in log KV. The profile cannot say which
is right between two of its lengths, but it can between two *other* lengths: for every
interior KV length with at least 20 rows (A100 Llama-2-7B decode), both predictors are
trained on every row of every other length and predict the held-out length's rows.
Writes ``tp, kv, rows, kv_below, kv_above, hybrid_mape, forest_mape, hybrid_ratio,
forest_ratio`` (ratio: mean prediction over mean profiled time, minus 1, %; the KV
neighbours the held-out length falls between), and prints the summary.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd

from vidur_jax.metrics import atomic_write_csv
from vidur_jax.predictors import datasets, evaluate, train
from vidur_jax.profiles import loader

MODEL = "meta-llama/Llama-2-7b-hf"
HERE = os.path.dirname(os.path.abspath(__file__))
MIN_ROWS = 20


def measure(profiles_dir: str, tps: list[int], kvs: list[int] | None = None) -> pd.DataFrame:
    """One row per (tp, held-out interior KV length); see the module doc.

    Args:
      profiles_dir: Vidur data root.
      tps: tensor-parallel degrees (A100 Llama-2-7B decode tables).
      kvs: hold out only these KV lengths (None: every interior one with enough rows).
    """
    att = loader.load_attention(profiles_dir, "a100", MODEL)
    shape = loader.model_shape(loader.load_compute(profiles_dir, "a100", MODEL))
    todo = []
    for tp in tps:
        rows = att[(att["num_tensor_parallel_workers"] == tp) & ~att["is_prefill"]]
        job = datasets.attention_job(rows, "decode", datasets.effective_heads(shape, tp, "decode"))
        kv = job.x[:, 1]
        lengths, counts = np.unique(kv, return_counts=True)
        for i in range(1, len(lengths) - 1):
            if counts[i] >= MIN_ROWS and (kvs is None or int(lengths[i]) in kvs):
                info = {"tp": tp, "kv": int(lengths[i]), "rows": int(counts[i])}
                info["kv_below"], info["kv_above"] = int(lengths[i - 1]), int(lengths[i + 1])
                todo.append((info, job, kv != lengths[i]))
    fits = train.fit_jobs([evaluate._subset(job, m) for _, job, m in todo])
    out = []
    for (info, job, mask), params in zip(todo, fits, strict=True):
        x, y = job.x[~mask], job.y[~mask]
        ph = evaluate._predict(params, x)
        rf = evaluate.make_forest(False, int(mask.sum()))
        rf.fit(evaluate._vidur_features("attn_decode", job.x[mask]), job.y[mask])
        pf = rf.predict(evaluate._vidur_features("attn_decode", x))
        row = dict(info)
        for name, pred in (("hybrid", ph), ("forest", pf)):
            row[f"{name}_mape"] = evaluate.mape(pred, y)
            row[f"{name}_ratio"] = float((pred.mean() / y.mean() - 1.0) * 100)
        out.append(row)
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES", "../shared/data")
    )
    parser.add_argument("--tps", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "fidelity_decode_kv.csv"))
    args = parser.parse_args()
    df = measure(args.profiles_dir, args.tps)
    atomic_write_csv(df, args.out)
    print(df.round(2).to_string(index=False))
    cols = ["hybrid_mape", "forest_mape"]
    print(df.groupby("tp")[cols].agg(["min", "max", "mean"]).round(2).to_string())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
