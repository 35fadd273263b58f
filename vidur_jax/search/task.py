"""The ``search`` task: ``python -m vidur_jax +experiment=search_llama2_7b``.

Reads the ``search:`` block of the composed config (defaults:
``vidur_jax/conf/search/default.yaml``), expands the grid, finds every feasible config's
capacity (:mod:`vidur_jax.search.capacity`), and writes into the run dir:

* ``search.csv`` — one row per grid point (:func:`vidur_jax.search.select.search_table`);
* ``best_config.json`` — the best config (QPS per dollar) per SLO, plus search settings
  and cost (rounds, probes, wall time);
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
    "models": None,
    "clusters": None,
    "tp": [1, 2, 4, 8],
    "pp": [1, 2, 4],
    "schedulers": [
        {"scheduler": "vllm"},
        *({"scheduler": "sarathi", "chunk_size": c} for c in (256, 512, 1024, 2048, 4096)),
    ],
    "batch_caps": [32, 64, 128],
    "num_requests": 400,
    "sched_delay_quantile": 0.99,
    "sched_delay_max_s": 5.0,
    "granularity": 0.025,
    "branching": 4,
    "max_rounds": 16,
    "qps_min": 0.01,
    "qps_max_per_replica": 256.0,
    "width": 32,
    "mode": "auto",
    "slos": [{"name": "default", "ttft_p90_s": 2.0, "tbt_p99_s": 0.2}],
    "capacity_under_slo": False,
    "predictor_note": None,
}


def settings_from(block: Mapping[str, Any], seed: int) -> cap.SearchSettings:
    """:class:`SearchSettings` from a ``search:`` block (merged over :data:`DEFAULTS`)."""
    try:
        return cap.SearchSettings(
            num_requests=int(block["num_requests"]),
            quantile=float(block["sched_delay_quantile"]),
            max_delay_s=float(block["sched_delay_max_s"]),
            granularity=float(block["granularity"]),
            branching=int(block["branching"]),
            max_rounds=int(block["max_rounds"]),
            qps_min=float(block["qps_min"]),
            qps_max_per_replica=float(block["qps_max_per_replica"]),
            width=int(block["width"]),
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
    return {**DEFAULTS, **dict(block)}


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
        ``{"table": search.csv frame, "best": best per SLO, "probes": probes frame,
        "stats": SearchStats, "settings": SearchSettings, "grid": GridSpec,
        "slos": [Slo]}``.
    """
    from vidur_jax import app

    block = _block(cfg)
    seed = int(cfg.get("seed", 42))
    settings = settings_from(block, seed)
    slos = select.slos_from(block["slos"])
    if block["capacity_under_slo"]:
        settings = dataclasses.replace(
            settings, ttft_p90_max_s=slos[0].ttft_p90_s, tbt_p99_max_s=slos[0].tbt_p99_s
        )
    base = app.deployment_from(cfg)
    default_cluster = {
        "device": base.device,
        "network_device": base.network_device,
        "num_gpus": base.tensor_parallel_size * base.num_pipeline_stages * base.num_replicas,
        "price_per_hour": cfg["hardware"].get("price_per_hour"),
    }
    spec = grid_mod.grid_from_dict(block, base.model, default_cluster)
    cands = grid_mod.expand_grid(spec, base)
    feas = grid_mod.feasible_configs(cands)
    log(
        f"search: grid of {len(cands)} configs, {len(feas)} feasible, "
        f"{len(cands) - len(feas)} infeasible (listed with reasons)"
    )
    require(bool(feas), "search: no feasible config in the grid (see the reasons in search.csv)")
    cfgs = [cands[i].config for i in feas]
    mode = cap.resolve_mode(settings.mode, cfgs)
    settings = dataclasses.replace(settings, mode=mode)
    lengths, wl_name = _lengths_fn(cfg)
    pw = cap.make_probe_workloads(
        lengths, settings.num_requests, max(c.num_replicas for c in cfgs), mode, seed
    )
    runner = cap.ProbeRunner(cfgs, pw, settings, profiles_dir=cfg.get("profiles_dir"))
    t0 = time.perf_counter()
    results, stats = cap.search_capacity(runner, [c.num_replicas for c in cfgs], log=log)
    stats.wall_s = time.perf_counter() - t0
    by_cand = {feas[k]: r for k, r in enumerate(results)}
    table = select.search_table(cands, by_cand, slos, extra={"workload": wl_name})
    best = select.best_configs(table, slos)
    probes = pd.DataFrame(
        [
            {
                "config_id": feas[p.config_index],
                "qps": p.qps,
                f"sched_delay_q{settings.quantile:g}": p.delay_s,
                "passed": p.passed,
                "steps": p.steps,
                "error": p.error,
            }
            for r in results
            for p in r.probes
        ]
    )
    return {
        "table": table,
        "best": best,
        "probes": probes,
        "stats": stats,
        "settings": settings,
        "grid": spec,
        "slos": slos,
        "predictor_note": block.get("predictor_note"),
        "runner": runner,
    }


def run_task(cfg: dict[str, Any], out_dir: str) -> None:
    """Task entry (``task: search``): run the search and write the run dir."""
    res = run_search(cfg)
    write_outputs(res, out_dir, plots=bool(cfg.get("plots", True)))
    _print(res["table"], res, out_dir)


def write_outputs(res: dict[str, Any], out_dir: str, plots: bool = True) -> None:
    """Write ``search.csv``, ``probes.csv``, ``best_config.json`` and the plots atomically."""
    table, st, s = res["table"], res["stats"], res["settings"]
    metrics.atomic_write_csv(table, os.path.join(out_dir, "search.csv"))
    metrics.atomic_write_csv(res["probes"], os.path.join(out_dir, "probes.csv"))
    doc = {
        "best": res["best"],
        "criterion": {
            "sched_delay_quantile": s.quantile,
            "sched_delay_max_s": s.max_delay_s,
            "granularity": s.granularity,
        },
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


def _print(table: pd.DataFrame, res: dict[str, Any], out_dir: str) -> None:
    st = res["stats"]
    cols = [
        "name",
        "capacity_qps",
        "qps_per_dollar",
        "ttft_p90",
        "tbt_p99",
        "meets_slo",
        "bottleneck",
    ]
    top = table[table["feasible"]].sort_values("qps_per_dollar", ascending=False).head(10)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(top[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for name, b in res["best"].items():
        if b["best"] is None:
            print(f"best under SLO '{name}': none of the configs meets it")
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
        f"{st.rounds} rounds, {st.probes} probes, {st.calls} compiled calls, {st.wall_s:.1f} s"
    )
    print(f"wrote {os.path.join(out_dir, 'search.csv')}, best_config.json, probes.csv, plots/")
