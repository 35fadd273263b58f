"""Benchmark of the vectorized capacity search (Vidur-Search) vs. Vidur's cost.

Runs ``+experiment=search_llama2_7b`` (or ``--full``: Vidur's full single-model grid,
TP {1,2,4,8} x PP {1,2,4} x {vLLM, Sarathi 256..4096} x batch cap {32,64,128} on 16-GPU
A100 and H100 clusters, Vidur's sched-delay criterion) and reports the grid size,
passes, probes (and how many stopped early), simulated requests, wall time (compile
included) and where it went (``breakdown``: compile / trace / lower seconds, executables
and the static shapes they were compiled for, event-loop seconds, simulator steps, the
analytic estimate's error), what the same probes would cost under Vidur, which runs one
simulation process per probe, and (``--compare OLD/search.csv``) how many capacities
moved (``--quarter``: a quarter of the full grid, for quicker measurements):

* ``vidur_cost_s`` = probes x 4.5 s (Vidur's measured wall time of one 800-request
  simulation on the 2-core development machine, ../shared/reference/README.md);
* ``vidur_cost_same_requests_s`` = the requests Vidur would simulate for the same
  probes (N x requests per replica: Vidur simulates the whole cluster) x 4.5 s / 800.

    python experiments/bench_search.py --out bench_search.json [--full | --quarter] [--compare CSV]
        [--run-dir DIR] [overrides...]
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

#: A quarter of FULL (108 configs: TP {1,2} x PP {1,2,4} x {vLLM, Sarathi 512, 2048} x
#: batch cap {32,64,128} on both clusters), with FULL's shapes and compiles.
QUARTER = [
    "search.tp=[1,2]",
    "search.pp=[1,2,4]",
    "search.batch_caps=[32,64,128]",
    "search.schedulers=[{scheduler: vllm},{scheduler: sarathi, chunk_size: 512},"
    "{scheduler: sarathi, chunk_size: 2048}]",
]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="results JSON file")
    ap.add_argument("--full", action="store_true", help="Vidur's full Llama-2-7B grid")
    ap.add_argument("--quarter", action="store_true", help="a quarter of the full grid")
    ap.add_argument("--experiment", default="search_llama2_7b")
    ap.add_argument("--run-dir", default=None, help="also write the search outputs here")
    ap.add_argument(
        "--compare",
        default=None,
        help="search.csv of an earlier run: report how many capacities moved by more than "
        "the granularity (configs measured 'ok' in both)",
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. search.num_requests=200")
    args = ap.parse_args(argv)

    from vidur_jax import app
    from vidur_jax.search.task import run_search, write_outputs
    from vidur_jax.sim import executables

    app.enable_compile_cache()
    prof = CompileProfile()
    grid = FULL if args.full else QUARTER if args.quarter else []
    overrides = [f"+experiment={args.experiment}", *grid, *args.overrides]
    cfg = app.to_container(app.compose(overrides))
    t0, c0 = time.perf_counter(), _cpu_s()
    res = run_search(cfg, log=lambda m: print(m, flush=True))
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    table, st, s = res["table"], res["stats"], res["settings"]
    feas = table[table["feasible"]]
    reqs_vidur = int((feas["num_probes"] * feas["num_requests"] * feas["replicas"]).sum())
    best = res["best"][res["slos"][0].name]["best"]
    out = {
        "experiment": args.experiment,
        "full_grid": bool(args.full),
        "quarter_grid": bool(args.quarter),
        "criterion": s.criterion,
        "grid_size": int(len(table)),
        "num_feasible": int(len(feas)),
        "num_requests_per_replica": s.num_requests,
        "mode": s.mode,
        "branching": s.branching,
        "granularity": s.granularity,
        "width_lanes": s.width,
        "early_stop": s.early_stop,
        "passes": st.passes,
        "rounds": st.rounds,
        "probes": st.probes,
        "probes_stopped_early": st.probes_stopped_early,
        "probes_per_config": st.probes / max(len(feas), 1),
        "pool_calls": st.calls,
        "requests_simulated": st.requests_simulated,
        "wall_s": wall,
        "cpu_s": cpu,
        "compile_cache": os.environ.get("VIDUR_JAX_COMPILE_CACHE", "1") != "0",
        # executables kept on disk across processes (default; VIDUR_JAX_EXECUTABLE_STORE=0: off)
        "executable_store": executables.stores_executables(),
        "search_wall_s": st.wall_s,
        "status_counts": feas["search_status"].value_counts().to_dict(),
        "flag_counts": feas.loc[feas["flag"] != "", "flag"].value_counts().to_dict(),
        "num_meeting_slo": int(feas["meets_slo"].sum()),
        "best_config": best["name"] if best else None,
        "best_qps_per_dollar": best["qps_per_dollar"] if best else None,
        "vidur_cost_s": st.probes * VIDUR_S_PER_SIM,
        "vidur_cost_same_requests_s": reqs_vidur * VIDUR_S_PER_SIM / VIDUR_REQS_PER_SIM,
        "cpu_count": os.cpu_count(),
    }
    out["speedup_vs_vidur_probes"] = out["vidur_cost_s"] / wall
    out["speedup_vs_vidur_same_requests"] = out["vidur_cost_same_requests_s"] / wall
    out["breakdown"] = breakdown(res, prof, cpu)
    if args.compare:
        out.update(compare(table, args.compare, s.granularity, res["probes"]))
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


def _cpu_s() -> float:
    """User + system CPU seconds of this process (less sensitive than wall time to other
    jobs on a shared machine)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CompileProfile:
    """JAX's compile events of this process (jax.monitoring listeners): seconds tracing,
    lowering and compiling (wall, summed over the threads that compile), executables
    compiled per function, persistent-cache hits and misses."""

    TRACE = "/jax/core/compile/jaxpr_trace_duration"
    LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
    COMPILE = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        import collections

        import jax

        self.seconds = collections.Counter()
        self.compiles = collections.Counter()
        self.compile_s = collections.Counter()
        self.events = collections.Counter()
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)

    def _duration(self, event: str, secs: float, **kw) -> None:
        self.seconds[event] += secs
        if event == self.COMPILE:
            name = str(kw.get("fun_name", "?"))
            self.compiles[name] += 1
            self.compile_s[name] += secs

    def _event(self, event: str, **kw) -> None:
        self.events[event] += 1


def breakdown(res: dict, prof: CompileProfile, cpu_s: float) -> dict:
    """Where a search's time went: compile / trace / lower seconds (wall, summed over
    threads), seconds in the event loop's calls, executables by function and the static
    shapes each pass compiled (policy, slot count, window, request rows, PP stages)."""
    import jax
    import numpy as np

    st = res["stats"]
    shapes = []
    for k, runner in enumerate(res["runners"]):
        for group, levels in runner.levels.items():
            for lvl, lv in enumerate(levels):
                x = lv.static
                shapes.append(
                    {
                        "pass": k + 1,
                        "policy": x.policy,
                        "level": lvl,
                        "configs": len(runner.groups[group]),
                        "num_requests": x.num_requests,
                        "num_slots": x.num_slots,
                        "window": x.window,
                        "max_stages": x.max_stages,
                    }
                )
    ev = prof.events
    ratio = np.array(
        [r.capacity_qps / r.estimate_qps for r in res.get("results", []) if r.status == "ok"]
    )
    err = np.abs(np.log(ratio)) if ratio.size else np.zeros(1)
    return {
        "cpu_s": cpu_s,
        "compile_s": prof.seconds[prof.COMPILE],
        "trace_s": prof.seconds[prof.TRACE],
        "lower_s": prof.seconds[prof.LOWER],
        "cache_retrieval_s": prof.seconds["/jax/compilation_cache/cache_retrieval_time_sec"],
        "executables": sum(prof.compiles.values()),
        "persistent_cache_hits": ev["/jax/compilation_cache/cache_hits"],
        "persistent_cache_misses": ev["/jax/compilation_cache/cache_misses"],
        "executables_by_function": dict(prof.compiles.most_common()),
        "compile_s_by_function": {k: round(v, 2) for k, v in prof.compile_s.most_common()},
        "event_loop_calls_s": st.advance_s,
        "steps": st.steps,
        "devices": jax.local_device_count(),
        "static_shapes": shapes,
        # |log(capacity / analytic estimate)| over 'ok' configs: how far the search
        # starts from its answer
        "estimate_abs_log_error_q50_q90_max": [
            float(np.quantile(err, 0.5)),
            float(np.quantile(err, 0.9)),
            float(err.max()),
        ],
        "capacity_over_estimate_median": float(np.median(ratio)) if ratio.size else None,
        "probes_by_outcome": probe_outcomes(res["probes"]),
    }


def probe_outcomes(probes) -> dict:
    """Where the simulated steps went, by probe outcome (``passed`` / ``failed``, run to
    the end / ``stopped_early``) and by request count: probes, steps, steps per probe
    (the event loop's time is about proportional to steps), and probes per config."""
    import numpy as np

    out = {}
    for (passed, early), g in probes.groupby(["passed", "stopped_early"]):
        key = ("passed" if passed else "failed") + ("_stopped_early" if early else "_to_end")
        out[key] = {
            "probes": int(len(g)),
            "steps": int(g["steps"].sum()),
            "steps_share": float(g["steps"].sum() / max(probes["steps"].sum(), 1)),
            "steps_per_probe": float(g["steps"].mean()),
        }
    out["by_num_requests"] = {
        int(n): {"probes": int(len(g)), "steps": int(g["steps"].sum())}
        for n, g in probes.groupby("num_requests")
    }
    per = probes.groupby("config_id").size().to_numpy()
    out["probes_per_config_q10_q50_q90_max"] = [
        float(np.quantile(per, 0.1)),
        float(np.quantile(per, 0.5)),
        float(np.quantile(per, 0.9)),
        int(per.max()),
    ]
    return out


def compare(table, path: str, granularity: float, probes=None) -> dict:
    """Capacities of ``table`` vs an earlier ``search.csv`` (same grid, configs matched by
    name), over configs measured ``ok`` in both: both lie within one granularity below
    the same pass/fail boundary, so they may differ by at most that much, unless the
    verdict is not monotone in QPS. With this run's ``probes`` and the earlier
    ``probes.csv`` beside ``path``, a moved config whose two searches' probes (same
    request count) hold a failing QPS below a passing one is counted in
    ``moved_non_monotone``: no single capacity agrees with both searches' verdicts, and
    each search's bracket is a valid one for its own probes."""
    import math

    import pandas as pd

    old_all = pd.read_csv(path, keep_default_na=False)
    old_ok = old_all[old_all["search_status"] == "ok"]
    old = old_ok.set_index("name")["capacity_qps"].astype(float)
    new = table[table["search_status"] == "ok"].set_index("name")["capacity_qps"]
    both = old.index.intersection(new.index)
    ratio = (new[both] / old[both]).astype(float)
    tol = math.log1p(granularity) * (1 + 1e-9)
    moved = ratio[abs(ratio.map(math.log)) > tol]
    out = {
        "compared_configs": int(len(both)),
        "capacities_moved_beyond_granularity": int(len(moved)),
        "max_abs_log_ratio": float(abs(ratio.map(math.log)).max()) if len(both) else None,
        "moved": {k: float(v) for k, v in moved.items()},
    }
    old_probes = os.path.join(os.path.dirname(os.path.abspath(path)), "probes.csv")
    if probes is not None and os.path.exists(old_probes) and len(moved):
        op = pd.read_csv(old_probes)
        ids_old = old_ok.set_index("name")[["config_id", "num_requests"]]
        ids_new = table.set_index("name")[["config_id", "num_requests"]]
        non_mono = []
        for name in moved.index:
            a = op[
                (op["config_id"] == ids_old.loc[name, "config_id"])
                & (op["num_requests"] == ids_old.loc[name, "num_requests"])
            ]
            b = probes[
                (probes["config_id"] == ids_new.loc[name, "config_id"])
                & (probes["num_requests"] == ids_old.loc[name, "num_requests"])
            ]
            u = pd.concat([a[["qps", "passed"]], b[["qps", "passed"]]])
            fails = u.loc[~u["passed"].astype(bool), "qps"]
            passes = u.loc[u["passed"].astype(bool), "qps"]
            if len(fails) and len(passes) and fails.min() < passes.max():
                non_mono.append(name)
        out["moved_non_monotone"] = len(non_mono)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
