"""Gradient-based tuning vs grid search: the highest QPS per dollar that meets the SLOs.

Case: Llama-2-7B on one A100 (shipped predictors), Sarathi, a synthetic conversation
workload (Zipf lengths, Poisson arrivals, fixed seed). The knob is the offered load
(optionally also the relaxed chunk size); SLOs on TTFT P90 and TBT P99. Grid search
simulates every qps (x chunk) point; the optax loop follows the derivative of the
penalized objective (one forward-mode simulation per iterate). Writes a flat JSON:

    python experiments/sensitivity_tuning.py --out experiments/results/sensitivity_tuning.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from vidur_jax import app
from vidur_jax.sensitivity import core, tune
from vidur_jax.sim.run import default_predictor_for


def build_case(num_requests: int, qps: float, chunk: int, max_chunk: int) -> core.Case:
    """The tuning case (composed from the packaged config)."""
    tree = app.to_container(
        app.compose(
            [
                "+experiment=quickstart",
                f"workload.num_requests={num_requests}",
                f"workload.qps={qps}",
                f"scheduler.chunk_size={chunk}",
                "scheduler.batch_size_cap=64",
            ]
        )
    )
    cfg = app.deployment_from(tree)
    wl = app.build_workload(app.workload_spec(tree))
    pred = default_predictor_for(tree.get("profiles_dir"))(cfg)
    return core.make_case(cfg, wl, pred, qps, max_chunk=max_chunk)


def main() -> None:
    """Run both searches and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/results/sensitivity_tuning.json")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--ttft-p90", type=float, default=1.0, help="SLO, seconds")
    ap.add_argument("--tbt-p99", type=float, default=0.2, help="SLO, seconds")
    ap.add_argument("--grid-points", type=int, default=32)
    ap.add_argument("--with-chunk", action="store_true", help="also tune the chunk size")
    args = ap.parse_args()

    slo = tune.SLO({"ttft_p90": args.ttft_p90, "tbt_p99": args.tbt_p99})
    case = build_case(args.num_requests, 1.0, 512, 2048)
    qps_grid = np.geomspace(0.25, 16.0, args.grid_points)
    chunk_grid = [128, 256, 512, 1024, 2048] if args.with_chunk else None
    knobs = ("qps", "chunk_size") if args.with_chunk else ("qps",)

    t = time.time()
    grid = tune.grid_search(case, slo, qps_grid, chunk_grid)
    grid_s = time.time() - t
    t = time.time()
    grad = tune.gradient_tune(case, slo, knobs, start={"qps": 1.0, "chunk_size": 512.0})
    grad_s = time.time() - t
    # the gradient's best point, re-simulated on its own
    check = core.evaluate(case, grad.best) if grad.best else None
    out = {
        "case": "Llama-2-7B / a100 / tp1 / sarathi cap 64, synthetic_conv, "
        f"{args.num_requests} requests",
        "slo_ttft_p90_s": args.ttft_p90,
        "slo_tbt_p99_s": args.tbt_p99,
        "knobs": list(knobs),
        "grid_simulations": grid.num_simulations,
        "grid_best_qps": grid.best["qps"] if grid.best else None,
        "grid_best_chunk_size": (grid.best or {}).get("chunk_size"),
        "grid_best_qps_per_dollar": grid.best_values["qps_per_dollar"] if grid.best else None,
        "grid_wall_s": grid_s,
        "gradient_simulations": grad.num_simulations,
        "gradient_iterations": len(grad.history),
        "gradient_best_qps": grad.best["qps"] if grad.best else None,
        "gradient_best_chunk_size": (grad.best or {}).get("chunk_size"),
        "gradient_best_qps_per_dollar": grad.best_values["qps_per_dollar"] if grad.best else None,
        "gradient_best_meets_slo_resimulated": bool(check and slo.met(check)),
        "gradient_wall_s": grad_s,
        "gradient_history": grad.history,
        "jax_backend": jax.default_backend(),
    }
    if grid.best and grad.best:
        out["gradient_over_grid_qps_per_dollar"] = (
            grad.best_values["qps_per_dollar"] / grid.best_values["qps_per_dollar"]
        )
    print(json.dumps({k: v for k, v in out.items() if k != "gradient_history"}, indent=1))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
