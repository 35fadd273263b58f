"""Scatter-free indexed updates and the single-config path built on them.

``indexed.update(..., scatter_free=True)`` must equal ``arr.at[idx].<op>(v, mode="drop")``
(out-of-bounds rows dropped, repeated rows accumulated); ``engine.simulate_single`` must
give the batched simulation's results, and its event loop must hold no scatter, so that
XLA:CPU compiles it into one kernel (the reason it exists).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sim_invariants import POLICIES, PRED, random_workload, small_config

from vidur_jax.sim import build, indexed
from vidur_jax.sim.engine import simulate_batch, simulate_single

OPS = ("set", "add", "min", "max")


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    idx=st.lists(st.integers(-3, 15), min_size=1, max_size=6),
    op=st.sampled_from(OPS),
    seed=st.integers(0, 2**16),
)
def test_vector_index_update_matches_scatter(n, idx, op, seed):
    rng = np.random.default_rng(seed)
    arr = jnp.asarray(rng.integers(-50, 50, n), jnp.int32)
    # negative indices are out of bounds here (the engine never wraps); "set" with a
    # repeated index is order-dependent in XLA, so it gets unique indices
    idx = np.array(sorted(set(idx)) if op == "set" else idx, np.int32)
    idx = np.where(idx < 0, n + 5, idx)
    vals = jnp.asarray(rng.integers(-50, 50, idx.size), jnp.int32)
    want = getattr(arr.at[idx], op)(vals, mode="drop")
    got = jax.jit(lambda a, i, v: indexed.update(a, i, v, op, scatter_free=True))(arr, idx, vals)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("row", [0, 2, 3])  # 3 is out of bounds: dropped
def test_row_and_element_updates_match_scatter(row):
    arr = jnp.arange(12.0).reshape(3, 4)
    new_row = jnp.array([-1.0, -2.0, -3.0, -4.0])
    for index, values in [(row, new_row), ((row, 1), 7.5)]:
        want = arr.at[index].set(values, mode="drop")
        np.testing.assert_array_equal(indexed.update(arr, index, values, "set", True), want)


def test_column_slice_add_matches_scatter():
    """``hist[:, idx] += weights`` with (C, K) weights, as the fused-run histogram does."""
    hist = jnp.zeros((3, 6), jnp.int32)
    idx = jnp.array([0, 5, 2, 5])
    weights = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
    want = hist.at[:, idx].add(weights)
    np.testing.assert_array_equal(indexed.update(hist, (slice(None), idx), weights, "add", True), want)


def test_permute_matches_scatter():
    arr = jnp.array([10, 11, 12, 13])
    dest = jnp.array([2, 0, 3, 1])
    np.testing.assert_array_equal(indexed.permute(arr, dest, True), arr.at[dest].set(arr))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 10), seed=st.integers(0, 2**16), fixed=st.integers(0, 10))
def test_permute_with_fixed_points_matches_scatter(n, seed, fixed):
    """The loop visits only the span of rows that move; fixed points anywhere (the
    compaction's untouched prefix and empty tail) must come out unchanged."""
    rng = np.random.default_rng(seed)
    dest = np.arange(n)
    moving = rng.permutation(n)[: max(n - fixed, 0)]
    dest[np.sort(moving)] = moving  # permute only the moving rows among themselves
    arr = jnp.asarray(rng.integers(-50, 50, (n, 2)), jnp.int32)
    got = jax.jit(lambda a, d: indexed.permute(a, d, True))(arr, jnp.asarray(dest, jnp.int32))
    np.testing.assert_array_equal(got, arr.at[dest].set(arr))


def test_update_skips_dropped_rows_at_both_ends():
    """Out-of-bounds rows before and after the in-bounds ones are dropped; none at all: a no-op."""
    arr = jnp.arange(6, dtype=jnp.int32)
    for idx in ([9, 9, 2, 9, 4, 9], [9, 9, 9], [0, 5], [-1, 3, 7]):
        idx = jnp.asarray(idx, jnp.int32)
        vals = jnp.arange(10, 10 + idx.shape[0], dtype=jnp.int32)
        for op in OPS:
            want = getattr(arr.at[jnp.where(idx < 0, 99, idx)], op)(vals, mode="drop")
            got = indexed.update(arr, jnp.where(idx < 0, 99, idx), vals, op, True)
            np.testing.assert_array_equal(got, want)


def _stacked(policy: str, seed: int = 1):
    cfg = small_config(policy, seed=seed)
    wl = random_workload(seed, n=40)
    d = build.derive(cfg)
    static = build.make_static([cfg], [d], wl.num_requests, num_slots=16)
    tables, index = build.build_tables([cfg], build.table_spec_for([cfg], static.num_slots), lambda c: PRED)
    return static, tables, build.stack_params([build.build_params(cfg, d, wl, index[0], wl.num_requests)])


@pytest.mark.parametrize("policy", POLICIES)
def test_single_config_path_equals_batched(policy):
    """Same requests, same timestamps (to float rounding of the generated code: the whole-
    loop kernel may contract f32 multiply-adds differently), same histogram and counters."""
    static, tables, params = _stacked(policy)
    a = simulate_batch(static, tables, params)
    b = simulate_single(static, tables, params)
    assert int(b.error[0]) == 0 and int(a.step[0]) == int(b.step[0])
    for key in ("scheduled_at", "first_token_at", "completed_at"):
        np.testing.assert_allclose(getattr(b, key), getattr(a, key), rtol=1e-12, atol=1e-7)
    for key in ("num_restarts", "tbt_hist", "num_completed", "num_batches", "tbt_count"):
        np.testing.assert_array_equal(getattr(b, key), getattr(a, key))


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(v, "jaxpr", None)
            if inner is not None:
                yield getattr(inner, "jaxpr", inner)


def _primitives(jaxpr) -> set[str]:
    """Names of every primitive in ``jaxpr`` and its sub-jaxprs (loop bodies, branches)."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in _sub_jaxprs(eqn):
            names |= _primitives(sub)
    return names


def test_single_config_loop_has_no_scatter_and_is_one_kernel():
    static, tables, params = _stacked("sarathi")
    closed = jax.make_jaxpr(lambda t, p: simulate_single(static, t, p))(tables, params)
    whiles = []

    def find(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "while":
                whiles.append(eqn)
            for sub in _sub_jaxprs(eqn):
                find(sub)

    find(closed.jaxpr)
    event_loop = max(whiles, key=lambda e: len(e.params["body_jaxpr"].jaxpr.eqns))
    body = _primitives(event_loop.params["body_jaxpr"].jaxpr)
    assert "dynamic_update_slice" in body  # the state updates are there, as loops
    assert not {p for p in body if p.startswith("scatter")}, "a scatter keeps XLA:CPU from one kernel"
    if "xla_cpu_small_while_loop_byte_threshold" in os.environ.get("XLA_FLAGS", ""):
        # the event loop was outlined into one kernel by XLA:CPU's small-while-loop pass
        hlo = simulate_single.lower(static, tables, params).compile().as_text()
        assert "xla_cpu_small_call" in hlo
