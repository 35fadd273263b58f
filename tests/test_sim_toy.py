"""Hand-worked toy cases: exact timestamps for every replica scheduler.

Timing: a synthetic predictor makes every iteration take ``10 ms + 0.1 ms x T8`` where
T8 is the batch's token count rounded up to a multiple of 8 (Llama-2-7B has 32 layers:
0.3125 ms fixed + 0.003125 ms/token per layer). Attention costs nothing. The expected
timestamps below are worked out by hand from Vidur's scheduler rules (see comments).
"""

from __future__ import annotations

import numpy as np
import pytest

from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs
from vidur_jax.sim.tables import LinearPredictor
from vidur_jax.workload import make_workload

PRED = LinearPredictor(per_token_ms=0.1 / 32, fixed_ms=10.0 / 32)


def it(tokens: int) -> float:
    """Iteration seconds for a batch of ``tokens`` tokens."""
    t8 = -(-tokens // 8) * 8
    return (10.0 + 0.1 * t8) * 1e-3


def three_requests():
    # R0 at 0 s (16 prompt, 3 output), R1 at 5 ms (8, 2), R2 at 100 ms (24, 1)
    return make_workload(np.array([0.0, 0.005, 0.1]), np.array([16, 8, 24]), np.array([3, 2, 1]))


def run(cfg: DeploymentConfig, wl, trace_capacity: int = 0):
    (out,) = simulate_configs([cfg], [wl], predictor_for=lambda c: PRED, trace_capacity=trace_capacity)
    return out


def check(out, scheduled, first, completed):
    r = out.requests
    np.testing.assert_allclose(r["scheduled_at"], scheduled, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(r["first_token_at"], first, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(r["completed_at"], completed, rtol=1e-6, atol=1e-9)


def test_iteration_time_model():
    assert it(16) == pytest.approx(0.0116)
    assert it(9) == pytest.approx(0.0116)
    assert it(1) == pytest.approx(0.0108)


def test_vllm_three_requests():
    out = run(DeploymentConfig(replica_scheduler="vllm"), three_requests())
    # 0: prefill R0 (16) -> 11.6 ms. 11.6: prefill-only batch R1 (8) -> 22.4.
    # 22.4: decodes R0,R1 (2 tok -> 8) -> 33.2, R1 done. 33.2: decode R0 -> 44.0 done.
    # 100: prefill R2 (24) -> 112.4, done (1 output token comes with the prefill).
    a = it(16)
    b = a + it(8)
    c = b + it(2)
    check(out, [0.0, a, 0.1], [a, b, 0.1 + it(24)], [c + it(1), c, 0.1 + it(24)])
    assert out.counters["tbt_count"] == 3  # R0 x2, R1 x1
    assert out.counters["tbt_sum_s"] == pytest.approx((c - a) + (c - b) + it(1))
    assert out.summary["num_completed"] == 3
    assert out.counters["num_batches"] == 5
    assert out.summary["batch_size_mean"] == pytest.approx(6 / 5)


def test_batch_log_records_every_batch():
    out = run(DeploymentConfig(replica_scheduler="vllm"), three_requests(), trace_capacity=16)
    log = out.batch_log
    a = it(16)
    b = a + it(8)
    c = b + it(2)
    # the decode run at c is fused into one entry of 2 iterations: R0+R1, then R0 alone
    # after R1 completes inside the run (size is the first iteration's, tokens all of them)
    np.testing.assert_allclose(log["start"], [0.0, a, b, 0.1], rtol=1e-6)
    np.testing.assert_allclose(log["end"], [a, b, c + it(1), 0.1 + it(24)], rtol=1e-6)
    assert log["size"].tolist() == [1, 1, 2, 1]
    assert log["prefill_tokens"].tolist() == [16, 8, 0, 24]
    assert log["decode_tokens"].tolist() == [0, 0, 3, 0]
    assert log["iters"].tolist() == [1, 1, 2, 1]
    assert int(log["iters"].sum()) == out.counters["num_batches"]
    assert not log["truncated"]


def test_sarathi_chunked_prefill():
    out = run(DeploymentConfig(replica_scheduler="sarathi", chunk_size=16), three_requests())
    # 0: R0 chunk 16 -> 11.6. 11.6: decode R0 (1) + R1 prefill 8 (budget 15) = 9 tok -> 23.2.
    # 23.2: decodes R0, R1 -> 34.0 both done. 100: R2 chunk 16 -> 111.6, then 8 -> 122.4.
    a = it(16)
    b = a + it(9)
    c = b + it(2)
    d = 0.1 + it(16) + it(8)
    check(out, [0.0, a, 0.1], [a, b, d], [c, c, d])


def test_sarathi_prefill_then_decodes_is_one_fused_run():
    """A chunked prefill's last chunk and the decodes after it are one step, exactly.

    R0 (16 prompt, 5 output) at 0 s, R1 (24 prompt, 3 output) at 5 ms, chunk 16.
    0: R0's whole prompt -> a (R1 arrives meanwhile, so the run stops there).
    a: R0 decode + R1 chunk 15 (16 tok) -> b; R0 decode + R1's last 9 (10 tok) -> c, R1's
    first token; R0 + R1 decode (2 tok) -> d; again -> e, both done. Nothing arrives after
    a, so a..e is one fused run of 4 iterations.
    """
    wl = make_workload(np.array([0.0, 0.005]), np.array([16, 24]), np.array([5, 3]))
    out = run(DeploymentConfig(replica_scheduler="sarathi", chunk_size=16), wl, trace_capacity=8)
    a = it(16)
    b = a + it(16)
    c = b + it(10)
    d = c + it(2)
    e = d + it(2)
    check(out, [0.0, a], [a, c], [e, e])
    assert out.counters["tbt_count"] == 6  # R0: a..e in 4 gaps, R1: c..e in 2
    assert out.counters["tbt_sum_s"] == pytest.approx((e - a) + (e - c))
    assert out.counters["num_batches"] == 5
    log = out.batch_log
    np.testing.assert_allclose(log["start"], [0.0, a], rtol=1e-6)
    np.testing.assert_allclose(log["end"], [a, e], rtol=1e-6)
    assert log["iters"].tolist() == [1, 4]
    assert log["prefill_tokens"].tolist() == [16, 24]
    assert log["decode_tokens"].tolist() == [0, 6]


def test_sarathi_one_output_token_completes_inside_a_run():
    """A prefill with one output token completes at its last chunk, inside a fused run.

    R0 (8 prompt, 6 output) at 0 s, R1 (20 prompt, 1 output) at 5 ms, chunk 16.
    0: R0's prompt -> a. a: R0 decode + R1 chunk 15 -> b; R0 decode + R1's last 5 -> c,
    R1's first and only token: it completes; R0 decodes alone 3 more times -> f.
    a..f is one run of 5 iterations.
    """
    wl = make_workload(np.array([0.0, 0.005]), np.array([8, 20]), np.array([6, 1]))
    out = run(DeploymentConfig(replica_scheduler="sarathi", chunk_size=16), wl, trace_capacity=8)
    a = it(8)
    b = a + it(16)
    c = b + it(6)
    f = c + 3 * it(1)
    check(out, [0.0, a], [a, c], [f, c])
    assert out.counters["tbt_count"] == 5  # R0 only
    log = out.batch_log
    np.testing.assert_allclose(log["end"], [a, f], rtol=1e-6)
    assert log["iters"].tolist() == [1, 5]
    assert log["decode_tokens"].tolist() == [0, 5]


def test_orca_whole_prompts_with_decodes():
    out = run(DeploymentConfig(replica_scheduler="orca"), three_requests())
    a = it(16)
    b = a + it(9)  # decode R0 + whole prompt of R1
    c = b + it(2)
    check(out, [0.0, a, 0.1], [a, b, 0.1 + it(24)], [c, c, 0.1 + it(24)])


def test_faster_transformer_static_batches():
    out = run(DeploymentConfig(replica_scheduler="faster_transformer"), three_requests())
    # R0's batch runs to completion (3 iterations) before R1's batch starts.
    r0_done = it(16) + 2 * it(1)
    r1_first = r0_done + it(8)
    check(out, [0.0, r0_done, 0.1], [it(16), r1_first, 0.1 + it(24)],
          [r0_done, r1_first + it(1), 0.1 + it(24)])


def test_lightllm_forced_prefill():
    cfg = DeploymentConfig(replica_scheduler="lightllm", max_waiting_iters=1)
    out = run(cfg, three_requests())
    # 0: prefill R0. 11.6: decode R0 (waiting 0 -> 1). 22.4: waiting >= 1 -> prefill R1
    # only. 33.2: decode R0, R1 -> 44.0 both done.
    a = it(16)
    b = a + it(1)
    c = b + it(8)
    d = c + it(2)
    check(out, [0.0, b, 0.1], [a, c, 0.1 + it(24)], [d, d, 0.1 + it(24)])


def test_vllm_preemption_restart_by_recompute():
    # 4 blocks of 4 tokens, no watermark. R0 (8 prompt, 4 out), R1 (4 prompt, 8 out).
    cfg = DeploymentConfig(replica_scheduler="vllm", num_blocks=4, block_size=4,
                           watermark_blocks_fraction=0.0)
    wl = make_workload(np.array([0.0, 0.0]), np.array([8, 4]), np.array([4, 8]))
    out = run(cfg, wl)
    # 0: prefill R0+R1 (12 tok) -> 11.6; free 1 block. 11.6: R0 takes the last block,
    # R1 finds none and restarts itself (prompt becomes its 5 processed tokens).
    # R0 decodes alone until done at 44.0 (11.6 + 3 x 10.8), then R1 re-prefills
    # (5 tok) -> 54.8 and decodes 6 tokens -> 119.6.
    r0_done = it(12) + 3 * it(1)
    r1_done = r0_done + it(5) + 6 * it(1)
    check(out, [0.0, 0.0], [it(12), it(12)], [r0_done, r1_done])
    assert list(out.requests["num_restarts"]) == [0, 1]
    assert out.summary["num_restarts"] == 1


def test_two_replicas_round_robin_and_lor():
    wl = make_workload(np.array([0.0, 0.001, 0.002]), np.array([8, 8, 8]), np.array([1, 1, 1]))
    # round robin: R0 -> rep0, R1 -> rep1, R2 -> rep0 (waits for R0's prefill)
    out = run(DeploymentConfig(replica_scheduler="vllm", num_replicas=2), wl)
    check(out, [0.0, 0.001, it(8)], [it(8), 0.001 + it(8), 2 * it(8)],
          [it(8), 0.001 + it(8), 2 * it(8)])
    # LOR counts waiting requests only: at 1 ms both queues are empty (R0 is running, not
    # waiting), so the lowest id, rep0, gets R1 (Vidur's tie rule) and R1 waits; at 2 ms
    # rep0 has one waiting request, so R2 goes to the idle rep1.
    out = run(DeploymentConfig(replica_scheduler="vllm", num_replicas=2, global_scheduler="lor"), wl)
    check(out, [0.0, it(8), 0.002], [it(8), 2 * it(8), 0.002 + it(8)],
          [it(8), 2 * it(8), 0.002 + it(8)])


def test_pipeline_two_stages_overlap():
    # PP=2: each stage runs 16 layers, so a stage takes half an iteration; two
    # micro-batches are in flight. R0 and R1 both arrive at 0; Sarathi with cap 2
    # -> one request per micro-batch (max micro batch = cap // stages = 1).
    cfg = DeploymentConfig(replica_scheduler="sarathi", num_pipeline_stages=2, batch_size_cap=2)
    wl = make_workload(np.array([0.0, 0.0]), np.array([16, 16]), np.array([1, 1]))
    out = run(cfg, wl)
    h = it(16) / 2  # one stage (send/recv costs nothing in this predictor)
    # batch A (R0) stage0 [0,h], stage1 [h,2h]; batch B (R1) stage0 [h? no: formed at 0,
    # waits for stage0] [h,2h], stage1 [2h,3h]
    check(out, [0.0, 0.0], [2 * h, 3 * h], [2 * h, 3 * h])
