"""Predictor evaluation: held-out MAPE inside and beyond the profiled range, vs a forest.

``run_eval`` writes one row per (device, model, op, tp) with

* ``mape_in_range`` -- every 5th grid point (offset 0) held out, trained on the rest;
* ``mape_extrapolation`` -- trained on ``num_tokens <= 2048`` (token ops), ``batch <= 64
  and kv <= 2048`` (decode), ``chunk <= 2048 and kv <= 2048`` (prefill), ``bytes <= 2048
  tokens x 4096 x 2`` (all-reduce/send-recv), tested on every row beyond;
* ``rf_mape_in_range``, ``rf_mape_extrapolation`` -- a scikit-learn
  ``RandomForestRegressor`` on Vidur's features (``num_tokens``; ``kv_cache_size,
  prefill_chunk_size^2``; ``batch_size, kv_cache_size``) trained on the same rows in the
  same run. Vidur grid-searches ``n_estimators {250, 500, 750} x max_depth {8, 16, 32} x
  min_samples_split {2, 5, 10}`` with 10-fold CV; with ``forest_grid=True`` that search is
  run, otherwise the grid member ``(250, 32, 2)`` is used to keep the sweep short (a
  forest predicts a constant beyond its data whatever its hyper-parameters, so the
  extrapolation comparison does not depend on it).

MAPE is in percent. ``run_transfer_eval`` reports leave-one-model-out MAPE of the
shape-transfer token-op models and leave-one-TP-out MAPE of the attention transfer models.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from vidur_jax.predictors import api, datasets, hybrid, train

# Not ``from vidur_jax.predictors import transfer``: the package exports a ``transfer``
# function under that name, which shadows the submodule once the package is imported.
from vidur_jax.predictors.transfer import (
    REFERENCE_DEVICE,
    REFERENCE_MODEL,
    attention_transfer_jobs,
    reference_shape,
    specialize_attention,
)
from vidur_jax.profiles import loader

VIDUR_RF_GRID = {
    "n_estimators": [250, 500, 750],
    "max_depth": [8, 16, 32],
    "min_samples_split": [2, 5, 10],
}
EXTRAP_TOKENS = 2048
EXTRAP_BATCH = 64
EXTRAP_KV = 2048
NETWORK_EMBED = 4096


def mape(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute percentage error (%), Vidur's convention for y == 0 (0 or 100)."""
    pred, y = np.asarray(pred, float), np.asarray(y, float)
    err = np.where(y != 0, np.abs(pred - y) / np.where(y != 0, y, 1.0), (pred != 0).astype(float))
    return float(np.mean(err) * 100) if len(y) else float("nan")


def make_forest(grid: bool, n_rows: int):
    """Vidur-style forest: GridSearchCV over its grid (``grid=True``) or one grid member."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GridSearchCV

    if not grid:
        return RandomForestRegressor(
            n_estimators=250, max_depth=32, min_samples_split=2, n_jobs=-1, random_state=0
        )
    scorer = make_scorer(mape, greater_is_better=False)
    return GridSearchCV(
        RandomForestRegressor(random_state=0),
        VIDUR_RF_GRID,
        scoring=scorer,
        cv=10 if n_rows >= 10 else 2,
        n_jobs=-1,
    )


def _vidur_features(op: str, x: np.ndarray) -> np.ndarray:
    """Vidur's forest features from internal features ``(N, 3)``."""
    if op == "attn_prefill":
        return np.stack([x[:, 0], x[:, 1] ** 2], axis=1)
    if op == "attn_decode":
        return x[:, :2]
    return x[:, :1]


def _extrap_mask(op: str, x: np.ndarray) -> np.ndarray:
    """True for rows used for training in the extrapolation split."""
    if op == "attn_prefill":
        return (x[:, 0] <= EXTRAP_KV) & (x[:, 1] <= EXTRAP_TOKENS)
    if op == "attn_decode":
        return (x[:, 0] <= EXTRAP_BATCH) & (x[:, 1] <= EXTRAP_KV)
    if op in ("all_reduce", "send_recv"):
        return x[:, 0] <= EXTRAP_TOKENS * NETWORK_EMBED * 2
    return x[:, 0] <= EXTRAP_TOKENS


def _cases(
    profiles_dir: str, devices: list[str], models: list[str] | None, network_only: bool = False
) -> list[tuple[dict, train.FitJob]]:
    """Every (device, model, op, tp) dataset with a non-zero target (network tables only
    with ``network_only``)."""
    cases = []
    for device in devices:
        for model in loader.list_compute_models(profiles_dir, device):
            if network_only or (models is not None and model not in models):
                continue
            comp = loader.load_compute(profiles_dir, device, model)
            shape = loader.model_shape(comp)
            for tp in sorted(int(t) for t in comp["num_tensor_parallel_workers"].unique()):
                rows = loader.select_tp(comp, tp, model)
                for op in datasets.MLP_CSV_OPS:
                    y = rows[op].to_numpy(float)
                    if np.any(y > 0):
                        job = datasets.token_job(rows["num_tokens"].to_numpy(float), y)
                        cases.append(({"device": device, "model": model, "op": op, "tp": tp}, job))
            if os.path.isfile(loader.compute_path(profiles_dir, device, model, "attention")):
                att = loader.load_attention(profiles_dir, device, model)
                for tp in sorted(int(t) for t in att["num_tensor_parallel_workers"].unique()):
                    for kind in ("prefill", "decode"):
                        sub = att[
                            (att["num_tensor_parallel_workers"] == tp)
                            & (att["is_prefill"] == (kind == "prefill"))
                        ]
                        job = datasets.attention_job(
                            sub, kind, datasets.effective_heads(shape, tp, kind)
                        )
                        cases.append(
                            (
                                {"device": device, "model": model, "op": f"attn_{kind}", "tp": tp},
                                job,
                            )
                        )
        if models is None or network_only:
            for tp in (2, 4, 8):
                try:
                    net = api._network_for_tp(profiles_dir, device, tp, None)
                except Exception:
                    continue
                ar = loader.load_all_reduce(profiles_dir, net, tp)
                job = datasets.token_job(
                    ar["size"].to_numpy(float), ar["all_reduce"].to_numpy(float), network=True
                )
                cases.append(
                    (
                        {"device": device, "model": f"network:{net}", "op": "all_reduce", "tp": tp},
                        job,
                    )
                )
            net = f"{device}_pairwise_nvlink"
            sr = loader.load_send_recv(profiles_dir, net)
            job = datasets.token_job(
                sr["size"].to_numpy(float), sr["send_recv"].to_numpy(float), network=True
            )
            cases.append(
                ({"device": device, "model": f"network:{net}", "op": "send_recv", "tp": 1}, job)
            )
    return cases


def _subset(job: train.FitJob, mask: np.ndarray) -> train.FitJob:
    return dataclasses.replace(job, x=job.x[mask], y=job.y[mask])


def _predict(params: dict, x: np.ndarray) -> np.ndarray:
    """Predict from internal features (network jobs use bytes directly, scale 1)."""
    feats = np.zeros_like(x, dtype=np.float32)
    active = np.asarray(params["feat_scale"]) != 0
    feats[:, active] = x[:, active] / np.asarray(params["feat_scale"])[active]
    return np.asarray(hybrid.apply(params, feats))


def run_eval(
    profiles_dir: str,
    out_csv: str,
    devices: list[str] | None = None,
    models: list[str] | None = None,
    include_forest: bool = True,
    forest_grid: bool = False,
    log: Callable[[str], None] = print,
    network_only: bool = False,
) -> pd.DataFrame:
    """Held-out accuracy of our predictors (and Vidur's forest) on every profiled table.

    Args:
      profiles_dir: Vidur data root.
      out_csv: where to write the table (``predictor_eval.csv``).
      devices: default ``["a100", "h100"]``.
      models: restrict to these ``<org>/<model>`` names (network rows only when None).
      include_forest: also fit the forest baseline.
      forest_grid: run Vidur's full GridSearchCV for the forest (slow).
      network_only: only the network tables (all_reduce, send_recv).

    Returns:
      The table written to ``out_csv``.
    """
    cases = _cases(profiles_dir, devices or ["a100", "h100"], models, network_only)
    splits = {}
    for i, (_, job) in enumerate(cases):
        idx = np.arange(len(job.y))
        splits[(i, "in")] = (idx % 5 != 0, idx % 5 == 0)
        tr_mask = _extrap_mask(cases[i][0]["op"], job.x)
        splits[(i, "ex")] = (tr_mask, ~tr_mask)
    keys = [k for k, (trm, te) in splits.items() if trm.sum() >= 8 and te.sum() >= 1]
    log(f"fitting {len(keys)} predictors")
    fitted = dict(
        zip(
            keys,
            train.fit_jobs([_subset(cases[i][1], splits[(i, s)][0]) for i, s in keys]),
            strict=False,
        )
    )
    rows = []
    for i, (info, job) in enumerate(cases):
        row = dict(info, n_rows=len(job.y))
        for s, name in (("in", "in_range"), ("ex", "extrapolation")):
            trm, te = splits[(i, s)]
            if (i, s) not in fitted:
                row[f"mape_{name}"] = row[f"rf_mape_{name}"] = float("nan")
                continue
            row[f"mape_{name}"] = mape(_predict(fitted[(i, s)], job.x[te]), job.y[te])
            if include_forest:
                rf = make_forest(forest_grid, int(trm.sum()))
                rf.fit(_vidur_features(info["op"], job.x[trm]), job.y[trm])
                row[f"rf_mape_{name}"] = mape(
                    rf.predict(_vidur_features(info["op"], job.x[te])), job.y[te]
                )
        rows.append(row)
    df = pd.DataFrame(rows)
    _write_csv(df, out_csv)
    return df


def _write_csv(df: pd.DataFrame, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _per_layer_key(shape: dict) -> tuple:
    return (
        shape["num_q_heads"],
        shape["num_kv_heads"],
        shape["embedding_dim"],
        shape["mlp_hidden_dim"],
        shape["use_gated_mlp"],
    )


def run_transfer_eval(
    profiles_dir: str,
    out_csv: str,
    devices: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Leave-one-model-out (token ops) and leave-one-TP-out (attention) transfer MAPE.

    For a held-out model, every other model with a *different* per-layer shape is used
    for training (Llama-3-70B is not trained on Llama-2-70B, which has the same layer).

    Returns:
      Rows ``kind, device, held_out, op, mape`` (``kind``: ``model`` or ``tp``), also
      written to ``out_csv``.
    """
    jobs, infos, tests = [], [], []
    for device in devices or ["a100", "h100"]:
        frames = {}
        for model in loader.list_compute_models(profiles_dir, device):
            comp = loader.load_compute(profiles_dir, device, model)
            shape = loader.model_shape(comp)
            frames[model] = [
                (shape, tp, loader.select_tp(comp, tp, model))
                for tp in sorted(int(t) for t in comp["num_tensor_parallel_workers"].unique())
            ]
        for held in frames:
            key = _per_layer_key(frames[held][0][0])
            train_frames = [
                f for m, fs in frames.items() if _per_layer_key(fs[0][0]) != key for f in fs
            ]
            for op in datasets.MLP_CSV_OPS:
                test = (
                    datasets.shape_job(frames[held], op)
                    if any(np.any(r[op] > 0) for _, _, r in frames[held])
                    else None
                )
                if test is None:
                    continue
                jobs.append(datasets.shape_job(train_frames, op, row_stride=2))
                infos.append({"kind": "model", "device": device, "held_out": held, "op": op})
                tests.append(test)
    log(f"fitting {len(jobs)} transfer predictors")
    fitted = train.fit_jobs(jobs)
    rows = []
    for info, params, test in zip(infos, fitted, tests, strict=False):
        p = dict(params)
        p["feat_scale"] = np.ones(3, np.float32)
        p["feat_const"] = np.zeros(3, np.float32)
        pred = _predict(p, test.x)
        rows.append(dict(info, n_rows=len(test.y), mape=mape(pred, test.y)))
    att = loader.load_attention(profiles_dir, REFERENCE_DEVICE, REFERENCE_MODEL)
    rows += leave_one_tp_out(att).to_dict("records")
    df = pd.DataFrame(rows)
    _write_csv(df, out_csv)
    return df


def leave_one_tp_out(
    att: pd.DataFrame, tps: tuple[int, ...] = (1, 2, 4, 8), seed: int = 0
) -> pd.DataFrame:
    """Leave-one-TP-out MAPE of the attention transfer models.

    For each held-out TP the prefill and decode transfer models are fitted on the other
    TPs of ``att`` (the reference attention table) and predict the held-out rows from
    their user features through ``transfer.specialize_attention`` (the production path).

    Returns:
      Rows ``kind="tp", device, held_out ("tp<k>"), op, n_rows, mape``.
    """
    jobs, infos, tests = [], [], []
    for tp in tps:
        held = att[att["num_tensor_parallel_workers"] == tp]
        for op, job in attention_transfer_jobs(att, exclude_tp=tp).items():
            kind = "prefill" if op == "attn_prefill" else "decode"
            rows = held[held["is_prefill"] == (kind == "prefill")]
            jobs.append(job)
            infos.append(
                {"kind": "tp", "device": REFERENCE_DEVICE, "held_out": f"tp{tp}", "op": op}
            )
            tests.append((tp, datasets.attention_job(rows, kind, 0.0)))  # user features in dims 0-1
    shape = reference_shape(att)
    out = []
    for info, params, (tp, test) in zip(infos, train.fit_jobs(jobs, seed=seed), tests, strict=True):
        p = specialize_attention(params, info["op"], shape, tp, 1.0)
        pred = np.asarray(hybrid.apply(p, test.x.astype(np.float32)))
        out.append(dict(info, n_rows=len(test.y), mape=mape(pred, test.y)))
    return pd.DataFrame(out)


def run_task(cfg: dict, out_dir: str) -> None:
    """Hydra task ``predictor_eval`` (``python -m vidur_jax +experiment=predictor_eval``).

    Reads the top-level ``profiles_dir`` (default ``$VIDUR_JAX_PROFILES``) and the
    ``predictor_eval`` group (``devices``, ``models`` (null = every profiled model and the
    network tables), ``include_forest``, ``forest_grid``, ``transfer``); writes
    ``predictor_eval.csv`` (and ``predictor_transfer_eval.csv`` with ``transfer: true``)
    into ``out_dir`` and prints the per-op medians.

    Raises:
      ConfigError: ``profiles_dir`` null or missing.
    """
    from vidur_jax.errors import ConfigError

    profiles_dir = cfg.get("profiles_dir")
    if not profiles_dir:
        raise ConfigError(
            "predictor_eval needs Vidur profiles: profiles_dir is null; set VIDUR_JAX_PROFILES=DIR "
            "or pass profiles_dir=DIR (a folder holding profiling/)"
        )
    profiles_dir = os.path.abspath(os.path.expanduser(str(profiles_dir)))
    if not os.path.isdir(profiles_dir):
        raise ConfigError(f"profiles_dir does not exist: {profiles_dir}")
    opts = dict(cfg.get("predictor_eval") or {})
    unknown = sorted(set(opts) - {"devices", "models", "include_forest", "forest_grid", "transfer"})
    if unknown:
        raise ConfigError(
            f"unknown predictor_eval option '{unknown[0]}'; allowed: devices, models, include_forest, "
            "forest_grid, transfer"
        )
    devices = list(opts.get("devices") or ["a100", "h100"])
    models = opts.get("models")
    df = run_eval(
        profiles_dir,
        os.path.join(out_dir, "predictor_eval.csv"),
        devices,
        None if models is None else list(models),
        bool(opts.get("include_forest", True)),
        bool(opts.get("forest_grid", False)),
    )
    cols = [c for c in df.columns if "mape" in c]
    print(df.groupby("op")[cols].median().round(2).to_string())
    print("median over all rows:", df[cols].median().round(2).to_dict())
    if opts.get("transfer", False):
        t = run_transfer_eval(
            profiles_dir, os.path.join(out_dir, "predictor_transfer_eval.csv"), devices
        )
        print("transfer median MAPE:", round(float(t["mape"].median()), 2))
    print(f"wrote {os.path.join(out_dir, 'predictor_eval.csv')}")


def main() -> None:
    """``python -m vidur_jax.predictors.evaluate --profiles-dir DIR --out DIR [--transfer-only]``."""
    import argparse

    parser = argparse.ArgumentParser(description="Evaluate predictors vs Vidur's forest")
    parser.add_argument("--profiles-dir", required=True)
    parser.add_argument("--out", default="results")
    parser.add_argument("--devices", nargs="+", default=None)
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--no-forest", action="store_true")
    parser.add_argument("--forest-grid", action="store_true")
    parser.add_argument("--skip-transfer", action="store_true")
    parser.add_argument(
        "--token-mlp",
        type=int,
        choices=(0, 1),
        default=None,
        help="1/0: compute token ops with/without their MLP (default: datasets.TOKEN_MLP)",
    )
    parser.add_argument(
        "--network-mlp",
        type=int,
        choices=(0, 1),
        default=None,
        help="1/0: all_reduce, send_recv with/without their MLP (default: datasets.NETWORK_MLP)",
    )
    parser.add_argument(
        "--network-only", action="store_true", help="only the network tables (no models)"
    )
    parser.add_argument(
        "--transfer-only", action="store_true", help="only predictor_transfer_eval.csv"
    )
    args = parser.parse_args()
    if args.token_mlp is not None:
        datasets.TOKEN_MLP = bool(args.token_mlp)
    if args.network_mlp is not None:
        datasets.NETWORK_MLP = bool(args.network_mlp)
    if args.transfer_only:
        t = run_transfer_eval(
            args.profiles_dir, os.path.join(args.out, "predictor_transfer_eval.csv"), args.devices
        )
        print(t.groupby(["kind", "op"])["mape"].median().round(2).to_string())
        print(t[t["kind"] == "tp"].pivot(index="op", columns="held_out", values="mape").round(2))
        return
    df = run_eval(
        args.profiles_dir,
        os.path.join(args.out, "predictor_eval.csv"),
        args.devices,
        args.models,
        not args.no_forest,
        args.forest_grid,
        network_only=args.network_only,
    )
    cols = [c for c in df.columns if "mape" in c]
    print(df.groupby("op")[cols].median().round(2).to_string())
    print("median over all:", df[cols].median().round(2).to_dict())
    if not args.skip_transfer:
        t = run_transfer_eval(
            args.profiles_dir, os.path.join(args.out, "predictor_transfer_eval.csv"), args.devices
        )
        print(t.groupby(["kind", "op"])["mape"].median().round(2).to_string())
        print("transfer median:", round(float(t["mape"].median()), 2))


if __name__ == "__main__":
    main()
