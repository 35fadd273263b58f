"""Catalog of models, GPUs and nodes, and Vidur's memory planner.

Everything here is plain Python on frozen dataclasses, resolved before any ``jit``.
Unknown names raise :class:`vidur_jax.errors.ConfigError` listing the allowed names.
"""

from vidur_jax.catalog.hardware import (
    DEVICES,
    NODES,
    DeviceSpec,
    NodeSpec,
    get_device,
    get_node,
    group_topology,
    is_node_of,
    list_devices,
    list_nodes,
)
from vidur_jax.catalog.hf_config import (
    ParameterCount,
    load_hf_config,
    parameter_count,
    spec_from_hf_config,
)
from vidur_jax.catalog.memory import (
    allowed_tp,
    kv_bytes_per_token,
    max_batch_size,
    max_request_slots,
    num_kv_blocks,
    param_bytes_per_device,
    params_per_device,
    params_per_layer,
    validate_max_tokens,
    validate_parallelism,
    validate_simulable,
)
from vidur_jax.catalog.models import (
    ALIASES,
    MODELS,
    MLASpec,
    ModelSpec,
    MoESpec,
    get_model,
    list_models,
    shipped_hf_configs,
)
from vidur_jax.catalog.moe import (
    attn_flops_coef,
    flops_per_token,
    needs_roofline,
    validate_expert_parallel,
)

__all__ = [
    "ALIASES",
    "DEVICES",
    "MODELS",
    "NODES",
    "DeviceSpec",
    "MLASpec",
    "ModelSpec",
    "MoESpec",
    "ParameterCount",
    "NodeSpec",
    "allowed_tp",
    "attn_flops_coef",
    "flops_per_token",
    "needs_roofline",
    "validate_expert_parallel",
    "get_device",
    "group_topology",
    "is_node_of",
    "get_model",
    "load_hf_config",
    "parameter_count",
    "shipped_hf_configs",
    "spec_from_hf_config",
    "validate_simulable",
    "get_node",
    "kv_bytes_per_token",
    "list_devices",
    "list_models",
    "list_nodes",
    "max_batch_size",
    "max_request_slots",
    "num_kv_blocks",
    "param_bytes_per_device",
    "params_per_device",
    "params_per_layer",
    "validate_max_tokens",
    "validate_parallelism",
]
