"""Gradients of serving metrics with respect to deployment knobs, and gradient tuning.

The simulator is an array program, so instead of re-running it we differentiate it:
forward mode (``jvp`` through the event ``while_loop``) for a few knobs, reverse mode
(``vjp`` through a bounded, checkpointed ``lax.scan`` of the same step) for many.
See :mod:`vidur_jax.sensitivity.core` for the knobs, the metrics, what the derivative
means where the schedule is discrete, and the smoothing relaxation of the integer knobs
(chunk size, batch cap) with its bias.

Python API::

    from vidur_jax import sensitivity as sens
    case = sens.make_case(config, workload, predictor, qps=2.0)
    s = sens.sensitivities(case, ["qps", "compute_speed", "chunk_size"])
    s.derivative["ttft_p90"]["qps"], s.elasticity("ttft_p90", "qps"), s.frame()

:mod:`vidur_jax.sensitivity.tune` maximizes QPS per dollar under an SLO with optax;
``python -m vidur_jax +experiment=sensitivity`` writes ``sensitivity.csv`` and a plot
(:mod:`vidur_jax.sensitivity.task`).
"""

from vidur_jax.sensitivity.core import (
    CONTINUOUS_KNOBS,
    DEFAULT_KNOBS,
    DISCRETE_KNOBS,
    METRICS,
    Case,
    Sensitivity,
    evaluate,
    evaluate_many,
    finite_difference,
    make_case,
    sensitivities,
    simulate_scan,
    smoothed_derivatives,
)

__all__ = [
    "CONTINUOUS_KNOBS",
    "DEFAULT_KNOBS",
    "DISCRETE_KNOBS",
    "METRICS",
    "Case",
    "Sensitivity",
    "evaluate",
    "evaluate_many",
    "finite_difference",
    "make_case",
    "sensitivities",
    "simulate_scan",
    "smoothed_derivatives",
]
