"""The side-by-side gaps to Vidur, op by op, with the profile rows behind each op.

Usage::

    python experiments/fidelity_side_by_side_ops.py --cases C [--names qps2 qps5]
        [--profiles-dir ../shared/data] [--out-dir experiments/results]

``C`` holds the side-by-side cases (``case.json``, ``requests.csv`` and Vidur's
``vidur_summary.json``, as ``../shared/tools/vidur_reference/speed_side_by_side.py``
writes them under ``W/qps2/n2000`` and ``W/qps5/n2000``). Writes

* ``fidelity_side_by_side_ops.csv`` -- ``case, swapped, metric, vidur, vidur_jax, rel_err,
  gap``: p50/p90 of TTFT, TBT and e2e with the shipped predictors (``none``) and with one
  op group at a time answered by a Vidur-style forest (``vidur_forest.py``): decode
  attention, prefill attention, both, and the nine token ops with the KV-cache save;
  ``gap`` marks the metrics more than 3% from Vidur with the shipped predictors. A gap
  that closes when a group is swapped is that group's disagreement between the two
  predictors.
* ``fidelity_side_by_side_rows.csv`` -- ``case, op, evidence, bucket, rows, weight,
  profile_ms, hybrid_ms, forest_ms, hybrid_mape, forest_mape``: for each attention op,
  where the run queries it and what the profile says there:

  - ``queries``: the mean prediction of each predictor over the points the run queries,
    by batch-size bucket (decode) or chunk bucket (prefill); ``weight`` is the bucket's
    share of the run's iterations with decodes (prefill tokens), from the shipped run's
    batch log, ``rows`` the query points. Decode KV lengths are those of the workload's decode tokens rounded up to 64
    (the simulator asks at the batch's mean KV; the per-token lengths span the same
    range), prefill KV the multiples of the chunk below each prompt. No profile row lies
    at most of these points (``profile_ms`` empty).
  - ``profiled rows``: the profile's rows in the same bucket and range (TP of the case),
    their mean time and each predictor's mean and MAPE on them (in sample).
  - ``held-out length``: every interior profiled KV length (decode) or chunk size
    (prefill) with enough rows in range held out at a time, both predictors trained on
    the other rows: which one follows the profile *between* profiled lengths, where the
    run's queries fall.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fidelity_vs_vidur as fid  # noqa: E402
from fidelity_op_swap import CORE, Swapped  # noqa: E402
from vidur_forest import TOKEN_OPS, ForestPredictor  # noqa: E402

from vidur_jax import predictors  # noqa: E402
from vidur_jax.metrics import atomic_write_csv  # noqa: E402
from vidur_jax.predictors import datasets, evaluate, train  # noqa: E402
from vidur_jax.profiles import loader  # noqa: E402
from vidur_jax.sim.run import simulate_configs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GAP = 0.03
SWAPS: dict[str, tuple[str, ...]] = {
    "none": (),
    "attn_decode": ("attn_decode",),
    "attn_prefill": ("attn_prefill",),
    "both attention ops": ("attn_decode", "attn_prefill"),
    "token ops": (*TOKEN_OPS, "attn_kv_cache_save"),
}
DECODE_BUCKETS = ((1, 1), (2, 4), (5, 16), (17, 64), (65, 128))
CHUNK_BUCKETS = ((1, 128), (129, 256), (257, 480), (481, 512), (513, 4096))
#: Held-out lengths need this many rows in range.
MIN_ROWS = 5
TRACE_CAPACITY = 400_000


def swap_rows(name: str, cfg, wl, ref, hybrid, forest) -> tuple[list[dict], dict]:
    """Every swap of one case (rows of ``fidelity_side_by_side_ops.csv``) and the shipped
    run's batch log."""
    rows, log = [], None
    for label, ops in SWAPS.items():
        pred = Swapped(hybrid, forest, ops)
        (out,) = simulate_configs(
            [cfg],
            [wl],
            predictor_for=lambda c, p=pred: p,
            trace_capacity=TRACE_CAPACITY if label == "none" else 0,
        )
        if label == "none":
            log = {k: np.asarray(v) for k, v in out.batch_log.items()}
            if bool(log.get("truncated", False)):
                raise SystemExit(f"error: batch log of {name} truncated; raise TRACE_CAPACITY")
        rows += [
            dict(r, swapped=label)
            for r in fid.compare(name, out.summary, ref)
            if r["metric"] in CORE
        ]
        print(name, label, flush=True)
    return rows, log


def per_iteration(log: dict, field: str) -> np.ndarray:
    """``field`` per iteration of every logged batch that has some (a fused run of ``k``
    iterations is logged once with its tokens summed: ``k`` entries of ``tokens / k``)."""
    k, v = log["iters"], log[field]
    m = v > 0
    return np.repeat(np.rint(v[m] / k[m]), k[m])


def _mape(pred: np.ndarray, y: np.ndarray) -> float:
    return evaluate.mape(pred, y) if len(y) else float("nan")


def _evidence(case, op, kind, bucket, n, weight, y, h, f, hm=None, fm=None) -> dict:
    return {
        "case": case,
        "op": op,
        "evidence": kind,
        "bucket": bucket,
        "rows": int(n),
        "weight": weight,
        "profile_ms": float(np.mean(y)) if y is not None and len(y) else float("nan"),
        "hybrid_ms": float(np.mean(h)) if len(h) else float("nan"),
        "forest_ms": float(np.mean(f)) if len(f) else float("nan"),
        "hybrid_mape": hm if hm is not None else (_mape(h, y) if y is not None else float("nan")),
        "forest_mape": fm if fm is not None else (_mape(f, y) if y is not None else float("nan")),
    }


def held_out_lengths(job: train.FitJob, op: str, col: int, keep: np.ndarray) -> list[tuple]:
    """``(length, rows, hybrid_mape, forest_mape, hybrid_mean, forest_mean, profile_mean)``
    for every interior distinct value of feature ``col`` with >= MIN_ROWS rows in ``keep``:
    all rows of that value held out, both predictors trained on every other row."""
    vals = np.unique(job.x[:, col])
    todo = []
    for v in vals[1:-1]:
        test = (job.x[:, col] == v) & keep
        if test.sum() >= MIN_ROWS:
            todo.append((v, job.x[:, col] != v, test))
    fits = train.fit_jobs([evaluate._subset(job, m) for _, m, _ in todo])
    out = []
    for (v, mask, test), params in zip(todo, fits, strict=True):
        x, y = job.x[test], job.y[test]
        ph = evaluate._predict(params, x)
        rf = evaluate.make_forest(False, int(mask.sum()))
        rf.fit(evaluate._vidur_features(op, job.x[mask]), job.y[mask])
        pf = rf.predict(evaluate._vidur_features(op, x))
        out.append((v, len(y), _mape(ph, y), _mape(pf, y), ph.mean(), pf.mean(), y.mean()))
    return out


def _features(op: str, q: np.ndarray, kv: np.ndarray) -> dict:
    """Predictor features of ``op`` at query sizes ``q`` (batch or chunk) and KV ``kv``."""
    if op == "attn_decode":
        return {"batch_size": q, "kv_cache_size": kv}
    return {"kv_cache_size": kv, "prefill_chunk_size": q}


def op_evidence(
    name: str,
    op: str,
    buckets: tuple[tuple[int, int], ...],
    q_log: np.ndarray,
    kv_q: np.ndarray,
    kv_w: np.ndarray,
    profile: tuple[np.ndarray, np.ndarray, np.ndarray],
    job: train.FitJob,
    keep: np.ndarray,
    preds: tuple,
) -> list[dict]:
    """``queries`` and ``profiled rows`` per bucket, then ``held-out length`` rows.

    Args:
      q_log: ``(I,)`` batch size (decode) or chunk (prefill) of every iteration that has one.
      kv_q, kv_w: query KV lengths and their weights.
      profile: the profile rows' ``(q, kv, ms)`` (TP of the case).
      job: the op's fit job (held-out lengths along its feature 1: KV for decode, chunk
        for prefill), restricted to ``keep`` rows when scoring.
      preds: ``(hybrid, forest)`` predictors.
    """
    kind = "batch" if op == "attn_decode" else "chunk"
    rq, rkv, ry = profile
    in_range = rkv <= kv_q.max()
    rows = []
    for lo, hi in buckets:
        label, sel = f"{kind} {lo}-{hi}", (q_log >= lo) & (q_log <= hi)
        qs, qw = np.unique(q_log[sel], return_counts=True)
        if len(qs):
            qq, kk = np.meshgrid(qs, kv_q, indexing="ij")
            w = np.outer(qw, kv_w).ravel()
            h, f = (p.predict(op, **_features(op, qq.ravel(), kk.ravel())) for p in preds)
            mean_h, mean_f = [np.average(h, weights=w)], [np.average(f, weights=w)]
            rows.append(
                _evidence(name, op, "queries", label, qq.size, sel.mean(), None, mean_h, mean_f)
            )
        m = (rq >= lo) & (rq <= hi) & in_range
        h, f = (p.predict(op, **_features(op, rq[m], rkv[m])) for p in preds)
        rows.append(_evidence(name, op, "profiled rows", label, m.sum(), sel.mean(), ry[m], h, f))
    held = "kv" if op == "attn_decode" else "chunk"
    for v, n, hm, fm, hmean, fmean, ymean in held_out_lengths(job, op, 1, keep):
        rows.append(
            _evidence(
                name, op, "held-out length", f"{held} {int(v)}", n, float("nan"),
                [ymean], [hmean], [fmean], hm, fm,
            )
        )  # fmt: skip
    return rows


def decode_evidence(name, cfg, wl, log, hybrid, forest, profiles_dir) -> list[dict]:
    """Rows for decode attention (see the module doc)."""
    p = np.asarray(wl.num_prefill)[np.asarray(wl.mask)]
    d = np.asarray(wl.num_decode)[np.asarray(wl.mask)]
    kv = np.concatenate([np.arange(a, a + b) for a, b in zip(p, d, strict=True)])
    kv_q, kv_w = np.unique(np.ceil(np.maximum(kv, 1) / 64) * 64, return_counts=True)
    b_log = per_iteration(log, "decode_tokens")
    att = loader.load_attention(profiles_dir, cfg.device, cfg.model)
    tp = cfg.tensor_parallel_size
    dec = att[(att["num_tensor_parallel_workers"] == tp) & ~att["is_prefill"]]
    profile = tuple(dec[c].to_numpy(float) for c in ("batch_size", "kv_cache_size", "attn_decode"))
    shape = loader.model_shape(loader.load_compute(profiles_dir, cfg.device, cfg.model))
    job = datasets.attention_job(dec, "decode", datasets.effective_heads(shape, tp, "decode"))
    keep = (job.x[:, 0] <= b_log.max()) & (job.x[:, 1] <= kv_q.max())
    return op_evidence(
        name, "attn_decode", DECODE_BUCKETS, b_log, kv_q, kv_w, profile, job, keep,
        (hybrid, forest),
    )  # fmt: skip


def prefill_evidence(name, cfg, wl, log, hybrid, forest, profiles_dir) -> list[dict]:
    """Rows for prefill attention (see the module doc)."""
    p = np.asarray(wl.num_prefill)[np.asarray(wl.mask)]
    c_log = per_iteration(log, "prefill_tokens")
    chunk = int(cfg.chunk_size or c_log.max())
    kv = np.concatenate([np.arange(0, a, chunk) for a in p])
    kv_q, kv_w = np.unique(np.ceil(kv / 64) * 64, return_counts=True)
    att = loader.load_attention(profiles_dir, cfg.device, cfg.model)
    tp = cfg.tensor_parallel_size
    pre = att[(att["num_tensor_parallel_workers"] == tp) & att["is_prefill"]]
    cols = ("prefill_chunk_size", "kv_cache_size", "attn_prefill")
    profile = tuple(pre[c].to_numpy(float) for c in cols)
    shape = loader.model_shape(loader.load_compute(profiles_dir, cfg.device, cfg.model))
    job = datasets.attention_job(pre, "prefill", datasets.effective_heads(shape, tp, "prefill"))
    keep = (job.x[:, 1] <= 2 * chunk) & (job.x[:, 0] <= kv_q.max())
    return op_evidence(
        name, "attn_prefill", CHUNK_BUCKETS, c_log, kv_q, kv_w, profile, job, keep,
        (hybrid, forest),
    )  # fmt: skip


def run(cases_dir: str, names: list[str], profiles_dir: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables (see the module doc)."""
    swaps, evidence = [], []
    for n in names:
        name, cfg, wl, ref = fid.load_case(os.path.join(cases_dir, n))
        tp = cfg.tensor_parallel_size
        forest = ForestPredictor(profiles_dir, cfg.model, cfg.device, tp, cfg.network_device)
        hybrid = predictors.load(cfg.model, cfg.device, tp)
        rows, log = swap_rows(name, cfg, wl, ref, hybrid, forest)
        swaps += rows
        evidence += decode_evidence(name, cfg, wl, log, hybrid, forest, profiles_dir)
        evidence += prefill_evidence(name, cfg, wl, log, hybrid, forest, profiles_dir)
    df = pd.DataFrame(swaps)[["case", "swapped", "metric", "vidur", "vidur_jax", "rel_err"]]
    base = df[df["swapped"] == "none"].set_index(["case", "metric"])["rel_err"]
    df["gap"] = [abs(base[(c, m)]) > GAP for c, m in zip(df["case"], df["metric"], strict=True)]
    return df, pd.DataFrame(evidence)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", required=True)
    ap.add_argument("--names", nargs="+", default=["qps2", "qps5"])
    ap.add_argument(
        "--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES", "../shared/data")
    )
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    swaps, evidence = run(args.cases, args.names, args.profiles_dir)
    atomic_write_csv(swaps, os.path.join(args.out_dir, "fidelity_side_by_side_ops.csv"))
    atomic_write_csv(evidence, os.path.join(args.out_dir, "fidelity_side_by_side_rows.csv"))
    table = swaps.pivot_table(
        index=["case", "swapped"], columns="metric", values="rel_err", sort=False
    )
    print((table[CORE] * 100).round(1).to_string())
    pd.set_option("display.width", 200)
    print(evidence.round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
