"""Alpa-style request batching vs continuous batching at equal load.

Usage::

    python experiments/static_batching_vs_continuous.py --out DIR [--num-requests 150]

Llama-2-7B on one A100 (shipped predictors), uniform lengths (256-1536 tokens in
all, prompt:output 4:1), Poisson arrivals at several rates. Compared: ``static_batching``
(collect until ``batch_timeout_s`` since the oldest waiting request or ``batch_max_tokens``
or the batch cap, then run the batch to completion) at two timeouts, against the
continuous (iteration-level) batchers ``orca`` (same max-length memory reservation, so
the difference is the batching alone) and ``sarathi``. Writes
``DIR/static_batching_vs_continuous.csv`` and a flat ``.json``
(``<policy>_qps<q>_<metric>``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import pandas as pd

from vidur_jax import workload
from vidur_jax.metrics import atomic_write_csv
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs

QPS = (1.0, 2.0, 4.0)
VARIANTS = {
    "static_t0.1": dict(replica_scheduler="static_batching", batch_timeout_s=0.1),
    "static_t1.0": dict(replica_scheduler="static_batching", batch_timeout_s=1.0),
    "orca": dict(replica_scheduler="orca"),
    "sarathi": dict(replica_scheduler="sarathi"),
}
METRICS = ("ttft_p50", "ttft_p90", "tbt_p50", "tbt_p99", "e2e_p50", "e2e_p90", "throughput_rps", "batch_size_mean")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--num-requests", type=int, default=150)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cfgs, wls, labels = [], [], []
    for qps in QPS:
        wl = workload.synthetic(jax.random.PRNGKey(1), args.num_requests, {"kind": "poisson", "qps": qps},
                                {"kind": "uniform", "min_tokens": 256, "max_tokens": 1536,
                                 "prefill_to_decode_ratio": 4.0}, 4096)
        for name, knobs in VARIANTS.items():
            cfgs.append(DeploymentConfig(batch_size_cap=64, batch_max_tokens=65536, **knobs))
            wls.append(wl)
            labels.append({"policy": name, "qps": qps})
    outs = simulate_configs(cfgs, wls)
    df = pd.DataFrame([{**lab, **{m: o.summary[m] for m in METRICS}} for lab, o in zip(labels, outs, strict=False)])
    atomic_write_csv(df, os.path.join(args.out, "static_batching_vs_continuous.csv"))
    flat = {f"{r.policy}_qps{r.qps:g}_{m}": float(getattr(r, m)) for r in df.itertuples() for m in METRICS}
    tmp = os.path.join(args.out, "static_batching_vs_continuous.json.tmp")
    with open(tmp, "w") as f:
        json.dump(flat, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "static_batching_vs_continuous.json"))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
