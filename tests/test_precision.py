"""Precision (model.weight_dtype / model.kv_cache_dtype): memory (FP8 KV doubles the KV
capacity exactly), roofline-scaled GEMM/attention times worked by hand on a synthetic
calibration, identity at BF16, the config keys, a sweep in one vmapped call, and a
published measurement."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from vidur_jax import catalog
from vidur_jax.errors import ConfigError
from vidur_jax.predictors import roofline
from vidur_jax.sim import build, precision
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs
from vidur_jax.sim.tables import LinearPredictor, TableSpec, tabulate_one
from vidur_jax.workload import make_workload

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

M7 = "meta-llama/Llama-2-7b-hf"
M70 = "meta-llama/Llama-2-70b-hf"
# a hard roofline (max of compute and memory time, sharpness 64) with no launch overhead
HARD = {"eff_compute": 1.0, "eff_memory": 1.0, "overhead_ms": 0.0, "sharpness": 64.0}
CAL = {
    "devices": ["test"],
    "ops": {op: HARD for op in (*roofline.GEMM_OPS, "attn_decode", "attn_prefill")},
}


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("model", "device", "tp"), [(M7, "a100", 1), (M70, "h100", 4), (M7, "h100", 2)]
)
def test_fp8_kv_doubles_the_kv_capacity_exactly(model, device, tp):
    bf16 = catalog.kv_bytes_per_token(model, tp, 1, kv_dtype="bf16")
    assert 2 * catalog.kv_bytes_per_token(model, tp, 1, kv_dtype="fp8") == bf16
    n = catalog.num_kv_blocks(model, device, tp, 1, 4096, 16, kv_dtype="bf16")
    n8 = catalog.num_kv_blocks(model, device, tp, 1, 4096, 16, kv_dtype="fp8")
    # Vidur's planner rounds to whole max_tokens requests: 2n, or 2n + one request's blocks
    assert n8 in (2 * n, 2 * n + 4096 // 16)


def test_fp8_kv_doubles_blocks_exactly_by_hand():
    """Llama-2-7B, TP 1, on an A100 (80 GiB, margin 0.1: 77,309,411,328 B): weights
    12,952,010,752 B, KV 524,288 B/token at bf16. With max_tokens 1024: 64,357,400,576 //
    (524,288 x 1024) = 119 requests (119.87), 7,616 blocks; at fp8 (262,144 B/token)
    239 requests (239.75) -> 15,296 blocks = 2 x 7,616 + 64. With max_tokens 16 (one
    block per request) the capacity is 7,672.4 requests -> 7,672 and at fp8 15,344.8 ->
    15,344 = 2 x 7,672: exactly double."""
    assert catalog.param_bytes_per_device(M7, 1, 1, weight_dtype="bf16") == 12_952_010_752
    assert catalog.kv_bytes_per_token(M7, 1, 1, kv_dtype="bf16") == 524_288
    assert catalog.num_kv_blocks(M7, "a100", 1, 1, 1024, 16, kv_dtype="bf16") == 119 * 64 == 7616
    assert (
        catalog.num_kv_blocks(M7, "a100", 1, 1, 1024, 16, kv_dtype="fp8")
        == 239 * 64
        == 2 * 7616 + 64
    )
    bf16 = catalog.num_kv_blocks(M7, "a100", 1, 1, 16, 16, kv_dtype="bf16")
    fp8 = catalog.num_kv_blocks(M7, "a100", 1, 1, 16, 16, kv_dtype="fp8")
    assert (bf16, fp8) == (7672, 15344) and fp8 == 2 * bf16
    # the config keys reach the planner
    cfg = DeploymentConfig(replica_scheduler="vllm", max_tokens=16, block_size=16)
    assert build.derive(cfg).num_blocks == 7672
    assert (
        build.derive(
            DeploymentConfig(
                replica_scheduler="vllm", max_tokens=16, block_size=16, kv_cache_dtype="fp8"
            )
        ).num_blocks
        == 15344
    )


def test_fp8_weights_halve_weight_memory_and_free_kv():
    assert 2 * catalog.param_bytes_per_device(
        M70, 4, 1, weight_dtype="fp8"
    ) == catalog.param_bytes_per_device(M70, 4, 1, weight_dtype="bf16")
    bf16 = build.derive(
        DeploymentConfig(model=M70, device="h100", tensor_parallel_size=4, replica_scheduler="vllm")
    )
    fp8 = build.derive(
        DeploymentConfig(
            model=M70,
            device="h100",
            tensor_parallel_size=4,
            replica_scheduler="vllm",
            weight_dtype="fp8",
        )
    )
    assert fp8.num_blocks > 1.3 * bf16.num_blocks
    # MFU is taken against the FP8 tensor peak when the GEMMs run in FP8
    assert fp8.peak_flops == pytest.approx(1978.9e12) and bf16.peak_flops == pytest.approx(989.4e12)


# ----------------------------------------------------------------------------- op-time ratios


def test_gemm_ratio_by_hand_on_a_hard_roofline():
    """mlp_up_proj of Llama-2-7B, TP 1: K = 4096, N = 2 x 11008. FLOPs 2 n K N, bytes
    2 (n K + K N + n N). At n = 1 it is memory-bound on both: ratio = (K N + 2 n (K + N))
    / (2 K N + 2 n (K + N)). At n = 8192 it is compute-bound on both: ratio = BF16 peak /
    FP8 peak on an H100, 1 on an A100 (no FP8 tensor cores: weight-only FP8)."""
    k, nn = 4096.0, 2 * 11008.0
    r = precision.gemm_ratio("mlp_up_proj", np.array([1.0, 8192.0]), M7, "h100", 1, "fp8", CAL)
    assert r[0] == pytest.approx((k * nn + 2 * (k + nn)) / (2 * k * nn + 2 * (k + nn)), rel=1e-6)
    assert r[1] == pytest.approx(989.4 / 1978.9, rel=1e-3)
    a100 = precision.gemm_ratio("mlp_up_proj", np.array([1.0, 8192.0]), M7, "a100", 1, "fp8", CAL)
    assert a100[0] == pytest.approx(r[0], rel=1e-6) and a100[1] == pytest.approx(1.0, rel=1e-3)
    assert precision.gemm_ratio(
        "mlp_up_proj", np.array([1.0, 64.0]), M7, "h100", 1, "bf16", CAL
    ).tolist() == [1, 1]


def test_attention_ratios_by_hand_on_a_hard_roofline():
    """attn_decode (batch b, KV L), Llama-2-7B TP 1 (32 heads of 128): bytes 2 (2 b L 4096
    + 2 b 4096), memory-bound. FP8 KV: (b L 4096 + 2 b 4096) / (2 b L 4096 + 2 b 4096).
    q = 5 query tokens per sequence: bytes (2 b L 4096 + 10 b 4096), FLOPs x 5 (still
    memory-bound at L = 1024). Prefill at a compute-bound chunk: unchanged."""
    b, kv = np.array([8.0]), np.array([1024.0])
    fp8 = precision.decode_attention_ratio(b, kv, M7, "h100", 1, "fp8", 1, CAL)
    assert fp8[0] == pytest.approx((1024 + 2) / (2 * 1024 + 2), rel=1e-6)
    q5 = precision.decode_attention_ratio(b, kv, M7, "h100", 1, "bf16", 5, CAL)
    assert q5[0] == pytest.approx((2 * 1024 + 10) / (2 * 1024 + 2), rel=1e-6)
    pre = precision.prefill_attention_ratio(
        np.array([4096.0]), np.array([2048.0]), M7, "h100", 1, "fp8", CAL
    )
    assert pre[0] == pytest.approx(1.0, rel=1e-6)


def test_shipped_calibration_ratios_are_in_the_physical_range():
    """With the calibrated constants: FP8 GEMMs on an H100 take between half and all of the
    BF16 time at every size; FP8 KV never slows decode attention."""
    n = np.array([1.0, 16, 128, 1024, 8192])
    for op in roofline.GEMM_OPS:
        r = precision.gemm_ratio(op, n, M70, "h100", 4, "fp8")
        assert ((r > 0.49) & (r < 1.0)).all(), (op, r)
    d = precision.decode_attention_ratio(
        np.array([1.0, 64, 256]), np.array([512.0]), M70, "h100", 4, "fp8"
    )
    assert ((d > 0.49) & (d <= 1.0)).all()


def test_scale_slab_is_the_identity_at_bf16_and_scales_only_the_stated_ops():
    spec = TableSpec(256, 8, 512, 1024, 256)
    pred = LinearPredictor(
        per_token_ms=0.01,
        fixed_ms=0.1,
        decode_ms_per_kv=1e-5,
        prefill_ms_per_token2=1e-6,
        ops=("mlp_up_proj", "input_layernorm"),
    )
    slab = tabulate_one(pred, spec, 1, 1)
    steps = (spec.token_step, spec.kv_step, spec.chunk_step)
    assert precision.scale_slab(slab, steps, M7, "h100", 1, "bf16", "fp16", 1) is slab
    fp8 = precision.scale_slab(slab, steps, M7, "h100", 1, "fp8", "bf16", 1)
    from vidur_jax.sim.types import OP_INDEX

    up, norm = OP_INDEX["mlp_up_proj"], OP_INDEX["input_layernorm"]
    assert (fp8["token_ops"][1:, up] < slab["token_ops"][1:, up]).all()
    np.testing.assert_array_equal(fp8["token_ops"][:, norm], slab["token_ops"][:, norm])
    np.testing.assert_array_equal(fp8["decode"], slab["decode"])
    kv8 = precision.scale_slab(slab, steps, M7, "h100", 1, "bf16", "fp8", 1)
    np.testing.assert_array_equal(kv8["token_ops"], slab["token_ops"])
    assert (kv8["decode"][1:, 1:] < slab["decode"][1:, 1:]).all()


# ----------------------------------------------------------------------------- the engine


def test_precision_sweep_in_one_call_equals_each_alone():
    """bf16 / fp8 weights / fp8 KV configs in one vmapped call == each simulated alone;
    fp8 weights shorten every iteration (the toy's only op is a GEMM)."""
    pred = LinearPredictor(per_token_ms=0.1 / 32, fixed_ms=10.0 / 32)
    rng = np.random.default_rng(0)
    wl = make_workload(
        np.sort(rng.uniform(0, 1.0, 30)), rng.integers(16, 200, 30), rng.integers(1, 60, 30)
    )
    cfgs = [
        DeploymentConfig(
            device="h100", replica_scheduler="sarathi", weight_dtype=w, kv_cache_dtype=kv
        )
        for w, kv in (("bf16", "bf16"), ("fp8", "bf16"), ("bf16", "fp8"), ("fp8", "fp8"))
    ]
    with pytest.warns(UserWarning, match=r"op times are profiled bf16 x calibrated roofline ratio \(estimate\)"):
        together = simulate_configs(cfgs, [wl] * 4, predictor_for=lambda c: pred)
    for cfg, got in zip(cfgs, together, strict=True):
        (alone,) = simulate_configs([cfg], [wl], predictor_for=lambda c: pred)
        np.testing.assert_array_equal(got.requests["completed_at"], alone.requests["completed_at"])
    e2e = [np.mean(o.requests["completed_at"] - wl.arrived_at) for o in together]
    assert e2e[1] < 0.8 * e2e[0]
    assert e2e[2] == pytest.approx(e2e[0], rel=1e-9)  # attention is free in the toy
    assert "op_times" not in together[0].summary
    assert (
        together[1]
        .summary["op_times"]
        .startswith("profiled bf16 x calibrated roofline ratio (estimate)")
    )


def test_precision_keys_from_the_config_and_bad_values():
    import vidur_jax
    from vidur_jax.plan.deployment import deployment_from
    from vidur_jax.plan.tree import compose, to_container

    tree = to_container(compose(["model.weight_dtype=fp8", "model.kv_cache_dtype=FP8"]))
    cfg = deployment_from(tree)
    assert (cfg.weight_dtype, cfg.kv_cache_dtype) == ("fp8", "fp8")
    assert deployment_from(to_container(compose([]))).timing_variant == ("bf16", "bf16", 1)
    with pytest.raises(
        ConfigError,
        match=r"model.weight_dtype='int3'; allowed: fp16, bf16, fp8|unknown model.weight_dtype",
    ):
        vidur_jax.simulate(["model.weight_dtype=int3"])


# ----------------------------------------------------------------------------- published


#: |relative error| of the simulated FP8-weights speedup per published case, measured by
#: experiments/fp8.py (experiments/results/fp8/published.csv: +2.1% at batch 1, -0.8% at
#: batch 8, profiled H100 Llama-2-7B predictors), rounded up; held with a 2-point margin.
PUBLISHED_ERROR_PCT = {"trtllm_llama2_7b_h100_bs1": 2.2, "trtllm_llama2_7b_h100_bs8": 0.9}
MARGIN_PCT = 2.0


@pytest.mark.parametrize("case", list(PUBLISHED_ERROR_PCT))
def test_published_fp8_speedup(case, profiles_dir):
    """NVIDIA's TensorRT-LLM FP8-vs-FP16 speedups for Llama-2-7B on an H100 (input 1024,
    output 128, TP 1; experiments/fp8.py): the simulated speedup of FP8 weights stays
    within the measured error + margin."""
    import fp8

    (row,) = [r for r in fp8.published_rows(str(profiles_dir)) if r["case"] == case]
    assert abs(row["error_pct"]) <= PUBLISHED_ERROR_PCT[case] + MARGIN_PCT, row
    assert row["sim_speedup_fp8_weights_kv"] >= row["sim_speedup_fp8_weights"] - 1e-9
