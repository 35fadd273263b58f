"""Benchmark of the vectorized capacity search (Vidur-Search) vs. Vidur's cost.

Runs ``+experiment=search_llama2_7b`` (or ``--full``: Vidur's full single-model grid,
TP {1,2,4,8} x PP {1,2,4} x {vLLM, Sarathi 256..4096} x batch cap {32,64,128} on 16-GPU
A100 and H100 clusters) and reports the grid size, probes, rounds, wall time, and what
the same probes would cost under Vidur, which runs one simulation process per probe:

* ``vidur_cost_s`` = probes x 4.5 s (Vidur's measured wall time of one 800-request
  simulation on the 2-core development machine, ../shared/reference/README.md);
* ``vidur_cost_same_requests_s`` = the requests Vidur would simulate for the same
  probes (N x requests per replica: Vidur simulates the whole cluster) x 4.5 s / 800.

    python experiments/bench_search.py --out bench_search.json [--full] [overrides...]
"""

from __future__ import annotations

import os

# one XLA CPU device per core (set before vidur_jax / JAX initialize; see vidur_jax/__init__.py)
os.environ.setdefault("VIDUR_JAX_CPU_DEVICES", "auto")

import argparse
import json
import sys
import tempfile
import time

VIDUR_S_PER_SIM = 4.5  # s per 800-request simulation (reference README, 2 cores)
VIDUR_REQS_PER_SIM = 800

FULL = [
    "search.tp=[1,2,4,8]",
    "search.pp=[1,2,4]",
    "search.batch_caps=[32,64,128]",
    "search.schedulers=[{scheduler: vllm},{scheduler: sarathi, chunk_size: 256},"
    "{scheduler: sarathi, chunk_size: 512},{scheduler: sarathi, chunk_size: 1024},"
    "{scheduler: sarathi, chunk_size: 2048},{scheduler: sarathi, chunk_size: 4096}]",
]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="results JSON file")
    ap.add_argument("--full", action="store_true", help="Vidur's full Llama-2-7B grid")
    ap.add_argument("--experiment", default="search_llama2_7b")
    ap.add_argument("--run-dir", default=None, help="also write the search outputs here")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. search.num_requests=200")
    args = ap.parse_args(argv)

    from vidur_jax import app
    from vidur_jax.search.task import run_search, write_outputs

    app.enable_compile_cache()
    overrides = [f"+experiment={args.experiment}", *(FULL if args.full else []), *args.overrides]
    cfg = app.to_container(app.compose(overrides))
    t0 = time.perf_counter()
    res = run_search(cfg, log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - t0
    table, st, s = res["table"], res["stats"], res["settings"]
    feas = table[table["feasible"]]
    reqs_sim = int(
        (
            feas["num_probes"] * s.num_requests * (1 if s.mode == "replica" else feas["replicas"])
        ).sum()
    )
    reqs_vidur = int((feas["num_probes"] * s.num_requests * feas["replicas"]).sum())
    best = res["best"][res["slos"][0].name]["best"]
    out = {
        "experiment": args.experiment,
        "full_grid": bool(args.full),
        "grid_size": int(len(table)),
        "num_feasible": int(len(feas)),
        "num_requests_per_replica": s.num_requests,
        "mode": s.mode,
        "branching": s.branching,
        "granularity": s.granularity,
        "width_lanes": s.width,
        "rounds": st.rounds,
        "probes": st.probes,
        "probes_per_config": st.probes / max(len(feas), 1),
        "compiled_calls": st.calls,
        "lanes_run": st.lanes,
        "requests_simulated": reqs_sim,
        "wall_s": wall,
        "search_wall_s": st.wall_s,
        "status_counts": feas["search_status"].value_counts().to_dict(),
        "num_meeting_slo": int(feas["meets_slo"].sum()),
        "best_config": best["name"] if best else None,
        "best_qps_per_dollar": best["qps_per_dollar"] if best else None,
        "vidur_cost_s": st.probes * VIDUR_S_PER_SIM,
        "vidur_cost_same_requests_s": reqs_vidur * VIDUR_S_PER_SIM / VIDUR_REQS_PER_SIM,
        "cpu_count": os.cpu_count(),
    }
    out["speedup_vs_vidur_probes"] = out["vidur_cost_s"] / wall
    out["speedup_vs_vidur_same_requests"] = out["vidur_cost_same_requests_s"] / wall
    if args.run_dir:
        write_outputs(res, args.run_dir)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=os.path.dirname(os.path.abspath(args.out)), delete=False
    ) as f:
        json.dump(out, f, indent=1, default=str)
    os.replace(f.name, args.out)
    print(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
