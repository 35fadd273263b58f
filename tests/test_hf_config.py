"""Models from Hugging Face ``config.json``: parsing, parameter counts, clear refusals."""

from __future__ import annotations

import json

import pytest

from vidur_jax import catalog
from vidur_jax.catalog import hf_config
from vidur_jax.errors import ConfigError

# Published parameter counts, in billions, from each model's card or release post
# (total, and where stated the active or non-embedding count with its convention).
# Tolerance: 1% of the published figure, plus half a unit of its last printed digit
# (a "37B" stated figure is known to +-0.5B).
PUBLISHED = {
    # alias: (total_B, its digit unit, active_B or None, its digit unit, convention)
    "llama-3.1-8b-instruct": (8.03, 0.01, None, None, None),  # HF model card "8.03B params"
    "llama-3.1-70b-instruct": (70.6, 0.1, None, None, None),  # HF model card
    "llama-3.3-70b-instruct": (70.6, 0.1, None, None, None),  # HF model card
    "llama-3.1-405b-instruct": (406.0, 1.0, None, None, None),  # HF model card "406B params"
    "llama-3.2-1b-instruct": (1.24, 0.01, None, None, None),  # HF model card "1.24B params"
    "mistral-7b-instruct-v0.3": (7.25, 0.01, None, None, None),  # HF model card "7.25B params"
    "mixtral-8x7b-instruct-v0.1": (46.7, 0.1, 12.9, 0.1, "all"),  # Mistral AI, "Mixtral of experts"
    "mixtral-8x22b-v0.1": (141.0, 1.0, 39.0, 1.0, "all"),  # Mistral AI, "Cheaper, better..."
    "qwen2.5-7b-instruct": (7.61, 0.01, 6.53, 0.01, "non_embedding"),  # Qwen2.5 model card
    "qwen2.5-72b-instruct": (72.7, 0.1, 70.0, 0.1, "non_embedding"),  # Qwen2.5 model card
    "qwen2-57b-a14b-instruct": (57.4, 0.1, 14.0, 1.0, "all"),  # Qwen2 technical report, Table 1
    "qwen3-8b": (8.2, 0.1, 6.95, 0.01, "non_embedding"),  # Qwen3 model card
    "qwen3-32b": (32.8, 0.1, 31.2, 0.1, "non_embedding"),  # Qwen3 model card
    "qwen3-30b-a3b": (30.5, 0.1, 3.3, 0.1, "all"),  # Qwen3 model card "3.3B activated"
    "qwen3-235b-a22b": (235.0, 1.0, 22.0, 1.0, "all"),  # Qwen3 model card "22B activated"
    "deepseek-v2-lite": (15.7, 0.1, 2.4, 0.1, "no_input_embedding"),  # DeepSeek-V2 card "2.4B"
    "deepseek-v3": (671.0, 1.0, 37.0, 1.0, "all"),  # DeepSeek-V3 report (main model, no MTP)
    "gpt-oss-20b": (20.91, 0.01, 3.61, 0.01, "no_input_embedding"),  # gpt-oss model card
    "gpt-oss-120b": (116.83, 0.01, 5.13, 0.01, "no_input_embedding"),  # gpt-oss model card
}


def _within(count: float, published: float, unit: float) -> bool:
    return abs(count - published) <= 0.01 * published + unit / 2


def test_every_shipped_config_is_covered():
    assert set(PUBLISHED) <= set(catalog.shipped_hf_configs())
    families = {catalog.get_model(a).family for a in PUBLISHED}
    assert families == {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "deepseek_v2",
        "deepseek_v3",
        "gpt_oss",
    }


@pytest.mark.parametrize("alias", sorted(PUBLISHED))
def test_parameter_counts_match_published(alias):
    total_b, unit, active_b, active_unit, convention = PUBLISHED[alias]
    count = hf_config.parameter_count(catalog.get_model(alias))
    assert _within(count.total / 1e9, total_b, unit), (alias, count.total / 1e9, total_b)
    if active_b is None:
        return
    active = {
        "all": count.active,
        "no_input_embedding": count.active - count.input_embedding,
        # Qwen's "non-embedding" excludes both the input and the output embedding
        "non_embedding": count.total - 2 * count.input_embedding,
    }[convention]
    assert _within(active / 1e9, active_b, active_unit), (alias, active / 1e9, active_b)


def _tiny_moe(**extra) -> dict:
    cfg = {
        "model_type": "mixtral",
        "hidden_size": 4,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 3,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "vocab_size": 10,
    }
    cfg.update(extra)
    return cfg


def test_tiny_moe_counted_by_hand():
    # h=4, head_dim=2: per layer q 16 + k,v 2*8 + o 16 = 48 attention, 2*4 = 8 norms,
    # router 4*4 = 16, experts 4 x (3*4*3 = 36) = 144 -> 216; two layers 432.
    # Embedding 40 + LM head 40 + final norm 4 = 84. Total 516.
    # Active: experts 2 x 36 = 72 per layer -> (56 + 16 + 72) * 2 + 84 = 372.
    spec = hf_config.spec_from_hf_config(_tiny_moe(), name="tiny")
    assert spec.moe == catalog.MoESpec(num_experts=4, experts_per_token=2, expert_hidden_dim=3)
    count = hf_config.parameter_count(spec)
    assert (count.total, count.active, count.input_embedding) == (516, 372, 40)
    tied = hf_config.parameter_count(
        hf_config.spec_from_hf_config(_tiny_moe(tie_word_embeddings=True), name="tiny")
    )
    assert tied.total == 516 - 40


def test_mla_kv_cache_is_latent_plus_rope_key():
    spec = catalog.get_model("deepseek-v3")
    assert spec.mla is not None
    assert spec.mla.kv_cache_elements_per_layer == 512 + 64
    assert spec.moe.first_dense_layers == 3 and spec.moe.num_shared_experts == 1


def test_dense_config_matches_the_catalog_shape():
    # Llama-3.1-8B has Meta-Llama-3-8B's shape: same weights and KV bytes per device.
    new, old = catalog.get_model("llama-3.1-8b-instruct"), catalog.get_model("llama3-8b")
    for tp in (1, 2, 4):
        assert catalog.params_per_device(new, tp, 1) == catalog.params_per_device(old, tp, 1)
        assert catalog.kv_bytes_per_token(new, tp) == catalog.kv_bytes_per_token(old, tp)


def test_config_path_and_folder(tmp_path):
    cfg = json.loads(open(catalog.shipped_hf_configs()["qwen2.5-7b-instruct"]).read())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    by_file = catalog.get_model(str(tmp_path / "config.json"))
    by_dir = catalog.get_model(str(tmp_path))
    assert by_file == by_dir == catalog.get_model("Qwen/Qwen2.5-7B-Instruct")
    assert by_file.attention_bias and by_file.num_kv_heads == 4


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"model_type": "bert"}, "model_type='bert' is not supported"),
        ({"num_hidden_layers": None}, "lacks the architecture field 'num_hidden_layers'"),
        ({"sliding_attention_ratio": 3}, "unknown architecture field 'sliding_attention_ratio'"),
        ({"hidden_size": "4096"}, "'hidden_size'='4096' must be a non-negative integer"),
    ],
)
def test_bad_fields_give_one_line_naming_the_field(change, needle):
    with pytest.raises(ConfigError) as err:
        hf_config.spec_from_hf_config(_tiny_moe(**change), name="tiny")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unmodelled_architecture_settings_are_refused():
    cfg = _tiny_moe(
        model_type="qwen2_moe", num_experts=4, moe_intermediate_size=3, mlp_only_layers=[1]
    )
    cfg.pop("num_local_experts")
    with pytest.raises(ConfigError, match="'mlp_only_layers'=\\[1\\] is not modelled"):
        hf_config.spec_from_hf_config(cfg, name="tiny")
    cfg["mlp_only_layers"] = []
    assert hf_config.spec_from_hf_config(cfg, name="tiny").moe.num_experts == 4


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        catalog.get_model(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        catalog.get_model(str(tmp_path / "bad.json"))


@pytest.mark.parametrize(("alias", "sliding"), [("gpt-oss-20b", 12), ("gpt-oss-120b", 18)])
def test_gpt_oss_windows_and_mxfp4_are_read(alias, sliding):
    # config.json: 128-token window on alternate layers, experts in MXFP4 (4.25 bits)
    m = catalog.get_model(alias)
    assert (m.sliding_window, m.num_sliding_layers, m.num_layers) == (128, sliding, 2 * sliding)
    assert m.moe.expert_bits == 4.25


@pytest.mark.parametrize("alias", sorted(PUBLISHED))
def test_every_shipped_config_is_simulable(alias):
    m = catalog.get_model(alias)
    tp = max(t for t in catalog.allowed_tp(m, 8))
    catalog.validate_parallelism(m, tp, 1)
    assert catalog.params_per_device(m, tp, 1) > 0 and catalog.kv_bytes_per_token(m, tp) > 0


def test_fp8_halves_kv_bytes_and_blocks_follow_by_hand():
    # Llama-2-7B on an 80 GiB A100, tp=1, max_tokens=4096, margin 0.1, 16-token blocks.
    # Free for weights + KV: 80 GiB x 0.9 = 77,309,411,328 B. Weights: 6,476,005,376
    # elements (202,375,168 per layer x 32). KV per token: 2 (K,V) x 128 x 32 heads x
    # 32 layers = 262,144 elements; x 4096 tokens per request.
    # fp16/fp16: floor((77,309,411,328 - 12,952,010,752) / 2,147,483,648) = 29 requests
    #   -> 29 x 256 blocks = 7,424.
    # fp16 weights / fp8 KV: floor(64,357,400,576 / 1,073,741,824) = 59 -> 15,104.
    # fp8/fp8: floor((77,309,411,328 - 6,476,005,376) / 1,073,741,824) = 65 -> 16,640.
    m = "llama2-7b"
    assert catalog.kv_bytes_per_token(m, 1, kv_dtype="fp8") * 2 == catalog.kv_bytes_per_token(m, 1)
    blocks = {
        (w, kv): catalog.num_kv_blocks(m, "a100", 1, 1, 4096, weight_dtype=w, kv_dtype=kv)
        for w, kv in (("fp16", "fp16"), ("fp16", "fp8"), ("fp8", "fp8"))
    }
    assert blocks == {("fp16", "fp16"): 7424, ("fp16", "fp8"): 15104, ("fp8", "fp8"): 16640}
    with pytest.raises(ConfigError, match="unknown dtype 'int3'"):
        catalog.num_kv_blocks(m, "a100", 1, 1, 4096, kv_dtype="int3")


def test_model_config_key_reads_a_config_json(tmp_path):
    from vidur_jax import app
    from vidur_jax.plan.deployment import deployment_fields

    src = catalog.shipped_hf_configs()["qwen2.5-7b-instruct"]
    (tmp_path / "config.json").write_text(open(src).read())
    tree = app.to_container(app.compose([f"model.config={tmp_path}"]))
    assert deployment_fields(tree)["model"] == str(tmp_path)
    assert catalog.get_model(deployment_fields(tree)["model"]).name == "Qwen/Qwen2.5-7B-Instruct"
    # unset, the catalog name is used
    assert (
        deployment_fields(app.to_container(app.compose([])))["model"] == "meta-llama/Llama-2-7b-hf"
    )


def test_roofline_uses_the_spec_sheet_link_of_a_new_gpu():
    import warnings

    from vidur_jax.predictors import roofline

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "PCIe fallback" warning for a catalogued GPU
        pred = roofline.RooflinePredictor("llama2-7b", "b200", 2)
    assert pred.device["link_bw"] == 900e9
    assert roofline.RooflinePredictor("llama2-7b", "mi300x", 2).device["link_bw"] == 448e9
    # the profiled GPUs keep the calibrated table
    assert roofline.RooflinePredictor("llama2-7b", "a100", 2).device["link_bw"] == 300e9
