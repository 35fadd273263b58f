"""A first slot capacity for one config, estimated on the host from its request list.

The running set's capacity (``SimStatic.num_slots``) is a shape: every capacity is its
own compiled event loop, and a run that overflows its capacity is re-run (and so
compiled again) at a larger one (:func:`vidur_jax.sim.run.grown_slots`). A compile of
the single-config loop costs ~8-15 s on the 2-core machine against ~0.1 s for a
2,000-request run, so a config should start at the capacity it will need. Starting far
too high is not free either (a step costs O(slots)).

The estimate is a fluid model of one replica, evaluated with the config's own timing
tables (so the model, GPU, parallelism and chunk size are all in it). With ``L``
requests running, an iteration carries their ``L`` decodes (at the list's mean KV
length) and ``c`` prefill tokens: the prefill demand ``lam * P * T`` (``lam`` requests/s
per replica, ``P`` mean prompt tokens, ``T`` the iteration's time) or, when that exceeds
the token budget left, the budget (overload: the prefill throughput, not the arrivals,
admits requests). A request runs ``T * (D + P / c)`` (``D`` mean output tokens), and
``L`` is the fixed point of Little's law. When not overloaded, the estimate is the most
requests whose intervals ``[a_i, a_i + T * (d_i + p_i / c)]`` overlap (arrival bursts,
long outputs), with ``T`` re-evaluated at that crowd until it settles (a crowd makes
iterations slower, which keeps it together longer). On issue #26's lists (Llama-2-7B
A100, Sarathi 512, 2,000 requests) it gives 21 at QPS 2 (largest batch 20), 65 at QPS 5
(largest batch 67, 72 slots suffice) and 45 at QPS 4 (largest batch 41).

It is a starting point, not a bound: an overflow still grows the capacity (nothing is
ever dropped), and the results of a run do not depend on where its capacity started.
"""

from __future__ import annotations

import jax
import numpy as np

from vidur_jax.sim import policies, timing
from vidur_jax.sim.types import SimParams, SimStatic, TimingTables

#: Fixed-point iterations of Little's law (it converges in a few).
FIXED_POINT_ITERS = 30
#: Iterations for the prefill tokens of one iteration at a given number of decodes.
INNER_ITERS = 4
#: Iterations of the peak at the iteration time of the peak's crowd.
PEAK_ITERS = 6


@jax.jit
def _iteration_seconds(tables: TimingTables, params: SimParams, n_dec, sum_kv, chunks, pre_kv):
    """(J,) s of iterations of ``n_dec`` decodes (KV summing to ``sum_kv``) plus one
    prefill chunk of ``chunks`` tokens on ``pre_kv`` (:func:`timing.run_times`)."""
    seconds, _, _ = timing.run_times(
        tables, params, n_dec, sum_kv, chunks, pre_kv, n_dec + (chunks > 0)
    )
    return seconds


def _seconds(
    tables: TimingTables, params: SimParams, n_dec: float, kv: int, chunk: float, pre_kv: int
) -> float:
    """s of one iteration of ``n_dec`` decodes at KV ``kv`` plus a prefill chunk of
    ``chunk`` tokens on KV ``pre_kv``. Beyond the decode table's batch extent B the time
    grows linearly at the slope of its last B/2 rows (decode attention is near-linear in
    the batch there), so the tables the run builds anyway serve the estimate."""
    b = int(tables.decode.shape[1]) - 1
    inside = int(np.clip(round(n_dec), 0, b))

    def at(n: int, c: float) -> float:
        arr = lambda x: np.array([x], np.int32)  # noqa: E731
        return float(
            np.asarray(
                _iteration_seconds(tables, params, arr(n), arr(n * kv), arr(round(c)), arr(pre_kv))
            )[0]
        )

    t = at(inside, chunk)
    if n_dec > b and b >= 2:
        t += (n_dec - b) * (at(b, 0) - at(b // 2, 0)) / (b - b // 2)
    return t


def peak_overlap(start: np.ndarray, end: np.ndarray) -> int:
    """Most of the intervals ``[start_i, end_i)`` that contain one instant."""
    if start.size == 0:
        return 0
    times = np.concatenate([start, end])
    delta = np.concatenate([np.ones(start.size, np.int64), -np.ones(end.size, np.int64)])
    order = np.lexsort((delta, times))  # at equal times an end comes before a start
    return int(np.cumsum(delta[order]).max())


def estimated_running(
    tables: TimingTables,
    params: SimParams,
    arrived_at: np.ndarray,
    num_prefill: np.ndarray,
    num_decode: np.ndarray,
    num_replicas: int,
    token_budget: int,
    cap: int,
) -> int:
    """Estimated peak of requests running at once on one replica (see module docstring).

    Args:
        tables: the config's timing tables.
        params: the config's :class:`SimParams` (host arrays, no config axis).
        arrived_at, num_prefill, num_decode: (R,) the valid requests (s, tokens, tokens).
        num_replicas: replicas sharing the list.
        token_budget: most tokens of one iteration (the policy's prefill chunk, else its
            batch token bound).
        cap: the policy's bound on running requests (the answer is at most this).

    Returns:
        Requests, in ``[1, cap]``.
    """
    n = int(arrived_at.size)
    if n == 0:
        return 1
    duration = float(arrived_at.max() - arrived_at.min())
    lam = n / max(duration, 1e-9) / max(num_replicas, 1)
    prompt, out = max(float(num_prefill.mean()), 1.0), float(num_decode.mean())
    kv, pre_kv = int(prompt + out / 2), int(prompt / 2)
    running, per_iter, chunk = 1.0, 0.0, 1.0
    for _ in range(FIXED_POINT_ITERS):
        room = max(token_budget - running, 1.0)
        chunk = room
        # prefill tokens an iteration carries: the demand, at most the room
        for _ in range(INNER_ITERS):
            per_iter = _seconds(tables, params, running, kv, chunk, pre_kv)
            chunk = float(np.clip(lam * prompt * per_iter, 1.0, room))
        per_iter = _seconds(tables, params, running, kv, chunk, pre_kv)
        admitted = min(lam, chunk / (prompt * per_iter))  # overloaded: prefill throughput admits
        running = min(admitted * per_iter * (out + prompt / chunk), float(cap))
    # not overloaded: the arrivals set who runs together (bursts, long outputs)
    if lam * prompt * per_iter < max(token_budget - running, 1.0):
        peak = running
        for _ in range(PEAK_ITERS):  # T at the crowd's size, until the crowd settles
            per_iter = _seconds(tables, params, peak, kv, chunk, pre_kv)
            live = per_iter * (num_decode + num_prefill / chunk)
            grown = min(
                max(running, peak_overlap(arrived_at, arrived_at + live) / max(num_replicas, 1)),
                float(cap),
            )
            if grown == peak:
                break
            peak = grown
        running = peak
    return int(np.clip(np.ceil(running), 1, cap))


def first_slots(
    cfg, wl, static: SimStatic, tables: TimingTables, params: SimParams, cap: int
) -> int:
    """The slot capacity one config starts at: ``static.num_slots`` (the default start),
    raised to the estimated peak of running requests (:func:`estimated_running`, rounded
    up to a multiple of 8, at most ``cap``) when the estimate exceeds it.

    Kept at ``static.num_slots`` where the fluid model does not describe the run:
    sessions (later turns arrive inside the loop), disaggregated pools, speculative
    decoding.

    Args:
        cfg: the :class:`~vidur_jax.sim.build.DeploymentConfig`.
        wl: its :class:`~vidur_jax.workload.types.Workload`.
        static: the shape the run would start at.
        tables, params: the timing tables built for ``static`` and the config's host
            :class:`SimParams` (no config axis).
        cap: the policy's bound on running requests per replica.
    """
    if static.session_capacity > 0 or static.disagg or static.speculative:
        return static.num_slots
    mask = np.asarray(wl.mask, bool)
    prefill = np.asarray(wl.num_prefill)[mask]
    policy = policies.get(cfg.replica_scheduler)
    budget = policy.prefill_chunk(cfg) or policy.batch_token_bound(cfg, cap)
    need = estimated_running(
        tables,
        params,
        np.asarray(wl.arrived_at, np.float64)[mask],
        prefill,
        np.asarray(wl.num_decode)[mask],
        cfg.num_replicas,
        budget,
        cap,
    )
    return int(min(max(static.num_slots, -(-need // 8) * 8), cap))
