"""Fidelity of vidur_jax against Vidur's own outputs on fixed cases.

Usage::

    python experiments/fidelity_vs_vidur.py --cases ../shared/reference/cases --out fidelity.csv

Every sub-directory of ``--cases`` holding ``case.json`` + ``requests.csv`` +
``vidur_summary.json`` is replayed through vidur_jax with the case's deployment and the
exact request list, and compared metric by metric. Writes one row per case x metric
(``case, metric, vidur, vidur_jax, rel_err``) and prints the table. ``--profiles-dir``
trains predictors from raw profiles instead of using the shipped parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pandas as pd

from vidur_jax.metrics import atomic_write_csv
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs
from vidur_jax.workload import load_trace

METRICS = ("ttft", "tbt", "e2e", "norm_e2e", "sched_delay")
QUANTILES = ("p50", "p90", "p99")
CASE_KEYS = {f.name for f in DeploymentConfig.__dataclass_fields__.values()}


def load_case(case_dir: str) -> tuple[str, DeploymentConfig, object, dict]:
    """(name, deployment, workload, vidur summary) of one reference case directory."""
    with open(os.path.join(case_dir, "case.json")) as f:
        case = json.load(f)
    cfg = DeploymentConfig(**{k: v for k, v in case.items() if k in CASE_KEYS})
    wl = load_trace(os.path.join(case_dir, case.get("requests_file", "requests.csv")), max_tokens=cfg.max_tokens)
    with open(os.path.join(case_dir, "vidur_summary.json")) as f:
        ref = json.load(f)
    return case.get("name", os.path.basename(case_dir)), cfg, wl, ref


def compare(name: str, summary: dict, ref: dict) -> list[dict]:
    """Rows ``case, metric, vidur, vidur_jax, rel_err`` for one case."""
    rows = []
    for m in METRICS:
        for q in QUANTILES:
            v = ref.get(m, {}).get(q)
            if v is None:
                continue
            ours = summary[f"{m}_{q}"]
            rows.append({"case": name, "metric": f"{m}_{q}", "vidur": v, "vidur_jax": ours,
                         "rel_err": (ours - v) / v if v else float("nan")})
    for key in ("num_restarts", "makespan_s", "throughput_rps"):
        if key in ref:
            v, ours = ref[key], summary[key]
            rows.append({"case": name, "metric": key, "vidur": v, "vidur_jax": ours,
                         "rel_err": (ours - v) / v if v else (0.0 if ours == v else float("inf"))})
    return rows


def forest_predictor_for(profiles_dir: str):
    """Config -> Vidur-style forest predictor (cached per bundle); needs scikit-learn."""
    import functools

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from vidur_forest import ForestPredictor

    @functools.lru_cache(maxsize=None)
    def load(model, device, tp, network):
        return ForestPredictor(profiles_dir, model, device, tp, network)

    return lambda c: load(c.model, c.device, c.tensor_parallel_size, c.network_device)


def run(cases_dir: str, profiles_dir: str | None = None, predictor: str = "hybrid") -> pd.DataFrame:
    """Run every case under ``cases_dir``; return the comparison table.

    Args:
        cases_dir: directory of case sub-directories.
        profiles_dir: raw profiles (train the hybrid predictors from them; required for
            ``predictor="forest"``). None = the predictors shipped in the package.
        predictor: ``"hybrid"`` (vidur_jax's MLP + polynomial) or ``"forest"`` (Vidur-style
            random forests, to separate simulation from predictor differences).
    """
    if predictor == "forest" and not profiles_dir:
        raise SystemExit("error: --predictor forest needs --profiles-dir")
    predictor_for = forest_predictor_for(profiles_dir) if predictor == "forest" else None
    case_dirs = sorted(
        os.path.join(cases_dir, d) for d in os.listdir(cases_dir)
        if os.path.isfile(os.path.join(cases_dir, d, "case.json"))
    )
    if not case_dirs:
        raise SystemExit(f"error: no case directories (with case.json) under {cases_dir}")
    rows = []
    for d in case_dirs:
        name, cfg, wl, ref = load_case(d)
        t0 = time.perf_counter()
        (out,) = simulate_configs([cfg], [wl], predictor_for=predictor_for, profiles_dir=profiles_dir)
        wall = time.perf_counter() - t0
        rows.extend(compare(name, out.summary, ref))
        rows.append({"case": name, "metric": "wall_s", "vidur": ref.get("vidur_wall_s", float("nan")),
                     "vidur_jax": wall, "rel_err": float("nan")})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", required=True, help="directory of case sub-directories")
    ap.add_argument("--out", required=True, help="output CSV")
    ap.add_argument("--profiles-dir", default=None, help="train predictors from these profiles")
    ap.add_argument("--predictor", choices=("hybrid", "forest"), default="hybrid",
                    help="hybrid = vidur_jax's predictors; forest = Vidur-style forests (diagnosis)")
    args = ap.parse_args(argv)
    df = run(args.cases, args.profiles_dir, args.predictor)
    atomic_write_csv(df, args.out)
    with pd.option_context("display.max_rows", None, "display.width", 140):
        print(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    core = df[df.metric.str.match(r"(ttft|tbt|e2e)_p(50|90)$")]
    print(f"\nmax |rel_err| over p50/p90 of ttft, tbt, e2e: {core.rel_err.abs().max():.3%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
