"""Sweep expansion: the ``sweep`` / ``sweep_mode`` keys -> one config tree per point, and
the Python API's keyword knobs (JAX- and pandas-free).

Numeric axes listed under ``sweep`` run in one vmapped call (STYLE.md rule 8); a knob is
a dotted path (``scheduler.chunk_size``), an alias (:data:`SWEEP_ALIASES`) or a key
unique across the config groups (``qps``, ``batch_size_cap``, ``time_scale_factor``).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

from vidur_jax.errors import require
from vidur_jax.plan.tree import GROUP_KEYS

# Other names a sweep may use for a knob.
SWEEP_ALIASES = {
    "tensor_parallel_size": "cluster.tp",
    "num_pipeline_stages": "cluster.pp",
    "replicas": "cluster.num_replicas",
    "batch_cap": "scheduler.batch_size_cap",
    "model": "model.name",
    "device": "hardware.device",
}


def sweep_path(tree: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """Resolve a sweep knob (dotted path, alias or unique short key) to a path."""
    key = SWEEP_ALIASES.get(key, key)
    if "." in key:
        path = tuple(key.split("."))
        node: Any = tree
        for part in path[:-1]:
            require(
                isinstance(node, Mapping) and part in node,
                f"sweep knob '{key}' is not in the config",
            )
            node = node[part]
        require(
            isinstance(node, Mapping) and path[-1] in node,
            f"sweep knob '{key}' is not in the config",
        )
        return path
    if key in tree and not isinstance(tree[key], Mapping) and key not in ("sweep", "sweep_mode"):
        return (key,)
    hits = [g for g in GROUP_KEYS if isinstance(tree.get(g), Mapping) and key in tree[g]]
    require(
        len(hits) == 1,
        f"sweep knob '{key}' "
        + (
            f"is ambiguous ({', '.join(f'{g}.{key}' for g in hits)}); use the dotted name"
            if hits
            else "matches no config key; use a dotted name such as scheduler.chunk_size"
        ),
    )
    return (hits[0], key)


def _flatten(sweep: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{scheduler: {chunk_size: [..]}}`` (from ``+sweep.scheduler.chunk_size=``) ->
    ``{"scheduler.chunk_size": [..]}``."""
    out: dict[str, Any] = {}
    for key, value in sweep.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def expand_sweep(tree: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One config tree per sweep point (``sweep``/``sweep_mode``), the base tree if none.

    Raises:
        ConfigError: unknown knob, empty list, unknown mode or unequal zip lengths.
    """
    sweep = tree.get("sweep") or {}
    mode = tree.get("sweep_mode", "product")
    require(
        isinstance(sweep, Mapping), f"sweep must be a mapping {{knob: [values]}}, got {sweep!r}"
    )
    require(mode in ("product", "zip"), f"sweep_mode={mode!r}; allowed: product, zip")
    if not sweep:
        return [copy.deepcopy(dict(tree))]
    paths, values = [], []
    for key, vals in _flatten(sweep).items():
        paths.append(sweep_path(tree, str(key)))
        vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
        require(len(vals) >= 1, f"sweep.{key} is an empty list")
        values.append(vals)
    if mode == "zip":
        lens = {len(v) for v in values}
        require(
            len(lens) == 1,
            "sweep_mode=zip needs lists of one length; got "
            + ", ".join(f"{'.'.join(p)}: {len(v)}" for p, v in zip(paths, values, strict=True)),
        )
        points = list(zip(*values, strict=True))
    else:
        points = list(itertools.product(*values))
    out = []
    for point in points:
        t = copy.deepcopy(dict(tree))
        for path, value in zip(paths, point, strict=True):
            _set(t, path, value)
        out.append(t)
    return out


def apply_knobs(tree: Mapping[str, Any], knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``tree`` with keyword knobs applied (the Python API's ``**knobs``).

    A list or tuple value becomes a sweep axis (``qps=[1, 2]`` is ``+sweep.qps=[1,2]``);
    any other value sets the knob: a top-level key (``profiles_dir``, ``plots``), a
    dotted path (``"workload.num_requests"``), an alias (``batch_cap``, ``replicas``) or
    a key unique across groups (``qps``).

    Raises:
        ConfigError: a knob that is not in the config (or is ambiguous).
    """
    out = copy.deepcopy(dict(tree))
    sweep = dict(out.get("sweep") or {})
    for key, value in knobs.items():
        if isinstance(value, (list, tuple)):
            sweep_path(out, key)  # fail early on an unknown knob
            sweep[key] = list(value)
        elif key in out and not isinstance(out[key], Mapping):
            out[key] = value
        else:
            _set(out, sweep_path(out, key), value)
    if sweep:
        out["sweep"] = sweep
    return out
