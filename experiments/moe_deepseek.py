"""EP vs TP for DeepSeek MoE models by capacity per dollar (``+experiment=moe_deepseek``).

Runs the capacity search of ``conf/experiment/moe_deepseek.yaml`` (DeepSeek-V2-Lite and
DeepSeek-V3 on 8-GPU H100 and A100 clusters; every (tp, ep) with ep dividing tp) with the
shipped predictors (``profiles_dir=null``; MoE/MLA ops are calibrated-roofline
estimates either way) and writes to ``--out`` (default
``experiments/results/moe_deepseek``): ``search.csv``, ``best_config.json``,
``answer.txt``, ``ep_vs_tp.csv`` (model, device, tp, ep, replicas, feasible,
capacity_qps, qps_per_dollar, ttft_p90, tbt_p99, meets_slo, reason) and
``imbalance.csv``: one TP8 H100 replica of DeepSeek-V2-Lite at a fixed load, ep=1 and
ep=8 under routing skew ``predictor.moe_imbalance`` in {1, 1.25, 1.5, 2} (latencies).

    python experiments/moe_deepseek.py [--out DIR] [overrides...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import warnings

import pandas as pd

COLUMNS = [
    "model",
    "device",
    "tp",
    "ep",
    "replicas",
    "feasible",
    "capacity_qps",
    "qps_per_dollar",
    "ttft_p90",
    "tbt_p99",
    "meets_slo",
    "infeasible_reason",
]


def ep_vs_tp(search: pd.DataFrame) -> pd.DataFrame:
    """The EP-vs-TP table: one row per (model, GPU, tp, ep), best QPS per dollar first."""
    df = search[[c for c in COLUMNS if c in search]].copy()
    df["infeasible_reason"] = df["infeasible_reason"].fillna("").str.slice(0, 90)
    return df.sort_values(["model", "device", "qps_per_dollar"], ascending=[True, True, False])


#: Load of the routing-skew sweep (req/s), about half the TP8 H100 replica's capacity.
SKEW_QPS = 40.0
SKEWS = (1.0, 1.25, 1.5, 2.0)


def imbalance_sweep() -> pd.DataFrame:
    """Latencies of one TP8 H100 DeepSeek-V2-Lite replica at :data:`SKEW_QPS`, ep=1 and
    ep=8, for each routing skew of :data:`SKEWS` (one vmapped call per ep)."""
    import vidur_jax

    rows = []
    for ep in (1, 8):
        knobs = {
            "model.name": "deepseek-ai/DeepSeek-V2-Lite",
            "hardware": "h100",
            "hardware.network_device": "h100_dgx",  # 8 GPUs on NVSwitch, as the search's TP8
            "cluster.tp": 8,
            "cluster.ep": ep,
            "scheduler": "sarathi",
            "scheduler.chunk_size": 512,
            "scheduler.batch_size_cap": 128,
            "workload": "synthetic_fixed",
            "workload.max_tokens": 2048,
            "workload.num_requests": 400,
            "qps": SKEW_QPS,
            "predictor.moe_imbalance": list(SKEWS) if ep > 1 else [1.0],
            "profiles_dir": None,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary, _ = vidur_jax.simulate("quickstart", **knobs)
        for r in summary.itertuples():
            rows.append(
                {
                    "ep": ep,
                    "moe_imbalance": getattr(r, "moe_imbalance", 1.0),
                    "qps": SKEW_QPS,
                    "ttft_p90_s": r.ttft_p90,
                    "tbt_p50_s": r.tbt_p50,
                    "tbt_p99_s": r.tbt_p99,
                    "throughput_tps": r.throughput_tps,
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/results/moe_deepseek")
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = ap.parse_args(argv)

    from vidur_jax import app
    from vidur_jax.search.task import print_answer, run_search, write_outputs

    overrides = ["+experiment=moe_deepseek", "profiles_dir=null", "plots=false", *args.overrides]
    cfg = app.to_container(app.compose(overrides))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "op times are roofline estimates": in predictor_note
        res = run_search(cfg, log=lambda m: print(m, flush=True))
    os.makedirs(args.out, exist_ok=True)
    write_outputs(res, args.out, plots=False)
    probes = os.path.join(args.out, "probes.csv")
    if os.path.exists(probes):
        os.remove(probes)  # large and not cited
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_answer(res)
    with open(os.path.join(args.out, "answer.txt"), "w") as fh:
        fh.write(buf.getvalue())
    table = ep_vs_tp(pd.read_csv(os.path.join(args.out, "search.csv")))
    table.to_csv(os.path.join(args.out, "ep_vs_tp.csv"), index=False)
    skew = imbalance_sweep()
    skew.to_csv(os.path.join(args.out, "imbalance.csv"), index=False)
    print(buf.getvalue(), end="")
    print(table.to_string(index=False))
    print(skew.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
