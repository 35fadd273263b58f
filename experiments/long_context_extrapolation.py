"""What extrapolation does to long-context latency ("the seed's table", issue 3 item 4).

Vidur's random forests predict, beyond the profiled range, the time of the largest
profiled size ("it would use the largest time needed for the largest num_tokens for any
other extrapolation"). Here the same deployment and workload are simulated twice:

* ``hybrid`` -- our predictors (polynomial in FLOPs/bytes beyond the range);
* ``flat`` -- the same predictors with every feature clamped to its profiled range
  (:class:`ClampedPredictor`), i.e. forest-style flat extrapolation.

Deployment: CodeLlama-34B on A100 with TP 4 (context 16,384 tokens; mlp.csv and the
attention profile behind its predictors stop at 4,096 tokens), Sarathi (chunk 512) and
vLLM (whole-prompt prefills, ``max_tokens_in_batch`` raised to 16,384) schedulers.
Workload: prompts uniform in [8,192, 15,360] tokens, 64-512 output tokens, Poisson
arrivals. Writes ``long_context.csv`` (one row per scheduler x predictor with TTFT and
e2e P50/P90/P95/P99 in seconds, plus the hybrid/flat ratio rows) and prints the table.

Usage::

    python experiments/long_context_extrapolation.py --out experiments/results \
        [--num-requests 200] [--qps 0.05]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vidur_jax import predictors  # noqa: E402
from vidur_jax.sim.build import DeploymentConfig  # noqa: E402
from vidur_jax.sim.run import simulate_configs  # noqa: E402
from vidur_jax.workload import make_workload  # noqa: E402

MODEL = "codellama/CodeLlama-34b-Instruct-hf"
DEVICE = "a100"
TP = 4
MAX_TOKENS = 16384
PERCENTILES = (50, 90, 95, 99)


class ClampedPredictor:
    """Forest-style flat extrapolation: features clamped to the profiled range.

    Wraps any predictor with ``predict(op, **features)`` and ``meta["ranges"]``
    (``{op: {feature: [lo, hi]}}``, user units); ops without a range pass through.
    """

    def __init__(self, inner: predictors.Predictor) -> None:
        self.inner = inner
        self.ranges = inner.meta.get("ranges", {})

    def predict(self, op: str, **features: np.ndarray) -> np.ndarray:
        """Time in ms of ``op`` at the features clamped to ``[lo, hi]``."""
        rng = self.ranges.get(op, {})
        clamped = {
            k: np.clip(np.asarray(v, np.float64), *rng[k]) if k in rng else v
            for k, v in features.items()
        }
        return self.inner.predict(op, **clamped)


def long_prompt_workload(num_requests: int, qps: float, seed: int = 0):
    """Poisson arrivals at ``qps``; prompts U[8192, 15360], outputs U[64, 512] tokens."""
    rng = np.random.default_rng(seed)
    arrived = np.cumsum(rng.exponential(1.0 / qps, num_requests))
    prefill = rng.integers(8192, 15361, num_requests)
    decode = rng.integers(64, 513, num_requests)
    return make_workload(arrived, prefill, decode, source="long_context")


def percentile_row(out, label: dict) -> dict:
    """TTFT / e2e percentiles (s) of one simulated config."""
    r = out.requests
    done = np.isfinite(r["completed_at"])
    row = dict(label, completed=int(done.sum()), requests=len(done))
    for name, end in (("ttft", "first_token_at"), ("e2e", "completed_at")):
        lat = r[end][done] - r["arrived_at"][done]
        for q in PERCENTILES:
            row[f"{name}_p{q}"] = float(np.percentile(lat, q))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (long_context.csv)")
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--qps", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    hybrid = predictors.load(MODEL, DEVICE, TP)
    flat = ClampedPredictor(hybrid)
    schedulers = {
        "sarathi": dict(replica_scheduler="sarathi", chunk_size=512, max_tokens_in_batch=4096),
        "vllm": dict(replica_scheduler="vllm", max_tokens_in_batch=MAX_TOKENS),
    }
    cfgs, labels = [], []
    for sched, knobs in schedulers.items():
        for name in ("flat", "hybrid"):
            cfgs.append(
                DeploymentConfig(
                    model=MODEL,
                    device=DEVICE,
                    tensor_parallel_size=TP,
                    max_tokens=MAX_TOKENS,
                    batch_size_cap=64,
                    seed=args.seed,
                    **knobs,
                )
            )
            labels.append({"scheduler": sched, "predictor": name})
    workload = long_prompt_workload(args.num_requests, args.qps, args.seed)
    t0 = time.perf_counter()
    outputs = []
    # One call per predictor: predictor_for maps a config to its predictor, and the two
    # variants share every config field.
    for name, pred in (("flat", flat), ("hybrid", hybrid)):
        idx = [i for i, lab in enumerate(labels) if lab["predictor"] == name]
        res = simulate_configs(
            [cfgs[i] for i in idx], [workload] * len(idx), predictor_for=lambda c, p=pred: p
        )
        outputs += list(zip(idx, res, strict=False))
    outputs = [o for _, o in sorted(outputs, key=lambda t: t[0])]
    wall = time.perf_counter() - t0

    rows = [percentile_row(o, lab) for o, lab in zip(outputs, labels, strict=False)]
    df = pd.DataFrame(rows)
    metric_cols = [c for c in df.columns if c.startswith(("ttft_", "e2e_"))]
    for sched in schedulers:
        f = df[(df.scheduler == sched) & (df.predictor == "flat")].iloc[0]
        h = df[(df.scheduler == sched) & (df.predictor == "hybrid")].iloc[0]
        ratio = {
            "scheduler": sched,
            "predictor": "hybrid/flat",
            "completed": np.nan,
            "requests": np.nan,
        }
        ratio.update({c: h[c] / f[c] for c in metric_cols})
        rows.append(ratio)
    df = pd.DataFrame(rows)
    df.insert(0, "model", MODEL)
    df.insert(1, "device", DEVICE)
    df.insert(2, "tp", TP)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "long_context.csv")
    df.to_csv(path + ".tmp", index=False)
    os.replace(path + ".tmp", path)
    pd.set_option("display.width", 200)
    print(df.drop(columns=["model", "device", "tp"]).round(3).to_string(index=False))
    for op, feats in (
        ("attn_prefill", dict(kv_cache_size=15360, prefill_chunk_size=512)),
        ("attn_decode", dict(batch_size=16, kv_cache_size=15360)),
        ("mlp_up_proj", dict(num_tokens=15360)),
    ):
        a, b = float(flat.predict(op, **feats)), float(hybrid.predict(op, **feats))
        print(f"{op}{feats}: flat {a:.3f} ms, hybrid {b:.3f} ms per layer")
    print(f"{len(cfgs)} simulations of {args.num_requests} requests in {wall:.1f} s; wrote {path}")


if __name__ == "__main__":
    main()
