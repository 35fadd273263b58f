"""Model shapes: the transformer dimensions the simulator and memory planner need.

Values follow Vidur's ``vidur/config/model_config.py`` (including its quirks, e.g. the
Llama-2 family inherits ``vocab_size = 32768`` there); ``max_model_len`` is Vidur's
``max_position_embeddings``. Look models up by their Hugging Face name or a short alias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vidur_jax.errors import ConfigError


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

    @property
    def head_dim(self) -> int:
        """Attention head size (elements)."""
        return self.embedding_dim // self.num_q_heads

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


def list_models() -> list[str]:
    """Canonical names of all known models, in catalog order."""
    return list(MODELS)


def get_model(name: str) -> ModelSpec:
    """Look up a model by canonical name or alias (case-insensitive).

    Args:
        name: e.g. ``"meta-llama/Llama-2-7b-hf"`` or ``"llama2-7b"``.

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
    allowed = ", ".join(list(MODELS) + sorted(ALIASES))
    raise ConfigError(f"unknown model {name!r}; allowed: {allowed}")
