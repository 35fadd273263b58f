"""All-reduce and send/recv across the local devices (``jax.shard_map``).

Vidur profiles NCCL ``all_reduce`` on ``num_workers`` GPUs of a node and a two-GPU
``send``/``recv``. Here the same collectives are ``lax.psum`` and ``lax.ppermute`` over a
1-D mesh of the first ``num_workers`` local devices; XLA lowers them to NCCL on GPUs.
Each worker holds ``size`` elements; the ``size`` column is in bytes (elements x item
size), as in Vidur.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

COLLECTIVES: tuple[str, ...] = ("all_reduce", "send_recv")


def collective_call(
    devices: list, collective: str, size: int, dtype: jnp.dtype
) -> tuple[Callable, tuple]:
    """``(fn, args)`` running ``collective`` over ``devices`` on ``size`` elements each.

    Args:
        devices: the participating devices (2 for send_recv).
        collective: ``"all_reduce"`` (sum) or ``"send_recv"`` (device 0 -> device 1).
        size: elements per device.
        dtype: element type.
    """
    mesh = Mesh(np.array(devices), ("x",))
    spec = P("x")
    if collective == "all_reduce":
        body = lambda a: jax.lax.psum(a, "x")  # noqa: E731
    elif collective == "send_recv":
        body = lambda a: jax.lax.ppermute(a, "x", perm=[(0, 1)])  # noqa: E731
    else:
        raise ValueError(f"unknown collective {collective!r}; allowed: {', '.join(COLLECTIVES)}")
    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec))
    buf = jax.device_put(jnp.ones((len(devices) * size,), dtype), NamedSharding(mesh, spec))
    return fn, (buf,)


def worker_counts(num_devices: int) -> list[int]:
    """Group sizes to profile: powers of two from 2 up to ``num_devices``."""
    out, k = [], 2
    while k <= num_devices:
        out.append(k)
        k *= 2
    return out
