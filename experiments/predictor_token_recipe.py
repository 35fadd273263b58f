"""1-feature recipes (token and network ops) on held-out profile rows, every split offset.

Usage::

    python experiments/predictor_token_recipe.py [--profiles-dir ../shared/data]
        [--offsets 0 1 2 3 4] [--out experiments/results/predictor_token_recipe.csv]

For the nine compute token ops of A100 Llama-2-7B (TP 1/2/4/8) and every network table
(all_reduce, send_recv; A100 and H100), holds out every 5th row with offset ``k``
(``predictors.evaluate`` uses offset 0), trains on the rest, and writes the held-out
MAPE (%) of

* ``mlp_seed0`` -- polynomial + MLP correction + knots, base seed 0: the MLP recipe
  (``datasets.TOKEN_MLP`` / ``NETWORK_MLP`` True); ``mlp_seed_min``, ``_max``, ``_mean``
  over the base seeds in ``--seeds``;
* ``knots`` -- polynomial + linear knots, no MLP (no seed);
* ``steps`` -- polynomial + knots with wave-quantization steps where 5-fold
  cross-validation on the training rows prefers them to linear knots
  (``train.fit_step_knots``, tile ``train.STEP_TILE``, threshold ``train.STEP_THRESHOLD``;
  compute token ops only, network tables keep linear knots): the shipped recipe;
  ``steps_on`` = 1 where the table kept the steps; ``tile<T>`` / ``mid`` -- the steps
  forced on with tile ``T`` (16, 32, 64, 128) or at the midpoint, threshold
  ``STEP_THRESHOLD`` (no cross-validation), the alternatives measured;
* ``smooth`` -- polynomial + knots whose values minimize the squared distance to the
  knot targets (count-weighted) plus ``lam`` x the squared second differences, ``lam``
  from :data:`LAMS` by 5-fold cross-validation on the training rows (``lam = 0`` is
  ``knots``); ``smooth_lam`` is the chosen value;
* ``forest`` -- ``evaluate.make_forest`` on Vidur's feature, as in ``predictor_eval.csv``;

and, for ``knots``, ``steps`` and ``forest``, ``*_bias`` = sum of held-out predictions over the sum of
held-out times, minus 1 (%; what a simulation that adds kernel times sees), and
``*_step``: the part of the MAPE from held-out rows at a step (their two training
neighbours' times differ by more than 10%; ``n_step`` rows), i.e. the sum of their
absolute relative errors over all held-out rows (%).

``--table`` prints the markdown tables of docs/fidelity.md from the CSV.

Every recipe sees the same rows; the held-out rows of offset ``k`` are the same for all.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import pandas as pd
import scipy.sparse as sparse
from scipy.sparse.linalg import spsolve

from vidur_jax.metrics import atomic_write_csv
from vidur_jax.predictors import evaluate, hybrid, train

MODEL = "meta-llama/Llama-2-7b-hf"
HERE = os.path.dirname(os.path.abspath(__file__))
#: Smoothing candidates (0 = interpolate the knot targets exactly).
LAMS: tuple[float, ...] = (0.0, *(float(10.0 ** (k / 2)) for k in range(-16, 1)))


def tables(profiles_dir: str) -> list[tuple[dict, train.FitJob]]:
    """A100 Llama-2-7B compute token ops and every network table, as ``(info, job)``."""
    comp = evaluate._cases(profiles_dir, ["a100"], [MODEL])
    comp = [c for c in comp if c[0]["op"] not in ("attn_prefill", "attn_decode")]
    return comp + evaluate._cases(profiles_dir, ["a100", "h100"], None, network_only=True)


def knot_targets(u0: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(knot_u (k,), target (k,), count (k,))`` as ``train.fit_knots`` groups them."""
    uniq, inv = np.unique(u0, return_inverse=True)
    if len(uniq) > hybrid.NUM_KNOTS:
        inv = train.merge_closest(uniq, np.bincount(inv), hybrid.NUM_KNOTS)[inv]
    cnt = np.bincount(inv).astype(np.float64)
    ku = np.bincount(inv, weights=u0) / cnt
    return ku, np.log(np.bincount(inv, weights=np.exp(r)) / cnt), cnt


def smooth_values(ku: np.ndarray, t: np.ndarray, w: np.ndarray, lam: float) -> np.ndarray:
    """Knot values minimizing ``sum w (g - t)^2 + lam |D2 g|^2`` (``t`` if ``lam == 0``)."""
    if lam == 0.0 or len(ku) < 3:
        return t
    d = train.second_differences(ku)
    m = sparse.diags(w) + lam * (d.T @ d)
    return np.asarray(spsolve(m.tocsc(), w * t))


def fit_smooth(u0: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Smoothed knots with ``lam`` by 5-fold CV (fold = row index mod 5; the held-out rows'
    sizes are not knots, as at evaluation). Returns ``(knot_u, knot_r, lam)`` padded."""
    idx = np.arange(len(r))
    best = (np.inf, 0.0)
    for lam in LAMS:
        errs = []
        for fold in range(5):
            held = idx % 5 == fold
            ku, t, w = knot_targets(u0[~held], r[~held])
            pred = np.interp(u0[held], ku, smooth_values(ku, t, w, lam))
            errs.append(np.abs(np.expm1(pred - r[held])))
        score = float(np.mean(np.concatenate(errs)))
        if score < best[0] - 1e-12:
            best = (score, lam)
    ku, t, w = knot_targets(u0, r)
    g = smooth_values(ku, t, w, best[1])
    pad = hybrid.NUM_KNOTS - len(ku)
    knot_u = np.concatenate([ku, ku[-1] + 1.0 + np.arange(pad)])
    knot_r = np.concatenate([g, np.full(pad, g[-1])])
    return knot_u.astype(np.float32), knot_r.astype(np.float32), best[1]


def step_rows(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """``(M,)`` True where a test size's two training neighbours differ by more than 10%."""
    order = np.argsort(x_train)
    xs, ys = x_train[order], y_train[order]
    j = np.clip(np.searchsorted(xs, x_test), 1, len(xs) - 1)
    return np.abs(np.log(ys[j] / ys[j - 1])) > np.log(1.1)


def measure(profiles_dir: str, offsets: list[int], seeds: list[int]) -> pd.DataFrame:
    """One row per (table, offset) with every recipe's held-out MAPE (see module doc)."""
    todo = []
    for info, job in tables(profiles_dir):
        idx = np.arange(len(job.y))
        for k in offsets:
            todo.append((dict(info, offset=k), job, idx % 5 != k))
    subs = [evaluate._subset(job, m) for _, job, m in todo]
    mlp_fits = [
        train.fit_jobs([dataclasses.replace(j, mlp=True) for j in subs], seed=s) for s in seeds
    ]
    knot_fits = train.fit_jobs([dataclasses.replace(j, mlp=False, steps=False) for j in subs])
    step_fits = train.fit_jobs(
        [
            dataclasses.replace(j, mlp=False, steps=not info["model"].startswith("network:"))
            for (info, _, _), j in zip(todo, subs, strict=True)
        ]
    )
    rows = []
    for i, ((info, job, mask), kfit) in enumerate(zip(todo, knot_fits, strict=True)):
        te = ~mask
        x, y = job.x[te], job.y[te]
        row = dict(info, n_train=int(mask.sum()), n_test=int(te.sum()))
        seed_mapes = [evaluate.mape(evaluate._predict(f[i], x), y) for f in mlp_fits]
        row["mlp_seed0"] = seed_mapes[0] if seeds else np.nan
        row["mlp_seed_min"] = min(seed_mapes) if seeds else np.nan
        row["mlp_seed_max"] = max(seed_mapes) if seeds else np.nan
        row["mlp_seed_mean"] = float(np.mean(seed_mapes)) if seeds else np.nan
        pk = evaluate._predict(kfit, x)
        row["knots"] = evaluate.mape(pk, y)
        ps = evaluate._predict(step_fits[i], x)
        row["steps"] = evaluate.mape(ps, y)
        row["steps_on"] = int(not np.array_equal(step_fits[i]["knot_u"], kfit["knot_u"]))
        prep = train._prepare(evaluate._subset(job, mask))
        u0, r0 = prep.u0_all.astype(np.float64), prep.r_all.astype(np.float64)
        for rule in STEP_VARIANTS:
            forced = ((rule, train.STEP_THRESHOLD),)
            vfit = dict(kfit)
            vfit["knot_u"], vfit["knot_r"], _, _ = train.fit_step_knots(
                u0, r0, prep.lp_all, candidates=forced
            )
            row[variant_name(rule)] = evaluate.mape(evaluate._predict(vfit, x), y)
        sfit = dict(kfit)
        sfit["knot_u"], sfit["knot_r"], row["smooth_lam"] = fit_smooth(
            prep.u0_all.astype(np.float64), prep.r_all.astype(np.float64)
        )
        row["smooth"] = evaluate.mape(evaluate._predict(sfit, x), y)
        rf = evaluate.make_forest(False, int(mask.sum()))
        rf.fit(evaluate._vidur_features(info["op"], job.x[mask]), job.y[mask])
        pf = rf.predict(evaluate._vidur_features(info["op"], x))
        row["forest"] = evaluate.mape(pf, y)
        step = step_rows(job.x[mask, 0], job.y[mask], x[:, 0])
        row["n_step"] = int(step.sum())
        for name, pred in (("knots", pk), ("steps", ps), ("forest", pf)):
            row[f"{name}_bias"] = float((pred.sum() / y.sum() - 1.0) * 100)
            row[f"{name}_step"] = float(np.abs(pred / y - 1.0)[step].sum() / len(y) * 100)
        rows.append(row)
    return pd.DataFrame(rows)


#: Step rules forced on for comparison (``train.step_knots``).
STEP_VARIANTS: tuple[str | int, ...] = (16, 32, 64, 128, "mid")


def variant_name(rule: str | int) -> str:
    """Column of a forced step rule: ``tile64``, ``mid``."""
    return f"tile{rule}" if isinstance(rule, int) else str(rule)


RECIPES = (
    "mlp_seed0",
    "mlp_seed_min",
    "mlp_seed_max",
    "knots",
    "smooth",
    "steps",
    *(variant_name(r) for r in STEP_VARIANTS),
    "forest",
)


def op_label(df: pd.DataFrame) -> pd.Series:
    """``op`` for compute tables, ``op (network)`` for network ones."""
    net = df["model"].str.replace("network:", "", regex=False)
    return np.where(df["model"].str.startswith("network:"), df["op"] + " " + net, df["op"])


def _cell(a: pd.Series, b: pd.Series, c: str) -> str:
    if c == "mlp_seed_min":
        return (
            f"{a['mlp_seed_min']:.2f}-{a['mlp_seed_max']:.2f} / "
            f"{b['mlp_seed_min']:.2f}-{b['mlp_seed_max']:.2f}"
        )
    return f"{a[c]:.2f} / {b[c]:.2f}"


def render(df: pd.DataFrame) -> str:
    """Markdown tables for docs/fidelity.md: per op, median over its tables of offset 0
    (``predictors.evaluate``'s split), and of the mean over the offsets."""
    df = df.assign(label=op_label(df))
    cols = [*RECIPES, "steps_on"]
    off0 = df[df["offset"] == 0].groupby("label", sort=False)[cols].median()
    per = df.groupby(["label", "device", "tp"], sort=False)[cols].mean()
    mean = per.groupby("label", sort=False).median()
    on = df.groupby("label", sort=False)["steps_on"].mean() * 100
    out = [
        "| op | MLP seed 0 | MLP, 5 seeds | knots | smoothed | steps (shipped) | steps kept | forest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in off0.index:
        a, b = off0.loc[label], mean.loc[label]
        cells = [_cell(a, b, c) for c in ("mlp_seed0", "mlp_seed_min", "knots", "smooth", "steps")]
        out.append(
            f"| {label} | " + " | ".join(cells) + f" | {on[label]:.0f}% | {_cell(a, b, 'forest')} |"
        )
    var = [variant_name(r) for r in STEP_VARIANTS]
    out += [
        "",
        "| op | " + " | ".join(var) + " | steps (shipped) | forest |",
        "|---|" + "---|" * (len(var) + 2),
    ]
    net = df["model"].str.startswith("network:")
    for label in off0.index[~off0.index.isin(op_label(df[net]))]:
        a, b = off0.loc[label], mean.loc[label]
        out.append(
            f"| {label} | " + " | ".join(_cell(a, b, c) for c in [*var, "steps", "forest"]) + " |"
        )
    lines = [
        "",
        "| split offset | tables | knots - forest | at step rows | steps - forest | at step rows "
        "| knots bias | steps bias | forest bias |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, g in df[~net].groupby("offset"):
        gap, sgap = g["knots"] - g["forest"], g["steps"] - g["forest"]
        step = g["knots_step"] - g["forest_step"]
        sstep = g["steps_step"] - g["forest_step"]
        lines.append(
            f"| {k} | {len(g)} | {gap.mean():+.3f} | {step.mean():+.3f} | {sgap.mean():+.3f} "
            f"| {sstep.mean():+.3f} | {g['knots_bias'].mean():+.2f}% | {g['steps_bias'].mean():+.2f}% "
            f"| {g['forest_bias'].mean():+.2f}% |"
        )
    lam0 = float((df["smooth_lam"] == 0).mean() * 100)
    return "\n".join(
        out + lines + ["", f"smoothing: lam = 0 chosen on {lam0:.0f}% of table-splits"]
    )


MLP_COLUMNS = ("mlp_seed0", "mlp_seed_min", "mlp_seed_max", "mlp_seed_mean")
KEY = ["device", "model", "op", "tp", "offset"]


def with_mlp_columns(df: pd.DataFrame, old: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its MLP columns from ``old`` (matched on table and offset)."""
    merged = df.drop(columns=list(MLP_COLUMNS)).merge(
        old[KEY + list(MLP_COLUMNS)], on=KEY, how="left", validate="one_to_one"
    )
    if merged[list(MLP_COLUMNS)].isna().any().any():
        raise SystemExit("error: --mlp-columns-from lacks some (table, offset) rows")
    return merged[df.columns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES", "../shared/data")
    )
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[0, 1, 2, 3, 4],
        help="MLP recipe base seeds (none: skip the MLP columns)",
    )
    parser.add_argument(
        "--out", default=os.path.join(HERE, "results", "predictor_token_recipe.csv")
    )
    parser.add_argument("--table", action="store_true", help="print the doc tables from --out")
    parser.add_argument(
        "--mlp-columns-from",
        default=None,
        help="with no --seeds: take the MLP recipe's columns from this earlier CSV (same "
        "tables and offsets; the MLP recipe does not use the step knots, so it is unchanged)",
    )
    args = parser.parse_args()
    if args.table:
        print(render(pd.read_csv(args.out)))
        return
    t0 = time.time()
    df = measure(args.profiles_dir, args.offsets, args.seeds)
    if args.mlp_columns_from and not args.seeds:
        df = with_mlp_columns(df, pd.read_csv(args.mlp_columns_from))
    atomic_write_csv(df, args.out)
    print(render(df))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
