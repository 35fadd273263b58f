"""S3's decreasing-first-fit admission (issue 7): the packing rule, a hand-worked toy
case where it admits a different set than arrival order, and invariants.

Timing as in ``test_sim_toy.py``: an iteration of T tokens (rounded up to 8) takes
``10 ms + 0.1 ms x T8``; attention is free.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sim_invariants import PRED as RANDOM_PRED
from test_sim_invariants import random_workload, small_config
from test_sim_toy import check, it, run

from vidur_jax.sim import build
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.engine import make_simulator
from vidur_jax.sim.policies import first_fit_decreasing
from vidur_jax.sim.run import simulate_configs
from vidur_jax.workload import make_workload

# ------------------------------------------------------------------ the packing rule


def ffd(size, free, room=99, ok=None, tie=None):
    size = jnp.asarray(size, jnp.int32)
    ok = jnp.ones(size.shape, bool) if ok is None else jnp.asarray(ok)
    tie = jnp.arange(size.shape[0], dtype=jnp.int32) if tie is None else jnp.asarray(tie, jnp.int32)
    return np.asarray(
        first_fit_decreasing(size, ok, jnp.int32(free), jnp.int32(room), tie)
    ).tolist()


def test_first_fit_decreasing_skips_what_does_not_fit():
    # largest first: 4 (left 1), 3 skipped, 2 skipped, 1 (left 0)
    assert ffd([3, 4, 2, 1], 5) == [False, True, False, True]
    # an arrival-order prefix would stop at the first misfit: 3 then (4 does not fit)
    assert ffd([3, 4, 2, 1], 9) == [True, True, True, False]
    assert ffd([3, 4, 2, 1], 10) == [True, True, True, True]
    assert ffd([3, 4, 2, 1], 0) == [False, False, False, False]


def test_first_fit_decreasing_cap_ties_and_masks():
    # the batch cap counts admissions in packing order (largest first)
    assert ffd([3, 4, 2, 1], 10, room=2) == [True, True, False, False]
    # equal sizes: the smaller tie-breaker (earlier request) goes first
    assert ffd([2, 2, 2], 4, tie=[7, 5, 6]) == [False, True, True]
    # masked items are neither admitted nor take room
    assert ffd([4, 3, 2], 5, ok=[False, True, True]) == [False, True, True]
    # padding items after the valid ones (as in a short window)
    assert ffd([1, 1, 9, 9], 9, ok=[True, True, False, False]) == [True, True, False, False]


# ---------------------------------------------------------- hand-worked toy schedule


def toy_cfg(admission: str) -> DeploymentConfig:
    # 16-token blocks, max_tokens 64, 8 buckets of 8 output tokens, 5 KV blocks in all
    return DeploymentConfig(
        replica_scheduler="s3",
        max_tokens=64,
        s3_num_buckets=8,
        num_blocks=5,
        s3_admission=admission,
    )


def toy_workload():
    # one output token each (true bucket 0: 8 tokens reserved), so a request completes
    # with its prefill. Reservations ceil((prompt + 8) / 16) blocks:
    #   R0 prompt 40 -> 3, R1 prompt 56 -> 4, R2 prompt 24 -> 2, R3 prompt 8 -> 1 (all at 0)
    #   R4 prompt 8 -> 1, arriving at 1 ms while the first batch runs
    return make_workload(
        np.array([0.0, 0.0, 0.0, 0.0, 0.001]),
        np.array([40, 56, 24, 8, 8]),
        np.array([1, 1, 1, 1, 1]),
    )


def test_s3_first_fit_toy():
    out = run(toy_cfg("dff"), toy_workload())
    # t=0, window [R0 R1 R2 R3], 5 free: largest first R1 (4, 1 left), R0 (3) and R2 (2)
    #   skipped, R3 (1, 0 left): batch {R1, R3}, 56 + 8 = 64 tokens -> b1 = it(64).
    #   The queue keeps R0, R2 at its head, in order, then R4 (arrived at 1 ms).
    # b1: R1, R3 done (5 free). Window [R0 R2 R4]: R0 (3, 2 left), R2 (2, 0 left), R4
    #   skipped: batch {R0, R2}, 40 + 24 = 64 tokens -> b2 = b1 + it(64).
    # b2: R4 alone, 8 tokens -> b3 = b2 + it(8).
    b1 = it(64)
    b2 = b1 + it(64)
    b3 = b2 + it(8)
    check(out, [b1, 0.0, b1, 0.0, b2], [b2, b1, b2, b1, b3], [b2, b1, b2, b1, b3])
    assert out.summary["num_completed"] == 5
    assert out.counters["num_batches"] == 3


def test_s3_fcfs_toy():
    out = run(toy_cfg("fcfs"), toy_workload())
    # t=0: R0 (3, 2 left), R1 (4) does not fit: stop. Batch {R0}, 40 tokens -> a1.
    # a1: window [R1 R2 R3 R4]: R1 (4, 1 left), R2 (2) does not fit: {R1}, 56 -> a2.
    # a2: R2 (2), R3 (1), R4 (1): all fit, 24 + 8 + 8 = 40 tokens -> a3.
    a1 = it(40)
    a2 = a1 + it(56)
    a3 = a2 + it(40)
    check(out, [0.0, a1, a2, a2, a2], [a1, a2, a3, a3, a3], [a1, a2, a3, a3, a3])
    assert out.counters["num_batches"] == 3


def test_s3_lookahead_bounds_the_first_fit():
    # first fit over the first 2 waiting requests only:
    # t=0: [R0 R1]: R1 (4, 1 left), R0 skipped: {R1}, 56 tokens -> a1.
    # a1: [R0 R2]: R0 (3, 2 left), R2 (2, 0 left): {R0, R2}, 64 tokens -> a2.
    # a2: [R3 R4]: both (1 + 1 blocks): 16 tokens -> a3.
    cfg = dataclasses.replace(toy_cfg("dff"), s3_lookahead=2)
    out = run(cfg, toy_workload())
    a1 = it(56)
    a2 = a1 + it(64)
    a3 = a2 + it(16)
    check(out, [a1, 0.0, a1, a2, a2], [a2, a1, a2, a3, a3], [a2, a1, a2, a3, a3])


def test_s3_admission_validated():
    with pytest.raises(Exception, match="s3_admission"):
        toy_cfg("best_fit").validate()


# ----------------------------------------------------------------------- invariants


def test_s3_dff_and_fcfs_in_one_call_equal_separate_runs():
    wls = [random_workload(s) for s in range(2)]
    cfgs = [small_config("s3", seed=s, s3_admission=a) for s in range(2) for a in ("dff", "fcfs")]
    wl2 = [wls[s] for s in range(2) for _ in range(2)]
    outs = simulate_configs(cfgs, wl2, predictor_for=lambda c: RANDOM_PRED)
    for cfg, wl, out in zip(cfgs, wl2, outs, strict=True):
        n = int(np.asarray(wl.mask).sum())
        assert out.summary["num_completed"] == n
        r = out.requests
        assert (r["arrived_at"] <= r["scheduled_at"] + 1e-12).all()
        assert (r["scheduled_at"] < r["first_token_at"]).all()
        assert (r["first_token_at"] <= r["completed_at"]).all()
        (alone,) = simulate_configs([cfg], [wl], predictor_for=lambda c: RANDOM_PRED)
        np.testing.assert_array_equal(alone.requests["completed_at"], r["completed_at"])
    # the admission rule matters on these workloads
    assert not np.array_equal(outs[0].requests["scheduled_at"], outs[1].requests["scheduled_at"])


@pytest.mark.parametrize("admission", ["dff", "fcfs"])
def test_s3_memory_and_queue_every_step(admission):
    """Every step: free blocks in [0, capacity] and free + held = capacity; every
    arrived request is in exactly one place (waiting queue, a slot, or completed)."""
    wl = random_workload(3, n=30, qps=40.0)
    cfg = small_config("s3", s3_admission=admission)
    d = build.derive(cfg)
    static = build.make_static([cfg], [d], wl.num_requests, num_slots=16)
    spec = build.table_spec_for([cfg], static.num_slots)
    tables, index = build.build_tables([cfg], spec, lambda c: RANDOM_PRED)
    p = build.build_params(cfg, d, wl, index[0], wl.num_requests)
    p = jax.tree.map(jnp.asarray, p)
    sim = make_simulator(static, tables)
    r_total = wl.num_requests

    def body(state, _):
        state = sim.step(p, state)
        held = jnp.where(state.slot_req[0] >= 0, state.slot_blocks[0], 0).sum()
        pos = jnp.arange(r_total)
        waiting = (pos >= state.q_head[0]) & (pos < state.q_tail[0])
        count = (
            jnp.zeros(r_total, jnp.int32)
            .at[jnp.where(waiting, state.queue[0], r_total)]
            .add(1, mode="drop")
        )
        in_slot = (
            jnp.zeros(r_total, jnp.int32)
            .at[jnp.where(state.slot_req[0] >= 0, state.slot_req[0], r_total)]
            .add(1, mode="drop")
        )
        # a request that completes inside a fused run has its completion time from the
        # run's launch but keeps its slot (and blocks) until the run ends: count it once
        done = jnp.isfinite(state.completed_at) & (in_slot == 0)
        count = count + in_slot + done.astype(jnp.int32)
        # round robin routes up front: requests join the queue in arrival (= id) order
        arrived = pos < state.q_tail[0]
        ok = jnp.all(count == arrived.astype(jnp.int32))
        return state, (state.free_blocks[0], held, ok, state.num_completed)

    final, (free, held, ok, done) = jax.jit(lambda s: jax.lax.scan(body, s, None, length=1500))(
        sim.init(p)
    )
    free, held = np.asarray(free), np.asarray(held)
    num_blocks = int(p.num_blocks)
    assert int(final.error) == 0
    assert int(done[-1]) == 30
    assert ((free >= 0) & (free <= num_blocks)).all()
    assert (free + held == num_blocks).all()
    assert np.asarray(ok).all()
