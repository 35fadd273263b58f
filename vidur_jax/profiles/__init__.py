"""Vidur-format profile tables: loading, validation and Vidur's row selection.

See :mod:`vidur_jax.profiles.loader` for the table formats (times in milliseconds).
"""

from vidur_jax.profiles.loader import (
    COMPUTE_OPS,
    OPTIONAL_COMPUTE_OPS,
    list_compute_models,
    load_all_reduce,
    load_attention,
    load_compute,
    load_send_recv,
    model_shape,
    select_tp,
)

__all__ = [
    "COMPUTE_OPS",
    "OPTIONAL_COMPUTE_OPS",
    "list_compute_models",
    "load_all_reduce",
    "load_attention",
    "load_compute",
    "load_send_recv",
    "model_shape",
    "select_tp",
]
