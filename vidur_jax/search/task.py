"""The ``search`` task: ``python -m vidur_jax task=search search.target_qps=5 ...``.

Reads the ``search:`` block of the composed config (defaults:
``vidur_jax/conf/search/default.yaml``), expands the grid, finds every feasible config's
capacity (:mod:`vidur_jax.search.capacity`), and with ``search.target_qps`` plans the
replicas and cost of serving it; it prints the answer in one sentence (plus the cheapest
deployments, and one line per cause of configs left out) and writes into the run dir:

* ``search.csv`` — one row per grid point (:func:`vidur_jax.search.select.search_table`);
* ``best_config.json`` — the answer, the cheapest deployments for the target, the best
  config (QPS per dollar) per SLO, exclusions by cause, settings and cost (passes,
  rounds, probes, wall time);
* ``probes.csv`` — every simulated (config, QPS) probe with its delay quantile;
* ``plots/search_pareto.png`` and ``plots/search_capacity.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from vidur_jax import metrics
from vidur_jax.errors import ConfigError, require
from vidur_jax.search import capacity as cap
from vidur_jax.search import grid as grid_mod
from vidur_jax.search import select

#: Defaults of the ``search:`` block (mirrors ``conf/search/default.yaml``).
DEFAULTS: dict[str, Any] = {
    "target_qps": None,
    "slo": {"ttft_p90_s": 2.0, "tbt_p99_s": 0.2},
    "criterion": "slo",
    "models": None,
    "gpus": None,
    "max_gpus": 8,
    "clusters": None,
    "tp": [1, 2, 4, 8],
    "pp": [1, 2, 4],
    "schedulers": [
        {"scheduler": "vllm"},
        *({"scheduler": "sarathi", "chunk_size": c} for c in (256, 512, 1024, 2048, 4096)),
    ],
    "batch_caps": [32, 64, 128],
    "ep": [1],
    "pd_splits": [],
    "pd_pools": [],
    "slos": [],
    "top": 5,
    "num_requests": 300,
    "max_requests": 3200,
    "sched_delay_quantile": 0.99,
    "sched_delay_max_s": 5.0,
    "granularity": 0.025,
    "branching": 4,
    "max_rounds": 24,
    "qps_min": 0.01,
    "qps_max_per_replica": 256.0,
    "span_factor": 2.0,
    "early_stop": True,
    "secant": True,
    "request_ladder": False,
    "width": 32,
    "runner": "auto",
    "mode": "auto",
    "predictor_note": None,
}


def settings_from(block: Mapping[str, Any], seed: int) -> cap.SearchSettings:
    """:class:`SearchSettings` from a ``search:`` block (merged over :data:`DEFAULTS`)."""
    slo = select.slos_from(block["slo"])[0]
    try:
        return cap.SearchSettings(
            num_requests=int(block["num_requests"]),
            criterion=str(block["criterion"]),
            quantile=float(block["sched_delay_quantile"]),
            max_delay_s=float(block["sched_delay_max_s"]),
            ttft_p90_max_s=slo.ttft_p90_s,
            tbt_p99_max_s=slo.tbt_p99_s,
            granularity=float(block["granularity"]),
            branching=int(block["branching"]),
            max_rounds=int(block["max_rounds"]),
            qps_min=float(block["qps_min"]),
            qps_max_per_replica=float(block["qps_max_per_replica"]),
            max_requests=int(block["max_requests"]),
            span_factor=float(block["span_factor"]),
            early_stop=bool(block["early_stop"]),
            secant=bool(block["secant"]),
            request_ladder=bool(block["request_ladder"]),
            width=int(block["width"]),
            runner=str(block["runner"]),
            mode=str(block["mode"]),
            seed=int(seed),
        ).check()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"search: bad setting ({err})") from None


def _block(cfg: Mapping[str, Any]) -> dict[str, Any]:
    block = cfg.get("search") or {}
    require(isinstance(block, Mapping), f"search must be a mapping, got {block!r}")
    unknown = sorted(set(block) - set(DEFAULTS))
    require(not unknown, f"unknown search key(s) {unknown}; allowed: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **dict(block)}
    t = out["target_qps"]
    if t is not None:
        require(
            isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0,
            f"search.target_qps={t!r} must be a number > 0 (requests/s) or null",
        )
    m = out["max_gpus"]
    require(
        isinstance(m, int) and not isinstance(m, bool) and m >= 1,
        f"search.max_gpus={m!r} must be an integer >= 1",
    )
    require(
        isinstance(out["top"], int) and out["top"] >= 1, f"search.top={out['top']!r} must be >= 1"
    )
    return out


def _lengths_fn(cfg: Mapping[str, Any]):
    """``(key, n) -> (prefill, decode)`` from the config's workload lengths spec."""
    from vidur_jax import app, workload

    spec = app.workload_spec(cfg)
    require(
        spec["kind"] == "synthetic",
        "search needs a synthetic workload (lengths + Poisson arrivals); got workload.kind=replay",
    )
    lengths, max_tokens = spec["lengths"], spec["max_tokens"]

    def draw(key, n):
        w = workload.synthetic(key, n, {"kind": "static"}, lengths, max_tokens)
        return np.asarray(w.num_prefill), np.asarray(w.num_decode)

    return draw, spec["name"]


def run_search(cfg: Mapping[str, Any], log=print) -> dict[str, Any]:
    """Run the search of a composed config (plain dict); no files written.

    Returns:
        ``{"table": search.csv frame, "best": best per SLO, "plan": cheapest deployments
        for the target (None without target), "probes": probes frame, "stats":
        SearchStats, "settings": SearchSettings, "grid": GridSpec, "slos": [Slo],
        "target_qps", "runner": the first pass's ProbeRunner, "runners": every pass's,
        "results": the feasible configs' CapacityResult}``.
    """
    from vidur_jax import app

    block = _block(cfg)
    seed = int(cfg.get("seed", 42))
    settings = settings_from(block, seed)
    slos = select.slos_from(block["slo"], block["slos"])
    target = block["target_qps"]
    target = None if target is None else float(target)
    base = app.deployment_from(cfg)
    spec = grid_mod.grid_from_dict(
        block,
        base.model,
        base.device,
        base.network_device,
        cfg.get("hardware", {}).get("price_per_hour"),
    )
    cands = grid_mod.expand_grid(spec, base, per_replica=target is not None)
    max_gpus = {}
    for i, c in enumerate(cands):
        cl = c.cluster or next(x for x in spec.clusters if x.device == c.config.device)
        max_gpus[i] = cl.num_gpus
    feas = grid_mod.feasible_configs(cands)
    log(
        f"search: grid of {len(cands)} configs, {len(feas)} feasible, "
        f"{len(cands) - len(feas)} infeasible (listed with reasons); capacity = highest QPS "
        + (
            f"with TTFT P90 <= {slos[0].ttft_p90_s:g} s and TBT P99 <= {slos[0].tbt_p99_s:g} s"
            if settings.criterion == "slo"
            else f"with sched-delay P{settings.quantile * 100:g} <= {settings.max_delay_s:g} s (Vidur)"
        )
        + (" per replica" if target is not None else "")
    )
    require(bool(feas), "search: no feasible config in the grid (see the reasons in search.csv)")
    cfgs = [cands[i].config for i in feas]
    mode = cap.resolve_mode(settings.mode, cfgs)
    settings = dataclasses.replace(settings, mode=mode)
    lengths, wl_name = _lengths_fn(cfg)
    t0 = time.perf_counter()
    results, stats, runners = cap.measure_capacities(
        cfgs, lengths, settings, profiles_dir=cfg.get("profiles_dir"), log=log
    )
    stats.wall_s = time.perf_counter() - t0
    by_cand = {feas[k]: r for k, r in enumerate(results)}
    table = select.search_table(
        cands, by_cand, slos, extra={"workload": wl_name}, target_qps=target, max_gpus=max_gpus
    )
    best = select.best_configs(table, slos)
    plan = None
    if target is not None:
        plan = select.cheapest_for_target(table, int(block["top"]))
    probes = pd.DataFrame(
        [
            {
                "config_id": feas[k],
                "qps": p.qps,
                "num_requests": p.num_requests or r.num_requests,
                f"sched_delay_q{settings.quantile:g}": p.delay_s,
                "ttft_p90": p.summary.get("ttft_p90", np.nan),
                "tbt_p99": p.summary.get("tbt_p99", np.nan),
                "passed": p.passed,
                "stopped_early": p.stopped_early,
                "steps": p.steps,
                "error": p.error,
            }
            for k, r in enumerate(results)
            for p in r.probes
        ]
    )
    return {
        "table": table,
        "best": best,
        "plan": plan,
        "target_qps": target,
        "probes": probes,
        "stats": stats,
        "settings": settings,
        "grid": spec,
        "slos": slos,
        "max_gpus": max_gpus,
        "predictor_note": block.get("predictor_note"),
        "runner": runners[0],
        "runners": runners,
        "results": results,
    }


def run_task(cfg: dict[str, Any], out_dir: str) -> None:
    """Task entry (``task: search``): run the search and write the run dir."""
    res = run_search(cfg)
    write_outputs(res, out_dir, plots=bool(cfg.get("plots", True)))
    print_answer(res)
    print(f"wrote {os.path.join(out_dir, 'search.csv')}, best_config.json, probes.csv, plots/")


def write_outputs(res: dict[str, Any], out_dir: str, plots: bool = True) -> None:
    """Write ``search.csv``, ``probes.csv``, ``best_config.json`` and the plots atomically."""
    table, st, s = res["table"], res["stats"], res["settings"]
    metrics.atomic_write_csv(table, os.path.join(out_dir, "search.csv"))
    metrics.atomic_write_csv(res["probes"], os.path.join(out_dir, "probes.csv"))
    plan = res.get("plan")
    doc = {
        "target_qps": res.get("target_qps"),
        "answer": answer_sentence(res),
        "cheapest": None if plan is None else [select._plain(r) for r in plan.to_dict("records")],
        "best": res["best"],
        "criterion": {
            "name": s.criterion,
            "ttft_p90_s": s.ttft_p90_max_s,
            "tbt_p99_s": s.tbt_p99_max_s,
            "sched_delay_quantile": s.quantile,
            "sched_delay_max_s": s.max_delay_s,
            "granularity": s.granularity,
        },
        "excluded": exclusion_counts(table),
        "settings": dataclasses.asdict(s),
        "grid_size": int(len(table)),
        "num_feasible": int(table["feasible"].sum()),
        "search": dataclasses.asdict(st),
        "predictor_note": res["predictor_note"],
    }
    metrics.atomic_write_json(doc, os.path.join(out_dir, "best_config.json"))
    if plots:
        from vidur_jax.search.plots import plot_all

        plot_all(table, res["slos"], out_dir)


def exclusion_counts(table: pd.DataFrame) -> dict[str, int]:
    """Configs kept out of "best", by ``flag`` (infeasible ones included)."""
    flags = table.loc[table["flag"] != "", "flag"]
    return {str(k): int(v) for k, v in flags.value_counts().items()}


#: One terminal line per exclusion cause.
_CAUSES = {
    "capped": "passed at the highest rate probed even with {req} requests per replica: "
    "capacity unknown (raise search.qps_max_per_replica or search.max_requests)",
    "too_few_requests": "at capacity their arrivals span less than the criterion's bound "
    "even with {req} requests per replica (raise search.max_requests)",
    "unresolved": "not bracketed within search.max_rounds",
    "error": "simulation error (see search.csv bottleneck / probes.csv error)",
    "over_max_gpus": "need more than search.max_gpus GPUs for the target",
    "cannot_meet": "cannot meet the criterion even at the lowest QPS probed",
}


def exclusion_lines(table: pd.DataFrame) -> list[str]:
    """One line per cause of configs left out of "best" (infeasible ones excepted)."""
    lines = []
    for flag, n in exclusion_counts(table).items():
        if flag == "infeasible":
            continue
        rows = table[table["flag"] == flag]
        req = int(rows["num_requests"].max()) if "num_requests" in rows else 0
        why = _CAUSES.get(flag, flag).format(req=req)
        lines.append(f"excluded from best: {n} config(s) {why} [search.csv flag={flag}]")
    return lines


def answer_sentence(res: dict[str, Any]) -> str:
    """The answer in one sentence (target mode: the cheapest deployment; else the best
    QPS per dollar under the first SLO), or why there is none."""
    s, slo = res["settings"], res["slos"][0]
    crit = (
        f"TTFT P90 <= {slo.ttft_p90_s:g} s, TBT P99 <= {slo.tbt_p99_s:g} s"
        if s.criterion == "slo"
        else f"sched-delay P{s.quantile * 100:g} <= {s.max_delay_s:g} s"
    )
    target = res.get("target_qps")
    if target is not None:
        plan = res["plan"]
        if plan is None or not len(plan):
            return f"No measured config serves {target:g} req/s under {crit} (see search.csv flag)."
        return f"Cheapest for {target:g} req/s under {crit}: {plan_line(plan.iloc[0])}."
    b = res["best"][slo.name]["best"]
    if b is None and not select.selectable(res["table"]).any():
        return f"No config could be measured under {crit}: no best is claimed (see above)."
    if b is None:
        return f"None of the measured configs meets the SLO at capacity ({crit})."
    return (
        f"Best QPS per dollar ({crit}): {b['name']} — {b['capacity_qps']:.3g} req/s, "
        f"{b['qps_per_dollar']:.3g} req/s per $/h (${b['cost_per_hour']:.2f}/h)."
    )


def plan_line(r: Mapping[str, Any]) -> str:
    """``2 x H100 (TP1, Sarathi chunk 1024, cap 128): 5.0 req/s needs 1 replica, 21.9 req/s
    capacity, $4.25/h``."""
    n = int(r["replicas"])
    return (
        f"{r['label']}: {r['target_qps']:.1f} req/s needs {n} replica{'s' if n != 1 else ''} "
        f"({int(r['num_gpus'])} GPU{'s' if r['num_gpus'] != 1 else ''}), "
        f"{r['capacity_qps']:.1f} req/s capacity, ${r['cost_per_hour']:.2f}/h"
    )


def print_answer(res: dict[str, Any]) -> None:
    """The terminal answer: exclusions (one line per cause), the sentence, a short table."""
    table, st = res["table"], res["stats"]
    for line in exclusion_lines(table):
        print(line)
    print(answer_sentence(res))
    plan = res.get("plan")
    if plan is not None and len(plan):
        print(f"the {len(plan)} cheapest:")
        for k, (_, r) in enumerate(plan.iterrows(), 1):
            print(
                f"  {k}. {plan_line(r)}  [TTFT P90 {r['ttft_p90']:.3g} s, TBT P99 {r['tbt_p99']:.3g} s at capacity]"
            )
    elif plan is None:
        cols = [
            "name",
            "capacity_qps",
            "qps_per_dollar",
            "ttft_p90",
            "tbt_p99",
            "meets_slo",
            "flag",
            "bottleneck",
        ]
        top = table[table["feasible"]].sort_values("qps_per_dollar", ascending=False).head(10)
        with pd.option_context("display.width", 200, "display.max_colwidth", 70):
            print(top[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for name, b in list(res["best"].items())[1:]:
            if b["best"] is None:
                print(f"best under SLO '{name}': none of the measured configs meets it")
            else:
                r = b["best"]
                print(
                    f"best under SLO '{name}': {r['name']} — {r['capacity_qps']:.3g} QPS, "
                    f"{r['qps_per_dollar']:.3g} QPS per $/h (${r['cost_per_hour']:.2f}/h)"
                )
    if res.get("predictor_note"):
        print(f"note: {res['predictor_note']}")
    print(
        f"search: {len(table)} configs ({int(table['feasible'].sum())} feasible), "
        f"{st.passes} pass(es), {st.rounds} rounds, {st.probes} probes "
        f"({st.probes_stopped_early} stopped early), {st.requests_simulated} requests "
        f"simulated, {st.wall_s:.1f} s"
    )
