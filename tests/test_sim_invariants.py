"""Invariants of the simulator on random workloads, for every replica scheduler.

Checked: every request completes exactly once; arrival <= scheduled <= first token <=
completion; tokens are conserved (each decode token but the first is one TBT sample and
one decode token in the batch log); batches respect the batch cap and token budgets;
a replica's batches never overlap; KV blocks stay within capacity at every step;
vmap == Python loop; fused decode and chunked-prefill runs == unfused; same inputs -> identical outputs;
the compiled simulation is reused (no recompilation) for new numbers of the same shape.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidur_jax.sim import build
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.engine import make_simulator, simulate_batch
from vidur_jax.sim.run import simulate_configs
from vidur_jax.sim.tables import LinearPredictor
from vidur_jax.workload import make_workload

PRED = LinearPredictor(per_token_ms=0.1 / 32, fixed_ms=10.0 / 32, decode_ms_per_kv=1e-5,
                       prefill_ms_per_token2=1e-7)
POLICIES = ("vllm", "sarathi", "orca", "faster_transformer", "lightllm", "static_batching", "s3")


def random_workload(seed: int, n: int = 40, qps: float = 20.0):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / qps, n))
    prefill = rng.integers(1, 600, n)
    decode = rng.integers(1, 60, n)
    return make_workload(arrivals, prefill, decode)


def small_config(policy: str, **kw) -> DeploymentConfig:
    base = dict(replica_scheduler=policy, batch_size_cap=8, chunk_size=256, max_tokens=1024,
                num_blocks=120, block_size=16, max_tokens_in_batch=1024)
    if policy == "lightllm":  # Vidur's LightLLM needs one-token blocks (its memory estimate is in tokens)
        base.update(block_size=1, num_blocks=1920)
    if policy == "static_batching":
        base.update(batch_timeout_s=0.05, batch_max_tokens=2048)
    if policy == "s3":  # buckets of 26 output tokens, a predictor wrong half of the time
        base.update(s3_num_buckets=40, s3_predictor="confusion", s3_accuracy=0.5)
    base.update(kw)
    return DeploymentConfig(**base)


@pytest.fixture(scope="module", params=POLICIES)
def policy_run(request):
    policy = request.param
    cfgs = [small_config(policy, seed=s) for s in range(3)]
    wls = [random_workload(s) for s in range(3)]
    outs = simulate_configs(cfgs, wls, predictor_for=lambda c: PRED, trace_capacity=4096)
    return policy, cfgs, wls, outs


def test_every_request_completes_once_in_order(policy_run):
    _, _, wls, outs = policy_run
    for wl, out in zip(wls, outs):
        r = out.requests
        n = int(np.asarray(wl.mask).sum())
        assert out.summary["num_completed"] == n
        assert np.isfinite(r["completed_at"]).all()
        assert (r["arrived_at"] <= r["scheduled_at"] + 1e-12).all()
        assert (r["scheduled_at"] < r["first_token_at"]).all()
        assert (r["first_token_at"] <= r["completed_at"]).all()


def test_tokens_conserved_and_limits_respected(policy_run):
    policy, cfgs, wls, outs = policy_run
    for cfg, wl, out in zip(cfgs, wls, outs):
        log, r = out.batch_log, out.requests
        assert not log["truncated"]
        restarts = r["num_restarts"].sum()
        decode_tokens = int((np.asarray(wl.num_decode) - 1).sum())
        if restarts == 0:
            assert out.counters["tbt_count"] == decode_tokens
            assert log["decode_tokens"].sum() == decode_tokens
            assert log["prefill_tokens"].sum() == int(np.asarray(wl.num_prefill).sum())
        assert (log["size"] >= 1).all()
        assert (log["size"] <= cfg.batch_size_cap).all()
        # a fused run's entry holds the tokens of all its iterations
        per_iter = (log["prefill_tokens"] + log["decode_tokens"]) / log["iters"]
        if policy == "sarathi":
            # the token budget holds whenever a prefill chunk is in the batch
            has_prefill = log["prefill_tokens"] > 0
            assert (log["iters"][has_prefill] > 1).any()  # chunked-prefill runs were fused
            assert (per_iter[has_prefill] <= cfg.chunk_size).all()
        if policy in ("vllm", "lightllm"):
            assert (log["prefill_tokens"] <= cfg.max_tokens_in_batch).all()
        # one replica, one stage: batches follow each other, time never goes back
        assert (log["end"] > log["start"]).all()
        assert (log["start"][1:] >= log["end"][:-1] - 1e-12).all()


def test_vmap_equals_loop(policy_run):
    _, cfgs, wls, outs = policy_run
    for cfg, wl, batched in zip(cfgs, wls, outs):
        (alone,) = simulate_configs([cfg], [wl], predictor_for=lambda c: PRED)
        for key in ("scheduled_at", "first_token_at", "completed_at", "num_restarts"):
            np.testing.assert_array_equal(alone.requests[key], batched.requests[key])
        np.testing.assert_array_equal(alone.tbt_hist, batched.tbt_hist)


def _static_params(policy: str, wl, **static_kw):
    cfg = small_config(policy)
    d = build.derive(cfg)
    static = build.make_static([cfg], [d], wl.num_requests, num_slots=16)
    static = dataclasses.replace(static, **static_kw)
    spec = build.table_spec_for([cfg], static.num_slots)
    tables, index = build.build_tables([cfg], spec, lambda c: PRED)
    params = build.stack_params([build.build_params(cfg, d, wl, index[0], wl.num_requests)])
    return static, tables, params


def _assert_same_simulation(a, b):
    """Unfused ``a`` and fused ``b`` final states describe the same simulation."""
    assert int(b.step[0]) < int(a.step[0])  # fusion does save steps
    for key in ("scheduled_at", "first_token_at", "completed_at"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(a.num_restarts, b.num_restarts)
    np.testing.assert_array_equal(a.tbt_hist, b.tbt_hist)
    for key in ("tbt_count", "num_batches", "batch_size_max"):
        assert int(getattr(a, key)[0]) == int(getattr(b, key)[0]), key
    for key in ("busy_s", "tbt_sum", "batch_size_sum", "batch_tokens_sum"):
        assert float(getattr(a, key)[0]) == pytest.approx(float(getattr(b, key)[0]), rel=1e-9), key
    assert float(a.flops_sum[0]) == pytest.approx(float(b.flops_sum[0]), rel=1e-5)  # f32 per batch


@pytest.mark.parametrize("policy", ["vllm", "sarathi", "static_batching", "s3"])
def test_fused_decode_runs_equal_unfused(policy):
    wl = random_workload(7, n=30, qps=5.0)
    outs = []
    for fuse in (1, 16):
        static, tables, params = _static_params(policy, wl, fuse_iters=fuse)
        outs.append(simulate_batch(static, tables, params))
    _assert_same_simulation(*outs)


@pytest.mark.parametrize("qps", [2.0, 40.0])
def test_fused_chunked_prefill_runs_equal_unfused(qps):
    """Sarathi prompts of up to 4 chunks (of 256 tokens): runs of full chunks (and the last one) fuse;
    at 40 QPS memory runs short and requests are preempted."""
    rng = np.random.default_rng(5)
    n = 30
    wl = make_workload(np.cumsum(rng.exponential(1.0 / qps, n)), rng.integers(300, 1000, n), rng.integers(1, 60, n))
    outs = []
    for fuse in (1, 16):
        static, tables, params = _static_params("sarathi", wl, fuse_iters=fuse, trace_capacity=2000)
        outs.append(simulate_batch(static, tables, params))
    _assert_same_simulation(*outs)
    b = outs[1]
    count = int(b.log_count[0])
    fused_prefill = (np.asarray(b.log_prefill_tokens[0][:count]) > 0) & (np.asarray(b.log_iters[0][:count]) > 1)
    assert fused_prefill.sum() >= 10  # prefill runs were fused, not only decode runs
    if qps > 10:
        assert int(b.num_restarts[0].sum()) > 0  # the preemption path was exercised


def test_kv_blocks_within_capacity_every_step():
    wl = random_workload(3, n=30, qps=40.0)
    static, tables, params = _static_params("vllm", wl)
    p = jax.tree.map(lambda x: x[0], params)
    sim = make_simulator(static, tables)
    step = jax.jit(sim.step)
    state = sim.init(p)
    num_blocks = int(p.num_blocks)
    for _ in range(2000):
        state = step(p, state)
        free = int(state.free_blocks[0])
        held = int(jnp.where(state.slot_req[0] >= 0, state.slot_blocks[0], 0).sum())
        assert 0 <= free <= num_blocks
        assert free + held == num_blocks
        if int(state.num_completed) == 30:
            break
    assert int(state.num_completed) == 30


def test_deterministic_and_no_recompile():
    wl = random_workload(11)
    static, tables, params = _static_params("sarathi", wl)
    first = simulate_batch(static, tables, params)
    size = simulate_batch._cache_size()
    again = simulate_batch(static, tables, params)
    np.testing.assert_array_equal(first.completed_at, again.completed_at)
    # new numbers, same shapes: the compiled simulation is reused
    other = build.stack_params([build.build_params(
        small_config("sarathi", batch_size_cap=4), build.derive(small_config("sarathi", batch_size_cap=4)),
        random_workload(12), 0, wl.num_requests)])
    simulate_batch(static, tables, other)
    assert simulate_batch._cache_size() == size
