"""Effect of Vidur's CPU overheads on TTFT and TBT at small and large batch sizes.

Usage::

    python experiments/cpu_overhead_effect.py --out DIR [--num-requests 300]

Llama-2-7B on one A100 (shipped predictors), Sarathi-Serve (chunk 512, cap 128),
fixed lengths (1024 prompt + 128 output tokens), Poisson arrivals at a light load (small
batches) and a heavy load (large batches), each with the CPU overhead off (Vidur's
default) and on (:mod:`vidur_jax.sim.cpu_overhead`: profiles when present under
``--data-dir``, else the documented parametric default, which is an assumption). All
eight configs run in one vmapped call. Writes ``DIR/cpu_overhead_effect.csv`` and
``DIR/cpu_overhead_effect.json`` (flat: ``<load>_<metric>_{off,on}`` and the relative
change), and prints the table.
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
from vidur_jax.sim import cpu_overhead
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs

LOADS = {"light": 0.5, "heavy": 12.0}
METRICS = ("ttft_p50", "ttft_p90", "tbt_p50", "tbt_p99", "e2e_p90", "batch_size_mean", "throughput_rps")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--num-requests", type=int, default=300)
    ap.add_argument("--data-dir", default=None, help="Vidur data root with profiling/cpu_overhead (optional)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None

    cfgs, wls, labels = [], [], []
    for load, qps in LOADS.items():
        wl = workload.synthetic(jax.random.PRNGKey(0), args.num_requests, {"kind": "poisson", "qps": qps},
                                {"kind": "fixed", "prefill": 1024, "decode": 128}, 4096)
        for on in (False, True):
            cfgs.append(DeploymentConfig(replica_scheduler="sarathi", chunk_size=512, batch_size_cap=128,
                                         cpu_overhead=on, cpu_overhead_dir=data_dir))
            wls.append(wl)
            labels.append({"load": load, "qps": qps, "cpu_overhead": on})
    outs = simulate_configs(cfgs, wls)
    rows = [{**lab, **{m: o.summary[m] for m in METRICS}} for lab, o in zip(labels, outs, strict=False)]
    df = pd.DataFrame(rows)
    _, source = cpu_overhead.op_times(cfgs[0].model, cfgs[0].network_device, 1, 128, data_dir)
    df["cpu_source"] = source
    atomic_write_csv(df, os.path.join(args.out, "cpu_overhead_effect.csv"))
    flat: dict[str, float | str] = {"cpu_source": source}
    for load in LOADS:
        sub = df[df["load"] == load].set_index("cpu_overhead")
        for m in METRICS:
            off, on = float(sub.loc[False, m]), float(sub.loc[True, m])
            unit = "" if m in ("batch_size_mean", "throughput_rps") else "_s"
            flat[f"{load}_{m}{unit}_off"] = off
            flat[f"{load}_{m}{unit}_on"] = on
            flat[f"{load}_{m}_rel_change"] = (on - off) / off if off else float("nan")
    tmp = os.path.join(args.out, "cpu_overhead_effect.json.tmp")
    with open(tmp, "w") as f:
        json.dump(flat, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "cpu_overhead_effect.json"))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
