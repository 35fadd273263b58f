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
    list_devices,
    list_nodes,
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
)
from vidur_jax.catalog.models import ALIASES, MODELS, ModelSpec, get_model, list_models

__all__ = [
    "ALIASES",
    "DEVICES",
    "MODELS",
    "NODES",
    "DeviceSpec",
    "ModelSpec",
    "NodeSpec",
    "allowed_tp",
    "get_device",
    "get_model",
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
