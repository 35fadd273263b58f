"""Spread of the predictors over training seeds, per op and on Vidur's reference cases.

Usage::

    python experiments/predictor_seed_spread.py [--profiles-dir ../shared/data]
        [--cases ../shared/reference/cases] [--seeds 0 1 2 3 4] [--out experiments/results]
        [--token-mlp 0|1] [--network-mlp 0|1]
        [--kernel-scale-case CASE | --op-swap-case CASE]

Trains the A100 Llama-2-7B predictors of the reference cases (TP 1 and 2) once per base
seed (``train.fit_jobs(seed=...)``: only the MLP initializations change) and writes

* ``predictor_seed_spread.csv`` -- per (tp, op): over a grid of feature points inside the
  profiled range (token ops: every ``num_tokens`` 1..4096; decode: batch 1..128 x KV
  64..4096; prefill: KV 0..4096 x chunk 16..4096), the relative spread
  ``(max - min) / mean`` across seeds at each point, reported as its median, p99 and max;
* ``predictor_seed_metric_spread.csv`` -- per (case, metric): p50/p90 of TTFT, TBT, e2e
  simulated with each seed's predictors, and their spread ``(max - min) / mean``, next to
  Vidur's value and the shipped predictors' (and both signed relative errors).

``--token-mlp 0|1`` / ``--network-mlp 0|1`` train the compute token ops / all_reduce and
send_recv without or with their MLP (default: ``datasets.TOKEN_MLP``/``NETWORK_MLP``, off
in the shipped recipe); the file names get ``_token_mlp0`` / ``_network_mlp0`` for each
MLP that is off, so the unsuffixed files are the MLP recipe (token and network MLPs).
``--op-swap-case CASE`` instead simulates one case with seed 0's predictor in which one op
is taken from each other seed (``predictor_seed_op_swap.csv``: which op moves the case);
``--kernel-scale-case CASE`` simulates it with seed 0's kernel times scaled by ``1 + eps``
(``predictor_kernel_scale.csv``: how much the case moves under any small change).

The seed-0 predictors of the default (knots-only) recipe are the shipped ones (``seed=0``
is the build's default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fidelity_vs_vidur import load_case  # noqa: E402

from vidur_jax.metrics import atomic_write_csv  # noqa: E402
from vidur_jax.predictors import OPS, Predictor, datasets, train_predictors  # noqa: E402
from vidur_jax.sim.run import simulate_configs  # noqa: E402

MODEL = "meta-llama/Llama-2-7b-hf"
HERE = os.path.dirname(os.path.abspath(__file__))
CORE = [f"{m}_{q}" for m in ("ttft", "tbt", "e2e") for q in ("p50", "p90")]


def _grid(op: str) -> dict[str, np.ndarray]:
    if op == "attn_decode":
        b, kv = np.meshgrid(np.arange(1, 129), np.arange(64, 4097, 64), indexing="ij")
        return {"batch_size": b.ravel(), "kv_cache_size": kv.ravel()}
    if op == "attn_prefill":
        kv, c = np.meshgrid(np.arange(0, 4097, 64), np.arange(16, 4097, 16), indexing="ij")
        keep = kv + c <= 4096
        return {"kv_cache_size": kv[keep], "prefill_chunk_size": c[keep]}
    return {"num_tokens": np.arange(1, 4097)}


def _spread(values: np.ndarray) -> np.ndarray:
    """``(max - min) / mean`` over axis 0 (0 where every value is 0)."""
    mean = values.mean(axis=0)
    return np.where(
        mean > 0, (values.max(axis=0) - values.min(axis=0)) / np.where(mean > 0, mean, 1), 0
    )


def op_spread(preds: list[dict], tps: tuple[int, ...]) -> pd.DataFrame:
    """Per (tp, op) spread of predictions across seeds on the in-range grid."""
    rows = []
    for tp in tps:
        for op in OPS:
            grid = _grid(op)
            vals = np.stack([p[("a100", MODEL, tp)].predict(op, **grid) for p in preds])
            if not np.any(vals > 0):
                continue
            s = _spread(vals)
            rows.append(
                {
                    "tp": tp,
                    "op": op,
                    "points": s.size,
                    "median_spread_pct": 100 * float(np.median(s)),
                    "p99_spread_pct": 100 * float(np.percentile(s, 99)),
                    "max_spread_pct": 100 * float(s.max()),
                }
            )
    return pd.DataFrame(rows)


def metric_spread(preds: list[dict], cases_dir: str) -> pd.DataFrame:
    """Per (case, metric) simulated value for every seed and the spread across seeds.

    Each seed runs in its own call: configs that differ only in their predictor share
    one timing table in a vmapped call (tables are keyed by model, device and TP). Also
    Vidur's value (``vidur``), the shipped predictors' value (``shipped``) and the signed
    relative errors ``(ours - vidur) / vidur`` of seed 0 (``seed0_rel_err``) and of the
    shipped predictors (``shipped_rel_err``), simulated in the same run.
    """
    rows = []
    for name in sorted(os.listdir(cases_dir)):
        if not os.path.isfile(os.path.join(cases_dir, name, "case.json")):
            continue
        case, cfg, wl, ref = load_case(os.path.join(cases_dir, name))
        (shipped,) = simulate_configs([cfg], [wl])
        outs = [
            simulate_configs(
                [cfg],
                [wl],
                predictor_for=lambda c, p=p: p[(c.device, c.model, c.tensor_parallel_size)],
            )[0]
            for p in preds
        ]
        for m in CORE:
            vals = np.array([o.summary[m] for o in outs])
            row = {"case": case, "metric": m}
            row.update({f"seed{i}": float(v) for i, v in enumerate(vals)})
            row["spread_pct"] = 100 * float(_spread(vals[:, None])[0])
            metric, q = m.rsplit("_", 1)
            row["vidur"] = float(ref[metric][q])
            row["shipped"] = float(shipped.summary[m])
            row["seed0_rel_err"] = (row["seed0"] - row["vidur"]) / row["vidur"]
            row["shipped_rel_err"] = (row["shipped"] - row["vidur"]) / row["vidur"]
            rows.append(row)
        print(f"{case}: done", flush=True)
    return pd.DataFrame(rows)


#: Relative kernel-time scales of ``--kernel-scale-case``.
KERNEL_SCALES = (-2e-3, -1e-3, -5e-4, -2e-4, 0.0, 2e-4, 5e-4, 1e-3, 2e-3)


def kernel_scale(pred, cases_dir: str, case_name: str) -> pd.DataFrame:
    """One case simulated with every kernel time of ``pred`` scaled by ``1 + eps``.

    Rows ``case, eps, metric, value, vidur, rel_err`` for each eps of
    :data:`KERNEL_SCALES` and each p50/p90 of TTFT, TBT, e2e: how far a metric moves under
    a perturbation much smaller than any op's seed spread.
    """
    case, cfg, wl, ref = load_case(os.path.join(cases_dir, case_name))
    rows = []
    for eps in KERNEL_SCALES:
        params = {
            op: dict(p, out_scale=(np.asarray(p["out_scale"]) * (1 + eps)).astype(np.float32))
            for op, p in pred.params.items()
        }
        scaled = Predictor(params, pred.meta)
        (out,) = simulate_configs([cfg], [wl], predictor_for=lambda c, p=scaled: p)
        for m in CORE:
            metric, q = m.rsplit("_", 1)
            v, vidur = float(out.summary[m]), float(ref[metric][q])
            rows.append(
                {
                    "case": case,
                    "eps": eps,
                    "metric": m,
                    "value": v,
                    "vidur": vidur,
                    "rel_err": (v - vidur) / vidur,
                }
            )
    return pd.DataFrame(rows)


def op_swap(preds: list, cases_dir: str, case_name: str) -> pd.DataFrame:
    """Which op's seed moves a case: seed 0's predictor with one op from seed ``s``.

    Args:
      preds: ``[Predictor]``, one per seed, of the case's (model, device, TP); ``preds[0]``
        is the base.
    Returns:
      Rows ``case, op, metric, seed<i>..., spread_pct`` (``seed0`` is the base itself).
    """
    case, cfg, wl, _ = load_case(os.path.join(cases_dir, case_name))

    def sim(pred):
        (out,) = simulate_configs([cfg], [wl], predictor_for=lambda c, p=pred: p)
        return out.summary

    base = sim(preds[0])
    rows = []
    for op in OPS:
        if not np.any(np.asarray(preds[0].params[op]["out_scale"]) > 0):
            continue
        outs = [base] + [
            sim(Predictor({**preds[0].params, op: p.params[op]}, preds[0].meta)) for p in preds[1:]
        ]
        for m in CORE:
            vals = np.array([o[m] for o in outs])
            row = {"case": case, "op": op, "metric": m}
            row.update({f"seed{i}": float(v) for i, v in enumerate(vals)})
            row["spread_pct"] = 100 * float(_spread(vals[:, None])[0])
            rows.append(row)
        print(f"{op}: done", flush=True)
    return pd.DataFrame(rows)


def _apply_mlp_switches(token_mlp: int | None, network_mlp: int | None) -> str:
    """Set ``datasets.TOKEN_MLP``/``NETWORK_MLP``; the file suffix naming the MLPs that
    are off (``""``: the MLP recipe; the shipped knots-only recipe writes
    ``_token_mlp0_network_mlp0``), whatever the defaults are."""
    if token_mlp is not None:
        datasets.TOKEN_MLP = bool(token_mlp)
    if network_mlp is not None:
        datasets.NETWORK_MLP = bool(network_mlp)
    return ("" if datasets.TOKEN_MLP else "_token_mlp0") + (
        "" if datasets.NETWORK_MLP else "_network_mlp0"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES", "../shared/data")
    )
    ap.add_argument(
        "--cases", default=os.path.join(HERE, "..", "..", "shared", "reference", "cases")
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--skip-cases", action="store_true", help="only the per-op spread")
    ap.add_argument(
        "--token-mlp",
        type=int,
        choices=(0, 1),
        default=None,
        help="1/0: compute token ops with/without their MLP (default: datasets.TOKEN_MLP)",
    )
    ap.add_argument(
        "--network-mlp",
        type=int,
        choices=(0, 1),
        default=None,
        help="1/0: all_reduce, send_recv with/without their MLP (default: datasets.NETWORK_MLP)",
    )
    ap.add_argument(
        "--kernel-scale-case",
        default=None,
        help="instead: simulate this case with seed 0's kernel times scaled by 1 + eps "
        "(KERNEL_SCALES); writes predictor_kernel_scale<suffix>.csv",
    )
    ap.add_argument(
        "--op-swap-case",
        default=None,
        help="instead: simulate this case with seed 0's predictor, one op taken from each "
        "other seed; writes predictor_seed_op_swap<suffix>.csv",
    )
    args = ap.parse_args(argv)
    suffix = _apply_mlp_switches(args.token_mlp, args.network_mlp)
    if args.kernel_scale_case or args.op_swap_case:
        name = args.kernel_scale_case or args.op_swap_case
        with open(os.path.join(args.cases, name, "case.json")) as f:
            tp = int(json.load(f)["tensor_parallel_size"])
        seeds = args.seeds[:1] if args.kernel_scale_case else args.seeds
        preds = [
            train_predictors(args.profiles_dir, [("a100", MODEL)], (tp,), seed=s)[
                ("a100", MODEL, tp)
            ]
            for s in seeds
        ]
        if args.kernel_scale_case:
            ks = kernel_scale(preds[0], args.cases, name)
            atomic_write_csv(ks, os.path.join(args.out, f"predictor_kernel_scale{suffix}.csv"))
            print(ks.pivot(index="eps", columns="metric", values="rel_err").round(4).to_string())
        else:
            sw = op_swap(preds, args.cases, name)
            atomic_write_csv(sw, os.path.join(args.out, f"predictor_seed_op_swap{suffix}.csv"))
            print(sw.round(4).to_string(index=False))
        return 0
    tps = (1, 2)
    t0 = time.time()
    preds = [
        train_predictors(args.profiles_dir, [("a100", MODEL)], tps, seed=s) for s in args.seeds
    ]
    print(f"trained {len(preds)} seeds in {time.time() - t0:.0f} s", flush=True)
    ops = op_spread(preds, tps)
    atomic_write_csv(ops, os.path.join(args.out, f"predictor_seed_spread{suffix}.csv"))
    print(ops.round(3).to_string(index=False))
    if not args.skip_cases:
        met = metric_spread(preds, args.cases)
        atomic_write_csv(met, os.path.join(args.out, f"predictor_seed_metric_spread{suffix}.csv"))
        print(met.round(4).to_string(index=False))
        print(f"max spread over reference-case p50/p90: {met.spread_pct.max():.3f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
