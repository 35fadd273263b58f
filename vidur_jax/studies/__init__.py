"""Ready-made studies (``task: study``): figures a Vidur user expects, in minutes on a CPU.

Each study is a Hydra experiment ``conf/experiment/study_<name>.yaml`` that sets
``task: study`` and a ``study:`` block, run as::

    python -m vidur_jax +experiment=study_<name> [overrides] [hydra.run.dir=DIR]

It writes into the run dir, atomically: ``<name>.csv`` (the numbers behind the figure),
``<name>.png`` (the figure), ``summary.csv`` (the usual one row per simulated
configuration, DESIGN.md section 5) and ``study.json`` (settings, wall time, and where
each predictor came from: ``trained`` on profiles of that model/GPU, or ``transferred``
from other models' profiles when the model or GPU has none, e.g. Llama-3-8B and the 70B
models on H100). The experiment's base config (model, hardware, cluster, scheduler,
workload, ``sweep``) is the common part; the study's ``variants`` swap structural
choices (scheduler, GPU, TP/PP), and all variants are simulated by one
:func:`~vidur_jax.sim.run.simulate_configs` call (one ``jit(vmap)`` per replica
scheduler).

Studies (``study.kind``):

- ``readme_scenario`` (:mod:`.readme_scenario`): Vidur's README figure: TTFT / TBT / e2e
  / batch-size CDFs of one config, plus its ``chrome_trace.json``.
- ``scheduler_comparison`` (:mod:`.scheduler_comparison`): latency-throughput curves of
  the five replica schedulers across loads.
- ``parallelism`` (:mod:`.parallelism`): TP x PP shapes of a 70B model on A100 vs H100.
- ``chunk_size`` (:mod:`.chunk_size`): Sarathi's TTFT-vs-TBT trade-off over chunk sizes.
"""

from __future__ import annotations

import importlib
from typing import Any

from vidur_jax.errors import require

#: ``study.kind`` -> ``"module:function"`` called as ``fn(tree, study, out_dir)``.
STUDIES: dict[str, str] = {
    "readme_scenario": "vidur_jax.studies.readme_scenario:run",
    "scheduler_comparison": "vidur_jax.studies.scheduler_comparison:run",
    "parallelism": "vidur_jax.studies.parallelism:run",
    "chunk_size": "vidur_jax.studies.chunk_size:run",
}


def run_task(cfg: dict[str, Any], out_dir: str) -> None:
    """``task: study`` entry (see :mod:`vidur_jax.tasks`): dispatch on ``study.kind``.

    Raises:
        ConfigError: missing ``study`` block or unknown kind (lists the allowed ones).
    """
    study = cfg.get("study")
    require(
        isinstance(study, dict) and "kind" in study,
        "task=study needs a 'study' block with a 'kind' "
        f"({', '.join(STUDIES)}); use +experiment=study_<name>",
    )
    kind = study["kind"]
    require(kind in STUDIES, f"unknown study.kind {kind!r}; allowed: {', '.join(STUDIES)}")
    module, func = STUDIES[kind].split(":")
    getattr(importlib.import_module(module), func)(cfg, dict(study), out_dir)
