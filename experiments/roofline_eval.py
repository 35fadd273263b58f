"""Honest evaluation of the roofline fallback across GPUs.

Calibrate the per-op efficiencies on one GPU's profiles and predict the other GPU's
tables from the catalog peaks alone (A100 -> H100 and H100 -> A100), reporting MAPE per
op against every row of the target's ``mlp.csv`` files (all models, all TPs) and its
collective tables. Attention has a profile only for a100 Llama-2-7B, so its numbers are
in-sample fits on A100 (marked ``in_sample``); there is no H100 attention table to test on.

Usage::

    python experiments/roofline_eval.py --out DIR [--profiles-dir ../shared/data]

Writes ``DIR/roofline_mape.csv`` (direction, op, rows, mape_pct, median_ape_pct,
p90_ape_pct, bias_pct, in_sample), ``DIR/roofline_eval.json`` (flat summary) and the
calibrations ``DIR/calibration_<devices>.json``; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pandas as pd

from vidur_jax.predictors import roofline

DEFAULT_PROFILES = os.environ.get(
    "VIDUR_JAX_PROFILES",
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
)


def run(profiles_dir: str, out: str) -> pd.DataFrame:
    """Calibrate on a100 / h100 / both, evaluate every direction; write and return the table."""
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    cals = {}
    for devs in (("a100",), ("h100",), ("a100", "h100")):
        cals[devs] = roofline.calibrate(profiles_dir, devs)
        with open(os.path.join(out, f"calibration_{'+'.join(devs)}.json"), "w") as fh:
            json.dump(cals[devs], fh, indent=1, sort_keys=True)
    rows = []
    for src, dst in (("a100", "h100"), ("h100", "a100"), ("a100", "a100"), ("h100", "h100")):
        for r in roofline.evaluate(cals[(src,)], profiles_dir, dst):
            rows.append({"direction": f"{src}->{dst}", **r, "in_sample": src == dst})
    df = pd.DataFrame(rows)
    df.to_csv(os.path.join(out, "roofline_mape.csv"), index=False)
    flat = {f"mape_pct.{r.direction}.{r.op}": round(r.mape_pct, 2) for r in df.itertuples()}
    flat["wall_s"] = round(time.time() - t0, 1)
    with open(os.path.join(out, "roofline_eval.json"), "w") as fh:
        json.dump(flat, fh, indent=1)
    return df


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--profiles-dir", default=DEFAULT_PROFILES)
    args = p.parse_args(argv)
    if not os.path.isdir(args.profiles_dir):
        print(f"error: profiles dir not found: {args.profiles_dir}", file=sys.stderr)
        return 2
    df = run(args.profiles_dir, args.out)
    table = df.pivot(index="op", columns="direction", values="mape_pct").round(1)
    order = [c for c in ("a100->h100", "h100->a100", "a100->a100", "h100->h100") if c in table]
    print("roofline MAPE % per op (rows: every mlp.csv row / network row of the target GPU)")
    print(table[order].to_string())
    print(f"wrote {os.path.join(args.out, 'roofline_mape.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
