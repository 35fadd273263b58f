"""Shared plumbing of the studies: structural variants of a config tree, one simulation
call for all of them, predictor provenance, and the files every study writes."""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vidur_jax import app
from vidur_jax.errors import ConfigError, require
from vidur_jax.metrics import atomic_write_csv, atomic_write_json
from vidur_jax.metrics.io import atomic_path


def with_option(tree: Mapping[str, Any], group: str, option: str) -> dict[str, Any]:
    """Copy of ``tree`` with config group ``group`` replaced by ``conf/<group>/<option>.yaml``
    (what ``group=option`` does on the command line).

    Raises:
        ConfigError: unknown option (lists the available ones).
    """
    from omegaconf import OmegaConf

    path = app.CONF_DIR / group / f"{option}.yaml"
    options = sorted(p.stem for p in (app.CONF_DIR / group).glob("*.yaml"))
    require(path.is_file(), f"unknown {group} option {option!r}; available: {', '.join(options)}")
    out = copy.deepcopy(dict(tree))
    out[group] = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return out


def with_values(tree: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``tree`` with dotted keys set (``{"cluster.tp": 4}``); keys must exist."""
    out = copy.deepcopy(dict(tree))
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            require(isinstance(node.get(part), dict), f"study key '{key}' is not in the config")
            node = node[part]
        require(last in node, f"study key '{key}' is not in the config")
        node[last] = value
    return out


def combine(trees: Sequence[Mapping[str, Any]], tags: Sequence[dict[str, Any]]) -> app.RunPlan:
    """One :class:`~vidur_jax.app.RunPlan` holding every sweep point of every variant
    tree; ``tags[i]`` is added to the labels of variant i's configs."""
    configs, workloads, labels = [], [], []
    profiles_dir, chrome = None, False
    for tree, tag in zip(trees, tags, strict=True):
        plan = app.plan_from_config(tree)
        configs += plan.configs
        workloads += plan.workloads
        labels += [{**lab, **tag} for lab in plan.labels]
        profiles_dir, chrome = plan.profiles_dir, plan.chrome_trace
    require(configs, "the study has no configurations")
    return app.RunPlan(
        tuple(configs),
        tuple(workloads),
        tuple(labels),
        profiles_dir,
        str(trees[0].get("name", "study")),
        chrome,
    )


def predictor_sources(configs: Sequence[Any], profiles_dir: str | None) -> dict[str, str]:
    """``"model/device/tpN" -> "trained" | "transferred"`` for each distinct predictor.

    ``transferred``: no profiles of that model on that GPU; times come from models
    fitted on other models' profiles (vidur_jax.predictors.transfer), less accurate.
    """
    from vidur_jax import predictors

    out: dict[str, str] = {}
    for c in configs:
        key = f"{c.model}/{c.device}/tp{c.tensor_parallel_size}"
        if key in out:
            continue
        try:
            meta = predictors.load(c.model, c.device, c.tensor_parallel_size, profiles_dir).meta
            source = str(meta.get("source", "unknown"))
            ops = sorted(
                op for op, s in (meta.get("op_source") or {}).items() if s == "transferred"
            )
            out[key] = f"{source} ({', '.join(ops)})" if source == "transferred" and ops else source
        except ConfigError as err:
            out[key] = f"unavailable ({err})"
    return out


def simulate(plan: app.RunPlan) -> tuple[pd.DataFrame, pd.DataFrame, list[Any]]:
    """Run the plan (:func:`vidur_jax.app.run_plan`); the summary gains the label columns
    the study added (variant tags such as ``variant``)."""
    summary, requests, outputs = app.run_plan(plan)
    extra = pd.DataFrame(list(plan.labels))
    for col in extra.columns:
        if col not in summary.columns:
            summary[col] = extra[col].to_numpy()
    return summary, requests, outputs


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically (small: dpi 100) and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


@dataclasses.dataclass
class StudyRun:
    """Timer + writer of a study's standard files (``<name>.csv``, ``summary.csv``,
    ``study.json``); the study writes its own ``<name>.png``."""

    name: str
    out_dir: str
    study: dict[str, Any]
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def path(self, suffix: str) -> Path:
        """``out_dir / <name><suffix>``."""
        return Path(self.out_dir) / f"{self.name}{suffix}"

    def finish(
        self,
        results: pd.DataFrame,
        summary: pd.DataFrame,
        plan: app.RunPlan,
        notes: Sequence[str] = (),
    ) -> list[Path]:
        """Write the results CSV, ``summary.csv`` and ``study.json``; print a short report."""
        sources = predictor_sources(plan.configs, plan.profiles_dir)
        transferred = sorted(f"{k}: {v}" for k, v in sources.items() if v.startswith("transferred"))
        notes = list(notes)
        if transferred:
            notes.append(
                "operations without profiles of this model/GPU are predicted by models "
                "transferred from other models' profiles (less accurate than trained ones): "
                + "; ".join(transferred)
            )
        wall = time.perf_counter() - self.started
        written = [
            atomic_write_csv(results, self.path(".csv")),
            atomic_write_csv(summary, Path(self.out_dir) / "summary.csv"),
            atomic_write_json(
                {
                    "study": self.name,
                    "settings": self.study,
                    "num_configs": len(plan.configs),
                    "num_requests": [int(w.num_requests) for w in plan.workloads[:1]],
                    "predictor_source": sources,
                    "notes": notes,
                    "wall_s": wall,
                },
                Path(self.out_dir) / "study.json",
            ),
        ]
        print(f"study {self.name}: {len(plan.configs)} configs in {wall:.1f} s")
        for note in notes:
            print(f"note: {note}")
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(results.head(40).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        print(f"wrote {self.path('.csv')}, {self.path('.png')}, summary.csv, study.json")
        return written
