"""Length and arrival statistics of the named workloads (``conf/workload/*.yaml``).

Usage::

    python experiments/study_workload_stats.py [--data-dir ../shared/data] \
        [--out experiments/results/workload_stats.csv]

For every workload option the config group ships, composes it (with its default
``qps``), draws ``--num-requests`` requests with the library's own generator (trace
lengths are the file's rows, shuffled; replay keeps file order and arrival times) and
reports prompt / output token percentiles and the arrival process (mean rate and the
coefficient of variation of the gaps; 1 = Poisson). The raw trace files are summarised
too (every row, before clipping to ``max_tokens``). The numbers are quoted in the yaml
comments and the README's workload table.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

from vidur_jax import app
from vidur_jax.metrics import atomic_write_csv

TRACES = {
    "splitwise_conv.csv (raw)": "splitwise_conv.csv",
    "splitwise_code.csv (raw)": "splitwise_code.csv",
    "arxiv_summarization (raw)": "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
}


def stats(name: str, t: np.ndarray | None, p: np.ndarray, d: np.ndarray) -> dict:
    """One row: token percentiles of prompts / outputs and arrival rate + gap CV."""
    row: dict = {"workload": name, "requests": len(p)}
    for tag, x in (("prefill", p), ("decode", d)):
        x = np.asarray(x, dtype=np.float64)
        row[f"{tag}_mean"] = x.mean()
        for q in (50, 90, 99):
            row[f"{tag}_p{q}"] = np.percentile(x, q)
        row[f"{tag}_max"] = x.max()
    row["pd_ratio_p50"] = float(np.median(np.asarray(p) / np.asarray(d)))
    if t is not None and len(t) > 1 and t[-1] > t[0]:
        gaps = np.diff(np.asarray(t, dtype=np.float64))
        row["duration_s"] = t[-1] - t[0]
        row["qps_mean"] = (len(t) - 1) / (t[-1] - t[0])
        row["gap_cv"] = gaps.std() / gaps.mean()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("VIDUR_JAX_DATA", "../shared/data"))
    ap.add_argument("--num-requests", type=int, default=4000)
    ap.add_argument("--out", default="experiments/results/workload_stats.csv")
    args = ap.parse_args(argv)
    data = os.path.abspath(args.data_dir)
    rows = []
    for label, fname in TRACES.items():
        df = pd.read_csv(os.path.join(data, "processed_traces", fname))
        t = df["arrived_at"].to_numpy() if "arrived_at" in df else None
        rows.append(stats(label, t, df["num_prefill_tokens"], df["num_decode_tokens"]))
    for opt in sorted(p.stem for p in (app.CONF_DIR / "workload").glob("*.yaml")):
        cfg = app.compose([f"workload={opt}", f"data_dir={data}"])
        tree = app.to_container(cfg)
        n = args.num_requests
        if tree["workload"].get("kind") == "replay":
            n = min(n, len(pd.read_csv(app.workload_spec(tree, check_files=False)["path"])))
        tree["workload"]["num_requests"] = n
        wl = app.build_workload(app.workload_spec(tree))
        rows.append(
            stats(
                f"workload={opt} (qps={tree['workload'].get('qps')})",
                np.asarray(wl.arrived_at),
                np.asarray(wl.num_prefill),
                np.asarray(wl.num_decode),
            )
        )
    out = pd.DataFrame(rows)
    atomic_write_csv(out, args.out)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(out.round(2).to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
