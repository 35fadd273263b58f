"""Named tasks a run can perform (``task=NAME`` in the config; default ``simulate``).

Each entry maps a task name to ``"module:function"``; the function is imported lazily and
called as ``fn(cfg: dict, out_dir: str) -> None`` with the composed config as a plain
nested dict (never a ``DictConfig``). It writes its files into ``out_dir`` atomically and
raises :class:`vidur_jax.errors.ConfigError` on bad input. ``simulate`` is handled by
:mod:`vidur_jax.app` directly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from vidur_jax.errors import ConfigError

TASKS: dict[str, str] = {
    # "simulate" (the default) is run by vidur_jax.__main__ / vidur_jax.app directly.
    "search": "vidur_jax.search.task:run_task",
    "predictor_eval": "vidur_jax.predictors.evaluate:run_task",
    "sensitivity": "vidur_jax.sensitivity.task:run_task",
    # ready-made studies (conf/experiment/study_*.yaml), see vidur_jax/studies
    "study": "vidur_jax.studies:run_task",
    # S3 length-aware scheduling vs max-length reservation (conf/experiment/s3_study.yaml)
    "s3_study": "vidur_jax.studies.s3_study:run_task",
}


def check(name: str) -> None:
    """Refuse an unknown task name (lists the allowed ones) without importing any task.

    Raises:
        ConfigError: unknown task name.
    """
    if name != "simulate" and name not in TASKS:
        allowed = ", ".join(["simulate", *sorted(TASKS)])
        raise ConfigError(f"unknown task {name!r}; allowed: {allowed}")


def resolve(name: str) -> Callable[[dict[str, Any], str], None]:
    """The task function registered as ``name``.

    Raises:
        ConfigError: unknown task name (lists the allowed ones).
    """
    check(name)
    module, func = TASKS[name].split(":")
    return getattr(importlib.import_module(module), func)
