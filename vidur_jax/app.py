"""The public entry of the app: config -> plan -> run -> tables / run dir.

A run goes through modules named for what they do; this module composes them and keeps
the names tools outside the project use:

* :mod:`vidur_jax.plan` — the config tree (:mod:`~vidur_jax.plan.tree`), sweep expansion
  (:mod:`~vidur_jax.plan.sweep`), deployment and workload building
  (:mod:`~vidur_jax.plan.deployment`, :mod:`~vidur_jax.plan.workloads`), and
  :func:`check_config` / :func:`plan_from_config` (:mod:`~vidur_jax.plan.from_config`);
* :func:`run_plan` — every config of a plan in one
  :func:`~vidur_jax.sim.run.simulate_configs` call (one ``jit(vmap)`` per replica
  scheduler);
* :mod:`vidur_jax.metrics.run_dir` — ``summary.csv``, ``requests.parquet``, ``plots/``,
  ``report.html``; :mod:`vidur_jax.metrics.terminal` — the printed summary;
* :func:`simulate` — the Python API (``vidur_jax.simulate``).

Hydra itself is imported lazily by :func:`compose` and by ``vidur_jax.__main__``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pandas as pd

from vidur_jax.errors import require
from vidur_jax.metrics.run_dir import summary_table, write_outputs, written_names
from vidur_jax.metrics.table import STANDARD_KNOBS as SUMMARY_KNOBS
from vidur_jax.metrics.table import STANDARD_METRICS as SUMMARY_METRICS
from vidur_jax.metrics.terminal import describe_run, print_summary
from vidur_jax.plan.deployment import check_deployment, deployment_fields, deployment_from
from vidur_jax.plan.from_config import RunPlan, check_base, check_config, plan_from_config
from vidur_jax.plan.sweep import SWEEP_ALIASES, apply_knobs, expand_sweep
from vidur_jax.plan.tree import (
    CONF_DIR,
    GROUP_KEYS,
    compose,
    describe_hydra_error,
    one_line,
    to_container,
)
from vidur_jax.plan.workloads import RATE_ARRIVALS, WORKLOAD_KINDS, build_workload, workload_spec

__all__ = [
    "CONF_DIR",
    "GROUP_KEYS",
    "RATE_ARRIVALS",
    "SUMMARY_KNOBS",
    "SUMMARY_METRICS",
    "SWEEP_ALIASES",
    "WORKLOAD_KINDS",
    "RunPlan",
    "apply_knobs",
    "build_workload",
    "check_base",
    "check_config",
    "check_deployment",
    "compose",
    "deployment_fields",
    "deployment_from",
    "describe_hydra_error",
    "describe_run",
    "enable_compile_cache",
    "expand_sweep",
    "one_line",
    "plan_from_config",
    "print_summary",
    "run_plan",
    "simulate",
    "summary_table",
    "to_container",
    "workload_spec",
    "write_outputs",
    "written_names",
]


def enable_compile_cache() -> None:
    """Use JAX's persistent compilation cache (``$VIDUR_JAX_CACHE/jax``, default
    ``~/.cache/vidur_jax/jax``) unless the user configured one, set
    ``VIDUR_JAX_COMPILE_CACHE=0``; repeat runs skip the compile of every jitted function
    (the simulator's own executables are kept by :mod:`vidur_jax.sim.executables`)."""
    import jax

    if os.environ.get("VIDUR_JAX_COMPILE_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return
    base = os.environ.get(
        "VIDUR_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vidur_jax")
    )
    jax.config.update("jax_compilation_cache_dir", os.path.join(base, "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run_plan(plan: RunPlan) -> tuple[pd.DataFrame, pd.DataFrame, list[Any]]:
    """Simulate every config of ``plan`` in one :func:`simulate_configs` call.

    Returns:
        ``(summary_df, requests_df, outputs)``.
    """
    from vidur_jax.sim.run import requests_frame, simulate_configs

    if plan.chrome_trace:
        from vidur_jax.metrics.chrome_trace import simulate_traced

        outputs = simulate_traced(
            list(plan.configs), list(plan.workloads), profiles_dir=plan.profiles_dir
        )
    else:
        outputs = simulate_configs(
            list(plan.configs),
            list(plan.workloads),
            profiles_dir=plan.profiles_dir,
            chunk_configs=plan.chunk_configs,
            progress=sys.stderr.isatty(),
        )
    return summary_table(plan, outputs), requests_frame(outputs), outputs


def simulate(cfg_or_overrides: Any = (), /, **knobs: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate a config and return its tables (no files written).

    Args:
        cfg_or_overrides: an experiment name (``"quickstart"``), a list of Hydra override
            strings, e.g. ``["+experiment=quickstart", "scheduler=vllm",
            "workload.num_requests=100"]`` (composed with the packaged ``conf/``), or an
            already composed ``DictConfig`` / plain dict with the same layout.
        **knobs: config choices as keywords: a config group's option
            (``scheduler="vllm"``, ``model="llama3_8b"``), a knob's value
            (``qps=2.0``, ``**{"workload.num_requests": 100}``) or, as a list, a sweep
            axis simulated in the same vmapped call (``qps=[1, 2]``); see
            :func:`apply_knobs`.

    Returns:
        ``(summary_df, requests_df)``: the ``summary.csv`` and ``requests.parquet``
        tables (DESIGN.md section 5).

    Raises:
        ConfigError: bad input, as one line.

    Example:
        ``simulate("quickstart", scheduler="vllm", qps=[1, 2])``
    """
    if isinstance(cfg_or_overrides, str):
        require(
            "=" not in cfg_or_overrides,
            "overrides must be a list of strings such as ['+experiment=quickstart']",
        )
        cfg_or_overrides = [f"+experiment={cfg_or_overrides}"]
    options = {k: v for k, v in knobs.items() if k in GROUP_KEYS and isinstance(v, str)}
    values = {k: v for k, v in knobs.items() if k not in options}
    if isinstance(cfg_or_overrides, (list, tuple)):
        cfg = compose([*cfg_or_overrides, *(f"{k}={v}" for k, v in options.items())])
    else:
        require(
            not options,
            f"choose config options ({', '.join(options)}) with override strings, "
            "not together with a composed config",
        )
        cfg = cfg_or_overrides
    tree = apply_knobs(to_container(cfg), values) if values else cfg
    plan = plan_from_config(tree)
    enable_compile_cache()
    summary_df, requests_df, _ = run_plan(plan)
    return summary_df, requests_df
