"""Vidur's memory planner as pure functions: weights, KV cache, batch size, KV blocks.

Semantics follow Vidur's ``ParamCounter`` and ``MemoryPlanner``:

* parameters per device = per-layer weights of one TP shard (Wq/Wk/Wv, Wo, MLP; no
  embeddings, norms or biases) x layers per pipeline stage, 2 bytes each (fp16/bf16;
  1 with ``weight_dtype="fp8"``);
* KV bytes per request = 2 (fp16/bf16; 1 with ``kv_dtype="fp8"``) x 2 (K and V) x
  head_dim x kv_heads_per_worker x max_tokens x layers. Vidur counts **all** layers even under pipeline parallelism
  (``vidur_compat=True``); ``vidur_compat=False`` counts only the layers on one stage,
  which is what a real PP deployment stores;
* max batch size = floor((memory x (1 - margin) - weight bytes) / KV bytes per request);
* KV blocks per replica = (max_tokens // block_size) x max batch size x pp.
"""

from __future__ import annotations

from vidur_jax.catalog import moe
from vidur_jax.catalog.hardware import DeviceSpec, get_device
from vidur_jax.catalog.models import ModelSpec, get_model
from vidur_jax.errors import ConfigError, require

BYTES_PER_ELEMENT = 2  # fp16 weights and KV cache, as in Vidur

# Bytes per element of the storage formats a deployment may choose for weights and KV.
DTYPE_BYTES: dict[str, int] = {"fp16": 2, "bf16": 2, "fp8": 1}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a storage format name (``fp16``, ``bf16``, ``fp8``).

    Raises:
        ConfigError: for an unknown name, listing the allowed ones.
    """
    key = str(dtype).strip().lower()
    require(key in DTYPE_BYTES, f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[key]


def _is_pos_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def validate_simulable(model: ModelSpec | str) -> None:
    """Refuse a model whose serving cost the simulator cannot compute yet.

    Dense, mixture-of-experts (:mod:`vidur_jax.catalog.moe`; quantized experts such as
    gpt-oss's MXFP4 at their own bits), multi-head latent attention and sliding-window
    layers (read through the window; their KV cache counted in full) are simulated.

    Raises:
        ConfigError: naming the model and the part that is not modelled.
    """
    m = get_model(model)
    require(
        m.num_sliding_layers == 0 or m.sliding_window is not None,
        f"{m.name} has sliding-window layers without a window size",
    )


def validate_parallelism(model: ModelSpec | str, tp: int, pp: int) -> None:
    """Check that a (TP, PP) split is possible for ``model``.

    Args:
        model: spec or name.
        tp: tensor-parallel degree (GPUs per stage).
        pp: pipeline-parallel degree (stages).

    Raises:
        ConfigError: if tp/pp are not positive integers, TP does not divide the query
            heads and the embedding dim, PP does not divide the layers, or the model only
            supports TP=1 (phi-2 in Vidur).
    """
    m = get_model(model)
    validate_simulable(m)
    require(_is_pos_int(tp), f"tensor parallel degree tp={tp!r} must be an integer >= 1")
    require(_is_pos_int(pp), f"pipeline parallel degree pp={pp!r} must be an integer >= 1")
    require(
        not (m.no_tensor_parallel and tp > 1),
        f"tp={tp} not supported for {m.name}: it only runs with tp=1",
    )
    require(
        m.num_q_heads % tp == 0 and m.embedding_dim % tp == 0,
        f"tp={tp} must divide {m.name}'s {m.num_q_heads} query heads and embedding dim "
        f"{m.embedding_dim}; allowed tp: {allowed_tp(m)}",
    )
    require(
        m.num_layers % pp == 0,
        f"pp={pp} must divide {m.name}'s {m.num_layers} layers; allowed pp: "
        f"{[d for d in range(1, m.num_layers + 1) if m.num_layers % d == 0]}",
    )


def allowed_tp(model: ModelSpec | str, max_tp: int = 64) -> list[int]:
    """TP degrees in ``1..max_tp`` that :func:`validate_parallelism` accepts."""
    m = get_model(model)
    if m.no_tensor_parallel:
        return [1]
    return [t for t in range(1, max_tp + 1) if m.num_q_heads % t == 0 and m.embedding_dim % t == 0]


def params_per_layer(model: ModelSpec | str, tp: int) -> int:
    """Weights of one layer on one TP worker (Vidur's ``ParamCounter``), in elements.

    Counts Wq, Wk, Wv (KV heads per worker rounded up), Wo and the 2 or 3 MLP matrices;
    for MoE and MLA models, a layer with experts (:mod:`vidur_jax.catalog.moe`).
    """
    m = get_model(model)
    validate_parallelism(m, tp, 1)
    if m.moe is not None or m.mla is not None:
        return moe.layer_params_per_worker(m, tp, m.num_layers - 1)
    q = m.q_heads_per_worker(tp)
    kv = m.kv_heads_per_worker(tp)
    attn = m.embedding_dim * m.head_dim * (q + 2 * kv) + m.embedding_dim * m.head_dim * q
    mlp = (3 if m.use_gated_mlp else 2) * m.embedding_dim * m.mlp_hidden_dim // tp
    return attn + mlp


def params_per_device(model: ModelSpec | str, tp: int, pp: int, *, attention_dp: int = 1) -> int:
    """Weights held by one GPU: :func:`params_per_layer` x layers per stage (elements;
    experts spread over ``attention_dp x tp`` GPUs, :mod:`vidur_jax.catalog.moe`)."""
    m = get_model(model)
    validate_parallelism(m, tp, pp)
    if m.moe is not None or m.mla is not None:
        return moe.params_per_device(m, tp, pp, attention_dp * tp)
    return params_per_layer(m, tp) * m.layers_per_stage(pp)


def param_bytes_per_device(
    model: ModelSpec | str, tp: int, pp: int, *, weight_dtype: str = "fp16", attention_dp: int = 1
) -> int:
    """Weight memory per GPU in bytes (``weight_dtype``: fp16 as in Vidur, or fp8;
    experts that ship quantized keep their format, :func:`moe.weight_bytes_per_device`)."""
    m = get_model(model)
    if m.moe is not None and m.moe.expert_bits is not None:
        validate_parallelism(m, tp, pp)
        return moe.weight_bytes_per_device(m, tp, pp, dtype_bytes(weight_dtype), attention_dp * tp)
    return dtype_bytes(weight_dtype) * params_per_device(m, tp, pp, attention_dp=attention_dp)


def kv_bytes_per_token(
    model: ModelSpec | str,
    tp: int,
    pp: int = 1,
    *,
    vidur_compat: bool = True,
    kv_dtype: str = "fp16",
) -> int:
    """KV-cache bytes one token occupies on one GPU, over the layers it stores.

    Args:
        model: spec or name.
        tp: tensor-parallel degree.
        pp: pipeline-parallel degree.
        vidur_compat: True counts all layers (Vidur), False only the layers per stage.
        kv_dtype: KV-cache storage format (fp16 as in Vidur, or fp8: half the bytes).
    """
    m = get_model(model)
    validate_parallelism(m, tp, pp)
    layers = m.num_layers if vidur_compat else m.layers_per_stage(pp)
    return dtype_bytes(kv_dtype) * moe.kv_elements_per_token_layer(m, tp) * layers


def _check_memory_args(max_tokens: int, memory_margin_fraction: float) -> None:
    require(_is_pos_int(max_tokens), f"max_tokens={max_tokens!r} must be an integer >= 1")
    require(
        0.0 <= float(memory_margin_fraction) < 1.0,
        f"memory_margin_fraction={memory_margin_fraction!r} must be in [0, 1)",
    )


def max_batch_size(
    model: ModelSpec | str,
    device: DeviceSpec | str,
    tp: int,
    pp: int,
    max_tokens: int,
    memory_margin_fraction: float = 0.1,
    vidur_compat: bool = True,
    *,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
    extra_weight_bytes: int = 0,
    extra_kv_bytes_per_token: int = 0,
    attention_dp: int = 1,
) -> int:
    """Requests whose full ``max_tokens`` KV cache fits next to the weights (per stage).

    Args:
        model: spec or name.
        device: GPU spec or name.
        tp: tensor-parallel degree.
        pp: pipeline-parallel degree.
        max_tokens: tokens reserved per request (Vidur's ``max_tokens``).
        memory_margin_fraction: fraction of GPU memory kept free (Vidur default 0.1).
        vidur_compat: see :func:`kv_bytes_per_token`.
        weight_dtype: weight storage format (see :func:`dtype_bytes`).
        kv_dtype: KV-cache storage format.
        extra_weight_bytes: further weights per GPU (a speculative-decoding draft model).
        extra_kv_bytes_per_token: further KV bytes per token per GPU (the draft's cache,
            which holds the same tokens as the target's).
        attention_dp: attention data-parallel ranks sharing one expert group (the
            experts are spread over ``attention_dp x tp`` GPUs; 1 = off).

    Returns:
        ``floor((mem * (1 - margin) - weight_bytes) / (kv_bytes_per_token * max_tokens))``.

    Raises:
        ConfigError: bad arguments, or "model does not fit in GPU memory" when < 1.
    """
    m, d = get_model(model), get_device(device)
    _check_memory_args(max_tokens, memory_margin_fraction)
    available = d.memory_gb * 1024**3 * (1.0 - float(memory_margin_fraction))
    weights = param_bytes_per_device(
        m, tp, pp, weight_dtype=weight_dtype, attention_dp=attention_dp
    ) + int(extra_weight_bytes)
    per_request = (
        kv_bytes_per_token(m, tp, pp, vidur_compat=vidur_compat, kv_dtype=kv_dtype)
        + int(extra_kv_bytes_per_token)
    ) * max_tokens
    n = int((available - weights) // per_request)
    if n < 1:
        raise ConfigError(
            f"model does not fit in GPU memory: {m.name} on {d.name} ({d.memory_gb} GB) with "
            f"tp={tp}, pp={pp}, max_tokens={max_tokens}, margin={memory_margin_fraction} needs "
            f"{weights / 1024**3:.1f} GiB weights + {per_request / 1024**3:.2f} GiB KV per "
            f"request but has {available / 1024**3:.1f} GiB; use more GPUs (tp/pp), a larger "
            f"GPU or smaller max_tokens"
        )
    return n


def max_request_slots(
    model: ModelSpec | str,
    device: DeviceSpec | str,
    tp: int,
    pp: int,
    max_tokens: int,
    memory_margin_fraction: float = 0.1,
    vidur_compat: bool = True,
    *,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
    extra_weight_bytes: int = 0,
    extra_kv_bytes_per_token: int = 0,
    attention_dp: int = 1,
) -> int:
    """Concurrent requests per replica: :func:`max_batch_size` x pp (one batch per stage)."""
    return pp * max_batch_size(
        model,
        device,
        tp,
        pp,
        max_tokens,
        memory_margin_fraction,
        vidur_compat,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        extra_weight_bytes=extra_weight_bytes,
        extra_kv_bytes_per_token=extra_kv_bytes_per_token,
        attention_dp=attention_dp,
    )


def num_kv_blocks(
    model: ModelSpec | str,
    device: DeviceSpec | str,
    tp: int,
    pp: int,
    max_tokens: int,
    block_size: int = 16,
    memory_margin_fraction: float = 0.1,
    vidur_compat: bool = True,
    *,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
    extra_weight_bytes: int = 0,
    extra_kv_bytes_per_token: int = 0,
    attention_dp: int = 1,
) -> int:
    """KV-cache blocks per replica, as Vidur sizes them when ``num_blocks`` is unset.

    FP8 KV (``kv_dtype="fp8"``) halves the bytes per token exactly, so the KV token
    capacity next to the weights doubles exactly; Vidur's planner then rounds it down to
    whole ``max_tokens`` requests, so the blocks become ``2 n`` or ``2 n + max_tokens //
    block_size`` for ``n`` blocks at 16 bits.

    Returns:
        ``(max_tokens // block_size) * max_batch_size(...) * pp``.

    Raises:
        ConfigError: bad arguments or a model that does not fit.
    """
    require(_is_pos_int(block_size), f"block_size={block_size!r} must be an integer >= 1")
    _check_memory_args(max_tokens, memory_margin_fraction)
    require(
        max_tokens >= block_size,
        f"max_tokens={max_tokens} must be >= block_size={block_size}",
    )
    slots = max_request_slots(
        model,
        device,
        tp,
        pp,
        max_tokens,
        memory_margin_fraction,
        vidur_compat,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        extra_weight_bytes=extra_weight_bytes,
        extra_kv_bytes_per_token=extra_kv_bytes_per_token,
        attention_dp=attention_dp,
    )
    return (max_tokens // block_size) * slots


def validate_max_tokens(model: ModelSpec | str, max_tokens: int) -> None:
    """Require ``1 <= max_tokens <= model.max_model_len``.

    Raises:
        ConfigError: naming the model's context length.
    """
    m = get_model(model)
    require(_is_pos_int(max_tokens), f"max_tokens={max_tokens!r} must be an integer >= 1")
    require(
        max_tokens <= m.max_model_len,
        f"max_tokens={max_tokens} exceeds {m.name}'s context length {m.max_model_len}",
    )


#: ``speculative.draft`` value for a draft of one target decoder layer per draft token
#: (EAGLE heads, multi-token-prediction modules) instead of a separate model.
EAGLE_DRAFT = "eagle"


def draft_memory(
    target: ModelSpec | str,
    draft: str,
    tp: int,
    *,
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
) -> tuple[int, int]:
    """Memory per GPU of a speculative-decoding draft next to ``target``.

    A draft model is sharded like the target (same TP, every layer on the GPU: the
    draft is not pipelined) and keeps a KV cache of the same tokens as the target; an
    ``"eagle"`` draft is one decoder layer of the target (its weights and one layer of
    KV). Embeddings and the LM head are not counted, as for the target.

    Args:
        target: the served model.
        draft: a catalog model name, or :data:`EAGLE_DRAFT`.
        tp: tensor-parallel degree.
        weight_dtype, kv_dtype: storage formats (the draft's are the target's).

    Returns:
        ``(weight_bytes, kv_bytes_per_token)`` per GPU.

    Raises:
        ConfigError: an unknown draft, or a TP degree the draft cannot be split by.
    """
    m = get_model(target)
    if draft == EAGLE_DRAFT:
        weights = params_per_layer(m, tp)
        kv = kv_bytes_per_token(m, tp, 1, kv_dtype=kv_dtype) // m.num_layers
        return dtype_bytes(weight_dtype) * weights, kv
    d = get_model(draft)
    return (
        param_bytes_per_device(d, tp, 1, weight_dtype=weight_dtype),
        kv_bytes_per_token(d, tp, 1, kv_dtype=kv_dtype),
    )
