"""Cold start: one config simulated by a fresh process, phase by phase.

Usage::

    python experiments/bench_cold_start.py --out experiments/results/bench_cold_start.json
        [--cases qps2 qps5 v1_sarathi_tp1 quickstart] [--modes api cli] [--repeats 1]

Cases (Llama-2-7B, A100, TP1, Sarathi chunk 512, batch cap 128):

* ``qps2``, ``qps5`` — the loads of issue #26: one 2,000-request conversation list each
  (Splitwise conversation lengths, Poisson arrivals at 2 and 5 QPS, seed 2024), built
  exactly as ``../shared/tools/vidur_reference/speed_side_by_side.py`` builds them
  (``make_cases.build``), so Vidur's figures for the same lists apply: its whole process
  takes 12.4 s at QPS 2 and 7.6 s at QPS 5 on the development machine;
* ``v1_sarathi_tp1`` — the 800-request reference case (``../shared/reference/cases``);
* ``quickstart`` — ``python -m vidur_jax +experiment=quickstart`` (CLI only).

Modes: ``api`` is the process ``speed_side_by_side.py`` times (import, replay the case
through ``vidur_jax.sim.run.simulate_configs`` with the compile cache on, exit); ``cli``
is ``python -m vidur_jax`` replaying the same ``requests.csv`` (``workload=chat_replay``)
into a temporary run dir, outputs and plots included.

Each (case, mode) runs twice with a fresh ``VIDUR_JAX_CACHE``: first with the cache
empty (``empty``), then again with it filled by the first (``warm``). Inside the child
process the main functions are wrapped with timers; each phase's time is *exclusive*
(nested phases are subtracted); ``unaccounted_in_process`` is the rest of the time
inside the process (Hydra, argument parsing, glue) and ``startup_and_exit`` the process
wall seen from outside minus the time inside (interpreter start-up, teardown). Phases:

``import`` (vidur_jax, jax, the simulator), ``plan`` (CLI: config -> plan),
``workload`` (trace read / generation), ``predictor`` (predictor load),
``tables`` (tabulating the predictors), ``executable`` (the simulator's executables:
deserialized from the store, or traced, lowered and compiled), ``simulate`` (the event
loop, all chunks and capacity re-runs), ``host`` (summaries, frames), ``write``
(summary.csv, requests.parquet), ``plot`` (plots/), ``report`` (report.html),
``print`` (terminal table).

Writes one flat JSON object: ``{case}_{mode}_{cache}_{phase}_s``, ``..._process_wall_s``,
``..._executable_source`` (disk / compiled), plus the Vidur reference walls and ratios.
The machine may be shared: read ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VIDUR_PROCESS_S = {"qps2": 12.4, "qps5": 7.6}  # issue #26, speed_side_by_side.py
#: v1_sarathi_tp1: the issue's bound for the 800-request case (cache warm).
TARGET_WARM_S = {"qps2": 12.4 / 2, "qps5": 7.6 / 2, "v1_sarathi_tp1": 1.5}

# Runs in the child: wraps the functions of each phase with exclusive timers, then runs
# the case (api) or the CLI (cli). Prints one JSON line prefixed @@PHASES@@.
CHILD = r"""
import json, os, sys, time
T0 = time.perf_counter()
TOTAL, STACK, SOURCES = {}, [], []

def timed(phase, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        STACK.append(0.0)
        try:
            return fn(*a, **k)
        finally:
            dt = time.perf_counter() - t
            inner = STACK.pop()
            TOTAL[phase] = TOTAL.get(phase, 0.0) + dt - inner
            if STACK:
                STACK[-1] += dt
    return wrapper

mode, case_json, requests_csv, out_dir = sys.argv[1:5]
t = time.perf_counter()
import vidur_jax
from vidur_jax import app, metrics
from vidur_jax.sim import build, executables, run
import vidur_jax.workload as workload_mod
TOTAL["import"] = time.perf_counter() - t

_compiled = executables.compiled
def compiled(name, *a, **k):
    exe = _compiled(name, *a, **k)
    SOURCES.append(executables.LAST_SOURCE.get(name, "?"))
    return exe
executables.compiled = timed("executable", compiled)
# the one place a predictor is loaded (not at all when the store has its tables)
run.StoredPredictions._get = timed("predictor", run.StoredPredictions._get)
build.build_tables = timed("tables", build.build_tables)
run.simulate_single_chunked = timed("simulate", run.simulate_single_chunked)
run.simulate_stacked = timed("simulate", run.simulate_stacked)
run._config_output = timed("host", run._config_output)
run.requests_frame = timed("host", run.requests_frame)
app.summary_table = timed("host", app.summary_table)
app.plan_from_config = timed("plan", app.plan_from_config)
app.build_workload = timed("workload", app.build_workload)
load_trace = workload_mod.load_trace = timed("workload", workload_mod.load_trace)
metrics.atomic_write_csv = timed("write", metrics.atomic_write_csv)
metrics.atomic_write_parquet = timed("write", metrics.atomic_write_parquet)
metrics.plot_cdfs = timed("plot", metrics.plot_cdfs)
app.print_summary = timed("print", app.print_summary)

def report(completed):
    TOTAL["in_process"] = time.perf_counter() - T0
    print("@@PHASES@@" + json.dumps({"phases": TOTAL, "sources": SOURCES, "num_completed": completed}))
    sys.stdout.flush()

if mode == "api":
    app.enable_compile_cache()
    case = json.load(open(case_json))
    keys = set(build.DeploymentConfig.__dataclass_fields__)
    cfg = build.DeploymentConfig(**{k: v for k, v in case.items() if k in keys})
    wl = load_trace(requests_csv, max_tokens=cfg.max_tokens)
    (out,) = run.simulate_configs([cfg], [wl], predictor_for=run.default_predictor_for(None))
    completed = int(out.summary["num_completed"])
else:
    sys.argv = ["vidur_jax"] + json.loads(case_json) + [f"hydra.run.dir={out_dir}"]
    import runpy

    import vidur_jax.metrics.report as report_mod
    report_mod.write_report = timed("report", report_mod.write_report)
    def cli_completed():
        import pandas as pd
        return int(pd.read_csv(os.path.join(out_dir, "summary.csv"))["num_completed"].iloc[0])

    # the CLI ends with os._exit (no interpreter teardown): report just before it
    _os_exit = os._exit
    def report_then_exit(code):
        report(cli_completed())
        _os_exit(code)
    os._exit = report_then_exit
    try:
        runpy.run_module("vidur_jax", run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    completed = cli_completed()
report(completed)
"""

PHASES = (
    "import",
    "plan",
    "workload",
    "predictor",
    "tables",
    "executable",
    "simulate",
    "host",
    "write",
    "plot",
    "print",
)


def build_case(name: str, work: Path) -> tuple[Path, Path, int]:
    """``(case.json, requests.csv, num_requests)`` of a case, written under ``work``."""
    if name == "v1_sarathi_tp1":
        d = SHARED / "reference" / "cases" / name
        return (
            d / "case.json",
            d / "requests.csv",
            json.loads((d / "case.json").read_text())["num_requests"],
        )
    sys.path.insert(0, str(SHARED / "tools" / "vidur_reference"))
    from make_cases import build  # the lists speed_side_by_side.py times Vidur on

    qps = {"qps2": 2.0, "qps5": 5.0}[name]
    cfg, req = build(
        str(SHARED / "data"),
        f"speed_qps{qps:g}_n2000",
        dict(lengths="conv", qps=qps, n=2000),
        seed=2024,
    )
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    req.to_csv(d / "requests.csv", index=False)
    (d / "case.json").write_text(json.dumps(dict(cfg, num_requests=len(req)), indent=1))
    return d / "case.json", d / "requests.csv", len(req)


def cli_args(name: str, requests_csv: Path | None, n: int) -> list[str]:
    """Hydra overrides replaying a case's request list (or the quickstart)."""
    if name == "quickstart":
        return ["+experiment=quickstart"]
    return [
        "workload=chat_replay",
        f"workload.path={requests_csv}",
        f"workload.num_requests={n}",
        f"name={name}",
    ]


def run_child(mode: str, case_json: str, requests_csv: str, cache: Path, work: Path) -> dict:
    """One cold process; its phases, executable sources and the wall seen from outside."""
    env = dict(os.environ, VIDUR_JAX_CACHE=str(cache), PYTHONPATH=str(REPO))
    env.pop("VIDUR_JAX_COMPILE_CACHE", None)
    # the executable store and JAX's persistent cache are both on by default
    out_dir = tempfile.mkdtemp(dir=work, prefix="run_")
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", CHILD, mode, case_json, requests_csv, out_dir],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"error: child failed ({mode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("@@PHASES@@")][-1]
    res = json.loads(line[len("@@PHASES@@") :])
    res["process_wall_s"] = wall
    return res


def flatten(prefix: str, res: dict) -> dict:
    """Flat keys ``{prefix}_{phase}_s`` for one child result."""
    phases = res["phases"]
    out = {f"{prefix}_{ph}_s": float(phases.get(ph, 0.0)) for ph in PHASES}
    wall = res["process_wall_s"]
    inside = phases.get("in_process", wall)
    out[f"{prefix}_unaccounted_in_process_s"] = inside - sum(phases.get(ph, 0.0) for ph in PHASES)
    out[f"{prefix}_startup_and_exit_s"] = wall - inside
    out[f"{prefix}_process_wall_s"] = wall
    src = sorted(set(res["sources"]))
    out[f"{prefix}_executable_source"] = ",".join(src) if src else "none"
    out[f"{prefix}_num_completed"] = res["num_completed"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", nargs="+", default=["qps2", "qps5", "v1_sarathi_tp1", "quickstart"])
    ap.add_argument("--modes", nargs="+", default=["api", "cli"])
    ap.add_argument("--repeats", type=int, default=1, help="warm processes per case (median)")
    ap.add_argument("--merge", action="store_true", help="update --out's figures instead of replacing the file")
    args = ap.parse_args(argv)

    from importlib.metadata import version

    res: dict = {"load_average_start": os.getloadavg()[0]}
    # ml_dtypes 0.7.0 alone takes ~0.75 s to import (0.05 s for 0.6.0): pyproject pins < 0.7
    res.update({f"version_{p}": version(p) for p in ("jax", "jaxlib", "ml_dtypes", "numpy")})
    # the floor of any JAX process on this machine now (interpreter + import jax + exit):
    # compare it with the same figure on a quiet machine to read the walls below
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import jax, jax.numpy as jnp; jnp.zeros(1).block_until_ready()"],
        check=True,
    )
    res["floor_import_jax_process_wall_s"] = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="bench_cold_start_"))
    try:
        for name in args.cases:
            if name == "quickstart":
                case_json = requests_csv = None
                n = 0
            else:
                case_json, requests_csv, n = build_case(name, work)
            for mode in args.modes:
                if mode == "api" and name == "quickstart":
                    continue
                cache = work / f"cache_{name}_{mode}"
                shutil.rmtree(cache, ignore_errors=True)
                child_case = (
                    str(case_json) if mode == "api" else json.dumps(cli_args(name, requests_csv, n))
                )
                for cache_state in ("empty", "warm"):
                    reps = 1 if cache_state == "empty" else max(1, args.repeats)
                    runs = [
                        run_child(mode, child_case, str(requests_csv), cache, work)
                        for _ in range(reps)
                    ]
                    r = sorted(runs, key=lambda x: x["process_wall_s"])[len(runs) // 2]
                    prefix = f"{name}_{mode}_{cache_state}"
                    res.update(flatten(prefix, r))
                    print(
                        f"{prefix:34s} wall {r['process_wall_s']:6.2f} s  "
                        + " ".join(
                            f"{k}={v:.2f}" for k, v in r["phases"].items() if k != "in_process"
                        ),
                        flush=True,
                    )
                    if name in VIDUR_PROCESS_S:
                        res[f"{prefix}_vs_vidur_process_ratio"] = (
                            r["process_wall_s"] / VIDUR_PROCESS_S[name]
                        )
                    if cache_state == "warm" and name in TARGET_WARM_S:
                        res[f"{prefix}_target_s"] = TARGET_WARM_S[name]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, s in VIDUR_PROCESS_S.items():
        res[f"vidur_{name}_process_wall_s"] = s
    res["load_average_end"] = os.getloadavg()[0]
    sys.path.insert(0, str(REPO))  # this checkout's package, installed or not
    from vidur_jax.metrics import atomic_write_json

    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            res = {**json.load(f), **res}
    atomic_write_json(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
