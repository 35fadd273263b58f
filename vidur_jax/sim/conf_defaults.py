"""Default knobs read from the shipped YAML config groups: the one source of defaults.

:class:`~vidur_jax.sim.build.DeploymentConfig` takes its defaults from here, so a
deployment built in Python and one composed by Hydra from ``conf/config.yaml`` start
from the same values, written once in ``conf/``. A group's default option is the one
``conf/config.yaml`` lists (``scheduler: sarathi``, ``cluster: single``, ...); knobs only
one scheduler has (static batching's, S3's) come from that scheduler's file.

Plain YAML is read (no Hydra, no interpolation); the files read here hold literal values.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

#: The shipped config groups (package data).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@functools.cache
def default_options() -> dict[str, str]:
    """``{group: option}`` of ``conf/config.yaml``'s defaults list."""
    root = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    return {k: v for entry in root["defaults"] if isinstance(entry, dict) for k, v in entry.items()}


@functools.cache
def _load(group: str, option: str) -> dict[str, Any]:
    path = CONF_DIR / group / f"{option}.yaml"
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    if text.lstrip().startswith("# @package _global_"):  # the group's keys sit under its name
        data = data.get(group, {})
    return data


def value(group: str, key: str, option: str | None = None) -> Any:
    """``key`` of ``conf/<group>/<option>.yaml`` (default option: ``conf/config.yaml``'s).

    ``group=""`` reads ``conf/config.yaml`` itself.

    Raises:
        KeyError: the file has no such key (a default must be written in the YAML).
    """
    if not group:
        return yaml.safe_load((CONF_DIR / "config.yaml").read_text())[key]
    data = _load(group, option or default_options()[group])
    if key not in data:
        raise KeyError(f"conf/{group}/{option or default_options()[group]}.yaml has no key {key!r}")
    return data[key]
