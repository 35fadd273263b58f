"""Frozen dataclasses that are JAX pytrees, without importing flax.

``flax.struct.dataclass`` did this job, but importing flax pulls in ``flax.linen`` and
costs about 0.3 s of every process's start-up, while the simulator only needs a frozen
dataclass registered as a pytree. Fields are pytree children (arrays, ``None`` or nested
pytrees) unless declared with :func:`static_field`, which makes them part of the tree's
static structure (hashed into jit's cache key, like ``flax.struct.field(pytree_node=False)``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax

T = TypeVar("T")

_STATIC = "vidur_jax_static"


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is static pytree metadata, not a child (a Python value)."""
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata[_STATIC] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def pytree_dataclass(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass registered as a pytree, with a ``replace`` method.

    Children are flattened in field order, so the treedef (and the leaves' order) is the
    one ``flax.struct.dataclass`` produced for the same class.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    meta = [f.name for f in fields if f.metadata.get(_STATIC, False)]
    data = [f.name for f in fields if not f.metadata.get(_STATIC, False)]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)

    def replace(self: T, **updates: Any) -> T:
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **updates)

    cls.replace = replace
    return cls
