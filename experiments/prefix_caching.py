"""Prefix caching on shared system prompts and on multi-turn chat, by routing policy.

Usage::

    python experiments/prefix_caching.py [--out experiments/results/prefix_caching] [--scale 1.0]

Llama-2-7B on 2 A100 replicas (TP1), Sarathi (chunk 512), shipped predictors. Two
workloads, each at a grid of rates (the same requests with caching off and on):

* ``system_prompt``: 400 requests, Poisson arrivals at ``qps``, ``synthetic_conv``
  lengths (Zipf, prompts ~4x outputs, 64-2048 tokens); 80% start with one of 8 system
  prompts of 1,024 tokens;
* ``multi_turn``: 100 chat sessions starting as a Poisson process at ``qps / 4``
  sessions/s, 2-8 turns each (uniform), a 512-token system prompt (one of 4), user
  messages and answers from the same Zipf lengths (prompts ~2x outputs, 32-512 tokens),
  exponential think times of mean 2 s after each answer (closed loop: a turn arrives
  when its previous answer is done + think time, so its prompt is the whole conversation
  so far). ``qps`` here is the first-turn rate x 4, the nominal request rate.

Routers: ``round_robin``, ``lor`` (least outstanding requests) and ``prefix_affinity``
(the replica holding the longest cached prefix, within ``affinity_imbalance`` = 4 of the
least loaded). Per workload, router, caching and rate: TTFT p50/p90, e2e p90, hit
rates, prefill tokens saved, achieved request rate; per workload, router and caching its
**capacity**: the highest rate of the grid whose TTFT p90 meets 1 s with every request
completed (empty with status ``none`` when no rate does; ``capped`` when the top rate
does: a lower bound).

Writes ``OUT/prefix_caching.csv`` (one row per run), ``OUT/prefix_caching_capacity.csv``,
a flat ``OUT/prefix_caching.json`` and ``OUT/prefix_caching.png`` (TTFT p90 vs rate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import numpy as np
import pandas as pd

from vidur_jax import workload
from vidur_jax.metrics import atomic_write_csv
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs
from vidur_jax.workload import prefix

QPS = (4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 32.0)
ROUTERS = ("round_robin", "lor", "prefix_affinity")
REPLICAS = 2
TTFT_SLO_S = 1.0
METRICS = (
    "ttft_p50",
    "ttft_p90",
    "e2e_p90",
    "throughput_rps",
    "arrival_rate_rps",
    "num_completed",
    "prefix_hit_rate_tokens",
    "prefix_hit_rate_requests",
    "prefill_tokens_saved",
    "session_time_p50",
)


def _lengths(lo: int, hi: int, ratio: float) -> dict:
    return {"kind": "zipf", "theta": 0.6, "scramble": False, "min_tokens": lo, "max_tokens": hi,
            "prefill_to_decode_ratio": ratio}


def system_prompt_workload(qps: float, n: int):
    """``n`` requests at ``qps``; 80% open with one of 8 system prompts of 1,024 tokens."""
    key = jax.random.PRNGKey(7)
    wl = workload.synthetic(key, n, {"kind": "poisson", "qps": qps}, _lengths(64, 2048, 4.0), 4096)
    return prefix.with_system_prompts(wl, jax.random.fold_in(key, 11), num_prompts=8, tokens=1024,
                                      fraction=0.8, block_size=16, max_tokens=4096)


def multi_turn_workload(qps: float, sessions: int):
    """``sessions`` chat sessions starting at ``qps / 4`` per second (module doc)."""
    key = jax.random.PRNGKey(7)
    base = workload.synthetic(key, 10 * sessions, {"kind": "poisson", "qps": qps / 4}, _lengths(32, 512, 2.0), 4096)
    return prefix.sessions_from(base, jax.random.fold_in(key, 13), sessions, {"kind": "uniform", "min": 2, "max": 8},
                                think_time_s=2.0, max_tokens=4096, block_size=16, system_prompt_tokens=512,
                                num_system_prompts=4)


def capacity(df: pd.DataFrame) -> tuple[float, str]:
    """Highest rate of the grid meeting the TTFT SLO with every request done, and its status."""
    ok = df[(df.ttft_p90 <= TTFT_SLO_S) & (df.num_completed == df.num_requests)]
    if not len(ok):
        return math.nan, "none"
    best = float(ok.qps.max())
    return best, "capped" if best >= max(QPS) else "ok"


def plot(df: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(df.workload))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for (router, cache), g in df[df.workload == name].groupby(["router", "prefix_caching"], sort=False):
            ax.plot(g.qps, g.ttft_p90, marker="o", ls="-" if cache else "--",
                    label=f"{router}, caching {'on' if cache else 'off'}")
        ax.axhline(TTFT_SLO_S, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("request rate (req/s; multi-turn: 4 x session start rate)")
        ax.set_ylabel("TTFT p90 (s)")
        ax.set_title(f"{name}: Llama-2-7B, {REPLICAS} x A100, Sarathi")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    os.replace(path + ".tmp.png", path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("experiments", "results", "prefix_caching"))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplier on requests and sessions (smoke runs)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    n_req, n_sess = max(int(400 * args.scale), 8), max(int(100 * args.scale), 4)
    workloads = {
        "system_prompt": [system_prompt_workload(q, n_req) for q in QPS],
        "multi_turn": [multi_turn_workload(q, n_sess) for q in QPS],
    }
    rows = []
    t0 = time.time()
    for router in ROUTERS:  # one vmapped call per router: both workloads, caching off/on, every rate
        cfgs, wls, keys = [], [], []
        for name, per_rate in workloads.items():
            for cache in (False, True):
                for q, wl in zip(QPS, per_rate, strict=True):
                    cfgs.append(DeploymentConfig(replica_scheduler="sarathi", num_replicas=REPLICAS,
                                                 global_scheduler=router, prefix_caching=cache))
                    wls.append(wl)
                    keys.append((name, cache, q, int(np.asarray(wl.mask).sum())))
        outs = simulate_configs(cfgs, wls)
        for (name, cache, q, n), o in zip(keys, outs, strict=True):
            rows.append({"workload": name, "router": router, "prefix_caching": cache, "qps": q, "num_requests": n,
                         **{m: o.summary.get(m, math.nan) for m in METRICS}})
        print(f"{router}: {time.time() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    caps = []
    for (name, router, cache), g in df.groupby(["workload", "router", "prefix_caching"], sort=False):
        cap, status = capacity(g)
        caps.append({"workload": name, "router": router, "prefix_caching": cache, "ttft_p90_slo_s": TTFT_SLO_S,
                     "capacity_qps": cap, "status": status})
    cap_df = pd.DataFrame(caps)
    atomic_write_csv(df, os.path.join(args.out, "prefix_caching.csv"))
    atomic_write_csv(cap_df, os.path.join(args.out, "prefix_caching_capacity.csv"))
    plot(df, os.path.join(args.out, "prefix_caching.png"))
    flat = {f"{r.workload}_{r.router}_{'on' if r.prefix_caching else 'off'}_qps{r.qps:g}_{m}": float(getattr(r, m))
            for r in df.itertuples() for m in METRICS}
    flat.update({f"{r.workload}_{r.router}_{'on' if r.prefix_caching else 'off'}_capacity_qps": r.capacity_qps
                 for r in cap_df.itertuples()})
    flat["wall_s"] = time.time() - t0
    tmp = os.path.join(args.out, "prefix_caching.json.tmp")
    with open(tmp, "w") as f:
        json.dump(flat, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "prefix_caching.json"))
    with pd.option_context("display.width", 240, "display.max_columns", 20, "display.max_rows", 300):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(cap_df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
