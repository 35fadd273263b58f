"""Model shapes from a Hugging Face ``config.json`` (no weights, no download).

:func:`spec_from_hf_config` reads the architecture fields of the Llama, Mistral,
Mixtral, Qwen2/2.5/3 (dense and MoE), DeepSeek-V2/V3 and gpt-oss families into a
:class:`~vidur_jax.catalog.models.ModelSpec`; :func:`parameter_count` counts every
weight (embeddings, norms, biases, routers, experts) so the parsed shape can be checked
against the totals the model's publisher states.

Every key of a config is accounted for: a key the family's reader interprets, a key
known not to change the serving cost (tokenizer ids, dtypes, initializers, RoPE
settings, training-only losses), or an architecture setting the simulator cannot model
yet, which is refused with one line naming the key and its value. An unknown key is
refused the same way, so a config is never silently read as a different model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vidur_jax.catalog.models import MLASpec, ModelSpec, MoESpec
from vidur_jax.errors import ConfigError

# Keys that do not change the weights, the KV cache or the FLOPs of serving.
_NEUTRAL_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "attention_dropout",
        "auto_map",
        "aux_loss_alpha",
        "bos_token_id",
        "eos_token_id",
        "hidden_act",
        "hidden_dropout",
        "initializer_range",
        "max_position_embeddings",
        "max_window_layers",
        "model_type",
        "output_router_logits",
        "pad_token_id",
        "pretraining_tp",
        "rms_norm_eps",
        "rope_scaling",
        "rope_theta",
        "router_aux_loss_coef",
        "router_jitter_noise",
        "seq_aux",
        "swiglu_limit",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "use_cache",
        "use_sliding_window",
        "sliding_window",
        "layer_types",
        "norm_topk_prob",
        "routed_scaling_factor",
        "scoring_func",
        "topk_method",
        "n_group",
        "topk_group",
        "ep_size",
        "num_nextn_predict_layers",
        "quantization_config",
        "experts_per_token",
        "num_experts_per_tok",
        "tie_word_embeddings",
        "initial_context_length",
        "mlp_bias",
        "attention_bias",
        "qkv_bias",
        "head_dim",
        "num_key_value_heads",
        "vocab_size",
    }
)

# Architecture settings this version cannot simulate, with the value that means "off".
_UNSUPPORTED_UNLESS = {
    "mlp_only_layers": [],  # Qwen-MoE layers with a dense MLP at arbitrary positions
    "decoder_sparse_step": 1,  # MoE only on every n-th layer
    "moe_layer_freq": 1,  # DeepSeek: MoE only on every n-th layer
    "cross_attention_layers": None,
    "vision_config": None,
}

_FAMILIES = (
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
)


def _need(cfg: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"{source}: config.json lacks the architecture field '{key}'")
    return cfg[key]


def _int(cfg: Mapping[str, Any], key: str, source: str, default: int | None = None) -> int:
    value = cfg.get(key, default) if default is not None else _need(cfg, key, source)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{source}: '{key}'={value!r} must be a non-negative integer")
    return value


def _interpreted_keys(family: str) -> frozenset[str]:
    keys = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"}
    if family in ("mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss"):
        keys |= {"num_local_experts", "num_experts"}
    if family in ("qwen2_moe", "qwen3_moe"):
        keys |= {"moe_intermediate_size", "shared_expert_intermediate_size"}
    if family in ("deepseek_v2", "deepseek_v3"):
        keys |= {
            "moe_intermediate_size",
            "n_routed_experts",
            "n_shared_experts",
            "first_k_dense_replace",
            "q_lora_rank",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
        }
    return frozenset(keys)


def _check_keys(cfg: Mapping[str, Any], family: str, source: str) -> None:
    known = _NEUTRAL_KEYS | _interpreted_keys(family)
    for key, value in cfg.items():
        if key in _UNSUPPORTED_UNLESS:
            off = _UNSUPPORTED_UNLESS[key]
            if value not in (off, None) and not (off == [] and value == []):
                raise ConfigError(
                    f"{source}: architecture field '{key}'={value!r} is not modelled "
                    f"(only {off!r} is supported)"
                )
            continue
        if key not in known:
            raise ConfigError(
                f"{source}: unknown architecture field '{key}' for model_type "
                f"'{family}'; the simulator would not know how it changes the model"
            )


def _moe_spec(cfg: Mapping[str, Any], family: str, source: str) -> MoESpec | None:
    if family == "mixtral":
        return MoESpec(
            num_experts=_int(cfg, "num_local_experts", source),
            experts_per_token=_int(cfg, "num_experts_per_tok", source),
            expert_hidden_dim=_int(cfg, "intermediate_size", source),
        )
    if family == "gpt_oss":
        return MoESpec(
            num_experts=_int(cfg, "num_local_experts", source),
            experts_per_token=_int(cfg, "num_experts_per_tok", source),
            expert_hidden_dim=_int(cfg, "intermediate_size", source),
            router_bias=True,
            expert_bias=True,
            expert_bits=_expert_bits(cfg, source),
        )
    if family in ("qwen2_moe", "qwen3_moe"):
        shared = _int(cfg, "shared_expert_intermediate_size", source, default=0)
        return MoESpec(
            num_experts=_int(cfg, "num_experts", source),
            experts_per_token=_int(cfg, "num_experts_per_tok", source),
            expert_hidden_dim=_int(cfg, "moe_intermediate_size", source),
            num_shared_experts=1 if shared else 0,
            shared_expert_hidden_dim=shared,
            shared_expert_gate=bool(shared),
        )
    if family in ("deepseek_v2", "deepseek_v3"):
        expert = _int(cfg, "moe_intermediate_size", source)
        shared = _int(cfg, "n_shared_experts", source, default=0)
        return MoESpec(
            num_experts=_int(cfg, "n_routed_experts", source),
            experts_per_token=_int(cfg, "num_experts_per_tok", source),
            expert_hidden_dim=expert,
            num_shared_experts=shared,
            shared_expert_hidden_dim=shared * expert,
            first_dense_layers=_int(cfg, "first_k_dense_replace", source, default=0),
            router_bias=family == "deepseek_v3",
        )
    return None


#: Bits per weight of a quantized expert format: MXFP4 stores 4-bit values with one
#: 8-bit (E8M0) scale per block of 32 (OCP Microscaling spec), 4 + 8/32 = 4.25.
EXPERT_FORMAT_BITS = {"mxfp4": 4.25}


def _expert_bits(cfg: Mapping[str, Any], source: str) -> float | None:
    """Bits per routed-expert weight from gpt-oss's ``quantization_config`` (None: 16-bit
    experts, e.g. a dequantized upload). Attention, router, embeddings and LM head stay
    16-bit (its ``modules_to_not_convert``)."""
    quant = cfg.get("quantization_config")
    if quant is None:
        return None
    method = quant.get("quant_method") if isinstance(quant, Mapping) else None
    if method not in EXPERT_FORMAT_BITS:
        raise ConfigError(
            f"{source}: quantization_config quant_method={method!r} is not modelled "
            f"(supported: {', '.join(EXPERT_FORMAT_BITS)})"
        )
    return EXPERT_FORMAT_BITS[method]


def _sliding_layers(cfg: Mapping[str, Any], source: str) -> tuple[int | None, int]:
    """``(window, number of sliding-window layers)`` from ``layer_types`` (gpt-oss
    alternates ``sliding_attention`` and ``full_attention``); ``(None, 0)`` without it."""
    types = cfg.get("layer_types")
    if not types:
        return None, 0
    allowed = ("sliding_attention", "full_attention")
    bad = [t for t in types if t not in allowed]
    if bad:
        raise ConfigError(
            f"{source}: layer_types entry {bad[0]!r} is not modelled (allowed: {', '.join(allowed)})"
        )
    if len(types) != _int(cfg, "num_hidden_layers", source):
        raise ConfigError(f"{source}: layer_types has {len(types)} entries, not num_hidden_layers")
    sliding = sum(t == "sliding_attention" for t in types)
    if sliding == 0:
        return None, 0
    window = _int(cfg, "sliding_window", source)
    if window < 1:
        raise ConfigError(f"{source}: 'sliding_window'={window!r} must be >= 1 with sliding layers")
    return window, sliding


def _mla_spec(cfg: Mapping[str, Any], family: str, source: str) -> MLASpec | None:
    if family not in ("deepseek_v2", "deepseek_v3"):
        return None
    return MLASpec(
        q_lora_rank=_int(cfg, "q_lora_rank", source, default=0),
        kv_lora_rank=_int(cfg, "kv_lora_rank", source),
        qk_nope_head_dim=_int(cfg, "qk_nope_head_dim", source),
        qk_rope_head_dim=_int(cfg, "qk_rope_head_dim", source),
        v_head_dim=_int(cfg, "v_head_dim", source),
    )


def spec_from_hf_config(config: Mapping[str, Any], name: str | None = None) -> ModelSpec:
    """Read a Hugging Face ``config.json`` dict into a :class:`ModelSpec`.

    Args:
        config: the parsed ``config.json``.
        name: name to give the model (default: ``_name_or_path``, else the model type).

    Returns:
        The frozen spec; MoE and MLA layouts in ``spec.moe`` / ``spec.mla``.

    Raises:
        ConfigError: one line naming the field, for an unsupported ``model_type``, a
            missing or malformed architecture field, an architecture setting the
            simulator cannot model, or a field it does not know.
    """
    source = name or str(config.get("_name_or_path") or "config.json")
    family = config.get("model_type")
    if family not in _FAMILIES:
        raise ConfigError(
            f"{source}: model_type={family!r} is not supported; supported: {', '.join(_FAMILIES)}"
        )
    _check_keys(config, family, source)
    hidden = _int(config, "hidden_size", source)
    heads = _int(config, "num_attention_heads", source)
    kv_heads = _int(config, "num_key_value_heads", source, default=heads)
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim == hidden // heads:
        head_dim = None
    mla = _mla_spec(config, family, source)
    if mla is not None:
        head_dim, kv_heads = mla.qk_nope_head_dim + mla.qk_rope_head_dim, heads
    moe = _moe_spec(config, family, source)
    dense_mlp = _int(config, "intermediate_size", source, default=0)
    tie = bool(config.get("tie_word_embeddings", False))
    bias = bool(config.get("attention_bias", False)) or family in ("qwen2", "qwen2_moe")
    window, sliding = _sliding_layers(config, source)
    return ModelSpec(
        name=name or str(config.get("_name_or_path") or family),
        num_layers=_int(config, "num_hidden_layers", source),
        num_q_heads=heads,
        num_kv_heads=kv_heads,
        embedding_dim=hidden,
        mlp_hidden_dim=dense_mlp,
        vocab_size=_int(config, "vocab_size", source),
        use_gated_mlp=True,
        post_attn_norm=True,
        max_model_len=_int(config, "max_position_embeddings", source, default=4096),
        explicit_head_dim=head_dim,
        moe=moe,
        mla=mla,
        tie_word_embeddings=tie,
        attention_bias=bias or family == "gpt_oss",
        family=family,
        sliding_window=window,
        num_sliding_layers=sliding,
    )


def load_hf_config(path: str | os.PathLike[str], name: str | None = None) -> ModelSpec:
    """Read ``config.json`` (a file, or a folder holding one) into a :class:`ModelSpec`.

    Raises:
        ConfigError: when the file is missing or not JSON, or its fields are refused
            (:func:`spec_from_hf_config`).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"model config {path!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"model config {path!r} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"model config {path!r} must hold a JSON object")
    return spec_from_hf_config(config, name=name or config.get("_name_or_path") or path)


@dataclass(frozen=True)
class ParameterCount:
    """Weights of a model in elements (not bytes).

    Attributes:
        total: every weight, counted once (a tied LM head is not counted twice).
        active: weights a token's forward pass touches (routed experts: top-k of them),
            counting the input embedding.
        input_embedding: the input embedding table; some publishers state active
            counts without it (a lookup, no FLOPs).
    """

    total: int
    active: int
    input_embedding: int


def _attention_params(m: ModelSpec) -> int:
    h = m.embedding_dim
    if m.mla is not None:
        a, heads = m.mla, m.num_q_heads
        q_out = heads * (a.qk_nope_head_dim + a.qk_rope_head_dim)
        q = (
            h * q_out
            if a.q_lora_rank == 0
            else h * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * q_out
        )
        kv = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
        kv += a.kv_lora_rank * heads * (a.qk_nope_head_dim + a.v_head_dim)
        return q + kv + heads * a.v_head_dim * h
    q_dim, kv_dim = m.num_q_heads * m.head_dim, m.num_kv_heads * m.head_dim
    weights = h * q_dim + 2 * h * kv_dim + q_dim * h
    if m.attention_bias:
        weights += q_dim + 2 * kv_dim
    if m.family == "gpt_oss":  # output-projection bias and one attention sink per head
        weights += h + m.num_q_heads
    if m.family in ("qwen3", "qwen3_moe"):  # per-head RMS norms of q and k
        weights += 2 * m.head_dim
    return weights


def _mlp_params(hidden: int, inner: int, bias: bool = False) -> int:
    return 3 * hidden * inner + (2 * inner + hidden if bias else 0)


def parameter_count(m: ModelSpec) -> ParameterCount:
    """Count a model's weights: embeddings, attention, MLP or experts, norms, biases.

    Args:
        m: the spec (from the catalog or :func:`spec_from_hf_config`).

    Returns:
        :class:`ParameterCount` in elements.
    """
    h = m.embedding_dim
    per_layer_fixed = _attention_params(m) + 2 * h  # + input and post-attention norms
    embed = m.vocab_size * h
    head = 0 if m.tie_word_embeddings else m.vocab_size * h
    total = active = embed + head + h  # + final norm
    if m.moe is None:
        layer = per_layer_fixed + _mlp_params(h, m.mlp_hidden_dim)
        total += m.num_layers * layer
        active += m.num_layers * layer
        return ParameterCount(total, active, embed)
    e = m.moe
    dense_layers = e.first_dense_layers
    moe_layers = m.num_layers - dense_layers
    expert = _mlp_params(h, e.expert_hidden_dim, bias=e.expert_bias)
    router = h * e.num_experts + (e.num_experts if e.router_bias else 0)
    shared = _mlp_params(h, e.shared_expert_hidden_dim) if e.shared_expert_hidden_dim else 0
    shared += h if e.shared_expert_gate else 0
    fixed = m.num_layers * per_layer_fixed + dense_layers * _mlp_params(h, m.mlp_hidden_dim)
    total += fixed + moe_layers * (router + shared + e.num_experts * expert)
    active += fixed + moe_layers * (router + shared + e.experts_per_token * expert)
    return ParameterCount(total, active, embed)
