"""Simulator throughput: simulated requests per second, one config and many vmapped.

Usage::

    python experiments/bench_simulator.py --out results/bench_simulator.json [--configs 256]

Workload: Llama-2-7B on A100 (TP1), Sarathi chunk 512, batch cap 128, 2,000
conversation-like requests (Splitwise conversation-trace lengths when the data directory
is present, else a Zipf stand-in) with Poisson arrivals at moderate load (2 QPS, the load
of Vidur's reference speed figure). The vmapped run stacks ``--configs`` configs with
different seeds and QPS in [1.5, 2.5]. Compile time is reported separately (it is paid
once per shape); throughput counts only the compiled run. The baseline is Vidur's
measured ~290 simulated requests/s at 2 QPS on the same 2-core machine
(../shared/reference/README.md).
"""

from __future__ import annotations

import os

# one XLA CPU device per core (set before vidur_jax / JAX initialize; see vidur_jax/__init__.py)
os.environ.setdefault("VIDUR_JAX_CPU_DEVICES", "auto")

import argparse
import resource
import sys
import time

import jax
import numpy as np

from vidur_jax.metrics import atomic_write_json
from vidur_jax.sim import build
from vidur_jax.sim.run import default_predictor_for, simulate_configs
from vidur_jax.workload import synthetic

VIDUR_REQUESTS_PER_S_2QPS = 290.0  # ../shared/reference/README.md


def workloads(num_configs: int, num_requests: int, data_dir: str | None):
    """Per-config workloads: conversation lengths, Poisson arrivals around 2 QPS."""
    conv = os.path.join(data_dir, "processed_traces", "splitwise_conv.csv") if data_dir else None
    if conv and os.path.exists(conv):
        lengths = {"kind": "trace", "path": conv}
    else:
        lengths = {"kind": "zipf", "theta": 0.6, "scramble": False, "min_tokens": 256,
                   "max_tokens": 4096, "prefill_to_decode_ratio": 4.0}
    qps = np.linspace(1.5, 2.5, num_configs) if num_configs > 1 else np.array([2.0])
    return [
        synthetic(jax.random.PRNGKey(i), num_requests, {"kind": "poisson", "qps": float(q)}, lengths, 4096)
        for i, q in enumerate(qps)
    ]


def timed_run(cfgs, wls, profiles_dir, repeats: int = 1):
    """(compile_s, run_s, max_steps) of simulating ``cfgs`` through the public driver.

    The first call compiles (and grows capacities if a config overflows them); the timed
    calls reuse the compiled executables, so ``run_s`` (the median of ``repeats`` calls) is
    pure simulation (host post-processing of the summaries included).
    """
    predictor_for = default_predictor_for(profiles_dir)
    t0 = time.perf_counter()
    simulate_configs(cfgs, wls, predictor_for=predictor_for)
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t1 = time.perf_counter()
        outs = simulate_configs(cfgs, wls, predictor_for=predictor_for)
        runs.append(time.perf_counter() - t1)
    run_s = float(np.median(runs))
    steps = max(int(o.counters["num_steps"]) for o in outs)
    return first - run_s, run_s, steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--configs", type=int, default=256)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES"))
    ap.add_argument("--data-dir", default=os.environ.get("VIDUR_JAX_DATA", "../shared/data"))
    args = ap.parse_args(argv)

    cfg = build.DeploymentConfig(replica_scheduler="sarathi", chunk_size=512, batch_size_cap=128)
    single = workloads(1, args.requests, args.data_dir)
    args.profiles_dir = args.profiles_dir or None
    c1, r1, steps1 = timed_run([cfg], single, args.profiles_dir, repeats=5)  # 0.3 s: noisy alone
    many = workloads(args.configs, args.requests, args.data_dir)
    cfgs = [build.DeploymentConfig(replica_scheduler="sarathi", seed=i) for i in range(args.configs)]
    cn, rn, stepsn = timed_run(cfgs, many, args.profiles_dir)

    res = {
        "num_requests": args.requests,
        "num_configs_vmapped": args.configs,
        "compile_s_single_approx": c1,
        "run_s_single": r1,
        "steps_single": steps1,
        "requests_per_s_single": args.requests / r1,
        "compile_s_vmapped_approx": cn,
        "run_s_vmapped": rn,
        "steps_max_vmapped": stepsn,
        "requests_per_s_vmapped": args.requests * args.configs / rn,
        "requests_per_s_vmapped_incl_compile": args.requests * args.configs / (rn + cn),
        "vidur_requests_per_s": VIDUR_REQUESTS_PER_S_2QPS,
        "speedup_single_vs_vidur": args.requests / r1 / VIDUR_REQUESTS_PER_S_2QPS,
        "speedup_vmapped_vs_vidur": args.requests * args.configs / rn / VIDUR_REQUESTS_PER_S_2QPS,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "jax_backend": jax.default_backend(),
    }
    for k, v in res.items():
        print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")
    atomic_write_json(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
