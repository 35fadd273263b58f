"""Gradient-based tuning vs grid search: the highest QPS per dollar that meets the SLOs.

Case: Llama-2-7B on one A100 (shipped predictors, catalog price), Sarathi, 128 requests
of a prompt-heavy synthetic conversation workload (Zipf lengths with a prefill:decode
ratio of 8: prompts ~555, outputs ~69 tokens, so 128 requests reach steady state past the
saturation knee; Poisson arrivals, seed 42). SLOs: TTFT P90 <= 0.5 s, TBT P99 <= 35 ms.
Three knobs in the box qps [1, 16] x chunk size [64, 1024] x batch cap [4, 48]:

* grid search: 12 x 8 x 6 log-spaced points (576 simulations, vmapped in batches of 4);
  the best feasible point is re-simulated on its own (counted);
* the optax loop (:func:`vidur_jax.sensitivity.tune.gradient_tune`) from the deployment
  at 2 qps, chunk 256, cap 16: sign steps (Rprop) on the log-knobs, exact SLO penalty plus
  a truncated log barrier, derivatives from the Gaussian-smoothed simulator (integer knobs
  and the load; 2 nodes each, one vmapped call), early stop, final re-simulation.

Counting: every simulation the loop runs is counted - one primal per new iterate, two
per smoothed knob where an SLO is within 25% of its bound (6 per such iterate), the
final verification; a forward-mode run (the jvp-of-the-load variant) counts as one primal plus
one per tangent direction. Iterates that round to an earlier point reuse its runs.

Also reported (not counted in either method): the tuner from three other starts, the
variant with the jvp of the load, and a fine qps line (16 points) at the grid's and the
tuner's (chunk, cap), which separates the qps resolution of the grid from the choice of
chunk and cap. Writes a flat JSON:

    python experiments/sensitivity_tuning.py --out experiments/results/sensitivity_tuning.json

``--sweep PATH`` instead runs the loop from all four starts on 5 SLO pairs x 2 workload
seeds against the grid of each seed (one grid per seed serves every SLO; ~6 minutes):

    python experiments/sensitivity_tuning.py \
        --sweep experiments/results/sensitivity_tuning_sweep.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import numpy as np

from vidur_jax import app
from vidur_jax.sensitivity import core, tune
from vidur_jax.sim.run import default_predictor_for

BOX = {"qps": (1.0, 16.0), "chunk_size": (64.0, 1024.0), "batch_cap": (4.0, 48.0)}
GRID_POINTS = {"qps": 12, "chunk_size": 8, "batch_cap": 6}
START = {"qps": 2.0, "chunk_size": 256.0, "batch_cap": 16.0}
SWEEP_SEEDS = (42, 7)
SWEEP_SLOS = ((0.5, 0.035), (1.0, 0.04), (0.3, 0.03), (0.5, 0.05), (2.0, 0.03))
OTHER_STARTS = (
    {"qps": 2.0, "chunk_size": 512.0, "batch_cap": 48.0},
    {"qps": 4.0, "chunk_size": 128.0, "batch_cap": 8.0},
    {"qps": 1.0, "chunk_size": 64.0, "batch_cap": 4.0},
)


def build_case(num_requests: int, seed: int) -> core.Case:
    """The tuning case (composed from the packaged config)."""
    tree = app.to_container(
        app.compose(
            [
                "+experiment=quickstart",
                f"workload.num_requests={num_requests}",
                "workload.qps=4.0",
                "workload.lengths.prefill_to_decode_ratio=8",
                f"seed={seed}",
                "scheduler.chunk_size=256",
                "scheduler.batch_size_cap=16",
            ]
        )
    )
    cfg = app.deployment_from(tree)
    wl = app.build_workload(app.workload_spec(tree))
    pred = default_predictor_for(tree.get("profiles_dir"))(cfg)
    # room for the +25% smoothing nodes of the largest chunk / cap
    return core.make_case(
        cfg,
        wl,
        pred,
        4.0,
        max_chunk=int(1.25 * BOX["chunk_size"][1]),
        max_batch_cap=int(1.25 * BOX["batch_cap"][1]),
    )


def _first_reaching(res: tune.TuneResult, target: float) -> float | None:
    """Simulations run when the tuner first had a feasible iterate >= ``target``."""
    for h in res.history:
        if h["feasible"] and h["qps_per_dollar"] >= target:
            return h["simulations"]
    return None


def _summary(res: tune.TuneResult, grid_best: float, wall_s: float) -> dict:
    q = res.best_values["qps_per_dollar"] if res.best else None
    return {
        "simulations": res.num_simulations,
        "iterations": len(res.history),
        "stopped": res.stopped,
        "best": res.best,
        "best_qps_per_dollar": q,
        "best_over_grid": q / grid_best if q else None,
        "verified": res.verified,
        "simulations_to_97pct_of_grid": _first_reaching(res, 0.97 * grid_best),
        "simulations_to_grid": _first_reaching(res, grid_best),
        "wall_s": wall_s,
    }


def _max_feasible_qps(case: core.Case, slo: tune.SLO, at: dict, lo: float, hi: float) -> float:
    """Largest feasible qps on a 16-point log line in [lo, hi] at ``at``'s chunk and cap."""
    qs = np.geomspace(lo, hi, 16)
    res = core.evaluate_many(case, [at | {"qps": float(q)} for q in qs])
    ok = [float(q) for q, r in zip(qs, res, strict=True) if slo.met(r)]
    return max(ok) if ok else float("nan")


def sweep(path: str, num_requests: int) -> None:
    """The loop from every start on every SLO pair and seed vs that seed's grid."""
    rows = []
    for seed in SWEEP_SEEDS:
        case = build_case(num_requests, seed)
        grid = {k: np.geomspace(*BOX[k], GRID_POINTS[k]) for k in BOX}
        # the metrics of every grid point (no SLO binds), filtered per SLO pair below
        everyone = tune.SLO({"ttft_p90": math.inf, "tbt_p99": math.inf})
        pts = tune.grid_search(case, everyone, grid).history
        for ttft, tbt in SWEEP_SLOS:
            slo = tune.SLO({"ttft_p90": ttft, "tbt_p99": tbt})
            feasible = [h for h in pts if h["ttft_p90"] <= ttft and h["tbt_p99"] <= tbt]
            g = max(feasible, key=lambda h: h["qps_per_dollar"])
            for s in (START, *OTHER_STARTS):
                t = time.time()
                res = tune.gradient_tune(case, slo, BOX, start=s)
                row = {"seed": seed, "slo_ttft_p90_s": ttft, "slo_tbt_p99_s": tbt, "start": s}
                row["grid_best"] = {k: g[k] for k in BOX}
                row["grid_best_qps_per_dollar"] = g["qps_per_dollar"]
                row.update(_summary(res, g["qps_per_dollar"], time.time() - t))
                rows.append(row)
                print(json.dumps(row), flush=True)
    ratios = np.array([r["best_over_grid"] or 0.0 for r in rows])
    out = {
        "runs": len(rows),
        "grid_simulations_per_slo": int(np.prod(list(GRID_POINTS.values()))) + 1,
        "runs_within_3pct_or_above": int((ratios >= 0.97).sum()),
        "best_over_grid_min": float(ratios.min()),
        "best_over_grid_median": float(np.median(ratios)),
        "simulations_median": float(np.median([r["simulations"] for r in rows])),
        "simulations_max": int(max(r["simulations"] for r in rows)),
        "rows": rows,
    }
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))


def main() -> None:
    """Run both searches and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/results/sensitivity_tuning.json")
    ap.add_argument("--num-requests", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ttft-p90", type=float, default=0.5, help="SLO, seconds")
    ap.add_argument("--tbt-p99", type=float, default=0.035, help="SLO, seconds")
    ap.add_argument("--quick", action="store_true", help="skip the extra starts and jvp variant")
    ap.add_argument("--sweep", default=None, help="run the SLO x seed x start sweep into PATH")
    args = ap.parse_args()
    if args.sweep:
        sweep(args.sweep, args.num_requests)
        return

    t0 = time.time()
    slo = tune.SLO({"ttft_p90": args.ttft_p90, "tbt_p99": args.tbt_p99})
    case = build_case(args.num_requests, args.seed)
    build_s = time.time() - t0

    grid = {k: np.geomspace(*BOX[k], GRID_POINTS[k]) for k in BOX}
    t = time.time()
    g = tune.grid_search(case, slo, grid)
    grid_s = time.time() - t
    gq = g.best_values["qps_per_dollar"]

    t = time.time()
    r = tune.gradient_tune(case, slo, BOX, start=START)
    tune_s = time.time() - t

    out = {
        "case": (
            f"Llama-2-7B / a100 / tp1 / sarathi, synthetic_conv (zipf, prefill:decode 8), "
            f"{args.num_requests} requests, seed {args.seed}"
        ),
        "slo_ttft_p90_s": args.ttft_p90,
        "slo_tbt_p99_s": args.tbt_p99,
        "box": {k: list(v) for k, v in BOX.items()},
        "price_per_gpu_hour": case.price_per_gpu_hour,
        "counting": (
            "every simulation run: 1 primal per new iterate; 2 Gauss-Hermite nodes per "
            "smoothed knob (qps, chunk_size, batch_cap) where an SLO is within 25% of its "
            "bound; 1 final verification; a jvp run = 1 primal + 1 per tangent; grid: "
            "every point + 1 verification"
        ),
        "case_build_and_compile_s": build_s,
        "grid_points": dict(GRID_POINTS),
        "grid_simulations": g.num_simulations,
        "grid_best": g.best,
        "grid_best_qps_per_dollar": gq,
        "grid_best_metrics": {m: g.best_values[m] for m in slo.bounds},
        "grid_verified": g.verified,
        "grid_wall_s": grid_s,
        "gradient_start": START,
        **{f"gradient_{k}": v for k, v in _summary(r, gq, tune_s).items()},
        "gradient_best_metrics": {m: r.best_values[m] for m in slo.bounds} if r.best else None,
        "gradient_history": r.history,
        "jax_backend": jax.default_backend(),
    }
    if r.best:
        # reference, not counted: the largest feasible qps on a fine line at both (chunk, cap)
        lo, hi = 0.8 * g.best["qps"], 1.6 * g.best["qps"]
        out["reference_max_qps_at_grid_chunk_cap"] = _max_feasible_qps(case, slo, g.best, lo, hi)
        out["reference_max_qps_at_gradient_chunk_cap"] = _max_feasible_qps(
            case, slo, r.best, lo, hi
        )
    if not args.quick:
        others = []
        for s in OTHER_STARTS:
            t = time.time()
            res = tune.gradient_tune(case, slo, BOX, start=s)
            others.append({"start": s, **_summary(res, gq, time.time() - t)})
        out["gradient_other_starts"] = others
        t = time.time()
        res = tune.gradient_tune(case, slo, BOX, start=START, load_derivative="jvp")
        out["gradient_jvp_load"] = _summary(res, gq, time.time() - t)
    out["total_wall_s"] = time.time() - t0
    print(json.dumps({k: v for k, v in out.items() if k != "gradient_history"}, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
