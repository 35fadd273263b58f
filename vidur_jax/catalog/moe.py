"""Weights, KV cache and FLOPs of mixture-of-experts and multi-head-latent-attention models.

Pure functions on a :class:`~vidur_jax.catalog.models.ModelSpec`, following the
sharding vLLM uses for these models (all sizes in elements, Vidur's convention of no
embeddings, norms or biases in the per-device weights):

* **Attention** is tensor-parallel over ``tp`` GPUs. Standard (MHA/GQA/MQA) attention as
  in :func:`vidur_jax.catalog.memory.params_per_layer`, with the model's head size. MLA
  (DeepSeek-V2/V3): the down-projections ``q_a`` (``H x q_lora``) and ``kv_a``
  (``H x (kv_lora + rope)``) are replicated on every TP worker; ``q_b``, ``kv_b`` and
  ``o`` are split by heads.
* **Experts** are spread over the ``tp`` GPUs of a stage: expert parallelism ``ep``
  (which divides ``tp`` and the number of experts) gives each EP rank ``E / ep`` whole
  experts, each split ``tp / ep`` ways. Per GPU that is ``E x 3 H F / tp`` whatever
  ``ep`` is, so memory does not depend on ``ep``. Shared experts and the dense MLP of
  the first ``first_dense_layers`` layers are split ``tp`` ways; the router
  (``H x E``) is replicated.
* **Attention data parallelism** (``attention_dp = d``, DeepSeek/SGLang style): each
  replica is one attention rank of ``tp`` GPUs, and ``d`` ranks share one expert-parallel
  group of ``G = d x tp`` GPUs (``ep = G``): routed and shared experts are spread over
  the ``G`` GPUs (``group``), attention weights and dense first layers stay per rank.
* **KV cache** per token and layer: ``2 x head_dim x ceil(kv_heads / tp)`` for standard
  attention; ``kv_lora_rank + qk_rope_head_dim`` for MLA, which has one latent "head"
  that every TP worker stores whole (as vLLM does).
"""

from __future__ import annotations

from vidur_jax.catalog.models import ModelSpec
from vidur_jax.errors import require


def needs_roofline(m: ModelSpec) -> bool:
    """True when no profiled predictor covers ``m``'s op shapes (MoE, MLA or a head size
    apart from ``embedding_dim / num_q_heads``): its ops come from the roofline."""
    return m.moe is not None or m.mla is not None or m.explicit_head_dim is not None


def attention_params_per_worker(m: ModelSpec, tp: int) -> int:
    """Attention projection weights of one layer on one TP worker (elements)."""
    h, hq = m.embedding_dim, m.q_heads_per_worker(tp)
    a = m.mla
    if a is None:
        d, kv = m.head_dim, m.kv_heads_per_worker(tp)
        return h * d * (hq + 2 * kv) + h * d * hq
    qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    q = h * hq * qk if a.q_lora_rank == 0 else h * a.q_lora_rank + a.q_lora_rank * hq * qk
    kv = h * (a.kv_lora_rank + a.qk_rope_head_dim)
    kv += a.kv_lora_rank * hq * (a.qk_nope_head_dim + a.v_head_dim)
    return q + kv + hq * a.v_head_dim * h


def dense_mlp_params_per_worker(m: ModelSpec, tp: int) -> int:
    """Dense MLP weights of one layer on one TP worker (elements)."""
    return (3 if m.use_gated_mlp else 2) * m.embedding_dim * m.mlp_hidden_dim // tp


def moe_mlp_params_per_worker(m: ModelSpec, tp: int, group: int | None = None) -> int:
    """Weights of one MoE layer's feed-forward part on one GPU (elements): router
    (replicated) + routed and shared experts spread over the ``group`` GPUs that hold
    them (default ``tp``; ``attention_dp x tp`` under attention data parallelism)."""
    e, h, g = m.moe, m.embedding_dim, group or tp
    router = h * e.num_experts if e.num_experts > 1 else 0
    routed = e.num_experts * 3 * h * e.expert_hidden_dim // g
    shared = 3 * h * e.shared_expert_hidden_dim // g
    return router + routed + shared


def is_moe_layer(m: ModelSpec, layer: int) -> bool:
    """True when layer ``layer`` (0-based) has experts (DeepSeek's first layers are dense)."""
    return m.moe is not None and layer >= m.moe.first_dense_layers


def layer_params_per_worker(m: ModelSpec, tp: int, layer: int, group: int | None = None) -> int:
    """All projection weights of layer ``layer`` on one GPU (elements; ``group``: GPUs
    holding the experts, default ``tp``)."""
    mlp = (
        moe_mlp_params_per_worker(m, tp, group)
        if is_moe_layer(m, layer)
        else dense_mlp_params_per_worker(m, tp)
    )
    return attention_params_per_worker(m, tp) + mlp


def params_per_device(m: ModelSpec, tp: int, pp: int, group: int | None = None) -> int:
    """Weights on the fullest GPU of a ``tp x pp`` replica (elements; ``group``: GPUs
    holding the experts, default ``tp``).

    Stage ``s`` holds layers ``[s L/pp, (s+1) L/pp)``; with dense first layers the last
    stages are the fullest, and they size the KV cache of every stage.
    """
    per_stage = m.num_layers // pp
    return max(
        sum(
            layer_params_per_worker(m, tp, i, group)
            for i in range(s * per_stage, (s + 1) * per_stage)
        )
        for s in range(pp)
    )


def routed_expert_params_per_worker(
    m: ModelSpec, tp: int, layer: int, group: int | None = None
) -> int:
    """Routed-expert weights of layer ``layer`` on one GPU (elements; 0 in a dense layer)."""
    if not is_moe_layer(m, layer):
        return 0
    return m.moe.num_experts * 3 * m.embedding_dim * m.moe.expert_hidden_dim // (group or tp)


def weight_bytes_per_device(
    m: ModelSpec, tp: int, pp: int, bytes_per_weight: int, group: int | None = None
) -> int:
    """Weight bytes on the fullest GPU of a ``tp x pp`` replica: routed experts at
    ``m.moe.expert_bits`` when they ship quantized (gpt-oss: MXFP4, 4.25 bits), every
    other weight at ``bytes_per_weight``."""
    bits = m.moe.expert_bits if m.moe is not None else None
    per_stage = m.num_layers // pp

    def layer_bytes(i: int) -> float:
        total = layer_params_per_worker(m, tp, i, group)
        if bits is None:
            return float(bytes_per_weight * total)
        experts = routed_expert_params_per_worker(m, tp, i, group)
        return bytes_per_weight * (total - experts) + experts * bits / 8.0

    return int(
        max(
            sum(layer_bytes(i) for i in range(s * per_stage, (s + 1) * per_stage))
            for s in range(pp)
        )
    )


def kv_elements_per_token_layer(m: ModelSpec, tp: int) -> int:
    """KV-cache elements one token stores per layer on one TP worker."""
    if m.mla is not None:
        return m.mla.kv_cache_elements_per_layer
    return 2 * m.head_dim * m.kv_heads_per_worker(tp)


def active_params_per_token_layer(m: ModelSpec, tp: int) -> float:
    """Weights one token multiplies per layer on one GPU, averaged over the layers
    (elements): attention + dense MLP, or router + top-k experts + shared experts; a
    token's k experts are spread over the ``tp`` GPUs, so each GPU does ``1/tp`` of them."""
    if m.moe is None:
        return float(attention_params_per_worker(m, tp) + dense_mlp_params_per_worker(m, tp))
    e, h = m.moe, m.embedding_dim
    router = h * e.num_experts if e.num_experts > 1 else 0
    moe = (
        router
        + (e.experts_per_token * 3 * h * e.expert_hidden_dim + 3 * h * e.shared_expert_hidden_dim)
        / tp
    )
    if e.first_dense_layers == 0:
        return attention_params_per_worker(m, tp) + moe
    dense = dense_mlp_params_per_worker(m, tp)
    n_moe = m.num_layers - e.first_dense_layers
    mlp = (e.first_dense_layers * dense + n_moe * moe) / m.num_layers
    return attention_params_per_worker(m, tp) + mlp


def flops_per_token(m: ModelSpec, tp: int) -> float:
    """Projection FLOPs per token per layer on one GPU: 2 x active weights."""
    return 2.0 * active_params_per_token_layer(m, tp)


def attn_flops_coef(m: ModelSpec, tp: int) -> float:
    """Attention FLOPs per (query, key) pair per layer on one GPU.

    ``4 x head_dim x heads`` (QK^T and PV); MLA: ``2 x (qk_nope + qk_rope + v) x heads``
    (its Q/K and V head sizes differ).
    """
    hq = m.q_heads_per_worker(tp)
    if m.mla is not None:
        a = m.mla
        return 2.0 * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) * hq
    return 4.0 * m.head_dim * hq


def validate_expert_parallel(m: ModelSpec, tp: int, ep: int, attention_dp: int = 1) -> None:
    """Check an expert-parallel degree for ``m`` at tensor parallelism ``tp``.

    Raises:
        ConfigError: ``ep`` not a positive integer; ``ep > 1`` on a dense model; ``ep``
            not dividing ``tp`` (EP ranks are the GPUs of a stage) or the experts; an
            expert inner size that ``tp / ep`` does not divide. With ``attention_dp > 1``:
            a dense model, or ``ep`` other than ``attention_dp x tp``.
    """
    require(
        isinstance(ep, int) and not isinstance(ep, bool) and ep >= 1,
        f"expert parallel degree ep={ep!r} must be an integer >= 1",
    )
    require(
        isinstance(attention_dp, int) and not isinstance(attention_dp, bool) and attention_dp >= 1,
        f"attention_dp={attention_dp!r} must be an integer >= 1",
    )
    if attention_dp > 1:
        require(m.moe is not None, f"attention_dp={attention_dp} needs a mixture-of-experts model")
        require(
            ep == attention_dp * tp,
            f"attention_dp={attention_dp} needs ep = attention_dp x tp = {attention_dp * tp} "
            f"(experts spread over the group's GPUs), got ep={ep}",
        )
        require(m.moe.num_experts % ep == 0, f"ep={ep} must divide {m.name}'s {m.moe.num_experts} experts")
        return
    if m.moe is None:
        require(ep == 1, f"ep={ep} needs a mixture-of-experts model; {m.name} is dense")
        return
    e = m.moe
    require(tp % ep == 0, f"ep={ep} must divide tp={tp} (the EP ranks are a stage's GPUs)")
    require(
        e.num_experts % ep == 0,
        f"ep={ep} must divide {m.name}'s {e.num_experts} experts",
    )
    etp = tp // ep
    require(
        e.expert_hidden_dim % etp == 0,
        f"tp/ep={etp} must divide {m.name}'s expert size {e.expert_hidden_dim}",
    )
