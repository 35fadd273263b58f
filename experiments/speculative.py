"""Speculative decoding: a published measurement against vidur_jax, and the
``+experiment=speculative`` sweep.

Usage::

    VIDUR_JAX_PROFILES=../shared/data python experiments/speculative.py --out experiments/results/speculative

1. **Published measurement** (:data:`PUBLISHED`): the Spec-Bench leaderboard
   (hemingkx/Spec-Bench, Leaderboard.md, "Leaderboard on A100"): Vicuna-7B-v1.3 on one
   A100 80GB, FP16, greedy, batch size 1; EAGLE drafts (one decoder layer reading the
   target's features) with a mean of 3.61 accepted tokens per decoding step and an
   overall speedup of 2.29x over autoregressive decoding. vidur_jax simulates one request
   at a time on the profiled A100 Llama-2-7B predictors (Vicuna-7B has Llama-2-7B's
   shapes), with an ``"eagle"`` draft of ``k = 5`` tokens and the per-token acceptance
   ``alpha`` at which ``(1 - alpha^6) / (1 - alpha) = 3.61`` (0.791): the stated
   acceptance. EAGLE verifies a token *tree*; vidur_jax a chain of ``k + 1`` tokens (at
   batch 1 both are memory-bound passes of nearly the same time). The lengths (256 prompt,
   256 output tokens) are ours: Spec-Bench mixes six tasks. Speedup = completion time
   without / with speculation. Written to ``published.csv``.
2. **The sweep** of ``conf/experiment/speculative.yaml`` (Llama-2-70B TP 4 on H100 with a
   Llama-2-7B draft, alpha 0.7, k = 0, 2, 4, 6, two Poisson rates) through
   :func:`vidur_jax.simulate`: ``sweep.csv`` and ``speculative.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd
from fp8 import LATENCY_COLUMNS  # experiments/ is on the path when run as a script
from published_sweep import flat_published, run_sweep

#: Published speculative-decoding speedups at a stated acceptance: source, setup, result.
PUBLISHED = (
    {
        "case": "specbench_eagle_vicuna7b_a100_bs1",
        "source": "Spec-Bench leaderboard (hemingkx/Spec-Bench, Leaderboard.md, A100, Vicuna-7B-v1.3)",
        "setup": "Vicuna-7B-v1.3 (Llama-2-7B shapes), 1x A100 80GB, FP16, greedy, batch 1, EAGLE draft head; "
        "mean accepted tokens per step 3.61",
        "model": "meta-llama/Llama-2-7b-hf",
        "device": "a100",
        "draft": "eagle",
        "k": 5,
        "tokens_per_step": 3.61,
        "prompt": 256,
        "output": 256,
        "published": 2.29,
    },
)


def alpha_for(tokens_per_step: float, k: int) -> float:
    """Per-token acceptance at which the closed form gives ``tokens_per_step`` with ``k``."""
    from scipy.optimize import brentq

    from vidur_jax.sim.speculative import expected_tokens_per_step

    return float(
        brentq(lambda a: float(expected_tokens_per_step(a, k)) - tokens_per_step, 0.0, 1.0 - 1e-12)
    )


def request_seconds(case: dict, predictor_for, **spec) -> float:
    """Completion time (s) of one request of the case, alone on the GPU."""
    from vidur_jax.sim.build import DeploymentConfig
    from vidur_jax.sim.run import simulate_configs
    from vidur_jax.workload import make_workload

    cfg = DeploymentConfig(
        model=case["model"],
        device=case["device"],
        replica_scheduler="vllm",
        max_tokens=2048,
        **spec,
    )
    wl = make_workload(np.zeros(1), np.array([case["prompt"]]), np.array([case["output"]]))
    (out,) = simulate_configs([cfg], [wl], predictor_for=predictor_for)
    return float(out.requests["completed_at"][0])


def published_rows(profiles_dir: str | None) -> list[dict]:
    """One row per :data:`PUBLISHED` case: the simulated speedup and its relative error."""
    from vidur_jax.sim.run import default_predictor_for

    pf = default_predictor_for(profiles_dir)
    rows = []
    for case in PUBLISHED:
        alpha = alpha_for(case["tokens_per_step"], case["k"])
        base = request_seconds(case, pf)
        spec = request_seconds(
            case, pf, spec_tokens=case["k"], spec_acceptance=alpha, spec_draft=case["draft"]
        )
        rows.append(
            {
                "case": case["case"],
                "source": case["source"],
                "setup": case["setup"],
                "k": case["k"],
                "alpha": alpha,
                "published_speedup": case["published"],
                "sim_speedup": base / spec,
                "error_pct": 100.0 * (base / spec / case["published"] - 1.0),
            }
        )
    return rows


#: sweep.csv columns (those the run has)
SWEEP_COLUMNS = (
    "spec_tokens",
    "qps",
    *LATENCY_COLUMNS,
    "norm_e2e_p50",
    "spec_tokens_per_step",
    "spec_expected_tokens_per_step",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES"))
    ap.add_argument(
        "--num-requests", type=int, default=None, help="override the experiment's request count"
    )
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    from vidur_jax.metrics import atomic_write_csv

    pub = pd.DataFrame(published_rows(args.profiles_dir))
    atomic_write_csv(pub, os.path.join(args.out, "published.csv"))
    sweep = run_sweep("speculative", args.profiles_dir, args.num_requests, SWEEP_COLUMNS, args.out)
    flat = flat_published(pub, ("alpha", "published_speedup", "sim_speedup", "error_pct"))
    for r in sweep.to_dict("records"):
        tag = f"k{int(r.get('spec_tokens', 0))}_qps{r['qps']:g}"
        for k in ("ttft_p50", "tbt_p50", "e2e_p50", "e2e_p90", "norm_e2e_p50", "throughput_tps"):
            flat[f"sweep_{tag}_{k}"] = float(r[k])
    with open(os.path.join(args.out, "speculative.json"), "w") as fh:
        json.dump(flat, fh, indent=1, sort_keys=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pub.drop(columns=["source", "setup"]).to_string(index=False))
        print(sweep.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
