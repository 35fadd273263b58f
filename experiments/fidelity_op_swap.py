"""Which op carries each fidelity gap: swap single ops of the hybrid for Vidur-style forests.

Usage::

    python experiments/fidelity_op_swap.py [--cases ../shared/reference/cases]
        [--names v1_sarathi_tp1 v3_orca_tp2] [--profiles-dir ../shared/data]
        [--out experiments/results/fidelity_op_swap.csv]

For each reference case, simulates with the shipped hybrid predictors, then with the
forest's prediction (``experiments/vidur_forest.py``, the kind of predictor Vidur uses)
in place of the hybrid's for one op group at a time (decode attention, prefill attention,
all-reduce, all three), and writes ``case, swapped, metric, vidur, vidur_jax, rel_err``
for p50/p90 of TTFT, TBT and e2e. A gap that closes when an op is swapped is that op's
disagreement between the two predictors.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fidelity_vs_vidur as fid  # noqa: E402
from vidur_forest import ForestPredictor  # noqa: E402

from vidur_jax import predictors  # noqa: E402
from vidur_jax.metrics import atomic_write_csv  # noqa: E402
from vidur_jax.sim.run import simulate_configs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = [f"{m}_{q}" for m in ("ttft", "tbt", "e2e") for q in ("p50", "p90")]
SWAPS: dict[str, tuple[str, ...]] = {
    "none": (),
    "attn_decode": ("attn_decode",),
    "attn_prefill": ("attn_prefill",),
    "all_reduce": ("all_reduce",),
    "all three": ("attn_decode", "attn_prefill", "all_reduce"),
}


class Swapped:
    """The hybrid predictor with ``ops`` answered by the forest (duck-typed predictor)."""

    def __init__(self, hybrid, forest, ops: tuple[str, ...]) -> None:
        self.hybrid, self.forest, self.ops = hybrid, forest, ops
        self.meta = dict(hybrid.meta, source="hybrid+forest" if ops else "trained")

    def predict(self, op: str, **features):
        """Milliseconds of ``op`` from the forest if swapped, else the hybrid."""
        return (self.forest if op in self.ops else self.hybrid).predict(op, **features)


def run(cases_dir: str, names: list[str], profiles_dir: str) -> pd.DataFrame:
    """Every (case, swap) simulation compared with Vidur's summary."""
    rows = []
    for name in names:
        case, cfg, wl, ref = fid.load_case(os.path.join(cases_dir, name))
        tp = cfg.tensor_parallel_size
        forest = ForestPredictor(profiles_dir, cfg.model, cfg.device, tp, cfg.network_device)
        hybrid = predictors.load(cfg.model, cfg.device, tp)
        for label, ops in SWAPS.items():
            if "all_reduce" in ops and tp == 1 and ops == ("all_reduce",):
                continue  # no all-reduce at TP 1
            pred = Swapped(hybrid, forest, ops)
            (out,) = simulate_configs([cfg], [wl], predictor_for=lambda c, p=pred: p)
            for r in fid.compare(case, out.summary, ref):
                if r["metric"] in CORE:
                    rows.append(dict(r, swapped=label))
            print(case, label, flush=True)
    return pd.DataFrame(rows)[["case", "swapped", "metric", "vidur", "vidur_jax", "rel_err"]]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cases", default=os.path.join(HERE, "..", "..", "shared", "reference", "cases")
    )
    ap.add_argument(
        "--names", nargs="+", default=["v1_sarathi_tp1", "v3_orca_tp2", "v6_sarathi_2rep"]
    )
    ap.add_argument(
        "--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES", "../shared/data")
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fidelity_op_swap.csv"))
    args = ap.parse_args(argv)
    df = run(args.cases, args.names, args.profiles_dir)
    atomic_write_csv(df, args.out)
    table = df.pivot_table(
        index=["case", "swapped"], columns="metric", values="rel_err", sort=False
    )
    print(table[CORE].round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
