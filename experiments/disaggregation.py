"""Colocated vs disaggregated prefill/decode at equal GPU count, under a TTFT + TBT SLO.

Usage::

    python experiments/disaggregation.py [--out experiments/results/disaggregation] [--num-requests 500]

Llama-2-7B on 4 A100s (TP1, one 4-GPU ``a100_pairwise_nvlink`` node: every KV transfer
over NVLink), and pools of 4 GPUs whose prefill pool has its own hardware (1 or 2 H100s
feeding A100 decode replicas, on separate nodes, so their KV crosses the 25 GB/s
inter-node link; or one A100 TP2 prefill replica), shipped predictors, the ``synthetic_conv`` lengths (Zipf, prompts ~4x the
outputs, 64-2048 tokens), Poisson arrivals at a grid of rates (the same requests for
every deployment at a rate). Deployments: 4 colocated replicas with ``vllm`` and with
``sarathi`` (chunk 512), and pools of vLLM replicas split 1:3, 2:2 and 3:1
(prefill:decode), all behind least-outstanding-requests routing (a pooled deployment
routes arrivals over its prefill pool). Per deployment and rate: TTFT p90, TBT p99,
KV-transfer times, pool busy fractions; per deployment its GPUs, $/hour (catalog
prices, each pool's GPUs at their own) and **SLO capacity** (and capacity per $/hour): the
highest rate of the grid at which TTFT p90 and TBT p99 both meet the SLO (two SLOs: a
tight, DistServe-style one and the search's default). A deployment that misses the SLO
at every rate has no capacity (empty, status ``none``, never 0 or best); one that meets
it at the grid's top rate is ``capped`` (the capacity is a lower bound).

Writes ``OUT/disaggregation.csv`` (one row per deployment and rate),
``OUT/disaggregation_capacity.csv`` (one row per deployment and SLO) and a flat
``OUT/disaggregation.json``, and prints both tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import pandas as pd

from vidur_jax import catalog, workload
from vidur_jax.metrics import atomic_write_csv
from vidur_jax.sim import disagg_pools
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs

QPS = (4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 40.0, 48.0, 56.0)
GPUS = 4
#: name -> DeploymentConfig knobs: 4 single-A100 replicas, or pools of 4 GPUs whose
#: prefill pool has its own hardware (H100s, or A100 TP2)
DEPLOYMENTS = {
    "colocated_vllm": dict(replica_scheduler="vllm"),
    "colocated_sarathi": dict(replica_scheduler="sarathi"),
    "pool_1p3d": dict(replica_scheduler="vllm", prefill_replicas=1, decode_replicas=3),
    "pool_2p2d": dict(replica_scheduler="vllm", prefill_replicas=2, decode_replicas=2),
    "pool_3p1d": dict(replica_scheduler="vllm", prefill_replicas=3, decode_replicas=1),
    "pool_1p3d_h100_prefill": dict(replica_scheduler="vllm", prefill_replicas=1, decode_replicas=3,
                                   prefill_device="h100"),
    "pool_2p2d_h100_prefill": dict(replica_scheduler="vllm", prefill_replicas=2, decode_replicas=2,
                                   prefill_device="h100"),
    "pool_1p2d_tp2_prefill": dict(replica_scheduler="vllm", prefill_replicas=1, decode_replicas=2,
                                  prefill_tp=2),
}


def deployment(knobs: dict) -> DeploymentConfig:
    """The deployment of ``knobs``: 4 colocated replicas, or its P + D pool replicas."""
    p, d = knobs.get("prefill_replicas", 0), knobs.get("decode_replicas", 0)
    return DeploymentConfig(num_replicas=p + d if p else GPUS, global_scheduler="lor", **knobs)


def price_of(device: str) -> float:
    return catalog.get_device(device).price_per_hour
#: SLOs (seconds): TTFT p90 and TBT p99 bounds
SLOS = {"tight": (0.5, 0.025), "default": (2.0, 0.2)}
METRICS = (
    "ttft_p50",
    "ttft_p90",
    "tbt_p50",
    "tbt_p99",
    "e2e_p90",
    "throughput_rps",
    "num_completed",
    "kv_transfer_time_p50",
    "kv_transfer_time_p99",
    "prefill_busy_fraction",
    "decode_busy_fraction",
    "decode_batch_size_mean",
)


def _workload(qps: float, n: int):
    return workload.synthetic(
        jax.random.PRNGKey(7),
        n,
        {"kind": "poisson", "qps": qps},
        {
            "kind": "zipf",
            "theta": 0.6,
            "scramble": False,
            "min_tokens": 64,
            "max_tokens": 2048,
            "prefill_to_decode_ratio": 4.0,
        },
        4096,
    )


def capacity(df: pd.DataFrame, ttft: float, tbt: float) -> tuple[float, bool]:
    """Highest rate of the grid whose TTFT p90 and TBT p99 meet the SLO with every
    request completed, and whether it is the grid's top rate (then the capacity is only
    a lower bound: ``capped``). nan when no rate meets it."""
    ok = df[(df.ttft_p90 <= ttft) & (df.tbt_p99 <= tbt) & (df.num_completed == df.num_requests)]
    if not len(ok):
        return math.nan, False
    best = float(ok.qps.max())
    return best, best >= max(QPS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("experiments", "results", "disaggregation"))
    ap.add_argument("--num-requests", type=int, default=500)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    t0 = time.time()
    for name, knobs in DEPLOYMENTS.items():  # one vmapped call per deployment (all rates)
        cfgs = [deployment(knobs) for _ in QPS]
        outs = simulate_configs(cfgs, [_workload(q, args.num_requests) for q in QPS])
        for q, o in zip(QPS, outs, strict=True):
            rows.append(
                {
                    "deployment": name,
                    "qps": q,
                    "num_requests": args.num_requests,
                    **{m: o.summary[m] for m in METRICS},
                }
            )
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    caps = []
    for name, g in df.groupby("deployment", sort=False):
        cfg = deployment(DEPLOYMENTS[name])
        gpus, cost = disagg_pools.num_gpus(cfg), disagg_pools.cost_per_hour(cfg, price_of)
        for slo, (ttft, tbt) in SLOS.items():
            cap, capped = capacity(g, ttft, tbt)
            caps.append(
                {
                    "deployment": name,
                    "slo": slo,
                    "ttft_p90_s": ttft,
                    "tbt_p99_s": tbt,
                    "num_gpus": gpus,
                    "cost_per_hour": cost,
                    "capacity_qps": cap,
                    "capacity_qps_per_gpu": cap / gpus,
                    "qps_per_dollar": cap / cost,
                    "capped": capped,
                    "status": "none" if math.isnan(cap) else ("capped" if capped else "ok"),
                }
            )
    cap_df = pd.DataFrame(caps)
    atomic_write_csv(df, os.path.join(args.out, "disaggregation.csv"))
    atomic_write_csv(cap_df, os.path.join(args.out, "disaggregation_capacity.csv"))
    flat = {
        f"{r.deployment}_qps{r.qps:g}_{m}": float(getattr(r, m))
        for r in df.itertuples()
        for m in METRICS
    }
    flat.update(
        {f"{r.deployment}_{r.slo}_capacity_qps": r.capacity_qps for r in cap_df.itertuples()}
    )
    flat["wall_s"] = time.time() - t0
    tmp = os.path.join(args.out, "disaggregation.json.tmp")
    with open(tmp, "w") as f:
        json.dump(flat, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "disaggregation.json"))
    with pd.option_context(
        "display.width", 220, "display.max_columns", 20, "display.max_rows", 200
    ):
        print(
            df.drop(columns="num_requests").to_string(
                index=False, float_format=lambda v: f"{v:.4g}"
            )
        )
        print(cap_df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
