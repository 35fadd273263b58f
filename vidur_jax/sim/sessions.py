"""Closed-loop multi-turn sessions inside the event loop (DESIGN.md section 7).

A session's later turn has no arrival time of its own: it arrives ``think_s`` seconds
after its previous turn (its *parent* row) completes, in the same config's simulation.
So, per config,

* **open-loop rows** (every request of a workload without sessions, and a session's
  first turn) arrive at ``SimParams.arrived_at`` as before, in row order; the stream
  skips the rows of later turns (``open_next``);
* **turns** enter a table of pending arrivals (``P`` entries: ``sess_req``,
  ``sess_at``) when their parent completes, at the parent's completion time + think
  time, and leave it when they arrive. The next arrival is the earlier of the stream's
  head and the table's minimum (ties: the stream first), so a turn is routed when it
  arrives, by the router's view of the state then. ``P`` is the number of sessions with
  a later turn (at most one turn per session is pending), so the table never overflows.

With sessions on, every router decides at arrival (round robin and random still depend
only on the request's row, as before). A fused run of iterations stops at the first
completion of a request that has a next turn, so that turn's arrival is an event of its
own, exactly when it happens.

Off (``SimStatic.session_capacity == 0``): every function here returns what the engine
computed before (same operations), the fields are zero-sized, and results are
bit-identical to a build without sessions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vidur_jax.sim import indexed, scan
from vidur_jax.sim.types import SimParams, SimState, SimStatic

_INF = jnp.inf


def on(static: SimStatic) -> bool:
    """Sessions are compiled in (some workload of the call has later turns)."""
    return static.session_capacity > 0


class Arrival(NamedTuple):
    """The next arrival of a config."""

    req: jax.Array  # () i32 request row (undefined when ``at`` is inf)
    at: jax.Array  # () f64 s arrival time (inf = none)
    entry: jax.Array  # () i32 pending-turn table entry it comes from (-1: the open-loop stream)


def next_arrival(static: SimStatic, params: SimParams, state: SimState) -> Arrival:
    """The config's next arrival: the open-loop stream's head or the earliest pending turn."""
    r = static.num_requests
    if not on(static):
        i = jnp.minimum(state.next_arrival, r - 1)
        t = jnp.where(state.next_arrival < r, params.arrived_at[i], _INF)
        return Arrival(state.next_arrival, t, jnp.int32(-1))
    j = jnp.where(state.next_arrival < r, params.open_next[jnp.minimum(state.next_arrival, r - 1)], r)
    t_open = jnp.where(j < r, params.arrived_at[jnp.minimum(j, r - 1)], _INF)
    k = jnp.argmin(state.sess_at).astype(jnp.int32)
    turn = state.sess_at[k] < t_open
    return Arrival(
        jnp.where(turn, state.sess_req[k], j).astype(jnp.int32),
        jnp.where(turn, state.sess_at[k], t_open),
        jnp.where(turn, k, -1).astype(jnp.int32),
    )


def arrived(static: SimStatic, state: SimState, arr: Arrival, apply: jax.Array) -> dict[str, jax.Array]:
    """State fields after arrival ``arr`` is taken (no-op unless ``apply``)."""
    if not on(static):
        return {"next_arrival": state.next_arrival + apply.astype(jnp.int32)}
    p, r = static.session_capacity, static.num_requests
    from_table = apply & (arr.entry >= 0)
    e = jnp.where(from_table, arr.entry, p)
    put = lambda a, i, v: indexed.update(a, i, v, "set", static.scatter_free)  # noqa: E731
    return {
        "next_arrival": jnp.where(apply & (arr.entry < 0), arr.req + 1, state.next_arrival).astype(jnp.int32),
        "sess_req": put(state.sess_req, e, -1),
        "sess_at": put(state.sess_at, e, _INF),
        "sess_arrived": put(state.sess_arrived, jnp.where(apply, arr.req, r), arr.at),
    }


def arrival_time(static: SimStatic, params: SimParams, state: SimState, req: jax.Array) -> jax.Array:
    """Arrival times (s) of requests ``req`` (valid rows; a turn's is known once it arrived)."""
    if not on(static):
        return params.arrived_at[req]
    return state.sess_arrived[req]


def spawn(static: SimStatic, params: SimParams, state: SimState, req: jax.Array, done: jax.Array) -> SimState:
    """Requests ``req`` whose slot ``done`` completed send their next turn: it enters
    the pending table at their completion time (``state.completed_at``) + its think time.

    Args:
        req: (S,) i32 request ids of the slots (-1 = free).
        done: (S,) bool slots that completed at this event.
    """
    if not on(static):
        return state
    r, p = static.num_requests, static.session_capacity
    safe = jnp.clip(req, 0, r - 1)
    child = jnp.where(done & (req >= 0), params.session_next[safe], -1)
    has = child >= 0
    at = state.completed_at[safe] + params.think_s[jnp.clip(child, 0, r - 1)]
    free = state.sess_req < 0
    # the k-th child takes the k-th free entry
    entry_of_rank = indexed.update(jnp.full(p, p, jnp.int32), jnp.where(free, scan.cumsum(free) - 1, p),
                                   jnp.arange(p, dtype=jnp.int32), "set", static.scatter_free)
    rank = scan.cumsum(has) - 1
    e = jnp.where(has, entry_of_rank[jnp.clip(rank, 0, p - 1)], p)
    e = jnp.where(rank < p, e, p)
    put = lambda a, v: indexed.update(a, e, v, "set", static.scatter_free)  # noqa: E731
    return state.replace(sess_req=put(state.sess_req, child), sess_at=put(state.sess_at, at))


def run_limit(
    static: SimStatic, params: SimParams, req: jax.Array, decodes: jax.Array, remaining: jax.Array, j_max: int
) -> jax.Array:
    """() i32 longest fused run: up to the first completion of a request with a next turn.

    Args:
        req: (S,) i32 request ids of the slots.
        decodes: (S,) bool slots that decode in the run.
        remaining: (S,) i32 iterations each has left (it completes at the end of that one).
    """
    has_next = decodes & (req >= 0) & (params.session_next[jnp.clip(req, 0, static.num_requests - 1)] >= 0)
    return jnp.min(jnp.where(has_next, jnp.maximum(remaining, 1), j_max)).astype(jnp.int32)


def init_fields(static: SimStatic) -> dict[str, jax.Array]:
    """Initial pending-turn table and arrival record (zero-sized when off)."""
    p = static.session_capacity
    r = static.num_requests if on(static) else 0
    return {
        "sess_req": jnp.full(p, -1, jnp.int32),
        "sess_at": jnp.full(p, _INF, jnp.float64),
        "sess_arrived": jnp.full(r, jnp.nan, jnp.float64),
    }


# ------------------------------------------------------------------ host side


def has_sessions(workload) -> bool:
    """The workload has later turns (rows arriving after a parent completes)."""
    prev = getattr(workload, "session_prev", None)
    return prev is not None and bool((np.asarray(prev)[np.asarray(workload.mask)] >= 0).any())


def capacity(workloads) -> int:
    """``SimStatic.session_capacity`` of a call: the most sessions with a later turn in
    one workload (each has at most one turn pending), a multiple of 8; 0 = off."""
    most = 0
    for w in workloads:
        if has_sessions(w):
            prev = np.asarray(w.session_prev)
            valid = np.asarray(w.mask) & (prev >= 0)
            second = valid & (prev[np.maximum(prev, 0)] < 0)  # the turn after a first turn
            most = max(most, int(second.sum()))
    return 0 if most == 0 else -(-most // 8) * 8


def param_fields(workload, num_requests: int, enabled: bool) -> dict[str, np.ndarray]:
    """``SimParams`` session fields of one config: (R,) arrays when ``enabled`` (a
    workload without sessions gets no turns), else zero-sized."""
    if not enabled:
        return {"session_next": np.zeros(0, np.int32), "think_s": np.zeros(0, np.float64),
                "open_next": np.zeros(0, np.int32)}
    r, n = num_requests, workload.num_requests
    prev = np.full(r, -1, np.int64)
    think = np.zeros(r, np.float64)
    if has_sessions(workload):
        mask = np.asarray(workload.mask)
        prev[:n] = np.where(mask, np.asarray(workload.session_prev), -1)
        think[:n] = np.where(mask, np.asarray(workload.think_time_s, np.float64), 0.0)
    nxt = np.full(r, -1, np.int32)
    rows = np.flatnonzero(prev >= 0)
    nxt[prev[rows]] = rows
    # open_next[i]: first row >= i that arrives open loop (not a later turn); r = none
    is_open = prev < 0
    idx = np.where(is_open, np.arange(r), r)
    open_next = np.minimum.accumulate(idx[::-1])[::-1].astype(np.int32)
    return {"session_next": nxt, "think_s": think, "open_next": open_next}


def request_arrivals(enabled: bool, state: SimState, i: int, n: int, default: np.ndarray) -> np.ndarray:
    """(n,) arrival times of config ``i``'s requests: simulated (sessions on) or ``default``."""
    if not enabled:
        return default
    got = np.asarray(state.sess_arrived[i])[:n]
    return np.where(np.isnan(default), np.nan, got)


#: summary.csv columns (nan for a workload without sessions)
COLUMNS = ("num_sessions", "session_turns_mean", "session_time_p50", "session_time_p90")


def summary(workload, requests: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-session metrics of one config: sessions, turns per session, and the session
    time (last turn's completion - first turn's arrival, s; completed sessions only)."""
    if not has_sessions(workload):
        return dict.fromkeys(COLUMNS, float("nan"))
    mask = np.asarray(workload.mask)
    sid = np.asarray(workload.session_id)[mask]
    arrived = requests["arrived_at"][: mask.size][mask]
    done = requests["completed_at"][: mask.size][mask]
    sessions, inverse = np.unique(sid, return_inverse=True)
    first = np.full(sessions.size, np.inf)
    np.minimum.at(first, inverse, arrived)
    last = np.full(sessions.size, -np.inf)
    np.maximum.at(last, inverse, np.where(np.isfinite(done), done, np.inf))
    span = (last - first)[np.isfinite(last)]
    return {
        "num_sessions": float(sessions.size),
        "session_turns_mean": float(sid.size / sessions.size),
        "session_time_p50": float(np.percentile(span, 50)) if span.size else float("nan"),
        "session_time_p90": float(np.percentile(span, 90)) if span.size else float("nan"),
    }
