"""Throughput of the source tree on ``PYTHONPATH``, for before/after comparisons of a change.

Run it once per tree, alternating, in one session (the machine may be shared)::

    PYTHONPATH=/path/to/old python experiments/bench_ab_trees.py >> ab.jsonl
    PYTHONPATH=/path/to/new python experiments/bench_ab_trees.py >> ab.jsonl

Prints one JSON line: the tree, then per case the CPU seconds (``time.process_time``, min
of the repeats: robust to other processes on the machine, unlike wall time) of a warm
``simulate_configs`` call, the first call's wall seconds (compile included) and the steps
simulated. Cases: one Llama-2-7B A100 TP1 Sarathi-512 config on 2,000 Poisson requests
with Splitwise conversation lengths at QPS 2 and QPS 5, and 64 configs (vLLM and Sarathi,
1,000 requests each, QPS 1.5-2.5) vmapped. Only calls present in every tree since the
policy refactor are used (``build.DeploymentConfig``, ``sim.run.simulate_configs``).
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("VIDUR_JAX_CPU_DEVICES", "auto")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import vidur_jax  # noqa: E402
from vidur_jax.sim import build  # noqa: E402
from vidur_jax.sim.run import default_predictor_for, simulate_configs  # noqa: E402
from vidur_jax.workload import synthetic  # noqa: E402

DATA = os.environ.get(
    "VIDUR_JAX_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


def _workload(seed: int, num_requests: int, qps: float):
    lengths = {
        "kind": "trace",
        "path": os.path.join(DATA, "processed_traces", "splitwise_conv.csv"),
    }
    return synthetic(
        jax.random.PRNGKey(seed), num_requests, {"kind": "poisson", "qps": qps}, lengths, 4096
    )


def _timed(cfgs, wls, repeats: int, predictor_for):
    """(first call wall s, min CPU s of the warm calls, outputs)."""
    t0 = time.perf_counter()
    simulate_configs(cfgs, wls, predictor_for=predictor_for)
    first = time.perf_counter() - t0
    cpu, out = [], None
    for _ in range(repeats):
        t1 = time.process_time()
        out = simulate_configs(cfgs, wls, predictor_for=predictor_for)
        cpu.append(time.process_time() - t1)
    return first, float(np.min(cpu)), out


def main() -> None:
    pf = default_predictor_for(None)
    res = {"tree": os.path.dirname(vidur_jax.__file__)}
    for qps in (2.0, 5.0):
        cfg = build.DeploymentConfig(
            replica_scheduler="sarathi", chunk_size=512, batch_size_cap=128
        )
        first, cpu, out = _timed([cfg], [_workload(0, 2000, qps)], 15, pf)
        res[f"single_qps{qps:g}_cpu_s"] = cpu
        res[f"single_qps{qps:g}_first_s"] = first
        res[f"single_qps{qps:g}_steps"] = int(out[0].counters["num_steps"])
    n = 64
    cfgs = [
        build.DeploymentConfig(replica_scheduler=s, seed=i)
        for i, s in zip(range(n), ["sarathi", "vllm"] * (n // 2), strict=True)
    ]
    first, cpu, _ = _timed(cfgs, [_workload(i, 1000, 1.5 + i / n) for i in range(n)], 3, pf)
    res["vmapped64_cpu_s"] = cpu
    res["vmapped64_first_s"] = first
    print(json.dumps(res))


if __name__ == "__main__":
    main()
