"""Vidur-Search, vectorized: capacity of every deployment in a grid, cost, best under SLO.

* :mod:`~vidur_jax.search.grid` expands models x clusters x TP x PP x schedulers x batch
  caps into candidates (infeasible ones kept with a reason);
* :mod:`~vidur_jax.search.capacity` finds every config's capacity (highest QPS with
  scheduling-delay P99 <= 5 s) in lock-step K-ary rounds, each one batched vmapped run;
* :mod:`~vidur_jax.search.select` adds cost, QPS per dollar, SLO checks, the best config
  per SLO and a bottleneck hint; :mod:`~vidur_jax.search.plots` draws the Pareto plot;
* :mod:`~vidur_jax.search.task` is ``task: search`` (``search.csv``, ``best_config.json``).
"""

from vidur_jax.search.capacity import (
    CapacityResult,
    Probe,
    ProbeRunner,
    SearchSettings,
    brute_force_capacity,
    make_probe_workloads,
    search_capacity,
)
from vidur_jax.search.grid import Candidate, Cluster, GridSpec, SchedulerChoice, expand_grid
from vidur_jax.search.select import Slo, best_configs, bottleneck, search_table

__all__ = [
    "CapacityResult",
    "Candidate",
    "Cluster",
    "GridSpec",
    "Probe",
    "ProbeRunner",
    "SchedulerChoice",
    "SearchSettings",
    "Slo",
    "best_configs",
    "bottleneck",
    "brute_force_capacity",
    "expand_grid",
    "make_probe_workloads",
    "search_capacity",
    "search_table",
]
