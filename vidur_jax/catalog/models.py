"""Model shapes: the transformer dimensions the simulator and memory planner need.

Values follow Vidur's ``vidur/config/model_config.py`` (including its quirks, e.g. the
Llama-2 family inherits ``vocab_size = 32768`` there); ``max_model_len`` is Vidur's
``max_position_embeddings``. Look models up by their Hugging Face name or a short alias.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass

from vidur_jax.errors import ConfigError


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts layout of a model's feed-forward layers.

    Attributes:
        num_experts: routed experts per MoE layer.
        experts_per_token: experts each token is routed to (top-k).
        expert_hidden_dim: FFN inner size of one routed expert (elements).
        num_shared_experts: always-active experts per MoE layer (DeepSeek: n of
            ``expert_hidden_dim`` each; Qwen2-MoE: one of ``shared_expert_hidden_dim``).
        shared_expert_hidden_dim: FFN inner size of the shared expert block (elements);
            ``num_shared_experts * expert_hidden_dim`` for DeepSeek.
        first_dense_layers: leading layers with a dense MLP of ``mlp_hidden_dim``
            instead of experts (DeepSeek's ``first_k_dense_replace``).
        shared_expert_gate: True when a sigmoid gate scales the shared expert (Qwen2-MoE).
        router_bias: True when the router has a bias (gpt-oss) or a correction bias
            (DeepSeek-V3's ``e_score_correction_bias``).
        expert_bias: True when expert projections carry biases (gpt-oss).
        expert_bits: bits per routed-expert weight when the experts ship quantized apart
            from the rest (gpt-oss: MXFP4, 4-bit values + one 8-bit scale per 32 = 4.25);
            None = the deployment's ``weight_dtype`` like every other weight.
    """

    num_experts: int
    experts_per_token: int
    expert_hidden_dim: int
    num_shared_experts: int = 0
    shared_expert_hidden_dim: int = 0
    first_dense_layers: int = 0
    shared_expert_gate: bool = False
    router_bias: bool = False
    expert_bias: bool = False
    expert_bits: float | None = None


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank Q and a compressed KV.

    The KV cache stores, per token and layer, one latent vector of ``kv_lora_rank``
    plus one shared RoPE key of ``qk_rope_head_dim`` elements (not per head).

    Attributes:
        q_lora_rank: rank of the query down-projection, 0 when queries are full rank.
        kv_lora_rank: width of the compressed KV latent (elements).
        qk_nope_head_dim: per-head query/key size without RoPE.
        qk_rope_head_dim: per-head query/key size with RoPE (the key part is shared).
        v_head_dim: per-head value size.
    """

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def kv_cache_elements_per_layer(self) -> int:
        """KV-cache elements one token stores in one layer."""
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer (all sizes are element counts, not bytes).

    Attributes:
        name: canonical Hugging Face name, e.g. ``"meta-llama/Llama-2-7b-hf"``.
        num_layers: number of transformer blocks.
        num_q_heads: query heads.
        num_kv_heads: key/value heads (< ``num_q_heads`` for GQA/MQA).
        embedding_dim: hidden size ``d_model``.
        mlp_hidden_dim: FFN inner size.
        vocab_size: vocabulary size.
        use_gated_mlp: True for SwiGLU-style MLPs (3 weight matrices instead of 2).
        post_attn_norm: True when a norm follows attention (Llama); False for phi-2.
        max_model_len: maximum context length in tokens.
        no_tensor_parallel: True when Vidur only supports (and profiles) TP=1.
        explicit_head_dim: head size when a config states it apart from
            ``embedding_dim // num_q_heads`` (Qwen3, gpt-oss); None derives it.
        moe: mixture-of-experts layout, or None for a dense model.
        mla: multi-head latent attention layout (DeepSeek-V2/V3), or None.
        tie_word_embeddings: True when the LM head reuses the input embedding.
        attention_bias: True when the Q/K/V projections carry biases (Qwen2, gpt-oss).
        family: Hugging Face ``model_type`` the spec was read from ("llama" for the
            Vidur catalog entries).
        sliding_window: tokens a sliding-window layer attends to (gpt-oss: 128), or None.
        num_sliding_layers: layers with sliding-window attention (the rest attend to
            the whole context); 0 without a window.
    """

    name: str
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    embedding_dim: int
    mlp_hidden_dim: int
    vocab_size: int
    use_gated_mlp: bool
    post_attn_norm: bool
    max_model_len: int
    no_tensor_parallel: bool = False
    explicit_head_dim: int | None = None
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    family: str = "llama"
    sliding_window: int | None = None
    num_sliding_layers: int = 0

    @property
    def head_dim(self) -> int:
        """Attention head size (elements)."""
        if self.explicit_head_dim is not None:
            return self.explicit_head_dim
        return self.embedding_dim // self.num_q_heads

    @property
    def is_moe(self) -> bool:
        """True for a mixture-of-experts model."""
        return self.moe is not None

    @property
    def q_per_kv(self) -> int:
        """Query heads sharing one KV head (1 for MHA)."""
        return self.num_q_heads // self.num_kv_heads

    @property
    def kv_dim(self) -> int:
        """Width of the K (or V) projection: ``num_kv_heads * head_dim`` elements."""
        return self.num_kv_heads * self.head_dim

    def q_heads_per_worker(self, tp: int) -> int:
        """Query heads on one tensor-parallel worker (Vidur: floor division)."""
        return self.num_q_heads // tp

    def kv_heads_per_worker(self, tp: int) -> int:
        """KV heads on one tensor-parallel worker (Vidur: ceil, KV heads are replicated)."""
        return math.ceil(self.num_kv_heads / tp)

    def layers_per_stage(self, pp: int) -> int:
        """Layers on one pipeline stage."""
        return self.num_layers // pp


def _llama(name: str, layers: int, q: int, kv: int, emb: int, mlp: int, **kw) -> ModelSpec:
    # Vidur's Llama2ModelConfig defaults, which every model below inherits from.
    base = dict(vocab_size=32768, use_gated_mlp=True, post_attn_norm=True, max_model_len=16384)
    base.update(kw)
    return ModelSpec(name, layers, q, kv, emb, mlp, **base)


_MODELS: tuple[ModelSpec, ...] = (
    _llama("meta-llama/Llama-2-7b-hf", 32, 32, 32, 4096, 11008, max_model_len=4096),
    _llama("meta-llama/Llama-2-70b-hf", 80, 64, 8, 8192, 28672, max_model_len=4096),
    _llama("codellama/CodeLlama-34b-Instruct-hf", 48, 64, 8, 8192, 22016),
    _llama(
        "meta-llama/Meta-Llama-3-8B", 32, 32, 8, 4096, 14336, max_model_len=4096, vocab_size=128256
    ),
    _llama(
        "meta-llama/Meta-Llama-3-70B", 80, 64, 8, 8192, 28672, max_model_len=8192, vocab_size=128256
    ),
    _llama("internlm/internlm-20b", 60, 40, 40, 5120, 13824, max_model_len=4096, vocab_size=103168),
    _llama("internlm/internlm2-20b", 48, 48, 8, 6144, 16384, max_model_len=32768, vocab_size=92544),
    _llama(
        "microsoft/phi-2",
        32,
        32,
        32,
        2560,
        10240,
        max_model_len=2048,
        vocab_size=51200,
        use_gated_mlp=False,
        post_attn_norm=False,
        no_tensor_parallel=True,
    ),
    _llama("Qwen/Qwen-72B", 80, 64, 64, 8192, 24576, max_model_len=32768, vocab_size=152064),
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in _MODELS}

# Short names (lower case). Includes the names Vidur's config explorer uses.
ALIASES: dict[str, str] = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-7b-hf": "meta-llama/Llama-2-7b-hf",
    "llama2-70b": "meta-llama/Llama-2-70b-hf",
    "llama-2-70b": "meta-llama/Llama-2-70b-hf",
    "llama-2-70b-hf": "meta-llama/Llama-2-70b-hf",
    "codellama-34b": "codellama/CodeLlama-34b-Instruct-hf",
    "codellama-34b-instruct-hf": "codellama/CodeLlama-34b-Instruct-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama3-70b": "meta-llama/Meta-Llama-3-70B",
    "llama-3-70b": "meta-llama/Meta-Llama-3-70B",
    "internlm-20b": "internlm/internlm-20b",
    "internlm2-20b": "internlm/internlm2-20b",
    "phi-2": "microsoft/phi-2",
    "phi2": "microsoft/phi-2",
    "qwen-72b": "Qwen/Qwen-72B",
}


HF_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "hf_configs")


@functools.cache
def shipped_hf_configs() -> dict[str, str]:
    """Shipped Hugging Face configs: lower-case alias or HF name -> ``config.json`` path.

    The files in ``catalog/hf_configs/`` are written from each model's published
    ``config.json`` (architecture fields only); the alias is the file name without
    ``.json`` (e.g. ``"qwen3-8b"``).
    """
    out: dict[str, str] = {}
    if not os.path.isdir(HF_CONFIG_DIR):
        return out
    for fname in sorted(os.listdir(HF_CONFIG_DIR)):
        if not fname.endswith(".json"):
            continue
        path = os.path.join(HF_CONFIG_DIR, fname)
        with open(path, encoding="utf-8") as fh:
            hf_name = json.load(fh).get("_name_or_path", "")
        out[fname[: -len(".json")].lower()] = path
        if hf_name:
            out[hf_name.lower()] = path
    return out


@functools.cache
def _spec_from_file(path: str) -> ModelSpec:
    from vidur_jax.catalog.hf_config import load_hf_config

    return load_hf_config(path)


def list_models() -> list[str]:
    """Canonical names of the Vidur catalog models, in catalog order.

    The shipped Hugging Face configs (:func:`shipped_hf_configs`) resolve by name too.
    """
    return list(MODELS)


def get_model(name: str) -> ModelSpec:
    """Look up a model by canonical name or alias (case-insensitive).

    Args:
        name: e.g. ``"meta-llama/Llama-2-7b-hf"`` or ``"llama2-7b"``, a shipped
            Hugging Face config's name or alias (``"Qwen/Qwen3-8B"``, ``"qwen3-8b"``),
            or the path of a ``config.json`` (or of a folder holding one).

    Returns:
        The frozen :class:`ModelSpec`.

    Raises:
        ConfigError: for an unknown name; the message lists the allowed names.
    """
    if isinstance(name, ModelSpec):
        return name
    key = str(name).strip()
    if key in MODELS:
        return MODELS[key]
    lowered = key.lower()
    for canonical in MODELS:
        if canonical.lower() == lowered:
            return MODELS[canonical]
    if lowered in ALIASES:
        return MODELS[ALIASES[lowered]]
    shipped = shipped_hf_configs()
    if lowered in shipped:
        return _spec_from_file(shipped[lowered])
    if key.endswith(".json") or os.path.isdir(key):
        return _spec_from_file(os.path.abspath(key))
    allowed = ", ".join(list(MODELS) + sorted(ALIASES) + sorted(shipped))
    raise ConfigError(f"unknown model {name!r}; allowed: {allowed}")
