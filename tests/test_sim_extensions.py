"""Hand-worked toy cases for the serving policies beyond Vidur's five (issue 7).

CPU overheads, Alpa-style static request batching, parallel sampling / beam search and
S3 output-length-aware scheduling. Same synthetic timing as ``test_sim_toy.py``: an
iteration of T tokens (rounded up to 8) takes ``10 ms + 0.1 ms x T8``; attention is free.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sim_toy import check, it, run, three_requests

from vidur_jax.sim import build, cpu_overhead
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.engine import make_simulator
from vidur_jax.sim.run import simulate_configs
from vidur_jax.sim.tables import LinearPredictor
from vidur_jax.workload import make_workload

# ----------------------------------------------------------------------- CPU overheads


def cpu_ms(b: int) -> float:
    """The parametric default: 1.0 ms + 0.05 ms per request (see cpu_overhead.py)."""
    return 1.0 + 0.05 * b


def test_cpu_overhead_parametric_table():
    t = cpu_overhead.table("meta-llama/Llama-2-7b-hf", "a100_pairwise_nvlink", 1, 128)
    assert t[0] == 0.0
    np.testing.assert_allclose(t[[1, 2, 128]], [cpu_ms(1), cpu_ms(2), cpu_ms(128)], rtol=1e-6)


def test_cpu_overhead_added_to_every_iteration():
    out = run(DeploymentConfig(replica_scheduler="vllm", cpu_overhead=True), three_requests())
    # as test_vllm_three_requests, each iteration + CPU overhead of its batch size:
    # prefill R0 (b=1), prefill R1 (b=1), decode R0+R1 (b=2), decode R0 (b=1); R2 alone.
    a = it(16) + cpu_ms(1) * 1e-3
    b = a + it(8) + cpu_ms(1) * 1e-3
    c = b + it(2) + cpu_ms(2) * 1e-3
    d = c + it(1) + cpu_ms(1) * 1e-3
    e = 0.1 + it(24) + cpu_ms(1) * 1e-3
    check(out, [0.0, a, 0.1], [a, b, e], [d, c, e])
    off = run(DeploymentConfig(replica_scheduler="vllm"), three_requests())
    assert off.requests["completed_at"][0] == pytest.approx(it(16) + it(8) + it(2) + it(1))


def test_cpu_overhead_from_vidur_profile(tmp_path):
    model, net = "meta-llama/Llama-2-7b-hf", "a100_pairwise_nvlink"
    path = tmp_path / "profiling" / "cpu_overhead" / net / model / "cpu_overheads.csv"
    path.parent.mkdir(parents=True)
    # each op 0.1 ms x batch size at batch 1, 2, 4 (TP 1); TP 2 rows must be ignored
    rows = ["model_name,batch_size,tensor_parallel_degree,schedule_median,sampler_e2e_median,"
            "prepare_inputs_e2e_median,process_model_outputs_median,ray_comm_time_mean"]
    for tp in (1, 2):
        for b in (1, 2, 4):
            v = 0.1 * b * tp
            rows.append(f"{model},{b},{tp},{v},{v},{v},{v},{v}")
    path.write_text("\n".join(rows) + "\n")
    t = cpu_overhead.table(model, net, 1, 8, str(tmp_path))
    # inside: interpolated (batch 3 -> 1.5 ms); beyond: the fitted line, 0.5 ms per request
    np.testing.assert_allclose(t[1:], [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0], rtol=1e-5)
    wl = make_workload(np.array([0.0]), np.array([16]), np.array([2]))
    out = run(DeploymentConfig(replica_scheduler="vllm", cpu_overhead=True, cpu_overhead_dir=str(tmp_path)), wl)
    check(out, [0.0], [it(16) + 0.5e-3], [it(16) + it(1) + 1.0e-3])


# ------------------------------------------------------ Alpa-style static request batching


def static_cfg(**kw) -> DeploymentConfig:
    return DeploymentConfig(replica_scheduler="static_batching", batch_timeout_s=0.02, **kw)


def test_static_batching_timeout_then_run_to_completion():
    out = run(static_cfg(), three_requests())
    # R0 (0 s) and R1 (5 ms) are collected until R0's timeout at 20 ms, then prefilled
    # together (24 tokens) and decoded to completion: R1 after 1 decode, R0 after 2.
    # R2 arrives at 100 ms to an idle replica and waits out its own timeout (120 ms):
    # the replica wakes up at the timeout with no arrival.
    a = 0.02 + it(24)
    b = a + it(2)
    c = b + it(1)
    check(out, [0.02, 0.02, 0.12], [a, a, 0.12 + it(24)], [c, b, 0.12 + it(24)])
    assert out.counters["num_batches"] == 4


def test_static_batching_max_tokens_completes_a_batch():
    # MAX_TOKENS = 29 = R0 (16 + 3) + R1 (8 + 2): the batch is complete when R1 arrives
    out = run(static_cfg(batch_max_tokens=29), three_requests())
    a = 0.005 + it(24)
    check(out, [0.005, 0.005, 0.12], [a, a, 0.12 + it(24)], [a + it(2) + it(1), a + it(2), 0.12 + it(24)])
    # MAX_TOKENS = 20: R1 does not fit next to R0, so R0 runs alone as soon as R1
    # arrives; R1's timeout (25 ms) passes while R0's batch runs, so R1 starts right
    # after it. R2 alone (25 tokens) already fills a batch: it starts on arrival.
    out = run(static_cfg(batch_max_tokens=20), three_requests())
    r0_done = 0.005 + it(16) + 2 * it(1)
    check(out, [0.005, r0_done, 0.1], [0.005 + it(16), r0_done + it(8), 0.1 + it(24)],
          [r0_done, r0_done + it(8) + it(1), 0.1 + it(24)])


def test_static_batching_batch_size_cap():
    # cap 2: R0 and R1 complete a batch at 5 ms; R2 (alone) waits for its timeout
    out = run(static_cfg(batch_size_cap=2), three_requests())
    a = 0.005 + it(24)
    check(out, [0.005, 0.005, 0.12], [a, a, 0.12 + it(24)], [a + it(2) + it(1), a + it(2), 0.12 + it(24)])


# ------------------------------------------------ parallel sampling / beam search (n = 2)

PRED_KV = LinearPredictor(per_token_ms=0.1 / 32, fixed_ms=10.0 / 32, decode_ms_per_kv=0.001 / 32)


def test_two_sequences_share_the_prompt():
    # one request: 16 prompt tokens, 3 output tokens, n = 2 sequences; 16-token blocks.
    wl = make_workload(np.array([0.0]), np.array([16]), np.array([3]), num_seqs=np.array([2]))
    cfg = DeploymentConfig(replica_scheduler="vllm", num_blocks=10, watermark_blocks_fraction=0.0)
    (out,) = simulate_configs([cfg], [wl], predictor_for=lambda c: PRED_KV, trace_capacity=8)
    # prefill once (16 tokens; no decode attention). Each decode iteration: 2 tokens and
    # a decode-attention batch of 2 at KV 17 -> 18 (rounded up to 64):
    # 0.001 ms x 2 x 64 per layer x 32 layers = 0.128 ms.
    a = it(16)
    dec = it(2) + 0.128e-3
    check(out, [0.0], [a], [a + 2 * dec])
    assert out.counters["tbt_count"] == 2  # per request
    assert out.batch_log["decode_tokens"].sum() == 4  # per sequence
    assert out.summary["num_sequences"] == 2
    makespan = a + 2 * dec
    assert out.summary["throughput_tps"] == pytest.approx((16 + 2 * 3) / makespan)
    assert out.summary["throughput_request_output_tps"] == pytest.approx(3 / makespan)


def test_two_sequences_kv_blocks():
    # blocks: the full prompt block is shared; after the prefill (processed 17) each
    # sequence needs its own second block: 1 + 2 = 3 blocks (n = 1: ceil(17/16) = 2).
    wl = make_workload(np.array([0.0, 0.0]), np.array([16, 16]), np.array([3, 3]), num_seqs=np.array([2, 1]))
    cfg = DeploymentConfig(replica_scheduler="vllm", num_blocks=10, watermark_blocks_fraction=0.0)
    d = build.derive(cfg)
    static = dataclasses.replace(build.make_static([cfg], [d], 2, num_slots=8), fuse_iters=1)
    spec = build.table_spec_for([cfg], static.num_slots)
    tables, index = build.build_tables([cfg], spec, lambda c: PRED_KV)
    p = jax.tree.map(jnp.asarray, build.build_params(cfg, d, wl, index[0], 2))
    sim = make_simulator(static, tables)
    step = jax.jit(sim.step)
    state = sim.init(p)
    # round robin routes both arrivals up front (no arrival steps): step 1 launches the
    # joint prefill at t = 0
    state = step(p, state)
    assert state.slot_blocks[0, :2].tolist() == [1, 1]
    state = step(p, state)  # first decode iteration (both requests)
    assert state.slot_blocks[0, :2].tolist() == [3, 2]
    assert int(state.free_blocks[0]) == 10 - 5


# ------------------------------------------------------------------ S3 (length-aware)


def s3_cfg(**kw) -> DeploymentConfig:
    # 16-token blocks, max_tokens 64, 8 buckets of 8 output tokens
    return DeploymentConfig(replica_scheduler="s3", max_tokens=64, s3_num_buckets=8, **kw)


def test_s3_oracle_reserves_prompt_plus_bucket():
    wl = make_workload(np.array([0.0]), np.array([16]), np.array([20]))
    out = run(s3_cfg(), wl)
    # true bucket of 20 output tokens: 2 (16 < 20 <= 24): 16 + 24 = 40 tokens reserved
    # (3 blocks), enough: prefill, then 19 decodes, no preemption
    check(out, [0.0], [it(16)], [it(16) + 19 * it(1)])
    assert out.summary["num_restarts"] == 0


def test_s3_misprediction_preempts_and_rereserves():
    wl = make_workload(np.array([0.0]), np.array([16]), np.array([20]))
    # confusion predictor, always wrong by one bucket; seed 0 draws "one lower": bucket 1,
    # 16 + 16 = 32 tokens reserved = 2 blocks
    out = run(s3_cfg(s3_predictor="confusion", s3_accuracy=0.0, seed=0), wl)
    # prefill (processed 17), 16 decodes fill the 32 reserved tokens (processed 33); the
    # next decode does not fit: preempted at t1 and restarted by recomputation (its 33
    # tokens become the prompt), re-reserved at bucket 2 (40 tokens), re-prefilled at
    # once (33 tokens -> 40 rounded) and decodes its last 2 tokens.
    t1 = it(16) + 16 * it(1)
    done = t1 + it(33) + 2 * it(1)
    check(out, [0.0], [it(16)], [done])
    assert out.summary["num_restarts"] == 1  # one misprediction
    assert out.summary["recomputed_tokens"] == 33
