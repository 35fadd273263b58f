"""vidur_jax's prediction of published MoE serving measurements (issue #30, item 6).

Each case is a real-hardware measurement with its source and setup, simulated with the
same setup: requests, lengths, GPU, tensor parallelism, vLLM's scheduler. MoE models
have no profiles, so every op of theirs is a calibrated-roofline estimate
(``vidur_jax/predictors/roofline.py``; MoE layer in :func:`roofline.moe_part_work`).
Dense models of the same benchmark runs are reported beside them (``control``), timed
by the shipped predictors, to show which part of the error is the MoE model's.

Source of every case: vLLM's nightly "Performance Benchmark" (Buildkite), "Latency
tests": input 32 tokens, output 128 tokens, a fixed batch of 8 requests
(``benchmark_latency.py``: the 8 prompts go in together and the run's end-to-end
latency is timed), BF16 weights, vLLM's default scheduler, "8xH100" and "H200" runners.
Both runners are 8-GPU SXM boards whose GPUs meet on NVSwitch, so every case runs on the
``h100_dgx`` node's topology (``hardware.network_device``; H200 uses it by default).

Usage::

    python experiments/moe_published.py [--out experiments/results/moe_published.csv]

Writes one row per case (model, gpu, tp, measured_ms, predicted_ms, error_pct, role,
source) and prints them. ``tests/test_moe.py`` holds the MoE cases to the error
measured here plus a stated margin.
"""

from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass

import pandas as pd

import vidur_jax

H100_PAGE = (
    "https://buildkite.com/elastic/enterprise-search-ruby/builds/571 (stored copy of vLLM's "
    "Performance Benchmark page, 'Latency tests', 8xH100)"
)
H200_PAGE = "https://buildkite.com/vllm/performance-benchmark/builds/9515 ('Latency tests', H200)"


#: node of both runners (8 GPUs on NVSwitch)
NETWORK = "h100_dgx"


@dataclass(frozen=True)
class Case:
    """One published measurement: the model, GPU, TP and mean batch latency (ms)."""

    model: str
    gpu: str
    tp: int
    measured_ms: float
    role: str  # "moe" (held by the tests) or "control" (dense, same benchmark run)
    source: str
    batch: int = 8
    prompt_tokens: int = 32
    output_tokens: int = 128


CASES: tuple[Case, ...] = (
    Case("mixtral-8x7b-instruct-v0.1", "h100", 2, 2326.97, "moe", H100_PAGE),
    Case("mixtral-8x7b-instruct-v0.1", "h200", 2, 1917.44, "moe", H200_PAGE),
    Case("llama3-70b", "h100", 4, 2444.47, "control", H100_PAGE),
    Case("llama3-70b", "h200", 4, 2077.53, "control", H200_PAGE),
    Case("llama-3.1-8b-instruct", "h100", 1, 997.542, "control", H100_PAGE),
    Case("llama-3.1-8b-instruct", "h200", 1, 833.421, "control", H200_PAGE),
)


def predict_ms(case: Case) -> float:
    """Simulated mean end-to-end latency (ms) of the case's batch (shipped predictors)."""
    overrides = {
        "model.name": case.model,
        "hardware": case.gpu,
        "hardware.network_device": NETWORK,
        "cluster.tp": case.tp,
        "scheduler": "vllm",
        "workload": "synthetic_fixed",
        "workload.num_requests": case.batch,
        "workload.arrival.kind": "static",  # the whole batch at t = 0
        "workload.lengths.prefill": case.prompt_tokens,
        "workload.lengths.decode": case.output_tokens,
        "profiles_dir": None,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "op times are roofline estimates" (said in the doc)
        _, requests = vidur_jax.simulate("quickstart", **overrides)
    return float(1e3 * (requests["completed_at"] - requests["arrived_at"]).mean())


def run() -> pd.DataFrame:
    """Every case with its prediction and signed error (%; + = vidur_jax too slow)."""
    rows = []
    for case in CASES:
        pred = predict_ms(case)
        rows.append(
            {
                "model": case.model,
                "gpu": case.gpu,
                "tp": case.tp,
                "network_device": NETWORK,
                "batch": case.batch,
                "prompt_tokens": case.prompt_tokens,
                "output_tokens": case.output_tokens,
                "measured_ms": case.measured_ms,
                "predicted_ms": round(pred, 1),
                "error_pct": round(100.0 * (pred / case.measured_ms - 1.0), 1),
                "role": case.role,
                "source": case.source,
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "moe_published.csv")
    )
    args = p.parse_args(argv)
    df = run()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    df.to_csv(args.out, index=False)
    print(df.drop(columns="source").to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
