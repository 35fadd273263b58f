"""Gradient-based tuning: maximize QPS per dollar under latency SLOs with optax.

For one deployment the knobs are the offered load ``qps`` (in log space) and optionally
the (relaxed) ``chunk_size``. The objective is

    J = log(qps / $ per hour) - w * sum_m relu(metric_m / slo_m - 1)^2

over the SLO metrics (default TTFT P90 and TBT P99). Its gradient is the chain rule
through the simulator's derivatives (:func:`~vidur_jax.sensitivity.core.sensitivities`:
one forward-mode simulation for the continuous knobs, ``num_nodes`` simulations for the
relaxed chunk size). Adam ascends J; every iterate's metrics come with its gradient, so
the best *feasible* iterate (all SLOs met by the simulator itself, unsmoothed) is known
without extra simulations.

:func:`grid_search` is the baseline: every point of a qps (x chunk) grid simulated, the
best feasible one kept. Both report how many simulations they ran.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import optax

from vidur_jax.errors import require
from vidur_jax.sensitivity import core


@dataclasses.dataclass(frozen=True)
class SLO:
    """Latency objectives, seconds: ``{metric: bound}`` (e.g. ``{"ttft_p90": 2.0}``)."""

    bounds: Mapping[str, float]

    def violation(self, values: Mapping[str, float]) -> dict[str, float]:
        """``metric / bound - 1`` per metric (<= 0 means met)."""
        return {m: values[m] / b - 1.0 for m, b in self.bounds.items()}

    def met(self, values: Mapping[str, float]) -> bool:
        """All objectives met."""
        return all(v <= 0 for v in self.violation(values).values())


@dataclasses.dataclass
class TuneResult:
    """Outcome of a search.

    Attributes:
        best: knob values of the best feasible point (None if none was feasible).
        best_values: its metrics.
        num_simulations: primal simulations run (a forward-mode derivative run counts as
            one; it costs about as much as 2-3 primal runs on CPU).
        history: one dict per iterate / grid point: knobs, objective, qps_per_dollar,
            SLO metrics, feasible.
    """

    best: dict[str, float] | None
    best_values: dict[str, float] | None
    num_simulations: int
    history: list[dict[str, float]]


def _objective(
    values: Mapping[str, float], slo: SLO, weight: float
) -> tuple[float, dict[str, float]]:
    """J and dJ/d(metric) at ``values``."""
    j = math.log(values["qps_per_dollar"])
    grad = {"qps_per_dollar": 1.0 / values["qps_per_dollar"]}
    for m, v in slo.violation(values).items():
        if v > 0:
            j -= weight * v * v
            grad[m] = grad.get(m, 0.0) - 2.0 * weight * v / slo.bounds[m]
    return j, grad


def gradient_tune(
    case: core.Case,
    slo: SLO,
    knobs: Sequence[str] = ("qps",),
    start: Mapping[str, float] | None = None,
    steps: int = 30,
    learning_rate: float = 0.15,
    weight: float = 100.0,
    chunk_bounds: tuple[float, float] = (64.0, 2048.0),
    num_nodes: int = 2,
    tol: float = 2e-3,
) -> TuneResult:
    """Adam on ``log qps`` (and ``log chunk_size``) maximizing the penalized QPS per dollar.

    Args:
        case: the deployment and workload (its qps is the default start).
        slo: latency objectives.
        knobs: ``("qps",)`` or ``("qps", "chunk_size")``.
        start: starting knob values (missing = the case's).
        steps: most iterations.
        learning_rate: Adam step in log-knob units.
        weight: SLO penalty weight ``w``.
        chunk_bounds: chunk sizes are clipped into this range.
        num_nodes: Gauss-Hermite nodes of the chunk-size relaxation.
        tol: stop when every log-knob moved less than this for 3 iterations.

    Returns:
        A :class:`TuneResult`.
    """
    require(
        set(knobs) <= {"qps", "chunk_size"} and "qps" in knobs,
        f"knobs={list(knobs)}; allowed: ['qps'] or ['qps', 'chunk_size']",
    )
    point = case.base_knobs() | dict(start or {})
    u = np.array([math.log(point[k]) for k in knobs])
    opt = optax.adam(learning_rate)
    state = opt.init(u)
    history: list[dict[str, float]] = []
    best, best_values, best_j = None, None, -math.inf
    sims, quiet = 0, 0
    for _ in range(steps):
        x = {k: float(math.exp(v)) for k, v in zip(knobs, u, strict=True)}
        if "chunk_size" in x:
            x["chunk_size"] = float(round(x["chunk_size"]))
        at = point | x
        sens = core.sensitivities(case, knobs, at=at, num_nodes=num_nodes)
        sims += 1 + (num_nodes if "chunk_size" in knobs else 0)
        j, dj_dm = _objective(sens.values, slo, weight)
        # d J / d log knob = sum_m dJ/dm * dm/dknob * knob
        g = np.array([sum(dj_dm[m] * sens.derivative[m][k] for m in dj_dm) * at[k] for k in knobs])
        feasible = slo.met(sens.values)
        history.append(
            {
                **x,
                "objective": j,
                "qps_per_dollar": sens.values["qps_per_dollar"],
                **{m: sens.values[m] for m in slo.bounds},
                "feasible": float(feasible),
            }
        )
        if feasible and sens.values["qps_per_dollar"] > best_j:
            best, best_values, best_j = dict(x), dict(sens.values), sens.values["qps_per_dollar"]
        updates, state = opt.update(-g, state, u)  # ascend J
        new = np.asarray(optax.apply_updates(u, updates))
        if "chunk_size" in knobs:
            i = list(knobs).index("chunk_size")
            new[i] = np.clip(new[i], math.log(chunk_bounds[0]), math.log(chunk_bounds[1]))
        quiet = quiet + 1 if np.max(np.abs(new - u)) < tol else 0
        u = new
        if quiet >= 3:
            break
    return TuneResult(best, best_values, sims, history)


def grid_search(
    case: core.Case, slo: SLO, qps_grid: Sequence[float], chunk_grid: Sequence[float] | None = None
) -> TuneResult:
    """Simulate every grid point; keep the feasible one with the highest QPS per dollar."""
    pts = [
        {"qps": float(q)} | ({"chunk_size": float(c)} if c is not None else {})
        for c in (chunk_grid or [None])
        for q in qps_grid
    ]
    res = core.evaluate_many(case, pts)
    history, best, best_values = [], None, None
    for p, v in zip(pts, res, strict=True):
        ok = slo.met(v)
        history.append(
            {
                **p,
                "qps_per_dollar": v["qps_per_dollar"],
                **{m: v[m] for m in slo.bounds},
                "feasible": float(ok),
            }
        )
        if ok and (best_values is None or v["qps_per_dollar"] > best_values["qps_per_dollar"]):
            best, best_values = dict(p), dict(v)
    return TuneResult(best, best_values, len(pts), history)
