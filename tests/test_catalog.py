"""Catalog and memory planner: hand-worked values from Vidur's ParamCounter/MemoryPlanner."""

from __future__ import annotations

import dataclasses

import pytest

from vidur_jax.catalog import (
    ALIASES,
    DEVICES,
    MODELS,
    allowed_tp,
    get_device,
    get_model,
    get_node,
    kv_bytes_per_token,
    list_devices,
    list_models,
    list_nodes,
    max_batch_size,
    max_request_slots,
    num_kv_blocks,
    param_bytes_per_device,
    params_per_device,
    params_per_layer,
    validate_max_tokens,
    validate_parallelism,
)
from vidur_jax.errors import ConfigError

GIB = 1024**3


# ---------------------------------------------------------------- models

VIDUR_MODELS = {
    # name: (layers, q, kv, emb, mlp, vocab, gated, post_attn_norm, max_len)
    "meta-llama/Llama-2-7b-hf": (32, 32, 32, 4096, 11008, 32768, True, True, 4096),
    "meta-llama/Llama-2-70b-hf": (80, 64, 8, 8192, 28672, 32768, True, True, 4096),
    "codellama/CodeLlama-34b-Instruct-hf": (48, 64, 8, 8192, 22016, 32768, True, True, 16384),
    "meta-llama/Meta-Llama-3-8B": (32, 32, 8, 4096, 14336, 128256, True, True, 4096),
    "meta-llama/Meta-Llama-3-70B": (80, 64, 8, 8192, 28672, 128256, True, True, 8192),
    "internlm/internlm-20b": (60, 40, 40, 5120, 13824, 103168, True, True, 4096),
    "internlm/internlm2-20b": (48, 48, 8, 6144, 16384, 92544, True, True, 32768),
    "microsoft/phi-2": (32, 32, 32, 2560, 10240, 51200, False, False, 2048),
    "Qwen/Qwen-72B": (80, 64, 64, 8192, 24576, 152064, True, True, 32768),
}


@pytest.mark.parametrize("name", sorted(VIDUR_MODELS))
def test_model_values_match_vidur(name):
    m = get_model(name)
    got = (
        m.num_layers,
        m.num_q_heads,
        m.num_kv_heads,
        m.embedding_dim,
        m.mlp_hidden_dim,
        m.vocab_size,
        m.use_gated_mlp,
        m.post_attn_norm,
        m.max_model_len,
    )
    assert got == VIDUR_MODELS[name]
    assert m.name == name


def test_every_vidur_model_listed_once():
    assert sorted(list_models()) == sorted(VIDUR_MODELS)


def test_model_properties():
    m = get_model("meta-llama/Llama-2-70b-hf")
    assert m.head_dim == 128
    assert m.q_per_kv == 8
    assert m.kv_dim == 1024
    assert m.q_heads_per_worker(4) == 16
    assert m.kv_heads_per_worker(4) == 2
    assert m.kv_heads_per_worker(16) == 1  # KV heads replicated past num_kv_heads (ceil)
    assert m.layers_per_stage(4) == 20
    assert get_model("microsoft/phi-2").head_dim == 80


def test_aliases_and_case_insensitive():
    assert get_model("llama2-7b") is MODELS["meta-llama/Llama-2-7b-hf"]
    assert get_model("LLAMA3-8B").name == "meta-llama/Meta-Llama-3-8B"
    assert get_model("qwen/qwen-72b").name == "Qwen/Qwen-72B"
    assert all(target in MODELS for target in ALIASES.values())
    spec = get_model("phi-2")
    assert get_model(spec) is spec


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_model("llama2-7b").num_layers = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_device("a100").price_per_hour = 0.0  # type: ignore[misc]


def test_unknown_model_lists_allowed():
    with pytest.raises(ConfigError, match=r"unknown model 'gpt-5'.*meta-llama/Llama-2-7b-hf"):
        get_model("gpt-5")


# ---------------------------------------------------------------- devices / nodes


def test_devices():
    assert list_devices() == ["a40", "a100", "h100", "h200", "b200", "l40s", "mi300x"]
    a100, h100, a40, h200 = (get_device(n) for n in ("a100", "h100", "a40", "h200"))
    # memory as in Vidur's device_sku_config.py (h200: datasheet)
    assert (a40.memory_gb, a100.memory_gb, h100.memory_gb, h200.memory_gb) == (45, 80, 80, 141)
    assert a100.memory_bytes == 80 * GIB
    # datasheet dense fp16 and HBM bandwidth
    assert (a100.fp16_tflops, a100.hbm_gbps) == (312.0, 2039.0)
    assert (h100.fp16_tflops, h100.hbm_gbps) == (989.4, 3350.0)
    assert h200.hbm_gbps > h100.hbm_gbps
    # Vidur's CoreWeave prices
    assert (h100.price_per_hour, a100.price_per_hour, a40.price_per_hour) == (4.25, 2.21, 1.28)
    assert h200.price_per_hour > h100.price_per_hour
    assert get_device("A100") is DEVICES["a100"]


def test_new_gpus_from_spec_sheets():
    b200, l40s, mi300x, h100 = (get_device(n) for n in ("b200", "l40s", "mi300x", "h100"))
    # datasheet memory (GB), dense BF16 / FP8 TFLOP/s, HBM GB/s, link GB/s per direction
    assert (b200.memory_gb, b200.fp16_tflops, b200.fp8_tflops, b200.hbm_gbps) == (
        180, 2250.0, 4500.0, 8000.0)
    assert (l40s.memory_gb, l40s.fp16_tflops, l40s.fp8_tflops, l40s.hbm_gbps) == (
        48, 362.05, 733.0, 864.0)
    assert (mi300x.memory_gb, mi300x.fp16_tflops, mi300x.fp8_tflops, mi300x.hbm_gbps) == (
        192, 1307.4, 2614.9, 5300.0)
    assert (h100.link_gbps, b200.link_gbps, l40s.link_gbps) == (450.0, 900.0, 32.0)
    # FP8 tensor cores run at twice the BF16 rate on every GPU that has them
    for d in (h100, get_device("h200"), b200, mi300x):
        assert d.fp8_tflops == pytest.approx(2 * d.fp16_tflops, rel=0.01)
    assert get_device("a100").fp8_tflops is None
    # prices that are not quotes say so
    assert all(d.price_is_estimate for d in (b200, l40s, mi300x, get_device("h200")))
    assert not h100.price_is_estimate


def test_nodes():
    assert set(list_nodes()) == {
        "a100_pairwise_nvlink",
        "h100_pairwise_nvlink",
        "a40_pairwise_nvlink",
        "a100_dgx",
        "h100_dgx",
    }
    expected = {
        "a100_pairwise_nvlink": ("a100", 4),
        "h100_pairwise_nvlink": ("h100", 4),
        "a40_pairwise_nvlink": ("a40", 8),
        "a100_dgx": ("a100", 8),
        "h100_dgx": ("h100", 8),
    }
    for name, (dev, n) in expected.items():
        node = get_node(name)
        assert (node.device, node.devices_per_node, node.network_device) == (dev, n, name)
        assert node.device_spec is get_device(dev)


@pytest.mark.parametrize("fn, kind", [(get_device, "device"), (get_node, "node")])
def test_unknown_hardware_lists_allowed(fn, kind):
    with pytest.raises(ConfigError, match=rf"unknown {kind} 'tpu'.*allowed: .*a100"):
        fn("tpu")


# ---------------------------------------------------------------- memory planner


def test_llama2_7b_a100_tp1_hand_worked():
    # per layer: Wqkv 4096*128*(32+2*32) + Wo 4096*128*32 + MLP 3*4096*11008
    assert params_per_layer("llama2-7b", 1) == 50_331_648 + 16_777_216 + 135_266_304
    assert params_per_device("llama2-7b", 1, 1) == 202_375_168 * 32 == 6_476_005_376
    assert param_bytes_per_device("llama2-7b", 1, 1) == 12_952_010_752
    # 2 B * (K,V) * 128 * 32 heads * 32 layers
    assert kv_bytes_per_token("llama2-7b", 1) == 524_288
    # (80 GiB * 0.9 - 12_952_010_752) // (524_288 * 4096) = 64_357_400_576 // 2_147_483_648
    assert max_batch_size("llama2-7b", "a100", 1, 1, 4096, 0.1) == 29
    assert (
        num_kv_blocks("llama2-7b", "a100", 1, 1, 4096, block_size=16, memory_margin_fraction=0.1)
        == 256 * 29
        == 7424
    )


def test_pipeline_parallel_vidur_counts_all_layers():
    # PP2 halves the weights: (77_309_411_328 - 6_476_005_376) // 2_147_483_648 = 32
    assert max_batch_size("llama2-7b", "a100", 1, 2, 4096) == 32
    assert max_request_slots("llama2-7b", "a100", 1, 2, 4096) == 64
    assert num_kv_blocks("llama2-7b", "a100", 1, 2, 4096) == 256 * 32 * 2 == 16384
    # per-stage KV (16 layers): 70_833_405_952 // 1_073_741_824 = 65
    assert kv_bytes_per_token("llama2-7b", 1, 2, vidur_compat=False) == 262_144
    assert max_batch_size("llama2-7b", "a100", 1, 2, 4096, vidur_compat=False) == 65
    assert num_kv_blocks("llama2-7b", "a100", 1, 2, 4096, vidur_compat=False) == 33280


def test_gqa_70b_tp4_hand_worked():
    # 8192*128*(16 + 2*2) + 8192*128*16 + 3*8192*28672/4
    assert params_per_layer("llama2-70b", 4) == 20_971_520 + 16_777_216 + 176_160_768
    assert params_per_device("llama2-70b", 4, 1) == 17_112_760_320
    # KV: 2*2*128*2 heads*80 layers = 81_920 B/token
    assert kv_bytes_per_token("llama2-70b", 4) == 81_920
    # (77_309_411_328 - 34_225_520_640) // 335_544_320 = 128
    assert max_batch_size("llama2-70b", "a100", 4, 1, 4096) == 128


def test_non_gated_mlp_phi2():
    # 2560*80*96 + 2560*80*32 + 2*2560*10240 per layer
    assert params_per_layer("phi-2", 1) == 78_643_200
    assert max_batch_size("phi-2", "a100", 1, 1, 2048) == 107


def test_margin_and_max_tokens_monotone():
    base = max_batch_size("llama3-8b", "h100", 1, 1, 4096)
    assert max_batch_size("llama3-8b", "h100", 1, 1, 4096, 0.3) < base
    assert max_batch_size("llama3-8b", "h100", 1, 1, 2048) >= 2 * base
    assert max_batch_size("llama3-8b", "h200", 1, 1, 4096) > base


def test_validate_parallelism_ok():
    validate_parallelism("llama2-70b", 8, 4)
    validate_parallelism("phi-2", 1, 2)
    assert allowed_tp("llama2-7b", 8) == [1, 2, 4, 8]
    assert allowed_tp("internlm-20b", 10) == [1, 2, 4, 5, 8, 10]
    assert allowed_tp("phi-2") == [1]


@pytest.mark.parametrize(
    "model, tp, pp, pattern",
    [
        ("llama2-7b", 3, 1, r"tp=3 must divide .*32 query heads.*allowed tp: \[1, 2, 4, 8"),
        ("llama2-7b", 1, 3, r"pp=3 must divide .*32 layers.*allowed pp: \[1, 2, 4, 8, 16, 32\]"),
        ("internlm-20b", 8, 7, r"pp=7 must divide .*60 layers"),
        ("phi-2", 2, 1, r"tp=2 not supported for microsoft/phi-2"),
        ("llama2-7b", 0, 1, r"tp=0 must be an integer >= 1"),
        ("llama2-7b", 1, 0, r"pp=0 must be an integer >= 1"),
        ("llama2-7b", 1.5, 1, r"tp=1.5"),
    ],
)
def test_validate_parallelism_errors(model, tp, pp, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_parallelism(model, tp, pp)


def test_model_does_not_fit():
    with pytest.raises(ConfigError, match=r"model does not fit in GPU memory: .*Llama-2-70b.*a40"):
        max_batch_size("llama2-70b", "a40", 1, 1, 4096)
    with pytest.raises(ConfigError, match="model does not fit in GPU memory"):
        num_kv_blocks("qwen-72b", "a100", 1, 1, 4096)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(max_tokens=0), r"max_tokens=0 must be an integer >= 1"),
        (dict(memory_margin_fraction=1.0), r"memory_margin_fraction=1.0 must be in \[0, 1\)"),
        (dict(memory_margin_fraction=-0.1), r"memory_margin_fraction=-0.1"),
        (dict(block_size=0), r"block_size=0 must be an integer >= 1"),
        (dict(max_tokens=8, block_size=16), r"max_tokens=8 must be >= block_size=16"),
    ],
)
def test_memory_argument_errors(kwargs, pattern):
    args = dict(model="llama2-7b", device="a100", tp=1, pp=1, max_tokens=4096)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=pattern):
        num_kv_blocks(**args)


def test_validate_max_tokens():
    validate_max_tokens("llama2-7b", 4096)
    with pytest.raises(ConfigError, match=r"max_tokens=8192 exceeds .*context length 4096"):
        validate_max_tokens("llama2-7b", 8192)
