"""The profile rows behind the fidelity gaps: hybrid and forest against the profiled times.

Usage::

    python experiments/fidelity_op_rows.py [--profiles-dir ../shared/data]
        [--out experiments/results/fidelity_op_rows.csv]

For the two ops that carry the remaining gaps to Vidur on the reference cases
(``fidelity_op_swap.py``): A100 Llama-2-7B decode attention (TP 1 and 2) by batch-size
bucket, and the TP 2 all-reduce (a100_pairwise_nvlink) by message size bucket, writes
the mean profiled time of the rows in each bucket and the mean prediction of the shipped
hybrid and of a Vidur-style forest (``vidur_forest.py``, trained on every row) at those
rows: ``op, tp, bucket, rows, profile_ms, hybrid_ms, forest_ms``. A predictor that
matches the profile on its own training rows is the one the rows support.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vidur_forest import ForestPredictor  # noqa: E402

from vidur_jax import predictors  # noqa: E402
from vidur_jax.metrics import atomic_write_csv  # noqa: E402
from vidur_jax.profiles import loader  # noqa: E402

MODEL = "meta-llama/Llama-2-7b-hf"
HERE = os.path.dirname(os.path.abspath(__file__))
NET = "a100_pairwise_nvlink"


def _row(op, tp, bucket, y, h, f) -> dict:
    return {
        "op": op,
        "tp": tp,
        "bucket": bucket,
        "rows": int(len(y)),
        "profile_ms": float(np.mean(y)),
        "hybrid_ms": float(np.mean(h)),
        "forest_ms": float(np.mean(f)),
    }


def run(profiles_dir: str) -> pd.DataFrame:
    """Bucketed profile means vs predictions (see the module docstring)."""
    out = []
    att = loader.load_attention(profiles_dir, "a100", MODEL)
    for tp in (1, 2):
        hyb = predictors.load(MODEL, "a100", tp)
        forest = ForestPredictor(profiles_dir, MODEL, "a100", tp, NET)
        dec = att[(att["num_tensor_parallel_workers"] == tp) & ~att["is_prefill"]]
        b, kv = dec["batch_size"].to_numpy(float), dec["kv_cache_size"].to_numpy(float)
        y = dec["attn_decode"].to_numpy(float)
        h = hyb.predict("attn_decode", batch_size=b, kv_cache_size=kv)
        f = forest.predict("attn_decode", batch_size=b, kv_cache_size=kv)
        for lo, hi in ((1, 1), (2, 4), (5, 16), (17, 64), (65, 128)):
            m = (b >= lo) & (b <= hi)
            out.append(_row("attn_decode", tp, f"batch {lo}-{hi}", y[m], h[m], f[m]))
        if tp == 2:
            ar = loader.load_all_reduce(profiles_dir, NET, 2)
            size, y = ar["size"].to_numpy(float), ar["all_reduce"].to_numpy(float)
            tokens = size / (2 * 4096)  # Llama-2-7B: 2 bytes x 4096 per token
            h = hyb.predict("all_reduce", num_tokens=tokens)
            f = forest.predict("all_reduce", num_tokens=tokens)
            for lo, hi in ((0, 9), (9, 17), (17, 65), (65, 513)):
                m = (tokens >= lo) & (tokens < hi)
                out.append(_row("all_reduce", 2, f"tokens {lo}-{hi}", y[m], h[m], f[m]))
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES", "../shared/data")
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fidelity_op_rows.csv"))
    args = ap.parse_args(argv)
    df = run(args.profiles_dir)
    atomic_write_csv(df, args.out)
    print(df.round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
