"""The worked example of docs/schedulers.md: ``orca_token_cap``, a policy added as a module.

Timing as in test_sim_toy: every iteration takes ``10 ms + 0.1 ms x T8`` (T8 = the
batch's tokens rounded up to a multiple of 8).
"""

from __future__ import annotations

import numpy as np
from test_sim_invariants import PRED as RANDOM_PRED
from test_sim_invariants import random_workload, small_config
from test_sim_toy import check, it, run

from vidur_jax.sim import policies
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs
from vidur_jax.workload import make_workload


def test_registered_from_its_module():
    assert "orca_token_cap" in policies.POLICIES
    assert (
        policies.get("orca_token_cap").memory.slot_bound.__func__
        is policies.base.MaxLength.slot_bound
    )


def test_cap_defers_the_second_prompt():
    # R0 and R1 (16 prompt, 2 output each) arrive at 0; cap 24 tokens.
    # 0: R0's 16 fit, R0 + R1 = 32 do not -> R0 alone -> a.
    # a: R0's decode (1) + R1's prompt (16) = 17 tokens -> b: R0 done, R1's first token.
    # b: R1's decode -> c, done.
    wl = make_workload(np.array([0.0, 0.0]), np.array([16, 16]), np.array([2, 2]))
    out = run(DeploymentConfig(replica_scheduler="orca_token_cap", max_tokens_in_batch=24), wl)
    a = it(16)
    b = a + it(17)
    c = b + it(1)
    check(out, [0.0, a], [a, b], [b, c])
    # Orca admits both at once: 32 tokens, then both decode
    orca = run(DeploymentConfig(replica_scheduler="orca"), wl)
    check(orca, [0.0, 0.0], [it(32), it(32)], [it(32) + it(2)] * 2)


def test_prompt_over_the_cap_runs_alone():
    wl = make_workload(np.array([0.0, 0.0]), np.array([40, 8]), np.array([1, 1]))
    out = run(DeploymentConfig(replica_scheduler="orca_token_cap", max_tokens_in_batch=24), wl)
    a = it(40)
    check(out, [0.0, a], [a, a + it(8)], [a, a + it(8)])


def test_unreachable_cap_is_exactly_orca():
    wl = random_workload(3, n=60)
    # 1,200 blocks hold 18 max-length reservations: batches of up to 8 (the cap)
    cfg = small_config("orca", max_tokens_in_batch=10**6, num_blocks=1200)
    (orca,) = simulate_configs([cfg], [wl], predictor_for=lambda c: RANDOM_PRED)
    capped = small_config("orca_token_cap", max_tokens_in_batch=10**6, num_blocks=1200)
    (out,) = simulate_configs([capped], [wl], predictor_for=lambda c: RANDOM_PRED)
    for key in ("scheduled_at", "first_token_at", "completed_at", "num_restarts"):
        np.testing.assert_array_equal(out.requests[key], orca.requests[key], err_msg=key)
    assert out.counters == orca.counters
    assert orca.summary["batch_size_max"] > 1  # batches of several requests were compared


def test_batches_keep_within_the_cap():
    wl = random_workload(4, n=60)
    cfg = small_config("orca_token_cap", max_tokens_in_batch=700, num_blocks=1200)
    (out,) = simulate_configs([cfg], [wl], predictor_for=lambda c: RANDOM_PRED, trace_capacity=4096)
    assert out.summary["num_completed"] == 60

    def batch_tokens(o):  # tokens and size of single-iteration batches (a fused entry sums k)
        log = o.batch_log
        one = log["iters"] == 1
        return (log["prefill_tokens"] + log["decode_tokens"])[one], log["size"][one]

    tokens, size = batch_tokens(out)
    assert ((tokens <= 700) | (size == 1)).all()
    assert (size > 1).any()
    # the cap binds: Orca forms larger batches on the same workload
    (orca,) = simulate_configs(
        [small_config("orca", num_blocks=1200)],
        [wl],
        predictor_for=lambda c: RANDOM_PRED,
        trace_capacity=4096,
    )
    assert batch_tokens(orca)[0].max() > 700
