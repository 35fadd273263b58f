"""Disaggregated prefill/decode pools: hand-worked toy cases, invariants, vmap == single.

Timing as in tests/test_sim_toy.py: every iteration takes ``10 ms + 0.1 ms x T8`` (T8 the
batch's token count rounded up to a multiple of 8), attention costs nothing. KV
transfer: Llama-2-7B at TP1 keeps 2 (K, V) x 2 bytes x 128 x 32 heads x 32 layers =
524,288 bytes per token on its GPU; the A100's NVLink moves 300 GB/s, the inter-node
link ``kv_inter_node_gbps`` (default 25 GB/s), plus ``kv_transfer_latency_s`` (0.1 ms).
Replicas are packed on ``a100_pairwise_nvlink`` nodes of 4 GPUs in index order.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest
import toy_configs as toy
from toy_configs import PRED, RTOL, it, pooled, run, xfer

from vidur_jax.errors import ConfigError
from vidur_jax.sim import build
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.engine import make_simulator
from vidur_jax.workload import make_workload

#: timestamps checked at toy_configs.RTOL (float32 timing tables); transfer times are
#: float64 differences, checked at 1e-9
check = functools.partial(toy.check, atol=1e-12)


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_one_request_prefill_transfer_decode(policy):
    """16-token prompt, 3 output tokens, 1 prefill + 1 decode replica in one node:
    prefill ends at it(16) (first token, TTFT); the KV (16 x 524,288 B over NVLink,
    + 0.1 ms) lands x later; the decode replica then runs two 1-token iterations."""
    wl = make_workload(np.array([0.0]), np.array([16]), np.array([3]))
    (out,) = run([pooled(replica_scheduler=policy)], [wl])
    a, x = it(16), xfer(16)
    assert x == pytest.approx(1e-4 + 27.96e-6, rel=1e-3)
    check(out, [0.0], [a], [a + x + 2 * it(1)])
    s, c = out.summary, out.counters
    assert s["kv_transfers"] == 1
    for q in ("p50", "p90", "p99", "mean"):
        assert s[f"kv_transfer_time_{q}"] == pytest.approx(x, rel=1e-9)
    # TBT: the first decode's gap starts at the first token (transfer included)
    assert c["tbt_count"] == 2
    assert c["tbt_sum_s"] == pytest.approx((x + it(1)) + it(1), rel=RTOL)
    makespan = a + x + 2 * it(1)
    assert s["prefill_busy_fraction"] == pytest.approx(a / makespan, rel=RTOL)
    assert s["decode_busy_fraction"] == pytest.approx(2 * it(1) / makespan, rel=RTOL)
    assert s["prefill_batch_size_mean"] == 1 and s["decode_batch_size_mean"] == 1
    assert (s["prefill_replicas"], s["decode_replicas"]) == (1, 1)


def test_transfer_across_nodes_uses_the_inter_node_link():
    """4 prefill replicas fill the first 4-GPU node, the decode replica is on the next:
    the transfer runs at kv_inter_node_gbps (here 10 GB/s)."""
    wl = make_workload(np.array([0.0]), np.array([64]), np.array([2]))
    (out,) = run([pooled(4, 1, kv_inter_node_gbps=10.0)], [wl])
    a, x = it(64), xfer(64, 10.0)
    check(out, [0.0], [a], [a + x + it(1)])
    assert out.summary["kv_transfer_time_p50"] == pytest.approx(x, rel=1e-9)


def test_three_requests_join_the_decode_batch_at_its_boundary():
    """R0 (16, 3) at 0, R1 (8, 2) at 5 ms, R2 (24, 1) at 100 ms; vLLM, 1P + 1D.

    Prefill replica: R0 0 -> a = it(16); R1 a -> b = a + it(8); R2 0.1 -> 0.1 + it(24)
    (one output token: it completes in the prefill pool, no transfer).
    Decode replica: R0 lands at a + x16, decodes alone (1 token) until a + x16 + it(1);
    R1 lands at b + x8, before that boundary (b + x8 < a + x16 + it(1)), so it joins the
    next iteration, where R0 makes its last token and R1 its only decode."""
    wl = make_workload(np.array([0.0, 0.005, 0.1]), np.array([16, 8, 24]), np.array([3, 2, 1]))
    (out,) = run([pooled()], [wl])
    a = it(16)
    b = a + it(8)
    c = a + xfer(16) + it(1)
    assert b + xfer(8) < c
    d = c + it(2)
    check(out, [0.0, a, 0.1], [a, b, 0.1 + it(24)], [d, d, 0.1 + it(24)])
    np.testing.assert_allclose(out.summary["kv_transfers"], 2)
    assert out.summary["kv_transfer_time_p50"] == pytest.approx((xfer(16) + xfer(8)) / 2, rel=1e-9)


def test_decode_admission_waits_for_decode_pool_memory():
    """6 KV blocks of 16 tokens per replica. A (48 prompt, 20 output) at 0, B (48, 2) at 1 ms.

    Prefill: A 0 -> a = it(48); A keeps its 3 blocks while its KV transfers, B (3 blocks)
    still fits: B a -> 2a. Decode: A lands at a + x and holds 3 blocks, 4 after its
    first decode (token 49), 5 from token 65 (vLLM keeps one block free before every
    decode, so 5 + 1 <= 6 never preempts). B (3 blocks) lands at 2a + x but never fits
    while A runs (free 2, then 1), so it waits in the decode queue until A completes
    (19 iterations) and then decodes once. With memory to spare (64 blocks) B joins A's
    batch at its next boundary instead."""
    wl = make_workload(np.array([0.0, 0.001]), np.array([48, 48]), np.array([20, 2]))
    states = []
    (out,) = run([pooled(num_blocks=6)], [wl], capture=states)
    a, x = it(48), xfer(48)
    done_a = a + x + 19 * it(1)
    check(out, [0.0, a], [a, 2 * a], [done_a, done_a + it(1)])
    assert out.summary["num_restarts"] == 0
    _, _, st, i = states[-1]
    assert (np.asarray(st.free_blocks[i])[:2] == 6).all()  # all memory returned
    assert (np.asarray(st.slot_req[i]) == -1).all()

    (roomy,) = run([pooled(num_blocks=64)], [wl])
    t = a + x  # A's decode iterations end at t + k it(1); B lands at 2a + x
    k = int(np.ceil((2 * a + x - t) / it(1)))
    assert k == 2
    join = t + k * it(1)
    assert roomy.requests["completed_at"][1] == pytest.approx(join + it(2), rel=RTOL)


def test_pool_batch_caps():
    """decode_batch_cap 1: in the three-request case R1 cannot join R0's decode batch and
    waits for R0 to complete (a + x16 + 2 it(1)), then decodes once. decode_batch_cap 4
    above the scheduler's cap 2: four simultaneous requests are prefilled two by two but
    decode in one batch of 4."""
    wl = make_workload(np.array([0.0, 0.005, 0.1]), np.array([16, 8, 24]), np.array([3, 2, 1]))
    (out,) = run([pooled(decode_batch_cap=1)], [wl])
    a = it(16)
    d0 = a + xfer(16) + 2 * it(1)
    check(out, [0.0, a, 0.1], [a, a + it(8), 0.1 + it(24)], [d0, d0 + it(1), 0.1 + it(24)])
    assert out.summary["decode_batch_cap"] == 1 and out.summary["prefill_batch_cap"] == 128

    four = make_workload(np.zeros(4), np.full(4, 16), np.full(4, 10))
    (wide,) = run([pooled(batch_size_cap=2, decode_batch_cap=4)], [four])
    assert wide.summary["num_completed"] == 4
    assert wide.summary["batch_size_max"] == 4  # the decode pool's batch
    assert wide.summary["prefill_batch_size_mean"] <= 2
    assert wide.summary["decode_batch_size_mean"] > 2


def _random_workload(n=48, seed=0, qps=30.0):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / qps, n))
    prompt = rng.integers(16, 400, n)
    decode = rng.integers(1, 60, n)
    return make_workload(arrivals, prompt, decode)


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_invariants_every_step(policy):
    """Stepping a 2P + 2D config with tight memory one event at a time: every
    replica's free + held blocks == capacity, free >= 0 (decode-pool memory never
    exceeded), the clock never goes back; at the end every request completed,
    scheduled <= first token <= KV landed <= completion, TTFT <= e2e, each transfer took
    exactly its link time (no contention modelled) and no error bit is set."""
    wl = _random_workload()
    cfg = pooled(2, 2, replica_scheduler=policy, num_blocks=48, batch_size_cap=8)
    d = build.derive(cfg)
    static = build.make_static([cfg], [d], wl.num_requests, num_slots=16)
    tables, index = build.build_tables([cfg], build.table_spec_for([cfg], 16), lambda c: PRED)
    params = jax.tree.map(
        jax.numpy.asarray, build.build_params(cfg, d, wl, index[0], wl.num_requests)
    )
    sim = make_simulator(static, tables)
    step = jax.jit(sim.step)
    state = sim.init(params)
    clock, steps = 0.0, 0
    while not bool(state.num_completed >= params.num_valid) and int(state.error) == 0:
        state = step(params, state)
        steps += 1
        held = np.asarray(state.slot_blocks).sum(axis=1)
        free = np.asarray(state.free_blocks)
        assert (free >= 0).all() and (free + held == 48).all(), steps
        assert float(state.clock) >= clock
        clock = float(state.clock)
        assert steps < 20_000
    assert int(state.error) == 0
    n = wl.num_requests
    arr = np.asarray(wl.arrived_at)
    sched, first, done = (
        np.asarray(getattr(state, f))[:n]
        for f in ("scheduled_at", "first_token_at", "completed_at")
    )
    ready = np.asarray(state.kv_ready_at)[:n]
    assert np.isfinite(done).all()
    assert (arr <= sched).all() and (sched <= first).all() and (first <= done).all()
    assert (first - arr <= done - arr).all()
    moved = np.asarray(wl.num_decode) > 1
    assert np.isfinite(ready[moved]).all() and np.isnan(ready[~moved]).all()
    assert (first[moved] < ready[moved]).all() and (ready[moved] < done[moved]).all()
    restarted = np.asarray(state.num_restarts)[:n] > 0
    tokens = np.asarray(wl.num_prefill)
    ok = moved & ~restarted
    # both pools in one 4-GPU node: every transfer over NVLink
    np.testing.assert_allclose(ready[ok] - first[ok], [xfer(int(t)) for t in tokens[ok]], rtol=1e-9)


def test_batched_equals_single_config_path():
    """Pooled configs (several P:D splits) and a colocated one in one vmapped call get
    exactly what each gets alone (the single path is the scatter-free loop)."""
    wl = _random_workload(n=40, seed=1)
    cfgs = [
        pooled(1, 3),
        pooled(2, 2, num_blocks=64),
        DeploymentConfig(replica_scheduler="vllm", num_replicas=4, global_scheduler="lor"),
    ]
    both = run(cfgs, [wl] * 3)
    for cfg, b in zip(cfgs, both, strict=True):
        (one,) = run([cfg], [wl])
        for k in ("scheduled_at", "first_token_at", "completed_at", "num_restarts"):
            np.testing.assert_allclose(one.requests[k], b.requests[k], rtol=1e-12)
        for k in ("kv_transfer_time_p50", "prefill_busy_fraction", "decode_busy_fraction"):
            np.testing.assert_allclose(one.summary[k], b.summary[k], rtol=1e-12)


def test_colocated_beside_pooled_equals_colocated_alone_bit_for_bit():
    """A colocated config in a call compiled with pools is today's program, bit for bit
    (the pool hooks are masked off for it), fused runs included."""
    wl = _random_workload(n=40, seed=2)
    colo = DeploymentConfig(
        replica_scheduler="sarathi", num_replicas=2, global_scheduler="round_robin"
    )
    colo2 = dataclasses.replace(colo, batch_size_cap=64)
    mixed = run([colo, pooled(1, 1, replica_scheduler="sarathi")], [wl, wl])[0]
    alone = run([colo, colo2], [wl, wl])[0]  # batched path, no pools compiled in
    for k in ("scheduled_at", "first_token_at", "completed_at", "num_restarts"):
        np.testing.assert_array_equal(mixed.requests[k], alone.requests[k])
    assert mixed.counters["tbt_sum_s"] == alone.counters["tbt_sum_s"]
    assert (
        np.isnan(mixed.summary["kv_transfer_time_p50"]) and mixed.summary["prefill_replicas"] == 0
    )


def test_single_config_loop_stays_scatter_free_with_pools():
    from vidur_jax.sim.engine import simulate_single

    wl = _random_workload(n=8)
    cfg = pooled(2, 2, global_scheduler="lor")
    d = build.derive(cfg)
    static = build.make_static([cfg], [d], wl.num_requests, num_slots=8)
    assert static.disagg
    tables, index = build.build_tables([cfg], build.table_spec_for([cfg], 8), lambda c: PRED)
    params = build.stack_params([build.build_params(cfg, d, wl, index[0], wl.num_requests)])
    text = str(jax.make_jaxpr(lambda t, p: simulate_single(static, t, p))(tables, params))
    assert "scatter" not in text


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"prefill_replicas": 1, "decode_replicas": 0, "num_replicas": 1}, "both 0"),
        (
            {"prefill_replicas": 1, "decode_replicas": 1, "num_replicas": 3},
            "must be prefill_replicas",
        ),
        (
            {
                "prefill_replicas": 1,
                "decode_replicas": 1,
                "num_replicas": 2,
                "replica_scheduler": "orca",
            },
            "does not run in prefill/decode pools",
        ),
        (
            {
                "prefill_replicas": 1,
                "decode_replicas": 1,
                "num_replicas": 2,
                "kv_inter_node_gbps": 0.0,
            },
            "kv_inter_node_gbps",
        ),
        (
            {"prefill_replicas": 1, "decode_replicas": 1, "num_replicas": 2, "decode_batch_cap": 0},
            "decode_batch_cap",
        ),
        (
            {"prefill_replicas": 1, "decode_replicas": 1, "num_replicas": 2, "spec_tokens": 2},
            "speculative",
        ),
    ],
)
def test_bad_pool_setups_are_refused(kw, match):
    kw.setdefault("replica_scheduler", "vllm")
    with pytest.raises(ConfigError, match=match):
        build.derive(DeploymentConfig(**kw))


def test_hydra_keys_make_num_replicas_the_pool_sum():
    from vidur_jax.plan.deployment import deployment_fields

    tree = {
        "model": {"name": "meta-llama/Llama-2-7b-hf"},
        "hardware": {"device": "a100", "network_device": "a100_pairwise_nvlink"},
        "cluster": {
            "tp": 1,
            "pp": 1,
            "num_replicas": 1,
            "global_scheduler": "round_robin",
            "prefill_replicas": 3,
            "decode_replicas": 5,
        },
        "scheduler": {
            "replica_scheduler": "vllm",
            "batch_size_cap": 128,
            "block_size": 16,
            "watermark_blocks_fraction": 0.01,
            "chunk_size": 512,
            "max_tokens_in_batch": 4096,
            "max_waiting_iters": 10,
            "memory_margin_fraction": 0.1,
        },
        "predictor": {
            "cpu_overhead_ms": 0.0,
            "attn_scale": 1.0,
            "compute_scale": 1.0,
            "network_scale": 1.0,
        },
        "workload": {"max_tokens": 4096},
    }
    f = deployment_fields(tree)
    assert (f["num_replicas"], f["prefill_replicas"], f["decode_replicas"]) == (8, 3, 5)


def test_search_grid_adds_pool_splits():
    """search.pd_splits: each colocated point (pp 1, vllm/sarathi) is followed by its
    pools; shares round to distinct P:D counts, each pool >= 1 replica."""
    from vidur_jax.search import capacity as cap
    from vidur_jax.search import grid as grid_mod

    assert grid_mod.pool_splits(4, (0.25, 0.5, 0.75)) == [(1, 3), (2, 2), (3, 1)]
    assert grid_mod.pool_splits(2, (0.25, 0.5, 0.75)) == [(1, 1)]
    assert grid_mod.pool_splits(1, (0.5,)) == []
    spec = grid_mod.GridSpec(
        models=("meta-llama/Llama-2-7b-hf",),
        clusters=(grid_mod.Cluster("a100", "a100_pairwise_nvlink", 4),),
        tp=(1, 2, 4),
        pp=(1,),
        schedulers=(grid_mod.SchedulerChoice("vllm"), grid_mod.SchedulerChoice("orca")),
        batch_caps=(64,),
        pd_splits=(0.25, 0.5, 0.75),
    )
    cands = grid_mod.expand_grid(spec, DeploymentConfig())
    names = [grid_mod.describe(c.config) for c in cands]
    assert names == [
        "a100 tp1 pp1 x4 vllm cap64",
        "a100 tp1 pp1 x4 vllm cap64 1P:3D",
        "a100 tp1 pp1 x4 vllm cap64 2P:2D",
        "a100 tp1 pp1 x4 vllm cap64 3P:1D",
        "a100 tp1 pp1 x4 orca cap64",
        "a100 tp2 pp1 x2 vllm cap64",
        "a100 tp2 pp1 x2 vllm cap64 1P:1D",
        "a100 tp2 pp1 x2 orca cap64",
        "a100 tp4 pp1 x1 vllm cap64",
        "a100 tp4 pp1 x1 orca cap64",
    ]
    assert all(c.feasible and c.num_gpus == 4 for c in cands)
    pooled_cfgs = [c.config for c in cands if c.config.prefill_replicas]
    assert all(c.num_replicas == c.prefill_replicas + c.decode_replicas for c in pooled_cfgs)
    rr = [c.config for c in cands[:2]]  # round robin (the default router): colocated, 1P:3D
    assert rr[0].global_scheduler == "round_robin"
    assert (
        cap.resolve_mode("auto", rr[:1]) == "replica" and cap.resolve_mode("auto", rr) == "cluster"
    )
    with pytest.raises(ConfigError, match="no prefill/decode pools"):
        cap.resolve_mode("replica", rr)
    with pytest.raises(ConfigError, match="target_qps=null"):
        grid_mod.expand_grid(spec, DeploymentConfig(), per_replica=True)
    with pytest.raises(ConfigError, match="pd_splits"):
        grid_mod.grid_from_dict({"pd_splits": [1.5]}, "meta-llama/Llama-2-7b-hf", "a100")


@pytest.mark.slow
def test_search_measures_colocated_and_pooled_capacity():
    """A 2-GPU search with pd_splits [0.5]: the colocated pair and the 1P:1D pool are
    both measured (cluster mode), the pool's row names its split, and every measured
    capacity meets the SLO at the reported rate."""
    from vidur_jax import app
    from vidur_jax.search.task import run_search

    cfg = app.to_container(
        app.compose(
            [
                "task=search",
                "workload=synthetic_conv",
                "search.gpus=[a100]",
                "search.max_gpus=2",
                "search.tp=[1]",
                "search.pp=[1]",
                "search.schedulers=[{scheduler: vllm}]",
                "search.batch_caps=[32]",
                "search.pd_splits=[0.5]",
                "search.num_requests=60",
                "search.max_requests=240",
                "search.width=8",
                "search.slo.ttft_p90_s=1.0",
                "search.slo.tbt_p99_s=0.1",
                "profiles_dir=null",
            ]
        )
    )
    res = run_search(cfg, log=lambda msg: None)
    t = res["table"]
    assert res["settings"].mode == "cluster"
    assert t["prefill_replicas"].tolist() == [0, 1] and t["decode_replicas"].tolist() == [0, 1]
    assert t["name"].tolist()[1].endswith("1P:1D")
    ok = t[t["search_status"] == "ok"]
    assert len(ok) >= 1
    assert (ok["ttft_p90"] <= 1.0 + 1e-12).all() and (ok["tbt_p99"] <= 0.1 + 1e-12).all()
