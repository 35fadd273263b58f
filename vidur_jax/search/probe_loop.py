"""The capacity search's event loop: one probe, stopped as soon as its verdict is certain.

The loop body is the simulator's (:func:`vidur_jax.sim.engine.step`, unbatched and
scatter-free as in :func:`vidur_jax.sim.run._single_advance`); only the loop's predicate
differs: every :data:`CHECK_EVERY` steps it also stops when

* **a failure is certain**: at least ``fail_count`` requests already have a latency
  (scheduling delay, or TTFT) above ``bound_s``, counting a request still waiting as
  ``clock - arrival`` (a lower bound of its final latency). numpy's linear quantile
  ``q`` of ``n`` values is at least the ``floor(q (n - 1))``-th smallest, so once
  ``n - floor(q (n - 1))`` lower bounds exceed the bound, the final quantile does too
  (:func:`certain_count`);
* **every request is scheduled** (``stop_when_scheduled``, Vidur's criterion): each
  scheduling delay is then final, so the sched-delay quantile, and with it the verdict,
  is exact. The rest of the run (draining the decodes) changes no delay; a probe whose
  full summary is needed is resumed from this state to its end, which gives the
  unstopped run's state exactly (the same loop body, chained).

The thresholds are arrays, so one executable per shape serves every criterion, bound and
request count, and ``bound_s = inf`` with ``stop_when_scheduled = False`` runs to the end.
The host confirms every stop exactly (:mod:`vidur_jax.search.capacity`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from vidur_jax.sim.engine import is_done, step
from vidur_jax.sim.types import SimParams, SimState, SimStatic

#: Steps between two checks of the stop rules (a stop comes at most this late).
CHECK_EVERY = 16


def certain_count(n: int, q: float) -> int:
    """Fewest of ``n`` values above a bound that make numpy's linear quantile ``q`` of
    all ``n`` exceed it, whatever the others: ``n - floor(q (n - 1))``.

    The quantile interpolates between the ``floor(h)``-th and ``ceil(h)``-th smallest
    values (``h = q (n - 1)``, 0-based), so it is at least the ``floor(h)``-th smallest,
    which exceeds the bound once ``n - floor(h)`` values do.
    """
    if n <= 0:
        return 1
    return n - math.floor(q * (n - 1) + 1e-9)


@dataclasses.dataclass(frozen=True)
class StopRule:
    """When a probe may stop before its end (host values; arrays in the loop).

    Attributes:
        event: ``"scheduled"`` (scheduling delay) or ``"first_token"`` (TTFT): the
            latency the failure rule counts.
        bound_s: latency bound, seconds (inf: no failure rule).
        fail_count: requests above ``bound_s`` that make the failure certain.
        stop_when_scheduled: stop once every valid request has been scheduled.
    """

    event: str = "scheduled"
    bound_s: float = math.inf
    fail_count: int = 1
    stop_when_scheduled: bool = False

    def args(self) -> tuple:
        """The loop's dynamic arguments ``(use_ttft, bound_s, fail_count, stop_sched)``."""
        return (
            jnp.asarray(self.event == "first_token"),
            jnp.asarray(self.bound_s, jnp.float64),
            jnp.asarray(self.fail_count, jnp.int32),
            jnp.asarray(self.stop_when_scheduled),
        )


#: Run to the end (no stop rule).
RUN_TO_END = StopRule()


def _certain(params, state: SimState, use_ttft, bound_s, fail_count, stop_sched) -> jax.Array:
    """() bool: a stop rule holds for the unbatched ``state`` (see the module doc)."""
    arrived = params.arrived_at
    valid = jnp.arange(arrived.shape[0]) < params.num_valid
    event = jnp.where(use_ttft, state.first_token_at, state.scheduled_at)
    happened = jnp.isfinite(event)
    lb = jnp.where(happened, event - arrived, jnp.maximum(state.clock - arrived, 0.0))
    over = jnp.sum((valid & (lb > bound_s)).astype(jnp.int32))
    scheduled = jnp.sum((valid & jnp.isfinite(state.scheduled_at)).astype(jnp.int32))
    return (over >= fail_count) | (stop_sched & (scheduled >= params.num_valid))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def probe_advance(
    static: SimStatic,
    tables,
    params: SimParams,
    state: SimState,
    budget: jax.Array,
    use_ttft: jax.Array,
    bound_s: jax.Array,
    fail_count: jax.Array,
    stop_sched: jax.Array,
) -> SimState:
    """Step one unbatched config (``params`` with a leading axis of 1) until it is done,
    ``budget`` more steps ran, or a stop rule holds (checked every :data:`CHECK_EVERY`
    steps and once on entry).

    Args:
        static: the shape (scatter-free is forced, as in the single runner).
        tables: timing tables.
        params: one config's params, leading axis 1.
        state: its unbatched state (donated).
        budget: () int64, most steps this call.
        use_ttft, bound_s, fail_count, stop_sched: :meth:`StopRule.args`.

    Returns:
        The state where the loop stopped; chained calls with :data:`RUN_TO_END` finish
        it exactly as an unstopped run.
    """
    one = jax.tree.map(lambda x: x[0], params)
    static1 = dataclasses.replace(static, scatter_free=True)
    stop = state.step + budget

    def running(st):
        return ~is_done(one, st) & (st.step < stop)

    def chunk(st):
        end = jnp.minimum(st.step + CHECK_EVERY, stop)
        return jax.lax.while_loop(
            lambda s: ~is_done(one, s) & (s.step < end),
            lambda s: step(static1, tables, one, s),
            st,
        )

    return jax.lax.while_loop(
        lambda st: running(st) & ~_certain(one, st, use_ttft, bound_s, fail_count, stop_sched),
        chunk,
        state,
    )
