"""Gradient-based tuning: maximize QPS per dollar under latency SLOs with optax.

Contract: :func:`gradient_tune` and :func:`grid_search` take a :class:`~vidur_jax.
sensitivity.core.Case`, an :class:`SLO` and knob bounds, and return a :class:`TuneResult`
whose ``best`` point was simulated as is (integer knobs rounded, no smoothing), meets
every SLO and was re-simulated to verify it. Both count the simulations they ran.

The knobs are the load ``qps``, any other continuous knob (``compute_speed``, ...) and
the integer ``chunk_size`` / ``batch_cap``, optimized in log space ``u = log knob``. With
``v_m = metric_m / slo_m - 1`` (e.g. TTFT P90, TBT P99) the objective is

    J(u) = log(qps / $ per hour) - w * sum_m relu(v_m) + mu * sum_m min(0, log(-v_m / a))

an exact L1 penalty where an SLO is violated and, where all are met, a log barrier
truncated to 0 at a relative slack ``a`` (25%): far from every bound ``J = log(qps/$)``,
whose gradient is known without simulating; near a bound the barrier turns the other
knobs towards slack before the load crosses it. Its gradient is the chain rule through the
simulator's derivatives: the Gaussian-smoothed (Stein) slope of the integer knobs (their
relaxation, :mod:`vidur_jax.sensitivity.core`) and of the load, all nodes of an iterate in
one vmapped call; other continuous knobs by forward mode (``jacfwd``: a primal plus one
jvp tangent per knob). The load uses the smoothed slope by default because its jvp holds
the batch schedule fixed and overstates how fast TTFT grows with load (``core`` documents
20-70x for mean TTFT on its test case); ``load_derivative="jvp"`` is available. The optax
optimizer is Rprop-style sign steps (:func:`sign_steps`), which ignore the derivative's
scale: the penalty gradient jumps by orders of magnitude across the saturation knee.

**Simulation count.** Every simulation run is counted: one primal per new iterate (an
iterate that rounds to an earlier point reuses its runs), ``num_nodes`` per smoothed knob
at iterates within ``margin`` of a bound, ``len(forward knobs)`` tangents where forward
mode is used (a jvp run counts as a primal plus one simulation per tangent direction;
measured on the CPU: 40 ms for a primal with one tangent, 21 ms per primal lane of a
vmapped batch), the final verification, and any back-off steps when no iterate was
feasible. Lanes that pad a vmapped batch to its fixed
width (:data:`core.EVAL_BATCH`) are not counted; wall times show that cost.

:func:`grid_search` is the baseline: every point of a product grid simulated (vmapped),
the best feasible one kept and re-simulated on its own (counted).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
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
        best: knob values of the best feasible point (integer knobs rounded; None if no
            point was feasible).
        best_values: its metrics, from a simulation of exactly that point.
        num_simulations: simulations run, counted as in the module docstring.
        history: one dict per iterate / grid point: knobs, objective (gradient loop),
            qps_per_dollar, SLO metrics, feasible, simulations so far (gradient loop).
        verified: the best point re-simulated on its own reproduced its metrics and
            met the SLOs.
        stopped: why the loop ended: ``"converged"`` (``patience`` feasible iterates
            without improvement), ``"max_steps"``, or ``"grid"`` for a grid search.
    """

    best: dict[str, float] | None
    best_values: dict[str, float] | None
    num_simulations: int
    history: list[dict[str, float]]
    verified: bool = False
    stopped: str = "grid"


class SignStepState(NamedTuple):
    """State of :func:`sign_steps`."""

    step: jax.Array  # (K,) current step size per parameter
    prev_sign: jax.Array  # (K,) sign of the previous gradient (0 = none)


def sign_steps(
    learning_rate: float,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step: float | Sequence[float] = 1e-4,
    max_step: float = 0.5,
) -> optax.GradientTransformation:
    """Rprop (the "Rprop-" variant): a step of ``-step * sign(g)`` per parameter.

    A parameter's step grows by ``eta_plus`` while its gradient keeps its sign and shrinks
    by ``eta_minus`` when it flips; on a flip it steps back at the reduced size at once
    (a bisection of the overshoot), where iRprop- would stand still for an iteration -
    here an iteration is several simulations. ``optax.rprop`` (0.2.8) is not used: it
    emits the previous iteration's update (zero on the first step, two zero steps after
    every flip; optax PR #1725).

    Args:
        learning_rate: first step size, parameter units.
        eta_minus: step factor on a sign flip.
        eta_plus: step factor while the sign holds.
        min_step: smallest step size (one, or one per parameter).
        max_step: largest step size.

    Returns:
        An optax gradient transformation (descent convention: pass ``-grad`` to ascend).
    """

    def init(params):
        return SignStepState(jnp.full_like(params, learning_rate), jnp.zeros_like(params))

    def update(grads, state, params=None):
        del params
        sign = jnp.sign(grads)
        agree = sign * state.prev_sign
        step = jnp.where(agree > 0, state.step * eta_plus, state.step)
        step = jnp.where(agree < 0, step * eta_minus, step)
        step = jnp.clip(step, jnp.asarray(min_step, step.dtype), max_step)
        # a zero gradient (no SLO active for this knob) keeps the step for later
        return -step * sign, SignStepState(step, jnp.where(sign == 0, state.prev_sign, sign))

    return optax.GradientTransformation(init, update)


def _objective(
    values: Mapping[str, float], slo: SLO, weight: float, barrier: float, margin: float
) -> tuple[float, dict[str, float]]:
    """J and dJ/d(metric) at ``values``.

    ``J = log(qps/$) - weight * sum_m relu(v_m) + barrier * sum_m min(0, log(-v_m / margin))``
    with ``v_m = metric_m / slo_m - 1``: an exact L1 penalty where an SLO is violated and,
    where all are met, a log barrier truncated to 0 at a relative slack of ``margin``
    (it steers the other knobs towards slack only near the boundary).
    """
    j = math.log(values["qps_per_dollar"])
    grad = {"qps_per_dollar": 1.0 / values["qps_per_dollar"]}
    viol = slo.violation(values)
    feasible = all(v <= 0 for v in viol.values())
    for m, v in viol.items():
        if v > 0:
            j -= weight * v
            grad[m] = grad.get(m, 0.0) - weight / slo.bounds[m]
        elif feasible and barrier > 0 and -v < margin:
            j += barrier * math.log(max(-v, 1e-12) / margin)
            grad[m] = grad.get(m, 0.0) - barrier / max(slo.bounds[m] - values[m], 1e-12)
    return j, grad


def _rounded(point: Mapping[str, float]) -> dict[str, float]:
    return {k: float(round(v)) if k in core.DISCRETE_KNOBS else float(v) for k, v in point.items()}


def _verify(case: core.Case, slo: SLO, best: Mapping[str, float], values: Mapping[str, float]):
    """Re-simulate ``best`` on its own: same metrics (deterministic) and SLOs met."""
    again = core.evaluate(case, best)
    same = all(
        math.isclose(again[m], values[m], rel_tol=1e-6, abs_tol=1e-9)
        for m in (*slo.bounds, "qps_per_dollar")
    )
    return same and slo.met(again)


def _relaxed_slopes(
    case: core.Case,
    knobs: Sequence[str],
    point: Mapping[str, float],
    num_nodes: int,
    width: float,
) -> dict[str, dict[str, float]]:
    """``{metric: {knob: slope of the Gaussian-smoothed metric}}`` at ``point``.

    Same estimator as :func:`core.smoothed_derivatives` (integer knobs smoothed over
    ``width`` x value, continuous ones over :data:`core.CONTINUOUS_SMOOTHING`), but every
    node of every knob is simulated in one :func:`core.evaluate_many` call.
    """
    z, w = np.polynomial.hermite_e.hermegauss(num_nodes)
    w = w / w.sum()
    widths = {
        k: core.smoothing_width(k, point[k], None)
        if k in core.CONTINUOUS_KNOBS
        else max(core.MIN_SMOOTHING[k], width * point[k])
        for k in knobs
    }
    pts = [point | {k: point[k] + widths[k] * zi} for k in knobs for zi in z]
    res = core.evaluate_many(case, pts)
    out: dict[str, dict[str, float]] = {m: {} for m in core.METRICS}
    for i, k in enumerate(knobs):
        rows = res[i * num_nodes : (i + 1) * num_nodes]
        for m in core.METRICS:
            v = np.array([r[m] for r in rows])
            out[m][k] = float(np.sum(w * z * v) / widths[k])
    return out


def gradient_tune(
    case: core.Case,
    slo: SLO,
    bounds: Mapping[str, tuple[float, float]],
    start: Mapping[str, float] | None = None,
    steps: int = 40,
    learning_rate: float = 0.2,
    weight: float = 20.0,
    barrier: float = 0.02,
    margin: float = 0.25,
    width: float = 0.25,
    num_nodes: int = 2,
    resolution: float = 0.01,
    integer_resolution: float = 0.05,
    patience: int = 5,
    deadzone: float = 0.05,
    load_derivative: str = "smoothed",
    optimizer: optax.GradientTransformation | None = None,
) -> TuneResult:
    """Ascend the SLO-penalized log QPS per dollar over the log-knobs with optax.

    Each iterate simulates the rounded knobs once. If every SLO has more than ``margin``
    relative slack, ``J = log(qps/$)`` and its gradient is known without simulating
    (``d log(qps/$) / d log qps = 1``, 0 for the other knobs). Otherwise the derivatives
    of the SLO metrics are simulated: the Gaussian-smoothed (Stein) slope of the integer
    knobs and, with ``load_derivative="smoothed"``, of the load, all nodes in one vmapped
    call; other continuous knobs (and the load with ``"jvp"``) by forward mode. The load
    defaults to the smoothed slope because its jvp holds the schedule fixed, which
    overstates how fast TTFT grows with load (20-70x on the test case of :mod:`core`): the
    barrier then stops the load well below the knee.

    The default optimizer is Rprop (:func:`sign_steps`): per-knob steps that grow by 1.2
    while the derivative keeps its sign and halve when it flips, down to ``resolution``
    (continuous) or ``integer_resolution`` (integer knobs). It follows the derivative's
    sign only, which suits this objective: the penalty's gradient jumps by orders of
    magnitude where the load crosses the saturation knee, and after one such jump Adam's
    second-moment estimate keeps its steps tiny for dozens of iterations.

    Args:
        case: the deployment and workload (its knob values are the default start).
        slo: latency objectives.
        bounds: ``{knob: (lo, hi)}``: the knobs tuned (must include ``qps``) and the box
            their iterates are clipped into.
        start: starting knob values (missing = the case's; clipped into the box).
        steps: most iterations.
        learning_rate: first step, log-knob units (``0.2`` = about 20%).
        weight: L1 penalty weight on the relative SLO violations.
        barrier: weight of the truncated log barrier (0 = penalty only).
        margin: relative slack below which the barrier (and the derivative simulations)
            start.
        width: smoothing width of the integer knobs, fraction of the value (>= the
            :data:`core.MIN_SMOOTHING` floor).
        num_nodes: Gauss-Hermite nodes (even) per smoothed knob.
        resolution: smallest step of a continuous knob, log units (``0.01`` = 1%).
        integer_resolution: smallest step of an integer knob, log units: its smoothed
            slope describes the metric over +-``width``, finer steps would follow noise.
        patience: stop after this many feasible iterates in a row that did not improve
            the best QPS per dollar by more than ``resolution``.
        deadzone: derivatives ``|dJ/du| < deadzone`` count as 0: sign steps would give
            the noise of a smoothed slope a full step (the load's derivative is ~1).
        load_derivative: ``"smoothed"`` or ``"jvp"`` for the ``qps`` knob.
        optimizer: replaces the default :func:`sign_steps`; it gets ``-dJ/du``.

    Returns:
        A :class:`TuneResult`; ``best`` is the best feasible iterate (rounded knobs),
        re-simulated to verify it. If no iterate was feasible, the last one's qps is
        backed off by 5% per simulation (at most 20) until it is. An iterate that rounds
        to an earlier point reuses that point's simulations and is not counted again.
    """
    knobs = list(bounds)
    require("qps" in knobs, f"bounds must include qps; got {knobs}")
    allowed = [
        k for k in (*core.CONTINUOUS_KNOBS, *core.DISCRETE_KNOBS) if k != "price_per_gpu_hour"
    ]
    bad = [k for k in knobs if k not in allowed]
    require(not bad, f"unknown or untunable knobs {bad}")
    require(
        all(0 < lo < hi for lo, hi in bounds.values()), f"bounds={dict(bounds)}: need 0 < lo < hi"
    )
    require(load_derivative in ("smoothed", "jvp"), f"load_derivative={load_derivative!r}")
    smoothed = [k for k in knobs if k in core.DISCRETE_KNOBS]
    if load_derivative == "smoothed":
        smoothed.append("qps")
    forward = [k for k in knobs if k not in smoothed]
    lo = np.log([bounds[k][0] for k in knobs])
    hi = np.log([bounds[k][1] for k in knobs])
    point = case.base_knobs() | dict(start or {})
    u = np.clip(np.array([math.log(point[k]) for k in knobs]), lo, hi)
    min_step = [integer_resolution if k in core.DISCRETE_KNOBS else resolution for k in knobs]
    opt = optimizer or sign_steps(learning_rate, min_step=min_step)
    state = opt.init(u)
    seen: dict[tuple[float, ...], tuple[dict[str, float], dict[str, dict[str, float]]]] = {}
    history: list[dict[str, float]] = []
    best, best_values = None, None
    best_q, since_best, sims = -math.inf, 0, 0
    stopped = "max_steps"
    for _ in range(steps):
        x = _rounded({k: math.exp(v) for k, v in zip(knobs, u, strict=True)})
        at = point | x
        key = tuple(x[k] for k in knobs)
        if key not in seen:
            if forward:  # one forward-mode run: the metrics and their jvp in `forward`
                sens = core.sensitivities(case, forward, at=at)
                values, deriv = sens.values, sens.derivative
                sims += 1 + len(forward)
            else:
                values, deriv = core.evaluate(case, at), {m: {} for m in core.METRICS}
                sims += 1
            near = any(v > -margin for v in slo.violation(values).values())
            if near and smoothed:
                slopes = _relaxed_slopes(case, smoothed, at, num_nodes, width)
                deriv = {m: deriv[m] | slopes[m] for m in core.METRICS}
                sims += num_nodes * len(smoothed)
            elif not near:  # J = log(qps/$) exactly: only the load moves it
                deriv = {"qps_per_dollar": {"qps": values["qps_per_dollar"] / at["qps"]}}
            seen[key] = (values, deriv)
        values, deriv = seen[key]
        j, dj_dm = _objective(values, slo, weight, barrier, margin)
        # dJ/d log knob = sum_m dJ/dm * dm/dknob * knob
        g = np.array([sum(dj_dm[m] * deriv[m].get(k, 0.0) for m in dj_dm) * at[k] for k in knobs])
        g = np.where(np.abs(g) < deadzone, 0.0, g)
        feasible = slo.met(values)
        q = values["qps_per_dollar"]
        history.append(
            {
                **x,
                "objective": j,
                "qps_per_dollar": q,
                **{m: values[m] for m in slo.bounds},
                "feasible": float(feasible),
                "simulations": float(sims),
                **{f"dJ/dlog_{k}": float(gk) for k, gk in zip(knobs, g, strict=True)},
            }
        )
        if feasible:  # patience counts feasible iterates only: infeasible ones still search
            since_best = 0 if q > best_q * (1.0 + resolution) else since_best + 1
            if q > best_q:
                best, best_values, best_q = dict(x), dict(values), q
        updates, state = opt.update(-g, state, u)  # ascend J
        u = np.clip(np.asarray(optax.apply_updates(u, updates)), lo, hi)
        if best is not None and since_best >= patience:
            stopped = "converged"
            break
    if best is None:  # back off the load of the last iterate until the SLOs hold
        x = _rounded({k: math.exp(v) for k, v in zip(knobs, u, strict=True)})
        for _ in range(20):
            x["qps"] *= 0.95
            values = core.evaluate(case, point | x)
            sims += 1
            if slo.met(values):
                best, best_values = dict(x), values
                break
    verified = False
    if best is not None:
        verified = _verify(case, slo, point | best, best_values)
        sims += 1
    return TuneResult(best, best_values, sims, history, verified, stopped)


def grid_search(case: core.Case, slo: SLO, grid: Mapping[str, Sequence[float]]) -> TuneResult:
    """Simulate every point of the product grid; keep the best feasible one.

    Args:
        case: the deployment and workload.
        slo: latency objectives.
        grid: ``{knob: values}``; the product of all lists is simulated (vmapped, in
            batches of :data:`core.EVAL_BATCH`).

    Returns:
        A :class:`TuneResult`; the best point is re-simulated on its own (counted).
    """
    names = list(grid)
    pts = [
        _rounded(dict(zip(names, vals, strict=True)))
        for vals in itertools.product(*(grid[k] for k in names))
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
    verified = best is not None and _verify(case, slo, case.base_knobs() | best, best_values)
    return TuneResult(best, best_values, len(pts) + (best is not None), history, verified)
