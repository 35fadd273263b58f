"""Scale: one config with up to 1,000,000 requests — time linear in requests, bounded memory.

Usage::

    python experiments/bench_scale.py --out results/bench_scale.json [--sizes 10000 100000 1000000]

Each size runs in its own subprocess (so its peak RSS is its own): Llama-2-7B, A100,
Sarathi chunk 512, conversation-trace lengths (Zipf stand-in without the data folder),
Poisson arrivals at 2 QPS. Reports wall time (compile separately), simulated requests per
second, seconds per request (flat = linear), peak RSS (target < 4 GiB at 1M).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def one_size(n: int, data_dir: str | None) -> dict:
    """Simulate ``n`` requests in this process; return the figures."""
    import jax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_simulator import workloads

    from vidur_jax.sim.build import DeploymentConfig
    from vidur_jax.sim.run import simulate_configs

    t0 = time.perf_counter()
    (wl,) = workloads(1, n, data_dir)
    t1 = time.perf_counter()
    cfg = DeploymentConfig(replica_scheduler="sarathi")
    # one call, compile included (shapes depend on n); main() reports marginal costs
    # capacities sized for the load up front (64 slots, window 32) so that no overflow
    # re-run mixes into the scaling measurement (auto-sizing is measured elsewhere)
    (out,) = simulate_configs([cfg], [wl], num_slots=64, window=32)
    t2 = time.perf_counter()
    return {
        "num_requests": n,
        "workload_s": t1 - t0,
        "simulate_s": t2 - t1,
        "requests_per_s": n / (t2 - t1),
        "us_per_request": (t2 - t1) / n * 1e6,
        "num_completed": int(out.summary["num_completed"]),
        "num_steps": int(out.counters["num_steps"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "jax_backend": jax.default_backend(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--data-dir", default=os.environ.get("VIDUR_JAX_DATA", "../shared/data"))
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.data_dir)))
        return 0
    rows = []
    for n in args.sizes:
        res = subprocess.run([sys.executable, __file__, "--out", "-", "--one", str(n), "--data-dir", args.data_dir],
                             capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{n:>9d} requests: {row['simulate_s']:8.1f} s  {row['us_per_request']:7.1f} us/request  "
              f"{row['peak_rss_mb']:7.0f} MB peak RSS  ({row['num_steps']} steps)")
    flat = {f"{k}_{r['num_requests']}": v for r in rows for k, v in r.items() if k != "num_requests"}
    # simulate_s includes one compile (constant); the marginal cost between sizes is the
    # linearity check: it should stay flat as requests grow 10x
    for a, b in zip(rows, rows[1:]):
        marginal = (b["simulate_s"] - a["simulate_s"]) / (b["num_requests"] - a["num_requests"]) * 1e6
        flat[f"marginal_us_per_request_{a['num_requests']}_to_{b['num_requests']}"] = marginal
        print(f"marginal cost {a['num_requests']} -> {b['num_requests']}: {marginal:.1f} us/request")
    from vidur_jax.metrics import atomic_write_json

    atomic_write_json(flat, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
