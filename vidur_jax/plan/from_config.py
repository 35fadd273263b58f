"""Config tree -> :class:`RunPlan`: :func:`check_config` finds every error a config can
have with JAX-free code; :func:`plan_from_config` then builds the deployments and
workloads (importing JAX). This is the only place a run's config tree is read; it is
copied, never mutated."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from vidur_jax import catalog
from vidur_jax.errors import require
from vidur_jax.plan.deployment import check_deployment, check_fits, deployment_fields
from vidur_jax.plan.sweep import expand_sweep
from vidur_jax.plan.tree import read_float, to_container
from vidur_jax.plan.workloads import RATE_ARRIVALS, build_workload, workload_spec
from vidur_jax.sim import disagg_pools  # JAX-free


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything one run simulates, derived once from the config tree.

    Attributes:
        configs: one deployment per sweep point.
        workloads: the workload of each config (identical specs share one object).
        labels: per config, the ``summary.csv`` columns that are not deployment fields
            (``qps``: NaN where it does not drive the arrivals, ``workload``,
            ``num_gpus``, ``price_per_hour``, ``cost_per_hour``).
        profiles_dir: Vidur data root to train predictors from; None = shipped params.
        name: run name.
        chrome_trace: also record every batch and write ``chrome_trace.json``
            (:mod:`vidur_jax.metrics.chrome_trace`).
        chunk_configs: configs per compiled call (None = as many as fit in memory).
        specs: per config, its checked workload spec (:func:`workload_spec`), whose
            knobs become ``summary.csv`` columns where they vary; may be empty.
    """

    configs: tuple[Any, ...]  # DeploymentConfig
    workloads: tuple[Any, ...]  # Workload
    labels: tuple[dict[str, Any], ...]
    profiles_dir: str | None
    name: str = "default"
    chrome_trace: bool = False
    chunk_configs: int | None = None
    specs: tuple[dict[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class CheckedPoint:
    """One sweep point, checked: its deployment fields, workload spec and labels."""

    fields: dict[str, Any]
    spec: dict[str, Any]
    labels: dict[str, Any]


def _labels(tree: Mapping[str, Any], fields: Mapping[str, Any], spec: Mapping[str, Any]):
    price = tree["hardware"].get("price_per_hour")
    if price is None:
        price = catalog.get_device(fields["device"]).price_per_hour
    price = read_float("hardware.price_per_hour", price)
    require(price >= 0, f"hardware.price_per_hour={price} must be >= 0")
    num_gpus = disagg_pools.num_gpus(fields)
    # pools on other GPUs pay their own GPU's catalog price; the label is the mean per GPU
    cost = disagg_pools.cost_per_hour(
        fields, lambda d: price if d == fields["device"] else catalog.get_device(d).price_per_hour)
    arrival = spec.get("arrival") or {}
    rate_driven = spec["kind"] == "synthetic" and arrival.get("kind") in RATE_ARRIVALS
    return {
        "qps": spec["qps"] if rate_driven else float("nan"),
        "workload": spec["name"],
        "num_gpus": num_gpus,
        "price_per_hour": cost / num_gpus if disagg_pools.has_pool_hardware(fields) else price,
        "cost_per_hour": cost,
    }


def _run_settings(tree: Mapping[str, Any]) -> tuple[str | None, bool, int | None]:
    profiles_dir = tree.get("profiles_dir")
    if profiles_dir is not None:
        require(
            isinstance(profiles_dir, str), f"profiles_dir={profiles_dir!r} must be a path or null"
        )
        profiles_dir = os.path.abspath(os.path.expanduser(profiles_dir))
        require(os.path.isdir(profiles_dir), f"profiles_dir does not exist: {profiles_dir}")
    chrome_trace = tree.get("chrome_trace", False)
    require(isinstance(chrome_trace, bool), f"chrome_trace={chrome_trace!r} must be true or false")
    chunk_configs = tree.get("chunk_configs")
    require(
        chunk_configs is None or (isinstance(chunk_configs, int) and chunk_configs >= 1),
        f"chunk_configs={chunk_configs!r} must be an integer >= 1 or null",
    )
    return profiles_dir, chrome_trace, chunk_configs


def check_config(cfg: Any, fits: bool = True) -> list[CheckedPoint]:
    """Check a composed config (DictConfig or dict) and every point of its sweep.

    JAX-free (and pandas-free), so the CLI refuses a bad config in well under a second.

    Args:
        cfg: the composed config.
        fits: also refuse a point whose model does not fit in GPU memory (the simulator
            checks that again when it sizes the KV cache).

    Returns:
        The checked sweep points, in sweep order.

    Raises:
        ConfigError: the first bad value (one line naming it and what is allowed).
    """
    tree = to_container(cfg)
    # Check the base values too, so a bad override of a swept knob is not hidden by the sweep.
    check_deployment(deployment_fields(tree))
    workload_spec(tree, check_files=False)
    _run_settings(tree)
    points = []
    for t in expand_sweep(tree):
        fields = deployment_fields(t)
        check_deployment(fields)
        if fits:
            check_fits(fields)
        spec = workload_spec(t)
        points.append(CheckedPoint(fields, spec, _labels(t, fields, spec)))
    return points


def check_base(cfg: Any) -> None:
    """Check a task's config (search, sensitivity, studies...): its base deployment and
    workload, JAX-free; the task checks its own block (grid, SLOs, loads) itself.

    Raises:
        ConfigError: the first bad value (one line).
    """
    tree = to_container(cfg)
    check_deployment(deployment_fields(tree))
    workload_spec(tree, check_files=False)


def plan_from_config(cfg: Any) -> RunPlan:
    """Convert a composed config (DictConfig or dict) into a :class:`RunPlan`.

    Raises:
        ConfigError: any bad value (one line naming it and what is allowed).
    """
    from vidur_jax.sim.build import DeploymentConfig

    tree = to_container(cfg)
    points = check_config(tree, fits=False)  # the memory planner checks the fit itself
    configs, workloads = [], []
    cache: dict[str, Any] = {}
    for p in points:
        dep = DeploymentConfig(**p.fields)
        dep.validate()
        key = json.dumps(p.spec, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = build_workload(p.spec)
        configs.append(dep)
        workloads.append(cache[key])
    profiles_dir, chrome_trace, chunk_configs = _run_settings(tree)
    return RunPlan(
        tuple(configs),
        tuple(workloads),
        tuple(p.labels for p in points),
        profiles_dir,
        str(tree.get("name", "default")),
        chrome_trace,
        chunk_configs,
        tuple(p.spec for p in points),
    )
