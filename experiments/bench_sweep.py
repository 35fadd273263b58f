"""Sweep throughput: many configs x requests in vectorized calls, vs Vidur extrapolated.

Usage::

    python experiments/bench_sweep.py --out results/bench_sweep.json [--configs 1024] [--requests 2000]

The grid mixes QPS {1, 2, 3, 4} x batch cap {32, 64, 128, 256} x Sarathi chunk size
{256, 512, 1024, 2048} (64 points) x seeds up to ``--configs`` (Llama-2-7B, A100,
conversation-trace lengths, Poisson arrivals). It reports wall time, compile time
(first call minus second), peak RSS, simulated requests per second, and the same grid's
cost under Vidur extrapolated from its measured per-simulation speed (~290 simulated
requests/s at 2 QPS on the same 2-core machine, plus ~2 s process start per config —
../shared/reference/README.md). The scaling curve repeats the run at 1/8, 1/4, 1/2 and all
of the configs (and at 1/4, 1/2 and all of the requests) to show cost linear in both.
"""

from __future__ import annotations

import os

# one XLA CPU device per core (set before vidur_jax / JAX initialize; see vidur_jax/__init__.py)
os.environ.setdefault("VIDUR_JAX_CPU_DEVICES", "auto")

import argparse
import itertools
import resource
import sys
import time

import jax

from vidur_jax.metrics import atomic_write_json
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import default_predictor_for, simulate_configs
from vidur_jax.workload import synthetic

VIDUR_REQUESTS_PER_S = 290.0
VIDUR_PROCESS_START_S = 2.0


def grid(num_configs: int, num_requests: int, data_dir: str | None):
    """(configs, workloads) of the mixed grid, ``num_configs`` points."""
    conv = os.path.join(data_dir, "processed_traces", "splitwise_conv.csv") if data_dir else None
    lengths = ({"kind": "trace", "path": conv} if conv and os.path.exists(conv) else
               {"kind": "zipf", "theta": 0.6, "scramble": False, "min_tokens": 256, "max_tokens": 4096,
                "prefill_to_decode_ratio": 4.0})
    points = list(itertools.product([1.0, 2.0, 3.0, 4.0], [32, 64, 128, 256], [256, 512, 1024, 2048]))
    cfgs, wls = [], []
    for i in range(num_configs):
        qps, cap, chunk = points[i % len(points)]
        cfgs.append(DeploymentConfig(replica_scheduler="sarathi", batch_size_cap=cap, chunk_size=chunk, seed=i))
        wls.append(synthetic(jax.random.PRNGKey(i), num_requests, {"kind": "poisson", "qps": qps}, lengths, 4096))
    return cfgs, wls


def timed(num_configs: int, num_requests: int, data_dir: str | None, predictor_for, lanes: int | None = None,
          warm: bool = True) -> dict:
    """Wall of a warm call (the second; the first compiles). ``warm=False``: one call only,
    its wall (compile included) reported as ``wall_s`` and ``compile_s_approx`` NaN."""
    t_grid = time.perf_counter()
    cfgs, wls = grid(num_configs, num_requests, data_dir)
    grid_s = time.perf_counter() - t_grid
    t0 = time.perf_counter()
    outs = simulate_configs(cfgs, wls, predictor_for=predictor_for, chunk_configs=lanes)
    t1 = time.perf_counter()
    if warm:
        outs = simulate_configs(cfgs, wls, predictor_for=predictor_for, chunk_configs=lanes)
    t2 = time.perf_counter()
    wall = t2 - t1 if warm else t1 - t0
    total = num_configs * num_requests
    return {"configs": num_configs, "requests": num_requests, "wall_s": wall, "grid_s": grid_s,
            "compile_s_approx": max((t1 - t0) - (t2 - t1), 0.0) if warm else float("nan"),
            "requests_per_s": total / wall,
            "completed": sum(int(o.summary["num_completed"]) for o in outs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--configs", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--no-curve", action="store_true", help="skip the scaling curve")
    ap.add_argument("--lanes", type=int, default=None,
                    help="configs stepped together (chunk_configs; default: up to 512, as the CLI)")
    ap.add_argument("--no-warm", action="store_true",
                    help="one call only: wall_s includes the compile (for very large grids)")
    ap.add_argument("--data-dir", default=os.environ.get("VIDUR_JAX_DATA", "../shared/data"))
    args = ap.parse_args(argv)
    predictor_for = default_predictor_for(None)

    main_run = timed(args.configs, args.requests, args.data_dir, predictor_for, args.lanes, not args.no_warm)
    total = args.configs * args.requests
    vidur_s = total / VIDUR_REQUESTS_PER_S + args.configs * VIDUR_PROCESS_START_S
    res = {
        "num_configs": args.configs,
        "num_requests_per_config": args.requests,
        "wall_s": main_run["wall_s"],
        "wall_includes_compile": bool(args.no_warm),
        "lanes": args.lanes if args.lanes is not None else -1,
        "grid_build_s": main_run["grid_s"],
        "num_completed": main_run["completed"],
        "compile_s_approx": main_run["compile_s_approx"],
        "requests_per_s": main_run["requests_per_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "vidur_extrapolated_wall_s": vidur_s,
        "speedup_vs_vidur": vidur_s / main_run["wall_s"],
        "speedup_vs_vidur_incl_compile": vidur_s / (main_run["wall_s"] + main_run["compile_s_approx"]),
        "jax_backend": jax.default_backend(),
        "num_devices": jax.local_device_count(),
    }
    if not args.no_curve:
        for frac in (8, 4, 2):
            r = timed(max(args.configs // frac, 1), args.requests, args.data_dir, predictor_for)
            res[f"curve_configs_{r['configs']}_wall_s"] = r["wall_s"]
        res[f"curve_configs_{args.configs}_wall_s"] = main_run["wall_s"]
        for frac in (4, 2):
            r = timed(args.configs // 4, args.requests // frac, args.data_dir, predictor_for)
            res[f"curve_requests_{r['requests']}_x{r['configs']}cfg_wall_s"] = r["wall_s"]
    for k, v in res.items():
        print(f"{k:48s} {v:.4g}" if isinstance(v, float) else f"{k:48s} {v}")
    atomic_write_json(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
