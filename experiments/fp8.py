"""FP8 vs BF16: published measurements against vidur_jax, and the ``+experiment=fp8`` sweep.

Usage::

    VIDUR_JAX_PROFILES=../shared/data python experiments/fp8.py --out experiments/results/fp8

1. **Published measurements** (:data:`PUBLISHED`): NVIDIA's TensorRT-LLM blog "Speed up
   inference with SOTA quantization techniques in TRT-LLM"
   (docs/source/blogs/quantization-in-TRT-LLM.md): LLaMA-v2-7B on one H100 80GB, TP 1,
   input 1,024 / output 128 tokens, FP8 vs FP16 speedup 1.51x at batch 1 and 1.40x at
   batch 8 (static batches, no in-flight batching). vidur_jax simulates the same batch
   (all requests at t = 0, one prefill batch then decodes together) with the profiled
   H100 Llama-2-7B predictors, at bf16 and at ``model.weight_dtype=fp8`` (the blog quantizes
   weights and activations; whether its KV cache was FP8 is not stated, so the FP8-KV
   variant is reported beside it), and the speedup is the ratio of the batch's
   completion times. Written to ``published.csv``.
2. **The sweep** of ``conf/experiment/fp8.yaml`` (Llama-2-70B, TP 4, H100, chat-like
   Poisson load at two rates; weights and KV cache at bf16 / fp8), run through
   :func:`vidur_jax.simulate`: ``sweep.csv`` (one row per config) and ``fp8.json``.
3. The FP8/BF16 op-time ratios the docs quote (:func:`ratio_rows`): ``ratios.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd
from published_sweep import flat_published, run_sweep

#: Published FP8-vs-16-bit speedups: source, setup, measured speedup.
PUBLISHED = (
    {
        "case": "trtllm_llama2_7b_h100_bs1",
        "source": "NVIDIA TensorRT-LLM blog, quantization-in-TRT-LLM.md (Performance table)",
        "setup": "LLaMA-v2-7B, 1x H100 80GB, TP 1, input 1024, output 128, batch 1, FP8 vs FP16",
        "model": "meta-llama/Llama-2-7b-hf",
        "device": "h100",
        "batch": 1,
        "prompt": 1024,
        "output": 128,
        "published": 1.51,
    },
    {
        "case": "trtllm_llama2_7b_h100_bs8",
        "source": "NVIDIA TensorRT-LLM blog, quantization-in-TRT-LLM.md (Performance table)",
        "setup": "LLaMA-v2-7B, 1x H100 80GB, TP 1, input 1024, output 128, batch 8, FP8 vs FP16",
        "model": "meta-llama/Llama-2-7b-hf",
        "device": "h100",
        "batch": 8,
        "prompt": 1024,
        "output": 128,
        "published": 1.40,
    },
)


def batch_seconds(case: dict, predictor_for, **precision) -> float:
    """Completion time (s) of the case's static batch at the given precision knobs."""
    from vidur_jax.sim.build import DeploymentConfig
    from vidur_jax.sim.run import simulate_configs
    from vidur_jax.workload import make_workload

    b = case["batch"]
    cfg = DeploymentConfig(
        model=case["model"],
        device=case["device"],
        replica_scheduler="vllm",
        batch_size_cap=b,
        max_tokens_in_batch=b * case["prompt"],
        max_tokens=2048,
        **precision,
    )
    wl = make_workload(np.zeros(b), np.full(b, case["prompt"]), np.full(b, case["output"]))
    (out,) = simulate_configs([cfg], [wl], predictor_for=predictor_for)
    return float(np.max(out.requests["completed_at"]))


def published_rows(profiles_dir: str | None) -> list[dict]:
    """One row per :data:`PUBLISHED` case: simulated speedups (fp8 weights; + fp8 KV) and
    the relative error of the first against the published one."""
    from vidur_jax.sim.run import default_predictor_for

    pf = default_predictor_for(profiles_dir)
    rows = []
    for case in PUBLISHED:
        base = batch_seconds(case, pf)
        w8 = base / batch_seconds(case, pf, weight_dtype="fp8")
        w8kv8 = base / batch_seconds(case, pf, weight_dtype="fp8", kv_cache_dtype="fp8")
        rows.append(
            {
                "case": case["case"],
                "source": case["source"],
                "setup": case["setup"],
                "published_speedup": case["published"],
                "sim_speedup_fp8_weights": w8,
                "sim_speedup_fp8_weights_kv": w8kv8,
                "error_pct": 100.0 * (w8 / case["published"] - 1.0),
            }
        )
    return rows


#: latency and throughput columns of the sweep tables
LATENCY_COLUMNS = ("ttft_p50", "ttft_p90", "tbt_p50", "tbt_p99") + (
    "e2e_p50",
    "e2e_p90",
    "throughput_tps",
)
#: sweep.csv columns (those the run has)
SWEEP_COLUMNS = (
    "weight_dtype",
    "kv_cache_dtype",
    "qps",
    *LATENCY_COLUMNS,
    "num_restarts",
    "kv_util_mean",
    "op_times",
)


def ratio_rows() -> list[dict]:
    """The calibrated FP8/BF16 time ratios docs/precision.md quotes: each GEMM of
    Llama-2-70B at TP 4 on an H100 at 1 and 8,192 tokens, and decode attention on an FP8
    KV cache at 256 sequences x 1,024 tokens."""
    from vidur_jax.predictors.roofline import GEMM_OPS
    from vidur_jax.sim import precision

    m, dev, tp = "meta-llama/Llama-2-70b-hf", "h100", 4
    rows = []
    for op in GEMM_OPS:
        for n in (1, 8192):
            r = precision.gemm_ratio(op, np.array([float(n)]), m, dev, tp, "fp8")[0]
            rows.append({"op": op, "tokens": n, "batch": None, "kv": None, "ratio": float(r)})
    d = precision.decode_attention_ratio(np.array([256.0]), np.array([1024.0]), m, dev, tp, "fp8")[
        0
    ]
    rows.append({"op": "attn_decode", "tokens": None, "batch": 256, "kv": 1024, "ratio": float(d)})
    return rows


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

    atomic_write_csv(pd.DataFrame(ratio_rows()), os.path.join(args.out, "ratios.csv"))
    pub = pd.DataFrame(published_rows(args.profiles_dir))
    atomic_write_csv(pub, os.path.join(args.out, "published.csv"))
    sweep = run_sweep("fp8", args.profiles_dir, args.num_requests, SWEEP_COLUMNS, args.out)
    flat = flat_published(
        pub,
        ("published_speedup", "sim_speedup_fp8_weights", "sim_speedup_fp8_weights_kv", "error_pct"),
    )
    for r in sweep.to_dict("records"):
        tag = (
            f"w{r.get('weight_dtype', 'bf16')}_kv{r.get('kv_cache_dtype', 'bf16')}_qps{r['qps']:g}"
        )
        for k in ("ttft_p50", "tbt_p50", "e2e_p50", "e2e_p90", "throughput_tps"):
            flat[f"sweep_{tag}_{k}"] = float(r[k])
    with open(os.path.join(args.out, "fp8.json"), "w") as fh:
        json.dump(flat, fh, indent=1, sort_keys=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pub.drop(columns=["source", "setup"]).to_string(index=False))
        print(sweep.drop(columns=["op_times"], errors="ignore").to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
