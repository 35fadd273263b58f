"""Config tree -> run plan, checked before JAX is imported.

A composed config (Hydra ``DictConfig`` or a plain nested dict with the layout of
``vidur_jax/conf/config.yaml``) is read here and nowhere else:

* :mod:`.tree` — the tree itself: composing it, group keys, typed values, one-line errors;
* :mod:`.sweep` — the numeric ``sweep`` axes expanded into one tree per point, and
  keyword knobs of the Python API;
* :mod:`.deployment` — a point's deployment knobs, checked (JAX-free) then built into a
  :class:`~vidur_jax.sim.build.DeploymentConfig`;
* :mod:`.workloads` — a point's workload spec, checked (JAX-free) then built;
* :mod:`.from_config` — :func:`check_config` (every error a bad config can have, found
  with JAX-free code so a bad run is refused in well under a second) and
  :func:`plan_from_config` -> :class:`RunPlan`.

Importing this package loads neither JAX nor pandas; the builders import JAX lazily.
"""
