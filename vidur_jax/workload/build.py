"""Turn host arrays into :class:`~vidur_jax.workload.types.Workload`, pad, and compose
synthetic workloads from an arrival process and a length distribution.

Workload clocks are float64, so building a workload enables ``jax_enable_x64`` (the
simulator needs it anyway; see DESIGN.md section 3).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidur_jax.errors import ConfigError, require
from vidur_jax.workload import arrivals as _arrivals
from vidur_jax.workload import lengths as _lengths
from vidur_jax.workload._common import check_count
from vidur_jax.workload.types import Workload


def _ensure_x64() -> None:
    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def make_workload(
    arrived_at: np.ndarray,
    num_prefill: np.ndarray,
    num_decode: np.ndarray,
    source: str = "workload",
    num_seqs: np.ndarray | None = None,
) -> Workload:
    """Validate host arrays and pack them into a :class:`Workload` (no padding).

    Args:
        arrived_at: f64[R] seconds, finite, >= 0, non-decreasing.
        num_prefill: int[R] prompt tokens, >= 1.
        num_decode: int[R] output tokens, >= 1.
        source: name used in error messages.
        num_seqs: int[R] output sequences per request (>= 1), or None for one each.

    Returns:
        Workload with f64/i32/i32/bool arrays of length R, ``mask`` all True.

    Raises:
        ConfigError: on empty input, mismatched lengths or invalid values.
    """
    t = np.asarray(arrived_at, dtype=np.float64)
    p = np.asarray(num_prefill)
    d = np.asarray(num_decode)
    require(t.ndim == 1 and t.size >= 1, f"{source}: needs at least one request")
    require(
        p.shape == t.shape and d.shape == t.shape,
        f"{source}: arrived_at {t.shape}, num_prefill {p.shape}, num_decode {d.shape} "
        f"must have the same length",
    )
    _arrivals.check_arrivals(source, t)
    for name, x in (("num_prefill", p), ("num_decode", d)):
        bad = np.flatnonzero(x < 1)
        require(
            bad.size == 0,
            f"{source}: {name} must be >= 1 (request {bad[0] if bad.size else -1} "
            f"has {x[bad[0]] if bad.size else 0})",
        )
        require(np.all(x <= np.iinfo(np.int32).max), f"{source}: {name} exceeds int32")
    if num_seqs is not None:
        num_seqs = np.asarray(num_seqs)
        require(num_seqs.shape == t.shape, f"{source}: num_seqs {num_seqs.shape} must match arrived_at {t.shape}")
        require(bool(np.all(num_seqs >= 1)), f"{source}: num_seqs must be >= 1")
    _ensure_x64()
    return Workload(
        arrived_at=jnp.asarray(t, dtype=jnp.float64),
        num_prefill=jnp.asarray(p, dtype=jnp.int32),
        num_decode=jnp.asarray(d, dtype=jnp.int32),
        mask=jnp.ones(t.shape, dtype=bool),
        num_seqs=None if num_seqs is None else jnp.asarray(num_seqs, dtype=jnp.int32),
    )


def with_num_seqs(workload: Workload, spec: Mapping[str, Any] | int | None, key: jax.Array) -> Workload:
    """Draw each request's number of output sequences (parallel sampling / beam width).

    Args:
        workload: the requests.
        spec: ``None`` or an int n (every request n), or ``{"kind": "fixed", "n": n}`` or
            ``{"kind": "choice", "values": [1, 2, 4], "probs": [...]}`` (probs default
            uniform).
        key: PRNG key of the draw.

    Returns:
        The workload with ``num_seqs`` set (1 on padding rows).

    Raises:
        ConfigError: unknown kind, values < 1 or probabilities that do not sum to 1.
    """
    r = workload.num_requests
    if spec is None:
        return workload
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        spec = {"kind": "fixed", "n": int(spec)}
    require(isinstance(spec, Mapping), f"workload.num_seqs must be an int or a mapping with 'kind', got {spec!r}")
    kind = spec.get("kind")
    if kind == "fixed":
        values, probs = np.array([spec.get("n", 1)]), np.array([1.0])
    elif kind == "choice":
        values = np.asarray(spec.get("values", []))
        require(values.size >= 1, "workload.num_seqs.values must be a non-empty list")
        probs = np.asarray(spec.get("probs", np.full(values.size, 1.0 / values.size)), np.float64)
        require(probs.shape == values.shape and np.all(probs >= 0) and abs(probs.sum() - 1) < 1e-6,
                "workload.num_seqs.probs must be one probability per value, summing to 1")
    else:
        raise ConfigError(f"workload.num_seqs.kind={kind!r}; allowed: fixed, choice")
    require(bool(np.all(values >= 1)) and np.issubdtype(values.dtype, np.integer),
            f"workload.num_seqs values must be integers >= 1, got {values.tolist()}")
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    n = values[rng.choice(values.size, size=r, p=probs)]
    n = np.where(np.asarray(workload.mask), n, 1)
    return workload.replace(num_seqs=jnp.asarray(n, dtype=jnp.int32))


def pad(workload: Workload, capacity: int) -> Workload:
    """Append padding rows (``arrived_at = +inf``, 0 tokens, ``mask = False``).

    Args:
        workload: Workload with R rows.
        capacity: static request capacity, >= R.

    Returns:
        Workload with ``capacity`` rows (the same object when already that size).

    Raises:
        ConfigError: if ``capacity < R``.
    """
    cap = check_count("capacity", capacity)
    r = workload.num_requests
    require(cap >= r, f"capacity={cap} is smaller than the workload's {r} requests")
    if cap == r:
        return workload
    _ensure_x64()
    k = cap - r
    return Workload(
        arrived_at=jnp.concatenate(
            [workload.arrived_at, jnp.full((k,), jnp.inf, dtype=workload.arrived_at.dtype)]
        ),
        num_prefill=jnp.concatenate(
            [workload.num_prefill, jnp.zeros((k,), dtype=workload.num_prefill.dtype)]
        ),
        num_decode=jnp.concatenate(
            [workload.num_decode, jnp.zeros((k,), dtype=workload.num_decode.dtype)]
        ),
        mask=jnp.concatenate([workload.mask, jnp.zeros((k,), dtype=bool)]),
        num_seqs=None if workload.num_seqs is None
        else jnp.concatenate([workload.num_seqs, jnp.ones((k,), dtype=workload.num_seqs.dtype)]),
        prefix_hashes=None if workload.prefix_hashes is None
        else jnp.concatenate([workload.prefix_hashes,
                              jnp.full((k, workload.prefix_hashes.shape[1]), -1, workload.prefix_hashes.dtype)]),
        prefix_block_size=workload.prefix_block_size,
    )


def _call(
    kind_table: Mapping[str, Callable],
    what: str,
    spec: Mapping[str, Any],
    fixed_args: dict[str, Any],
) -> Any:
    """Dispatch ``spec = {"kind": name, **params}`` to ``kind_table[name]``."""
    require(isinstance(spec, Mapping), f"{what} must be a mapping with a 'kind' key, got {spec!r}")
    params = dict(spec)
    kind = params.pop("kind", None)
    require(kind in kind_table, f"unknown {what} kind {kind!r}; allowed: {', '.join(kind_table)}")
    fn = kind_table[kind]
    sig = inspect.signature(fn)
    allowed = [n for n in sig.parameters if n not in ("key", *fixed_args)]
    unknown = [n for n in params if n not in allowed]
    require(
        not unknown, f"unknown {what} parameter(s) {unknown} for kind {kind!r}; allowed: {allowed}"
    )
    missing = [
        n
        for n in allowed
        if sig.parameters[n].default is inspect.Parameter.empty and n not in params
    ]
    require(not missing, f"{what} kind {kind!r} needs parameter(s) {missing}")
    return fn(**fixed_args, **params)


def synthetic(
    key: jax.Array,
    num_requests: int,
    arrival: Mapping[str, Any],
    lengths: Mapping[str, Any],
    max_tokens: int = 4096,
) -> Workload:
    """Compose an arrival process and a length distribution into a :class:`Workload`.

    Args:
        key: JAX PRNG key; split into independent arrival and length keys.
        num_requests: R (>= 1).
        arrival: ``{"kind": "poisson"|"gamma"|"static"|"trace", **params}`` with the
            parameters of the matching function in :mod:`vidur_jax.workload.arrivals`
            (e.g. ``{"kind": "poisson", "qps": 4.0}``).
        lengths: ``{"kind": "fixed"|"uniform"|"zipf"|"trace", **params}`` with the
            parameters of the matching function in :mod:`vidur_jax.workload.lengths`.
            For ``uniform``/``zipf`` an absent ``max_tokens`` defaults to ``max_tokens``;
            for ``trace`` ``max_tokens`` is the clipping limit.
        max_tokens: per-request limit on prefill + decode tokens (the model context the
            simulator reserves).

    Returns:
        Workload of R requests sorted by arrival (no padding).

    Raises:
        ConfigError: unknown kinds/parameters, bad values, or a generated request longer
            than ``max_tokens``.
    """
    n = check_count("num_requests", num_requests)
    limit = check_count("max_tokens", max_tokens)
    k_arr, k_len = jax.random.split(key)
    t = _call(_arrivals.ARRIVALS, "arrival", arrival, {"key": k_arr, "num_requests": n})
    lengths = dict(lengths) if isinstance(lengths, Mapping) else lengths
    if isinstance(lengths, dict) and lengths.get("kind") in ("uniform", "zipf", "trace"):
        lengths.setdefault("max_tokens", limit)
    p, d = _call(_lengths.LENGTHS, "lengths", lengths, {"key": k_len, "num_requests": n})
    total = p + d
    bad = np.flatnonzero(total > limit)
    if bad.size:
        i = bad[0]
        raise ConfigError(
            f"request {i} has {total[i]} tokens (prefill {p[i]} + decode {d[i]}) > "
            f"max_tokens={limit}; lower the lengths or raise max_tokens"
        )
    return make_workload(t, p, d, source="synthetic workload")


def generator(
    num_requests: int,
    arrival: Mapping[str, Any],
    lengths: Mapping[str, Any],
    max_tokens: int = 4096,
) -> Callable[[jax.Array], Workload]:
    """``key -> Workload`` closure over :func:`synthetic`'s other arguments."""

    def generate(key: jax.Array) -> Workload:
        return synthetic(key, num_requests, arrival, lengths, max_tokens)

    return generate
