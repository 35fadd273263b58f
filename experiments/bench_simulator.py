"""Simulator throughput: simulated requests per second, one config and many vmapped.

Usage::

    python experiments/bench_simulator.py --out results/bench_simulator.json [--configs 256]

Workload: Llama-2-7B on A100 (TP1), Sarathi chunk 512, batch cap 128.

* **One config, both loads of issue #26**: the 2,000-request conversation lists at QPS 2
  and QPS 5 that ``../shared/tools/vidur_reference/speed_side_by_side.py`` times Vidur on
  (``make_cases.build``, seed 2024), replayed; Vidur's marginal rates on them are 220 and
  490 requests/s on the development machine, so 100x is 22,000 and 49,000. Reported per
  load: requests/s of a warm call (median of 5), steps, scheduler iterations per step
  (fused runs), slot capacity, mean batch, us per step, and the cost of running the loop
  in host-visible chunks (``sim.run.simulate_single_chunked``) at ~8 chunks vs one.
  Without the shared tools the lists fall back to the synthetic workload below.
* **Vmapped**: ``--configs`` configs with different seeds and QPS in [1.5, 2.5] on
  conversation-like lengths (Splitwise trace when the data directory is present, else a
  Zipf stand-in), Poisson arrivals.

Compile time is reported separately (paid once per shape); throughput counts only the
compiled run. The machine may be shared: compare figures of one run.
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
#: Vidur's marginal rates on the two lists (issue #26, speed_side_by_side.py).
VIDUR_MARGINAL = {2.0: 220.0, 5.0: 490.0}
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")


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


def speed_list(qps: float, data_dir: str | None):
    """``(config, workload)`` of issue #26's 2,000-request list at ``qps`` (None if the
    shared tools are absent)."""
    tools = os.path.join(SHARED, "tools", "vidur_reference")
    data = data_dir if data_dir and os.path.isdir(data_dir) else os.path.join(SHARED, "data")
    if not os.path.isdir(tools) or not os.path.isdir(data):
        return None
    import tempfile

    from vidur_jax.workload import load_trace

    sys.path.insert(0, tools)
    from make_cases import build as make_case

    case, req = make_case(data, f"speed_qps{qps:g}_n2000", dict(lengths="conv", qps=qps, n=2000), seed=2024)
    keys = set(build.DeploymentConfig.__dataclass_fields__)
    cfg = build.DeploymentConfig(**{k: v for k, v in case.items() if k in keys})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "requests.csv")
        req.to_csv(path, index=False)
        wl = load_trace(path, max_tokens=cfg.max_tokens)
    return cfg, wl


def chunk_overhead(cfg, wl, profiles_dir, repeats: int = 5) -> dict:
    """Wall of the warm single-config run in ~8 host-visible chunks vs in one chunk."""
    from vidur_jax.sim import run

    predictor_for = default_predictor_for(profiles_dir)
    simulate_configs([cfg], [wl], predictor_for=predictor_for)
    steps = None
    walls = {}
    saved = (run.FIRST_CHUNK_STEPS, run.MIN_CHUNK_STEPS, run.CHUNK_TARGET_S)
    try:
        for name in ("one_chunk", "eight_chunks", "one_chunk_again"):
            if name.startswith("one"):
                run.FIRST_CHUNK_STEPS, run.MIN_CHUNK_STEPS, run.CHUNK_TARGET_S = 1 << 40, 256, 0.25
            else:
                per = max(1, -(-steps // 8))
                run.FIRST_CHUNK_STEPS, run.MIN_CHUNK_STEPS, run.CHUNK_TARGET_S = per, per, 0.0
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                (out,) = simulate_configs([cfg], [wl], predictor_for=predictor_for)
                ts.append(time.perf_counter() - t)
            steps = int(out.counters["num_steps"])
            walls[name] = float(np.median(ts))
    finally:
        run.FIRST_CHUNK_STEPS, run.MIN_CHUNK_STEPS, run.CHUNK_TARGET_S = saved
    one = min(walls["one_chunk"], walls["one_chunk_again"])
    return {"run_s_one_chunk": one, "run_s_eight_chunks": walls["eight_chunks"],
            "chunking_overhead_ratio": walls["eight_chunks"] / one}


def single_load(qps: float, args) -> dict:
    """One config on issue #26's list at ``qps``: speed and where its steps go."""
    from vidur_jax.sim import run

    pair = speed_list(qps, args.data_dir)
    if pair is None:
        cfg = build.DeploymentConfig(replica_scheduler="sarathi", chunk_size=512, batch_size_cap=128)
        wl = workloads(1, args.requests, args.data_dir)[0]
        src = "synthetic"
    else:
        (cfg, wl), src = pair, "speed_side_by_side"
        if args.loads_requests < wl.num_requests:
            wl = jax.tree.map(lambda x: x[: args.loads_requests], wl)
    slots = []
    real = run._execute

    def recording(static, *a, **k):
        slots.append(static.num_slots)
        return real(static, *a, **k)

    run._execute = recording
    try:
        c, r, steps = timed_run([cfg], [wl], args.profiles_dir, repeats=5)
        (out,) = simulate_configs([cfg], [wl], predictor_for=default_predictor_for(args.profiles_dir))
    finally:
        run._execute = real
    n = wl.num_requests
    ct = out.counters
    key = f"qps{qps:g}"
    res = {
        f"single_{key}_workload": src,
        f"single_{key}_num_requests": n,
        f"single_{key}_compile_s_approx": c,
        f"single_{key}_run_s": r,
        f"single_{key}_requests_per_s": n / r,
        f"single_{key}_vidur_marginal_requests_per_s": VIDUR_MARGINAL[qps],
        f"single_{key}_speedup_vs_vidur_marginal": n / r / VIDUR_MARGINAL[qps],
        f"single_{key}_target_requests_per_s": 100 * VIDUR_MARGINAL[qps],
        f"single_{key}_steps": steps,
        f"single_{key}_steps_per_request": steps / n,
        f"single_{key}_iterations_per_step": ct["num_batches"] / max(ct["num_steps"], 1),
        f"single_{key}_us_per_step": 1e6 * r / max(steps, 1),
        f"single_{key}_num_slots": slots[-1],
        f"single_{key}_batch_size_mean": out.summary.get("batch_size_mean", float("nan")),
        f"single_{key}_batch_size_max": out.summary.get("batch_size_max", float("nan")),
    }
    res.update({f"single_{key}_{k}": v for k, v in chunk_overhead(cfg, wl, args.profiles_dir).items()})
    return res


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
    ap.add_argument("--skip-vmapped", action="store_true", help="one-config figures only")
    ap.add_argument("--loads-requests", type=int, default=2000,
                    help="first N requests of the two lists of issue #26 (2,000 = all)")
    args = ap.parse_args(argv)

    cfg = build.DeploymentConfig(replica_scheduler="sarathi", chunk_size=512, batch_size_cap=128)
    single = workloads(1, args.requests, args.data_dir)
    args.profiles_dir = args.profiles_dir or None
    loads = {"load_average_start": os.getloadavg()[0]}
    for qps in (2.0, 5.0):
        loads.update(single_load(qps, args))
    c1, r1, steps1 = timed_run([cfg], single, args.profiles_dir, repeats=5)  # 0.3 s: noisy alone
    if args.skip_vmapped:
        res = {**loads, "num_requests": args.requests, "compile_s_single_approx": c1, "run_s_single": r1,
               "steps_single": steps1, "requests_per_s_single": args.requests / r1,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
               "jax_backend": jax.default_backend()}
        for k, v in res.items():
            print(f"{k:50s} {v:.4g}" if isinstance(v, float) else f"{k:50s} {v}")
        atomic_write_json(res, args.out)
        return 0
    many = workloads(args.configs, args.requests, args.data_dir)
    cfgs = [build.DeploymentConfig(replica_scheduler="sarathi", seed=i) for i in range(args.configs)]
    cn, rn, stepsn = timed_run(cfgs, many, args.profiles_dir)

    res = {
        **loads,
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
        print(f"{k:50s} {v:.4g}" if isinstance(v, float) else f"{k:50s} {v}")
    atomic_write_json(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
