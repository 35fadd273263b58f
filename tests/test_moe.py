"""Mixture-of-experts and MLA models: memory, FLOPs, timing, expert parallelism, and the
error against published measurements (docs/models.md)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from vidur_jax import catalog
from vidur_jax.catalog import hf_config, moe
from vidur_jax.catalog.models import MLASpec, ModelSpec, MoESpec
from vidur_jax.errors import ConfigError
from vidur_jax.predictors import roofline
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs
from vidur_jax.workload import make_workload

# A tiny MoE model worked by hand: H=8, 4 query heads of d=2, 2 KV heads, 2 layers (the
# first dense with a 12-wide MLP), 4 routed experts of width 6, top-2, one shared expert
# of width 4.
TINY_MOE = ModelSpec(
    name="tiny-moe",
    num_layers=2,
    num_q_heads=4,
    num_kv_heads=2,
    embedding_dim=8,
    mlp_hidden_dim=12,
    vocab_size=16,
    use_gated_mlp=True,
    post_attn_norm=True,
    max_model_len=256,
    moe=MoESpec(
        num_experts=4,
        experts_per_token=2,
        expert_hidden_dim=6,
        num_shared_experts=1,
        shared_expert_hidden_dim=4,
        first_dense_layers=1,
    ),
    family="qwen2_moe",
)


def test_tiny_moe_weights_per_gpu_by_hand():
    # attention, tp=1: H d (hq + 2 hkv) + H d hq = 8*2*(4+4) + 8*2*4 = 192
    # dense MLP (layer 0): 3*8*12 = 288
    # MoE layer 1: router 8*4 = 32, experts 4 * 3*8*6 = 576, shared 3*8*4 = 96 -> 704
    assert moe.attention_params_per_worker(TINY_MOE, 1) == 192
    assert catalog.params_per_device(TINY_MOE, 1, 1) == 192 * 2 + 288 + 704 == 1376
    # tp=2: attention 8*2*(2+2) + 8*2*2 = 96; dense 144; MoE 32 + 288 + 48 = 368
    assert catalog.params_per_device(TINY_MOE, 2, 1) == 96 * 2 + 144 + 368 == 704
    # pp=2: stage 0 = 192 + 288 = 480, stage 1 = 192 + 704 = 896; the fuller one counts
    assert catalog.params_per_device(TINY_MOE, 1, 2) == 896
    # EP does not move weights: every GPU of the stage holds E/tp experts' worth
    for ep in (1, 2):
        moe.validate_expert_parallel(TINY_MOE, 2, ep)
    # KV per token, fp16: 2 B x (K, V) x d=2 x 2 KV heads x 2 layers = 32 B; tp=2: 1 head
    assert catalog.kv_bytes_per_token(TINY_MOE, 1) == 32
    assert catalog.kv_bytes_per_token(TINY_MOE, 2) == 16


def test_attention_dp_weights_per_gpu_by_hand():
    """Attention DP 2 at tp=1 (experts over 2 GPUs, ep=2): attention 192 and the dense
    layer 288 stay whole on each GPU; MoE layer: router 32 + experts 576/2 + shared 96/2
    = 368. Per GPU 192 * 2 + 288 + 368 = 1040 elements (1376 without attention DP)."""
    assert catalog.params_per_device(TINY_MOE, 1, 1, attention_dp=2) == 192 * 2 + 288 + 368 == 1040
    assert catalog.param_bytes_per_device(TINY_MOE, 1, 1, attention_dp=2) == 2 * 1040
    moe.validate_expert_parallel(TINY_MOE, 1, 2, attention_dp=2)
    # KV is per attention rank: unchanged
    assert catalog.kv_bytes_per_token(TINY_MOE, 1) == 32
    for tp, ep, dp, needle in (
        (1, 1, 2, "needs ep = attention_dp x tp = 2"),
        (2, 2, 2, "needs ep = attention_dp x tp = 4"),
    ):
        with pytest.raises(ConfigError, match=needle):
            moe.validate_expert_parallel(TINY_MOE, tp, ep, attention_dp=dp)
    with pytest.raises(ConfigError, match="needs a mixture-of-experts model"):
        moe.validate_expert_parallel(catalog.get_model("llama2-7b"), 1, 2, attention_dp=2)


def test_attention_dp_moe_block_is_the_expert_group_on_all_ranks_tokens():
    """A rank of attention DP d at tp=1 with n tokens times its MoE block as the d-GPU
    expert group (tp=d, ep=d) on d x n tokens, exactly; attention ops stay at tp=1."""
    n = np.array([1.0, 8.0, 100.0, 2048.0])
    for d in (2, 4):
        dp = roofline.RooflinePredictor(TINY_MOE, "h100", 1, ep=d, attention_dp=d)
        group = roofline.RooflinePredictor(TINY_MOE, "h100", d, ep=d)
        one = roofline.RooflinePredictor(TINY_MOE, "h100", 1)
        for op in roofline.MOE_PARTS:
            got, ref = dp.moe_parts(op, n), group.moe_parts(op, d * n)
            assert got.keys() == ref.keys() and "dispatch" in dp.moe_parts("mlp_up_proj", n)
            for part in got:
                np.testing.assert_array_equal(got[part], ref[part])
        for op in ("attn_pre_proj", "attn_post_proj", "input_layernorm"):
            np.testing.assert_array_equal(
                dp.predict(op, num_tokens=n), one.predict(op, num_tokens=n)
            )
        np.testing.assert_array_equal(
            dp.predict("attn_decode", batch_size=n, kv_cache_size=n),
            one.predict("attn_decode", batch_size=n, kv_cache_size=n),
        )


def test_tiny_moe_flops_per_token_by_hand():
    # tp=1, per layer on average: attention 192 + (dense 288 + MoE (router 32 + top-2
    # experts 2*144 + shared 96 = 416)) / 2 = 544 weights -> 1088 FLOPs
    assert catalog.flops_per_token(TINY_MOE, 1) == 1088.0
    # tp=2: 96 + (144 + (32 + (288 + 96) / 2)) / 2 = 280 -> 560
    assert catalog.flops_per_token(TINY_MOE, 2) == 560.0
    # attention: 4 x d x heads per (query, key) pair
    assert catalog.attn_flops_coef(TINY_MOE, 1) == 4.0 * 2 * 4


TINY_MLA = MLASpec(
    q_lora_rank=4, kv_lora_rank=3, qk_nope_head_dim=2, qk_rope_head_dim=1, v_head_dim=2
)


def test_mla_weights_and_kv_by_hand():
    spec = dataclasses.replace(
        TINY_MOE, num_q_heads=2, num_kv_heads=2, explicit_head_dim=3, mla=TINY_MLA, moe=None
    )
    # q: 8*4 + 4*2*3 = 56; kv: 8*(3+1) + 3*2*(2+2) = 56; o: 2*2*8 = 32
    assert moe.attention_params_per_worker(spec, 1) == 144
    # tp=2 splits q_b, kv_b and o by heads; q_a and kv_a are replicated: 44 + 44 + 16
    assert moe.attention_params_per_worker(spec, 2) == 104
    # KV: one latent of 3 + one shared RoPE key of 1 per token and layer, not split by TP
    assert catalog.kv_bytes_per_token(spec, 1) == catalog.kv_bytes_per_token(spec, 2) == 2 * 4 * 2
    # QK over 3 dims and PV over 2, per head: 2 x (2 + 1 + 2) x 2 heads
    assert catalog.attn_flops_coef(spec, 1) == 20.0


@pytest.mark.parametrize(
    "alias, layers, latent",
    [("deepseek-v3", 61, 512 + 64), ("deepseek-v2-lite", 27, 512 + 64)],
)
def test_mla_kv_bytes_per_token_of_shipped_models(alias, layers, latent):
    # DeepSeek-V3: (512 + 64) x 61 layers x 2 B = 70,272 B per token on every GPU
    for tp in (1, 8):
        assert catalog.kv_bytes_per_token(alias, tp) == 2 * latent * layers
    assert catalog.kv_bytes_per_token("deepseek-v3", 1) == 70_272


@pytest.mark.parametrize("alias", ["mixtral-8x7b-instruct-v0.1", "mixtral-8x22b-v0.1"])
def test_weights_per_gpu_add_up_to_the_parameter_count(alias):
    # Mixtral has no biases: parameter count - embeddings, LM head and norms = weights
    m = catalog.get_model(alias)
    count = hf_config.parameter_count(m).total
    h = m.embedding_dim
    rest = count - 2 * m.vocab_size * h - h - 2 * h * m.num_layers
    assert catalog.params_per_device(m, 1, 1) == rest
    # split over 8 GPUs: everything divides but the router, which each GPU holds whole
    router = m.embedding_dim * m.moe.num_experts * m.num_layers
    assert 8 * catalog.params_per_device(m, 8, 1) == rest + 7 * router


def test_deepseek_v3_weights_add_up_to_the_parameter_count():
    m = catalog.get_model("deepseek-v3")
    count = hf_config.parameter_count(m).total
    h, a, e = m.embedding_dim, m.mla, m.moe
    # the count also holds embeddings + LM head + final norm, 2 norms per layer, MLA's
    # q_a and kv_a norms, and the router's correction bias
    extra = 2 * m.vocab_size * h + h + m.num_layers * (2 * h + a.q_lora_rank + a.kv_lora_rank)
    extra += (m.num_layers - e.first_dense_layers) * e.num_experts
    assert catalog.params_per_device(m, 1, 1) == count - extra
    # and it is the published 671B within 1% (test_hf_config holds every shipped config)
    assert abs(count / 671e9 - 1) < 0.01


def _dense_and_one_expert() -> tuple[ModelSpec, ModelSpec]:
    dense = dataclasses.replace(TINY_MOE, name="tiny-dense", moe=None, family="llama")
    one = dataclasses.replace(
        dense, name="tiny-1e", moe=MoESpec(num_experts=1, experts_per_token=1, expert_hidden_dim=12)
    )
    return dense, one


def test_one_expert_top1_ep1_equals_the_dense_model():
    dense, one = _dense_and_one_expert()
    for tp in (1, 2):
        assert catalog.params_per_device(one, tp, 1) == catalog.params_per_device(dense, tp, 1)
        assert catalog.flops_per_token(one, tp) == catalog.flops_per_token(dense, tp)
        pd = roofline.RooflinePredictor(dense, "h100", tp)
        pm = roofline.RooflinePredictor(one, "h100", tp)
        n = np.arange(1, 4097, 7)
        for op in roofline.OPS:
            if op in ("attn_prefill", "attn_decode"):
                continue
            np.testing.assert_array_equal(
                pm.predict(op, num_tokens=n), pd.predict(op, num_tokens=n)
            )
        assert set(pm.moe_parts("mlp_up_proj", n)) == {"expert_up"}  # no router, no all-to-all
    # and a whole simulation gives the same timestamps
    wl = _workload(0)
    outs = {}
    for spec in (dense, one):
        pred = roofline.RooflinePredictor(spec, "h100", 2)
        cfg = DeploymentConfig(
            model=spec,
            device="h100",
            tensor_parallel_size=2,
            max_tokens=256,
            replica_scheduler="vllm",
            num_blocks=64,
        )
        (outs[spec.name],) = simulate_configs([cfg], [wl], predictor_for=lambda c, p=pred: p)
    for key in ("scheduled_at", "first_token_at", "completed_at"):
        np.testing.assert_array_equal(
            outs["tiny-dense"].requests[key], outs["tiny-1e"].requests[key]
        )


def test_moe_parts_by_hand():
    # TINY_MOE's MoE layer at tp=2, ep=2, imbalance 1.5, n=8 tokens:
    # assignments on the busiest rank a = 8 * 2 * 1.5 / 2 = 12 (<= 8 * min(2, 2) = 16);
    # each rank holds 2 whole experts (tp/ep = 1), touched by 8 tokens: 2 (1 - (1/2)^8)
    pred = roofline.RooflinePredictor(TINY_MOE, "h100", 2, ep=2, moe_imbalance=1.5)
    n = np.array([8.0])
    shape = pred.shape
    assert roofline.routed_tokens(shape["moe"], 2, 1.5, n)[0] == 12.0
    touched = 2 * (1 - 0.5**8)
    np.testing.assert_allclose(roofline.experts_touched(shape["moe"], 2, n), [touched])
    flops, nbytes = roofline.moe_part_work("expert_up", shape, 2, 2, 1.5, n)
    # 2 a H (2F) FLOPs; bytes 2 (a H + touched H 2F + a 2F)
    assert flops[0] == 2 * 12 * 8 * 12
    np.testing.assert_allclose(nbytes, [2 * (12 * 8 + touched * 8 * 12 + 12 * 12)])
    # all-to-all: the busiest rank moves a H elements, half of them off-rank, 2 B each
    _, link = roofline.moe_part_work("dispatch", shape, 2, 2, 1.5, n)
    assert link[0] == 2 * 12 * 8 * 0.5
    # router on n/ep = 4 tokens: 2 x 4 x H x E FLOPs
    assert roofline.moe_part_work("router", shape, 2, 2, 1.5, n)[0][0] == 2 * 4 * 8 * 4
    # shared expert: split tp ways like a dense MLP (width 4 / 2 = 2)
    assert roofline.moe_part_work("shared_down", shape, 2, 2, 1.5, n)[0][0] == 2 * 8 * 2 * 8
    parts = pred.moe_parts("mlp_up_proj", n)
    assert set(parts) == {"router", "dispatch", "expert_up", "shared_up"}
    # the MLP ops average the dense first layer and the MoE layer
    dense_ms = roofline.RooflinePredictor(
        dataclasses.replace(TINY_MOE, moe=None), "h100", 2
    ).predict("mlp_up_proj", num_tokens=n)
    np.testing.assert_allclose(
        pred.predict("mlp_up_proj", num_tokens=n), (dense_ms + sum(parts.values())) / 2
    )
    # ep=1 has no all-to-all
    assert "dispatch" not in roofline.RooflinePredictor(TINY_MOE, "h100", 2).moe_parts(
        "mlp_up_proj", n
    )


def test_imbalance_and_ep_change_the_expert_time_the_right_way():
    m = catalog.get_model("mixtral-8x7b-instruct-v0.1")
    n = np.array([4096.0])
    even = roofline.RooflinePredictor(m, "h100", 8, ep=8).predict("mlp_up_proj", num_tokens=n)
    skew = roofline.RooflinePredictor(m, "h100", 8, ep=8, moe_imbalance=2.0).predict(
        "mlp_up_proj", num_tokens=n
    )
    assert skew[0] > 1.5 * even[0]  # compute-bound: twice the tokens on the busiest rank
    # imbalance does not matter without EP (every GPU holds a slice of every expert)
    a = roofline.RooflinePredictor(m, "h100", 8).predict("mlp_up_proj", num_tokens=n)
    b = roofline.RooflinePredictor(m, "h100", 8, moe_imbalance=2.0).predict(
        "mlp_up_proj", num_tokens=n
    )
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "tp, ep, needle",
    [
        (2, 4, "ep=4 must divide tp=2"),
        (6, 3, "ep=3 must divide"),
        (2, 0, "must be an integer >= 1"),
    ],
)
def test_bad_expert_parallelism_is_one_line(tp, ep, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        moe.validate_expert_parallel(catalog.get_model("mixtral-8x7b-instruct-v0.1"), tp, ep)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="needs a mixture-of-experts model"):
        moe.validate_expert_parallel(catalog.get_model("llama2-7b"), 2, 2)


def test_gpt_oss_weights_by_hand():
    """gpt-oss-20b at TP1: MXFP4 experts at 4.25 bits, everything else 2 bytes (no
    embeddings, norms or biases, Vidur's convention). Per layer: attention
    2880 x 64 x (64 + 2 x 8) + 2880 x 64 x 64 = 26,542,080; router 2880 x 32 = 92,160;
    experts 32 x 3 x 2880 x 2880 = 796,262,400 elements.
    Bytes: 2 x (26,542,080 + 92,160) + 796,262,400 x 4.25 / 8 = 476,282,880; x 24 layers."""
    m = catalog.get_model("gpt-oss-20b")
    assert catalog.param_bytes_per_device(m, 1, 1) == 24 * 476_282_880 == 11_430_789_120
    # TP 2: every weight halves but the router, replicated
    per_layer = 2 * (26_542_080 // 2 + 92_160) + 796_262_400 // 2 * 4.25 / 8
    assert catalog.param_bytes_per_device(m, 2, 1) == int(24 * per_layer)
    # 16-bit experts (a dequantized upload) would be 2 bytes each
    bf16 = dataclasses.replace(m, moe=dataclasses.replace(m.moe, expert_bits=None))
    assert catalog.param_bytes_per_device(bf16, 1, 1) == 2 * catalog.params_per_device(m, 1, 1)
    # KV of every layer counted (sliding layers in full: the stated upper bound)
    assert catalog.kv_bytes_per_token(m, 1) == 2 * 2 * 64 * 8 * 24 == 49_152


def _sliding_shape(sliding: int) -> dict:
    shape = {
        "num_q_heads": 8,
        "num_kv_heads": 2,
        "embedding_dim": 512,
        "mlp_hidden_dim": 1024,
        "use_gated_mlp": True,
        "num_layers": 4,
    }
    if sliding:
        shape.update(sliding_window=128, num_sliding_layers=sliding)
    return shape


def test_sliding_window_attention_by_hand():
    full = roofline.RooflinePredictor(_sliding_shape(0), "h100", 1)
    half = roofline.RooflinePredictor(_sliding_shape(2), "h100", 1)
    # decode: a sliding layer reads min(kv, 128) tokens; 2 of 4 layers slide
    b, kv = np.array([1.0, 32.0, 32.0]), np.array([100.0, 128.0, 4000.0])
    got = half.predict("attn_decode", batch_size=b, kv_cache_size=kv)
    ref = 0.5 * (
        full.predict("attn_decode", batch_size=b, kv_cache_size=kv)
        + full.predict("attn_decode", batch_size=b, kv_cache_size=np.minimum(kv, 128.0))
    )
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_array_equal(
        got[:2], full.predict("attn_decode", batch_size=b, kv_cache_size=kv)[:2]
    )
    # prefill: c queries after kv cached tokens, each sees min(kv + c, 128) keys;
    # d = 64, 8 heads, 2 KV heads: flops 4 x 8 x 64 x c x keys, bytes 2 x (2 c 8 x 64 +
    # 2 min(kv + c, 128 + c) x 2 x 64)
    kv, c = np.array([0.0, 3000.0]), np.array([1024.0, 256.0])
    fit = roofline.DEFAULT_CALIBRATION["ops"]["attn_prefill"]
    keys, reads = np.minimum(kv + c, 128.0), np.minimum(kv + c, 128.0 + c)
    slid = roofline.roofline_ms(
        fit,
        4.0 * 8 * 64 * c * keys,
        2.0 * (2.0 * c * 8 * 64 + 2.0 * reads * 2 * 64),
        989.4e12,
        3350e9,
    )
    whole = full.predict("attn_prefill", kv_cache_size=kv, prefill_chunk_size=c)
    np.testing.assert_allclose(
        half.predict("attn_prefill", kv_cache_size=kv, prefill_chunk_size=c),
        0.5 * (whole + slid),
        rtol=1e-12,
    )
    assert np.all(slid < whole)


def test_mxfp4_experts_stream_fewer_bytes_by_hand():
    """An expert GEMM's weight bytes scale by bits/16; FLOPs and activations do not."""
    m = catalog.get_model("gpt-oss-20b")
    shape = roofline._shape(m)
    n = np.array([4.0])
    fl, by = roofline.moe_part_work("expert_up", shape, 1, 1, 1.0, n)
    a = roofline.routed_tokens(shape["moe"], 1, 1.0, n)
    touched = roofline.experts_touched(shape["moe"], 1, n)
    k, w = 2880.0, 2.0 * 2880.0
    np.testing.assert_allclose(fl, 2.0 * a * k * w)
    np.testing.assert_allclose(by, 2.0 * (a * k + a * w) + 4.25 / 8 * touched * k * w)


def test_bad_gpt_oss_fields_are_one_line(tmp_path):
    base = json.loads(open(catalog.shipped_hf_configs()["gpt-oss-20b"]).read())
    for patch, needle in (
        ({"quantization_config": {"quant_method": "awq"}}, "quant_method='awq' is not modelled"),
        ({"layer_types": ["chunked_attention"] * 24}, "'chunked_attention' is not modelled"),
        ({"layer_types": ["full_attention"] * 3}, "not num_hidden_layers"),
    ):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({**base, **patch}))
        with pytest.raises(ConfigError, match=needle) as err:
            catalog.get_model(str(path))
        assert "\n" not in str(err.value)


def _workload(seed: int, n: int = 24):
    rng = np.random.default_rng(seed)
    return make_workload(
        np.cumsum(rng.exponential(0.05, n)), rng.integers(4, 120, n), rng.integers(2, 40, n)
    )


def _tiny_mixtral(tmp_path) -> str:
    cfg = {
        "model_type": "mixtral",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 32,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "vocab_size": 100,
        "max_position_embeddings": 512,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_tiny_moe_simulation_vmap_equals_loop(tmp_path):
    model = _tiny_mixtral(tmp_path)
    cfgs = [
        DeploymentConfig(
            model=model,
            device="h100",
            tensor_parallel_size=2,
            expert_parallel=ep,
            moe_imbalance=imb,
            replica_scheduler="vllm",
            max_tokens=256,
            seed=i,
        )
        for i, (ep, imb) in enumerate([(1, 1.0), (2, 1.0), (2, 1.5)])
    ]
    wls = [_workload(i) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "op times are roofline estimates"
        batched = simulate_configs(cfgs, wls)
        for cfg, wl, out in zip(cfgs, wls, batched, strict=True):
            (alone,) = simulate_configs([cfg], [wl])
            for key in ("scheduled_at", "first_token_at", "completed_at", "num_restarts"):
                np.testing.assert_array_equal(alone.requests[key], out.requests[key])
        # EP adds the all-to-all: the same workload takes longer at ep=2 than ep=1 for
        # tiny experts (nothing to gain from whole experts per GPU)
        same = simulate_configs([dataclasses.replace(cfgs[1], seed=0)], [wls[0]])[0]
    for out in batched:
        assert np.isfinite(out.requests["completed_at"]).all()
    assert same.requests["completed_at"].max() > batched[0].requests["completed_at"].max()


def _tiny_gpt_oss(tmp_path, sliding: bool) -> str:
    cfg = {
        "model_type": "gpt_oss",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "intermediate_size": 32,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "vocab_size": 100,
        "max_position_embeddings": 512,
        "sliding_window": 8,
        "quantization_config": {"quant_method": "mxfp4"},
    }
    if sliding:
        cfg["layer_types"] = ["sliding_attention", "full_attention"]
    path = tmp_path / ("sliding" if sliding else "full")
    path.mkdir()
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path / "config.json")


def test_tiny_gpt_oss_simulation_vmap_equals_loop(tmp_path):
    """Sliding-window and MXFP4 timing inside the one vmapped simulation: a batch of
    configs equals each run alone, and windowed layers finish no later than full ones."""
    models = [_tiny_gpt_oss(tmp_path, True), _tiny_gpt_oss(tmp_path, False)]
    cfgs = [
        DeploymentConfig(
            model=model,
            device="h100",
            tensor_parallel_size=tp,
            replica_scheduler="vllm",
            max_tokens=256,
            seed=0,
        )
        for model in models
        for tp in (1, 2)
    ]
    wls = [_workload(0) for _ in cfgs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "op times are roofline estimates"
        batched = simulate_configs(cfgs, wls)
        for cfg, wl, out in zip(cfgs, wls, batched, strict=True):
            (alone,) = simulate_configs([cfg], [wl])
            for key in ("scheduled_at", "first_token_at", "completed_at", "num_restarts"):
                np.testing.assert_array_equal(alone.requests[key], out.requests[key])
    for slid, full in ((batched[0], batched[2]), (batched[1], batched[3])):
        assert np.all(slid.requests["completed_at"] <= full.requests["completed_at"])
        assert slid.requests["completed_at"].max() < full.requests["completed_at"].max()


def test_attention_dp_simulation_vmap_equals_loop(tmp_path):
    """Attention DP is a per-config knob inside the one vmapped simulation; off (1) is
    the default, and a bad combination is one line before anything runs."""
    model = _tiny_mixtral(tmp_path)
    base = DeploymentConfig(
        model=model,
        device="h100",
        tensor_parallel_size=1,
        num_replicas=2,
        replica_scheduler="vllm",
        max_tokens=256,
        seed=0,
    )
    cfgs = [
        base,
        dataclasses.replace(base, expert_parallel=2, attention_dp=2),
        dataclasses.replace(base, expert_parallel=4, attention_dp=4, num_replicas=4),
    ]
    wls = [_workload(0) for _ in cfgs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "op times are roofline estimates"
        batched = simulate_configs(cfgs, wls)
        for cfg, wl, out in zip(cfgs, wls, batched, strict=True):
            (alone,) = simulate_configs([cfg], [wl])
            for key in ("scheduled_at", "first_token_at", "completed_at", "num_restarts"):
                np.testing.assert_array_equal(alone.requests[key], out.requests[key])
    assert DeploymentConfig().attention_dp == 1
    with pytest.raises(ConfigError, match="multiple of attention_dp=2"):
        dataclasses.replace(base, expert_parallel=2, attention_dp=2, num_replicas=3).validate()
    with pytest.raises(ConfigError, match="needs ep = attention_dp x tp = 2"):
        dataclasses.replace(base, attention_dp=2).validate()


# Published measurements (experiments/moe_published.py holds the cases, their sources and
# setups). Error measured when the MoE timing was written: Mixtral-8x7B TP2 batch-of-8
# latency +5.3% on H100 and -0.0% on H200 (vLLM nightly benchmark). Margin: 5 points, for
# table-grid and calibration changes that move the roofline; the dense models of the same
# runs err by -28% to +6%, so the MoE cases' small error is partly luck, not a bound.
PUBLISHED_ERROR_PCT = {
    ("mixtral-8x7b-instruct-v0.1", "h100"): 5.3,
    ("mixtral-8x7b-instruct-v0.1", "h200"): -0.0,
}
MARGIN_PCT = 5.0


def _published():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import moe_published

    return moe_published


@pytest.mark.parametrize("model, gpu", sorted(PUBLISHED_ERROR_PCT))
def test_published_moe_latency_within_measured_error_plus_margin(model, gpu):
    pub = _published()
    (case,) = [c for c in pub.CASES if (c.model, c.gpu) == (model, gpu)]
    assert case.role == "moe" and case.source.startswith("https://")
    err = 100.0 * (pub.predict_ms(case) / case.measured_ms - 1.0)
    assert abs(err) <= abs(PUBLISHED_ERROR_PCT[(model, gpu)]) + MARGIN_PCT, err


def test_search_grid_has_an_ep_axis():
    from vidur_jax.search import grid

    spec = grid.grid_from_dict(
        {
            "models": ["mixtral-8x7b-instruct-v0.1", "llama2-7b"],
            "gpus": ["h100"],
            "max_gpus": 8,
            "tp": [1, 2, 4],
            "pp": [1],
            "ep": [1, 2, 4],
            "schedulers": ["vllm"],
            "batch_caps": [64],
        },
        "llama2-7b",
        "h100",
    )
    cands = grid.expand_grid(spec, DeploymentConfig())
    pairs = {
        (c.config.model.split("/")[-1], c.config.tensor_parallel_size, c.config.expert_parallel)
        for c in cands
    }
    # ep must divide tp; a dense model only gets ep=1
    assert pairs == {
        ("Mixtral-8x7B-Instruct-v0.1", 1, 1),
        ("Mixtral-8x7B-Instruct-v0.1", 2, 1),
        ("Mixtral-8x7B-Instruct-v0.1", 2, 2),
        ("Mixtral-8x7B-Instruct-v0.1", 4, 1),
        ("Mixtral-8x7B-Instruct-v0.1", 4, 2),
        ("Mixtral-8x7B-Instruct-v0.1", 4, 4),
        ("Llama-2-7b-hf", 1, 1),
        ("Llama-2-7b-hf", 2, 1),
        ("Llama-2-7b-hf", 4, 1),
    }
    ep4 = [c for c in cands if c.config.expert_parallel == 4]
    assert all("ep4" in grid.describe(c.config) and "EP4" in grid.label(c.config) for c in ep4)


@pytest.mark.parametrize(
    "model, overrides, needle",
    [
        ("mixtral-8x7b-instruct-v0.1", ["cluster.tp=2", "cluster.ep=4"], "ep=4 must divide tp=2"),
        ("llama2-7b", ["cluster.tp=2", "cluster.ep=2"], "needs a mixture-of-experts model"),
        (
            "mixtral-8x7b-instruct-v0.1",
            ["predictor.moe_imbalance=0.5"],
            "moe_imbalance=0.5 must be >= 1",
        ),
    ],
)
def test_bad_moe_knobs_are_refused_before_simulating(model, overrides, needle):
    from vidur_jax import app

    cfg = app.compose(
        ["+experiment=quickstart", f"model.name={model}", "hardware=h100", *overrides]
    )
    with pytest.raises(ConfigError, match=needle) as err:
        app.plan_from_config(cfg)
    assert "\n" not in str(err.value)
