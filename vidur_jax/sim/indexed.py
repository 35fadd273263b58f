"""Indexed updates of the simulator state, as scatters or as scatter-free loops.

Every state update of a step is ``arr.at[index].<op>(values, mode="drop")``: an index
out of bounds drops the write, which is how an event that does not apply becomes a
no-op. Vectorized over configs, that is an XLA scatter, the right tool.

For one config run unbatched (``SimStatic.scatter_free``), the same updates are written
as a ``fori_loop`` of guarded ``dynamic_update_slice`` over the indexed rows instead.
The result is identical; the reason is XLA:CPU: a while loop that holds no scatter (and
no dot, convolution or custom call) is compiled into one kernel by its small-while-loop
pass once ``xla_cpu_small_while_loop_byte_threshold`` admits it (set by
``vidur_jax/__init__.py``), instead of ~400 separately dispatched kernels per event
(measured: 105 -> 15 us per event for one config; README, Performance).

Under ``vmap`` the loop form would turn back into scatters, one per loop iteration, so
batched code must keep ``scatter_free=False``.

The loop visits only the span of rows from the first to the last one that writes (an
in-bounds row; for :func:`permute`, a row that moves): the engine's (S,) updates mostly
touch the occupied prefix of the slots, or a few rows of it, so a step's scalar loop
work follows the running requests rather than the slot capacity S. Rows outside the span
are no-ops in either form, so the result is the same bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

_OPS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "set": lambda old, new: new,
    "add": jnp.add,
    "min": jnp.minimum,
    "max": jnp.maximum,
}


def _normalize(arr: jax.Array, index) -> tuple[list[jax.Array | None], int | None]:
    """Per-axis index (None = whole axis) and the number of indexed rows (None = one)."""
    index = index if isinstance(index, tuple) else (index,)
    index = index + (slice(None),) * (arr.ndim - len(index))
    axes, rows = [], None
    for ix in index:
        if isinstance(ix, slice):
            if ix != slice(None):
                raise ValueError("only whole-axis slices are supported")
            axes.append(None)
            continue
        ix = jnp.asarray(ix)
        if ix.ndim > 1 or (ix.ndim == 1 and rows not in (None, ix.shape[0])):
            raise ValueError(f"index shapes must be scalars or one common length, got {ix.shape}")
        rows = ix.shape[0] if ix.ndim == 1 else rows
        axes.append(ix)
    return axes, rows


def _row_span(writes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(lo, hi)``: the rows ``[lo, hi)`` from the first to the last True of the (K,)
    bool ``writes`` (``lo == hi`` when none is True)."""
    k = writes.shape[0]
    any_write = writes.any()
    lo = jnp.where(any_write, jnp.argmax(writes), 0).astype(jnp.int32)
    hi = jnp.where(any_write, k - jnp.argmax(writes[::-1]), 0).astype(jnp.int32)
    return lo, hi


def _loop_update(arr: jax.Array, index, values: jax.Array, op: str, moves: jax.Array | None = None) -> jax.Array:
    """``arr.at[index].<op>(values, mode="drop")`` without a scatter.

    ``index``: per axis a scalar, an (K,) integer vector (all vectors of one length K)
    or ``:``. Rows are applied in order, so repeated indices accumulate (``add``) or the
    last one wins (``set``), as a sequential scatter would. Only the span of rows from
    the first to the last in-bounds one is visited (the others are dropped anyway), or
    of the rows where ``moves`` ((K,) bool) is True when given (the caller guarantees
    the other rows are no-ops).
    """
    axes, rows = _normalize(arr, index)
    block = tuple(n if ix is None else 1 for n, ix in zip(arr.shape, axes, strict=True))
    whole = tuple(n for n, ix in zip(arr.shape, axes, strict=True) if ix is None)
    k = 1 if rows is None else rows
    vals = jnp.asarray(values, arr.dtype)
    if rows is not None and whole and vals.shape == whole + (k,):
        vals = jnp.moveaxis(vals, -1, 0)  # e.g. hist[:, idx] updated with (C, K) values
    vals = jnp.broadcast_to(vals, (k,) + whole if rows is not None else whole).reshape((k,) + block)
    combine = _OPS[op]

    def apply(j, a):
        starts, inside = [], jnp.array(True)
        for n, ix in zip(arr.shape, axes, strict=True):
            if ix is None:
                starts.append(jnp.int32(0))
                continue
            i = (ix if ix.ndim == 0 else ix[j]).astype(jnp.int32)
            inside &= (i >= 0) & (i < n)
            starts.append(jnp.clip(i, 0, n - 1))
        old = lax.dynamic_slice(a, starts, block)
        new = jnp.where(inside, combine(old, vals[j]).astype(a.dtype), old)  # out of bounds: dropped
        return lax.dynamic_update_slice(a, new, starts)

    if rows is None:
        return apply(0, arr)
    if moves is None:
        moves = jnp.ones(k, bool)
        for n, ix in zip(arr.shape, axes, strict=True):
            if ix is not None:
                moves &= (ix >= 0) & (ix < n)
    lo, hi = _row_span(moves)
    return lax.fori_loop(lo, hi, apply, arr)


def update(arr: jax.Array, index, values, op: str, scatter_free: bool) -> jax.Array:
    """``arr.at[index].<op>(values, mode="drop")``, scatter-free when asked.

    Args:
        arr: the array to update.
        index: a scalar, an (K,) integer vector, or a tuple of those and ``:`` (one per
            leading axis); out-of-bounds entries drop their row.
        values: broadcastable to the indexed rows.
        op: ``set``, ``add``, ``min`` or ``max``.
        scatter_free: loop of ``dynamic_update_slice`` instead of a scatter (unbatched
            code only; see the module docstring).
    """
    if scatter_free:
        return _loop_update(arr, index, values, op)
    return getattr(arr.at[index], op)(values, mode="drop")


def permute(arr: jax.Array, dest: jax.Array, scatter_free: bool) -> jax.Array:
    """(S, ...) ``arr`` with row ``i`` moved to ``dest[i]`` (``dest`` a permutation).

    Scatter-free, only the span of rows that move is visited: a fixed point
    (``dest[i] == i``) writes its own original value, which no other row overwrites."""
    if scatter_free:
        fixed = dest == jnp.arange(dest.shape[0], dtype=dest.dtype)
        return _loop_update(arr, dest, arr, "set", moves=~fixed)
    return arr.at[dest].set(arr)
