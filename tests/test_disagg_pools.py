"""Pools with their own GPU type and TP degree: hand-worked toy cases, memory and cost per
pool, pools on the config's own hardware == no pool keys bit for bit, vmap == single.

Timing as in tests/test_disagg.py, per GPU type: on an A100 every iteration takes
``10 ms + 0.1 ms x T8``, on an H100 ``5 ms + 0.05 ms x T8`` (T8 the batch's tokens rounded
up to a multiple of 8); at TP > 1 the tables add Vidur's NCCL launch overhead, 0.02 ms
per all-reduce, two per layer, 32 layers: 1.28 ms per iteration. Attention costs nothing.
KV: Llama-2-7B keeps 2 (K, V) x 2 bytes x 128 x 32 heads x 32 layers = 524,288 bytes per
token, split over the TP GPUs of a replica (262,144 per GPU at TP2).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import toy_configs as toy
from toy_configs import KV_BYTES, LATENCY, RTOL

from vidur_jax.errors import ConfigError
from vidur_jax.sim import build, disagg_pools
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.engine import make_simulator
from vidur_jax.sim.run import requests_frame
from vidur_jax.sim.tables import LinearPredictor
from vidur_jax.workload import make_workload

A100 = toy.PRED
H100 = LinearPredictor(per_token_ms=0.05 / 32, fixed_ms=5.0 / 32)
NCCL_MS = 32 * 2 * 0.02  # per iteration at TP > 1


def predictor_for(c):
    return {"a100": A100, "h100": H100}[c.device]


def it_a100(tokens: int, tp: int = 1) -> float:
    t8 = -(-tokens // 8) * 8
    return (10.0 + 0.1 * t8 + (NCCL_MS if tp > 1 else 0.0)) * 1e-3


def it_h100(tokens: int, tp: int = 1) -> float:
    t8 = -(-tokens // 8) * 8
    return (5.0 + 0.05 * t8 + (NCCL_MS if tp > 1 else 0.0)) * 1e-3


def pooled(p: int = 1, d: int = 1, **kw) -> DeploymentConfig:
    kw.setdefault("max_tokens", 4096)
    return toy.pooled(p, d, **kw)


def run(cfgs, wls, capture=None):
    return toy.run(cfgs, wls, capture, predictor_for=predictor_for)


check = functools.partial(toy.check, atol=1e-12)


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_prefill_on_h100_tp2_decode_on_a100_tp1(policy):
    """16-token prompt, 3 output tokens. Prefill on an H100 TP2 replica: it_h100(16, tp2)
    = 5 + 0.8 + 1.28 = 7.08 ms (first token). The pools are on different GPU types, so
    on different nodes: the transfer runs at 25 GB/s per GPU on both sides; each H100
    sends 262,144 B per token, the one A100 receives 524,288: the receiver is slower,
    x = 0.1 ms + 16 x 524,288 / 25e9 = 0.43554432 ms. Then two A100 TP1 decode iterations."""
    wl = make_workload(np.array([0.0]), np.array([16]), np.array([3]))
    cfg = pooled(replica_scheduler=policy, prefill_device="h100", prefill_tp=2)
    (out,) = run([cfg], [wl])
    a = it_h100(16, tp=2)
    assert a == pytest.approx(7.08e-3, rel=1e-12)
    x = LATENCY + 16 * KV_BYTES / 25e9
    assert x == pytest.approx(0.43554432e-3, rel=1e-12)
    check(out, [0.0], [a], [a + x + 2 * it_a100(1)])
    assert out.summary["kv_transfer_time_p50"] == pytest.approx(x, rel=1e-9)
    np.testing.assert_allclose(out.requests["kv_transfer_s"], [x], rtol=1e-9)
    s = out.summary
    hw = ("prefill_pool_device", "prefill_pool_tp", "decode_pool_device", "decode_pool_tp")
    assert tuple(s[k] for k in hw) == ("h100", 2, "a100", 1)
    makespan = a + x + 2 * it_a100(1)
    assert s["prefill_busy_fraction"] == pytest.approx(a / makespan, rel=RTOL)
    assert s["decode_busy_fraction"] == pytest.approx(2 * it_a100(1) / makespan, rel=RTOL)


def test_sender_side_sets_the_time_and_node_packing_follows_each_pools_tp():
    """Prefill A100 TP2 (GPUs 0-1) feeding decode A100 TP4 (GPUs 2-5): one node type
    (a100_pairwise_nvlink, 4 GPUs) but the decode replica spans two nodes, so the link
    is the inter-node one (10 GB/s here). Each sender GPU holds 262,144 B per token, each
    receiver 131,072: the sender is slower, x = 0.1 ms + 64 x 262,144 / 10e9. Decode
    iterations at TP4 pay the all-reduce launch overhead: it_a100(1, tp4)."""
    wl = make_workload(np.array([0.0]), np.array([64]), np.array([2]))
    cfg = pooled(tensor_parallel_size=2, decode_tp=4, kv_inter_node_gbps=10.0)
    (out,) = run([cfg], [wl])
    a, x = it_a100(64, tp=2), LATENCY + 64 * (KV_BYTES // 2) / 10e9
    check(out, [0.0], [a], [a + x + it_a100(1, tp=4)])
    np.testing.assert_allclose(out.requests["kv_transfer_s"], [x], rtol=1e-9)

    # decode TP1 at GPU 2: inside node 0, NVLink 300 GB/s; the receiver (524,288 B) is slower
    (near,) = run([dataclasses.replace(cfg, decode_tp=1)], [wl])
    x1 = LATENCY + 64 * KV_BYTES / 300e9
    check(near, [0.0], [a], [a + x1 + it_a100(1)])


def test_each_pool_has_its_own_kv_blocks():
    """Vidur's planner per pool (80 GiB x 0.9 = 77,309,411,328 B; Llama-2-7B weights
    202,375,168 / TP elements per layer x 32 layers x 2 B; KV per request 524,288 / TP x
    4096 B): A100 TP1: floor(64,357,400,576 / 2,147,483,648) = 29 requests = 29 x 256 =
    7,424 blocks; H100 TP2: floor(70,833,405,952 / 1,073,741,824) = 65 requests = 16,640
    blocks. The prefill replica starts with 16,640 free blocks, the decode replicas with
    7,424 each, and gets them all back at the end."""
    cfg = pooled(1, 2, prefill_device="h100", prefill_tp=2)
    wl = make_workload(np.array([0.0, 0.001]), np.array([100, 200]), np.array([5, 3]))
    d = build.derive(cfg)
    tables, index = build.build_tables([cfg], build.table_spec_for([cfg], 8), predictor_for)
    params = build.build_params(cfg, d, wl, index[0], wl.num_requests)
    np.testing.assert_array_equal(params.pool_num_blocks, [16640, 7424])
    static = build.make_static([cfg], [d], wl.num_requests, num_slots=8)
    state = make_simulator(static, tables).init(params)
    np.testing.assert_array_equal(np.asarray(state.free_blocks), [16640, 7424, 7424])
    states = []
    (out,) = run([cfg], [wl], capture=states)
    assert out.summary["num_completed"] == 2
    _, _, st, i = states[-1]
    np.testing.assert_array_equal(np.asarray(st.free_blocks[i]), [16640, 7424, 7424])


def test_each_pool_keeps_its_own_watermark():
    """vLLM's watermark (1% of the blocks) is per pool: int(0.01 x 16,640) = 166 on the
    H100 TP2 prefill pool, int(0.01 x 7,424) = 74 on the A100 TP1 decode pool."""
    cfg = pooled(prefill_device="h100", prefill_tp=2)
    params = build.build_params(
        cfg,
        build.derive(cfg),
        make_workload(np.zeros(1), np.array([8]), np.array([2])),
        build.TableRow(0, 0, (0, 1)),
        1,
    )
    np.testing.assert_array_equal(params.pool_watermark_blocks, [166, 74])
    np.testing.assert_array_equal(params.pool_table_index, [0, 1])


def test_cost_per_hour_of_a_mixed_deployment():
    """3 prefill replicas of H100 TP2 and 5 decode replicas of A100 TP1: 6 + 5 = 11 GPUs,
    6 x $4.25 + 5 x $2.21 = $36.55 per hour (catalog prices)."""
    cfg = pooled(3, 5, prefill_device="h100", prefill_tp=2)
    assert disagg_pools.num_gpus(cfg) == 11
    price = {"h100": 4.25, "a100": 2.21}
    assert disagg_pools.cost_per_hour(cfg, price.get) == pytest.approx(36.55, rel=1e-12)
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    assert disagg_pools.cost_per_hour(fields, price.get) == pytest.approx(36.55, rel=1e-12)
    # the config path labels it so (hardware.price_per_hour applies to hardware.device)
    from vidur_jax.plan.from_config import check_config

    tree = {
        "model": {"name": "meta-llama/Llama-2-7b-hf"},
        "hardware": {
            "device": "a100",
            "network_device": "a100_pairwise_nvlink",
            "price_per_hour": 2.0,
        },
        "cluster": {
            "tp": 1,
            "pp": 1,
            "num_replicas": 8,
            "prefill_replicas": 3,
            "decode_replicas": 5,
            "prefill_device": "h100",
            "prefill_tp": 2,
        },
    }
    (point,) = check_config(_compose(tree))
    assert point.labels["num_gpus"] == 11
    assert point.labels["cost_per_hour"] == pytest.approx(6 * 4.25 + 5 * 2.0, rel=1e-12)


def _compose(tree):
    from vidur_jax.plan.tree import compose

    overrides = [f"{g}.{k}={v}" for g, block in tree.items() for k, v in block.items()]
    return compose(["scheduler=vllm", *overrides])


def _random_workload(n=40, seed=0, qps=30.0):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / qps, n))
    return make_workload(arrivals, rng.integers(16, 400, n), rng.integers(1, 60, n))


def test_pools_on_the_configs_own_hardware_equal_no_pool_keys_bit_for_bit():
    """Pool keys naming the config's own GPU and TP change nothing: same tables, blocks
    and transfer, bit for bit (requests, TBT, transfers)."""
    wl = _random_workload(seed=3)
    plain = pooled(2, 2, num_blocks=64, global_scheduler="lor")
    same = dataclasses.replace(
        plain, prefill_device="a100", prefill_tp=1, decode_device="a100", decode_tp=1
    )
    a, b = run([plain], [wl])[0], run([same], [wl])[0]
    for k in ("scheduled_at", "first_token_at", "completed_at", "num_restarts", "kv_transfer_s"):
        np.testing.assert_array_equal(a.requests[k], b.requests[k])
    assert a.counters["tbt_sum_s"] == b.counters["tbt_sum_s"]
    assert a.summary["kv_transfer_time_p99"] == b.summary["kv_transfer_time_p99"]


def test_batched_equals_single_config_path_with_pool_hardware():
    """Pools on other GPUs, pools on the config's GPU and a colocated config in one
    vmapped call get what each gets alone (the single path is the scatter-free loop)."""
    wl = _random_workload(seed=1)
    cfgs = [
        pooled(1, 3, prefill_device="h100", prefill_tp=2, global_scheduler="lor"),
        pooled(2, 2, decode_tp=2, num_blocks=64, global_scheduler="lor"),
        pooled(2, 2, global_scheduler="lor"),
        DeploymentConfig(replica_scheduler="vllm", num_replicas=4, global_scheduler="lor"),
    ]
    both = run(cfgs, [wl] * len(cfgs))
    for cfg, b in zip(cfgs, both, strict=True):
        (one,) = run([cfg], [wl])
        for k in (
            "scheduled_at",
            "first_token_at",
            "completed_at",
            "num_restarts",
            "kv_transfer_s",
        ):
            np.testing.assert_allclose(one.requests[k], b.requests[k], rtol=1e-12)
        for k in (
            "kv_transfer_time_p50",
            "prefill_busy_fraction",
            "decode_busy_fraction",
            "mfu_mean",
        ):
            np.testing.assert_allclose(one.summary[k], b.summary[k], rtol=1e-12)
    assert both[0].summary["num_completed"] == wl.num_requests
    # the H100 pool is faster at prefill than the A100 pools: earlier first tokens
    ttft = [np.nanmean(o.requests["first_token_at"] - o.requests["arrived_at"]) for o in both[:3]]
    assert ttft[0] < ttft[2]


def test_requests_parquet_kv_transfer_column():
    """requests.parquet gets kv_transfer_s: the transfer of each transferred request,
    NaN for a colocated config and for a request with one output token."""
    wl = make_workload(np.array([0.0, 0.1]), np.array([16, 24]), np.array([3, 1]))
    outs = run(
        [
            pooled(prefill_device="h100", prefill_tp=2),
            DeploymentConfig(replica_scheduler="vllm", num_replicas=2),
        ],
        [wl, wl],
    )
    df = requests_frame(outs)
    pooled_rows = df[df.config_id == 0].kv_transfer_s.to_numpy()
    assert pooled_rows[0] == pytest.approx(LATENCY + 16 * KV_BYTES / 25e9, rel=1e-9)
    assert np.isnan(pooled_rows[1])
    assert df[df.config_id == 1].kv_transfer_s.isna().all()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"decode_tp": 3}, "divide"),
        ({"decode_device": "tpu9"}, "tpu9"),
        ({"decode_tp": 0}, "decode_tp"),
        ({"prefill_tp": 16}, "no a100 node type holds 16"),
        (
            {"model": "meta-llama/Llama-2-70b-hf", "tensor_parallel_size": 4, "decode_tp": 1},
            r"decode pool \(a100 tp=1\).*fit",
        ),
    ],
)
def test_bad_pool_hardware_is_refused_with_one_line(kw, match):
    with pytest.raises(ConfigError, match=match) as err:
        build.derive(pooled(**kw))
    assert "\n" not in str(err.value)


def _pool_grid(pd_pools):
    """The per-pool-hardware candidates of an 8-GPU A100 search grid (Llama-2-7B, TP1 PP1,
    vLLM cap 64) with ``pd_splits`` [0.25, 0.5] and these ``pd_pools``."""
    from vidur_jax.search import grid as grid_mod

    spec = grid_mod.grid_from_dict(
        {
            "gpus": ["a100"],
            "max_gpus": 8,
            "tp": [1],
            "pp": [1],
            "schedulers": ["vllm"],
            "batch_caps": [64],
            "pd_splits": [0.25, 0.5],
            "pd_pools": pd_pools,
        },
        "meta-llama/Llama-2-7b-hf",
        "a100",
    )
    return [
        c
        for c in grid_mod.expand_grid(spec, DeploymentConfig())
        if disagg_pools.has_pool_hardware(c.config)
    ]


def test_search_grid_adds_per_pool_hardware_points():
    """search.pd_pools x pd_splits on an 8-GPU A100 cluster: share 0.5 with prefill TP2
    gives P = round(0.5 x 8 / 2) = 2 prefill replicas (4 GPUs) and D = 4 // 1 = 4 decode
    replicas of TP1; share 0.25 gives P = 1, D = 6. An H100 prefill pool pays the H100
    price: 4 x $4.25 + 4 x $2.21 = $25.84/h over 8 GPUs. A decode TP that does not divide
    the heads is kept with its one-line reason; a prefill TP wider than the cluster
    leaves no decode replica and is not part of the grid."""
    from vidur_jax.search import grid as grid_mod

    hw = _pool_grid(
        [
            {"prefill_tp": 2, "decode_tp": 1},
            {"prefill_device": "h100", "prefill_tp": 2, "decode_tp": 1},
            {"prefill_tp": 1, "decode_tp": 3},
            {"prefill_tp": 16},
        ]
    )
    names = [grid_mod.describe(c.config) for c in hw]
    assert names == [
        "a100 tp2 pp1 x7 vllm cap64 1P(a100 tp2):6D(a100 tp1)",
        "a100 tp2 pp1 x6 vllm cap64 2P(a100 tp2):4D(a100 tp1)",
        "h100 tp2 pp1 x7 vllm cap64 1P(h100 tp2):6D(a100 tp1)",
        "h100 tp2 pp1 x6 vllm cap64 2P(h100 tp2):4D(a100 tp1)",
        "a100 tp1 pp1 x4 vllm cap64 2P(a100 tp1):2D(a100 tp3)",
        "a100 tp1 pp1 x5 vllm cap64 4P(a100 tp1):1D(a100 tp3)",
    ]
    assert all(c.feasible for c in hw[:4]) and all(c.num_gpus == 8 for c in hw[:4])
    h = hw[3]
    assert h.cost_per_hour == pytest.approx(4 * 4.25 + 4 * 2.21, rel=1e-12)
    assert grid_mod.label(h.config) == "2 prefill (H100 TP2) : 4 decode (A100 TP1) (vLLM, cap 64)"
    assert not hw[4].feasible and "divide" in hw[4].reason and "\n" not in hw[4].reason
    with pytest.raises(ConfigError, match="pd_pools"):
        grid_mod.grid_from_dict(
            {"pd_pools": [{"prefill_gpu": "h100"}]}, "meta-llama/Llama-2-7b-hf", "a100"
        )


@pytest.mark.slow
def test_search_measures_a_pool_hardware_point():
    """A 2-GPU A100 search with pd_pools [{prefill_device: h100}] and pd_splits [0.5]:
    the colocated pair, its 1P:1D pool and the H100-prefill pool (1 H100 + 1 A100) are
    all measured; the last costs $4.25 + $2.21 per hour and its QPS per dollar is its
    capacity over that."""
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
                "search.pd_pools=[{prefill_device: h100}]",
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
    assert t["name"].tolist()[2] == "h100 tp1 pp1 x2 vllm cap32 1P(h100 tp1):1D(a100 tp1)"
    row = t.iloc[2]
    assert (row["prefill_device"], row["decode_device"], row["num_gpus"]) == ("h100", "a100", 2)
    assert row["cost_per_hour"] == pytest.approx(4.25 + 2.21, rel=1e-12)
    assert row["search_status"] == "ok"
    assert row["qps_per_dollar"] == pytest.approx(
        row["capacity_qps"] / row["cost_per_hour"], rel=1e-12
    )
    assert row["ttft_p90"] <= 1.0 + 1e-12 and row["tbt_p99"] <= 0.1 + 1e-12


# --- per-pool pipeline parallelism ---------------------------------------------------------


def test_decode_pool_with_two_pipeline_stages():
    """1 prefill replica A100 TP1 PP1, 1 decode replica A100 TP1 PP2 with batch cap 2
    (Vidur's micro-batch cap 2 // 2 = 1: one request per micro-batch). Two requests at 0,
    16-token prompts, 3 output tokens each.

    Prefill: one 32-token batch, a = it_a100(32) = 13.2 ms (both first tokens). The decode
    replica takes GPUs 1-2 of the 4-GPU node, so the KV moves over NVLink (300 GB/s) and
    the sender (524,288 B per token on its one GPU) is slower than each receiver GPU
    (262,144 B: half the layers): x = 0.1 ms + 16 x 524,288 / 300e9, both land at
    t0 = a + x. A PP2 stage holds 16 of the 32 layers: h = it_a100(1) / 2 = 5.4 ms (the
    linear predictor has no send/recv cost). Micro-batch {A} runs stage 0 [t0, t0+h],
    stage 1 [t0+h, t0+2h]; {B} follows at once: [t0+h, t0+2h], [t0+2h, t0+3h]. A's second
    iteration starts at t0+2h: stage 0 [t0+2h, t0+3h], stage 1 [t0+3h, t0+4h] -> A done at
    t0+4h; B's: [t0+3h, t0+4h], [t0+4h, t0+5h] -> B done at t0+5h. (With a PP1 decode
    replica both would decode in one batch and finish at t0 + 2 it_a100(2) = t0+4h.)"""
    wl = make_workload(np.array([0.0, 0.0]), np.array([16, 16]), np.array([3, 3]))
    cfg = pooled(decode_pp=2, decode_batch_cap=2)
    (out,) = run([cfg], [wl])
    a = it_a100(32)
    assert a == pytest.approx(13.2e-3, rel=1e-12)
    x = LATENCY + 16 * KV_BYTES / 300e9
    t0, h = a + x, it_a100(1) / 2
    assert h == pytest.approx(5.4e-3, rel=1e-12)
    check(out, [0.0, 0.0], [a, a], [t0 + 4 * h, t0 + 5 * h])
    np.testing.assert_allclose(out.requests["kv_transfer_s"], [x, x], rtol=1e-9)
    s = out.summary
    assert (s["prefill_pool_pp"], s["decode_pool_pp"]) == (1, 2)
    assert s["decode_batch_size_mean"] == 1.0  # four micro-batches of one request
    assert disagg_pools.num_gpus(cfg) == 3
    assert disagg_pools.describe_pools(cfg) == " 1P(a100 tp1):1D(a100 tp1 pp2)"


def test_pp2_pool_has_the_blocks_of_half_the_layers():
    """Vidur's planner on a PP2 A100 replica, as for a colocated PP2 replica: one stage's
    weights per GPU, 202,375,168 x 16 layers x 2 B = 6,476,005,376 B, leave 77,309,411,328
    - 6,476,005,376 = 70,833,405,952 B; Vidur counts every layer's KV per request,
    524,288 x 4096 = 2,147,483,648 B -> 32 requests per stage x 2 stages = 64 requests =
    16,384 blocks (the TP1 PP1 prefill pool: 7,424); each pool's watermark is 1% of its
    blocks; the decode pool sees 2 stages of 16 layers on 2 GPUs."""
    cfg = pooled(decode_pp=2)
    wl = make_workload(np.zeros(1), np.array([8]), np.array([2]))
    d = build.derive(cfg)
    tables, index = build.build_tables([cfg], build.table_spec_for([cfg], 8), predictor_for)
    params = build.build_params(cfg, d, wl, index[0], 1)
    np.testing.assert_array_equal(params.pool_num_blocks, [7424, 16384])
    np.testing.assert_array_equal(params.pool_watermark_blocks, [74, 163])
    np.testing.assert_array_equal(params.pool_num_stages, [1, 2])
    np.testing.assert_array_equal(params.pool_layers_per_stage, [32, 16])
    np.testing.assert_array_equal(params.gpus_per_replica, [1, 2])
    assert build.make_static([cfg], [d], 1, num_slots=8).max_stages == 2


def test_pool_pp_invariants_and_equivalences():
    """Random traffic on 2 prefill (PP2) : 2 decode (PP2) replicas: every request completes,
    TTFT <= e2e, every KV block comes back. Pools on the config's own PP (keys 1 on a PP1
    config) equal no keys bit for bit; a PP2 cluster with no pool keys equals a PP1 cluster
    whose two pools say pp 2 (same tables, blocks and stages) bit for bit; the vmapped call
    (PP pools, TP pools, colocated) equals each config alone."""
    wl = _random_workload(seed=5)
    keys = ("scheduled_at", "first_token_at", "completed_at", "num_restarts", "kv_transfer_s")
    base = pooled(2, 2, num_blocks=None, global_scheduler="lor")
    pp_pools = dataclasses.replace(base, prefill_pp=2, decode_pp=2)
    states = []
    (out,) = run([pp_pools], [wl], capture=states)
    r = out.requests
    assert out.summary["num_completed"] == wl.num_requests
    assert np.all(r["first_token_at"] <= r["completed_at"])
    _, _, st, i = states[-1]
    np.testing.assert_array_equal(np.asarray(st.free_blocks[i]), [16384] * 4)

    cluster_pp2 = dataclasses.replace(base, num_pipeline_stages=2)
    for a, b in (
        (base, dataclasses.replace(base, prefill_pp=1, decode_pp=1)),
        (cluster_pp2, pp_pools),
    ):
        oa, ob = run([a], [wl])[0], run([b], [wl])[0]
        for k in keys:
            np.testing.assert_array_equal(oa.requests[k], ob.requests[k])
        assert oa.counters["tbt_sum_s"] == ob.counters["tbt_sum_s"]

    cfgs = [
        dataclasses.replace(base, decode_pp=2, prefill_device="h100"),
        pp_pools,
        pooled(1, 3, decode_tp=2, global_scheduler="lor"),
        DeploymentConfig(replica_scheduler="vllm", num_replicas=4, global_scheduler="lor"),
    ]
    both = run(cfgs, [wl] * len(cfgs))
    for cfg, b in zip(cfgs, both, strict=True):
        (one,) = run([cfg], [wl])
        for k in keys:
            np.testing.assert_allclose(one.requests[k], b.requests[k], rtol=1e-12)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"decode_pp": 0}, "cluster.decode_pp=0 must be null or an integer >= 1"),
        ({"prefill_pp": 3}, r"prefill pool: .*3"),
        (
            {"decode_pp": 4, "decode_batch_cap": 2},
            "decode pool: batch cap 2 must be >= its pipeline stages 4",
        ),
        ({"decode_pp": 1.5}, "decode_pp=1.5"),
    ],
)
def test_bad_pool_pp_is_refused_with_one_line(kw, match):
    with pytest.raises(ConfigError, match=match) as err:
        build.derive(pooled(**kw))
    assert "\n" not in str(err.value)


def test_search_grid_splits_gpus_by_each_pools_tp_x_pp():
    """search.pd_pools with pool PP on an 8-GPU A100 cluster: {decode_pp: 2} at share 0.25
    gives P = round(0.25 x 8 / 1) = 2 prefill replicas and D = (8 - 2) // (1 x 2) = 3
    decode replicas of 2 GPUs; at 0.5, P = 4 and D = 2. {prefill_tp: 2, prefill_pp: 2}:
    4 GPUs per prefill replica, P = max(round(0.5), 1) = 1 at 0.25 and round(1) = 1 at 0.5
    (one point), D = 4. search.csv names each pool's PP."""
    from vidur_jax.search import grid as grid_mod

    hw = _pool_grid([{"decode_pp": 2}, {"prefill_tp": 2, "prefill_pp": 2}])
    assert [grid_mod.describe(c.config) for c in hw] == [
        "a100 tp1 pp1 x5 vllm cap64 2P(a100 tp1):3D(a100 tp1 pp2)",
        "a100 tp1 pp1 x6 vllm cap64 4P(a100 tp1):2D(a100 tp1 pp2)",
        "a100 tp2 pp2 x5 vllm cap64 1P(a100 tp2 pp2):4D(a100 tp1)",
    ]
    assert all(c.feasible and c.num_gpus == 8 for c in hw)
    assert (
        grid_mod.label(hw[2].config)
        == "1 prefill (A100 TP2 PP2) : 4 decode (A100 TP1) (vLLM, cap 64)"
    )
    assert grid_mod.pool_hardware(hw[0].config)["decode_pp"] == 2


@pytest.mark.parametrize(("key", "value"), [("decode_pp", 0), ("prefill_tp", -1)])
def test_bad_pool_degree_is_refused_at_plan_time(key, value):
    """A pool TP or PP below 1 is refused when the config is checked (before its GPUs
    and cost are counted), with one line."""
    from vidur_jax.plan.from_config import check_config

    tree = {"cluster": {"prefill_replicas": 1, "decode_replicas": 3, key: value}}
    with pytest.raises(
        ConfigError, match=rf"cluster.{key}={value} must be null or an integer >= 1"
    ) as err:
        check_config(_compose(tree))
    assert "\n" not in str(err.value)
