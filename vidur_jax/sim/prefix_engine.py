"""The engine's prefix-cache hooks (vLLM automatic prefix caching, block granularity).

The engine calls these at five points of a replica event; each is a no-op (and traces
nothing) when ``SimStatic.prefix_capacity == 0``, so caching off is today's program.

Memory accounting (per replica, ``N`` KV blocks): ``free_blocks`` counts *physically*
free blocks; the table (:mod:`vidur_jax.sim.prefix_cache`) holds cached blocks, shared
(``refs > 0``) or evictable (``refs == 0``); every other allocated block is private to
one request. A slot's ``blocks`` is all its KV blocks, of which its first ``held`` are
held through the table. Policies see ``free_blocks + evictable`` as free memory
(:func:`view_fields`); admitting a request charges it ``blocks - reuse``, where
``reuse`` counts its cache hits already referenced by a running request (a hit on an
evictable block takes that block out of the evictable pool). When allocations leave
``free_blocks`` negative, the least recently used evictable blocks are evicted
(:func:`settle`); if that cannot cover it, ``ERR_PREFIX`` is raised (never silently).

Semantics: on admission a request's leading cached blocks (at most
``(prefill - 1) // block_size``: at least one token is computed, as vLLM) are acquired
and counted as processed, so the prefill computes only the uncached tokens while
attention reads the whole context (the KV length includes them). When a request's
prefill completes, its full prompt blocks are published (:func:`publish`); completion
and preemption release references, not content (:func:`release`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vidur_jax.sim import prefix_cache as pc
from vidur_jax.sim.indexed import update
from vidur_jax.sim.types import ERR_PREFIX, SimParams, SimState, SimStatic

if TYPE_CHECKING:
    from vidur_jax.sim.engine import _Row


def on(static: SimStatic) -> bool:
    """Prefix caching is compiled in (some config of the call has it on)."""
    return static.prefix_capacity > 0 and static.prefix_blocks > 0


def cache_of(row: _Row, params: SimParams | None) -> pc.PrefixCache:
    """The replica's table, from its gathered row: ``num_blocks`` entries used of the
    static capacity (the largest of the configs simulated together; ``params`` None:
    for the functions that do not hash)."""
    size = None if params is None else params.num_blocks
    return pc.PrefixCache(
        block_hash=row.pc_hash, refs=row.pc_refs, last_used=row.pc_last, size=size
    )


def _with_cache(row: _Row, cache: pc.PrefixCache) -> _Row:
    return row._replace(pc_hash=cache.block_hash, pc_refs=cache.refs, pc_last=cache.last_used)


def _hashes(static: SimStatic, params: SimParams, req: jax.Array) -> jax.Array:
    """(n, K) block hashes of requests ``req`` (-1 rows for ``req < 0``)."""
    h = params.prefix_hashes[jnp.clip(req, 0, static.num_requests - 1)]
    return jnp.where((req >= 0)[:, None], h, -1)


def candidate_hits(
    static: SimStatic, params: SimParams, row: _Row, req: jax.Array, prefill: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Cache hits of the admission candidates.

    Args:
        req: (W,) i32 candidate ids (-1 = none).
        prefill: (W,) i32 tokens each would prefill without the cache.

    Returns:
        ``(cached, reuse)``: (W,) i32 leading tokens found in the cache (whole blocks,
        leaving at least one token to compute) and (W,) i32 of those blocks already
        referenced by a running request (they cost no memory).
    """
    cache = cache_of(row, params)
    w, k = req.shape[0], static.prefix_blocks
    entries = pc.find(
        cache, _hashes(static, params, req).reshape(-1), static.prefix_probes
    ).reshape(w, k)
    lead = jnp.cumprod(entries >= 0, axis=1).sum(axis=1)
    n = jnp.minimum(lead, jnp.maximum(prefill - 1, 0) // params.block_size)
    n = jnp.where(req >= 0, n, 0).astype(jnp.int32)
    refd = (jnp.arange(k)[None, :] < n[:, None]) & (cache.refs[jnp.maximum(entries, 0)] > 0)
    return n * params.block_size, refd.sum(axis=1).astype(jnp.int32)


def view_fields(static: SimStatic, params: SimParams, row: _Row) -> dict:
    """Policy view under caching: free memory counts evictable blocks, and ``reclaim``
    is what preempting each slot would give back (its private blocks plus the held
    blocks no other running request uses)."""
    cache = cache_of(row, params)
    s, k = row.req.shape[0], static.prefix_blocks
    entries = pc.find(
        cache, _hashes(static, params, row.req).reshape(-1), static.prefix_probes
    ).reshape(s, k)
    only_mine = (
        (jnp.arange(k)[None, :] < row.held[:, None])
        & (entries >= 0)
        & (cache.refs[jnp.maximum(entries, 0)] == 1)
    )
    reclaim = jnp.where(row.req >= 0, row.blocks - row.held + only_mine.sum(axis=1), 0)
    return {
        "free_blocks": row.free_blocks + pc.num_evictable(cache),
        "reclaim": reclaim.astype(jnp.int32),
    }


def evictable(static: SimStatic, row: _Row) -> jax.Array:
    """() i32 evictable cached blocks of the replica (0 when off)."""
    return pc.num_evictable(cache_of(row, None)) if on(static) else jnp.int32(0)


def release(
    static: SimStatic, params: SimParams, row: _Row, req: jax.Array, mask: jax.Array, t
) -> _Row:
    """Slots ``mask`` (completed or preempted; ``req`` their ids before the event)
    release the blocks they hold through the table: content stays cached. The engine
    returned all their ``blocks`` to ``free_blocks``; the held ones are taken back."""
    held = jnp.where(mask, row.held, 0)
    cache = pc.touch_many(
        cache_of(row, params),
        _hashes(static, params, req),
        held,
        -1,
        t,
        static.prefix_probes,
        static.scatter_free,
    )
    row = _with_cache(row, cache)
    return row._replace(free_blocks=row.free_blocks - held.sum(), held=jnp.where(mask, 0, row.held))


def admit(
    static: SimStatic,
    params: SimParams,
    state: SimState,
    row: _Row,
    cands,
    admit: jax.Array,
    target: jax.Array,
    t,
) -> tuple[SimState, _Row]:
    """Admitted candidates acquire their hits and hold them (slot ``target``).

    The engine subtracts each admitted slot's ``blocks`` from ``free_blocks`` later; the
    hits are no new memory, so they are added back here. Counts the hit statistics.
    """
    hits = jnp.where(admit, cands.cached // params.block_size, 0).astype(jnp.int32)
    cache = pc.touch_many(
        cache_of(row, params),
        _hashes(static, params, cands.req),
        hits,
        1,
        t,
        static.prefix_probes,
        static.scatter_free,
    )
    row = _with_cache(row, cache)._replace(
        held=update(row.held, target, hits, "set", static.scatter_free),
        free_blocks=row.free_blocks + hits.sum(),
    )
    cached = jnp.where(admit, cands.cached, 0)
    state = state.replace(
        prefix_admits=state.prefix_admits + admit.sum(),
        prefix_hit_admits=state.prefix_hit_admits + (admit & (cached > 0)).sum(),
        prefix_prompt_tokens=state.prefix_prompt_tokens + jnp.where(admit, cands.prefill, 0).sum(),
        prefix_hit_tokens=state.prefix_hit_tokens + cached.sum(),
    )
    return state, row


def publish(
    static: SimStatic, params: SimParams, row: _Row, req: jax.Array, computed: jax.Array, t,
    completed: jax.Array | None = None,
) -> _Row:
    """Slots whose prompt is ``computed`` (prefill complete, possibly inside a fused run;
    ``req`` their ids) publish the full prompt blocks they do not hold through the table
    yet, slot by slot (:func:`prefix_cache.insert`). A block that found no table entry
    (its probe window full of referenced blocks) is tried again at the next event.

    Slots ``completed`` also publish the full blocks of their output, as vLLM
    caches every full block of computed tokens (prompt + output but its last token,
    whose KV is never computed), where the workload hashes them (a session's answer,
    which the next turn's prompt repeats)."""
    s = row.req.shape[0]
    hashes = _hashes(static, params, req)
    safe = jnp.clip(req, 0, static.num_requests - 1)
    tokens = params.num_prefill[safe]
    if completed is not None:
        tokens = jnp.where(completed, tokens + params.num_decode[safe] - 1, tokens)
    stop = jnp.minimum(tokens // params.block_size, static.prefix_blocks)
    stop = jnp.minimum(stop, (hashes >= 0).sum(axis=1))  # hashes end at the first partial block
    done = computed & (row.held < stop)
    # visit only the done slots: their indices compacted to the front
    order = jnp.argsort(~done, stable=True)

    def one(j, carry):
        cache, held, freed = carry
        i = order[j]
        start = held[i]
        cache, h, f = pc.insert(
            cache,
            hashes[i],
            start,
            jnp.maximum(stop[i], start),
            t,
            static.prefix_probes,
            static.scatter_free,
        )
        return cache, jnp.where(jnp.arange(s) == i, h, held), freed + f

    cache, held, freed = lax.fori_loop(
        0, done.sum(), one, (cache_of(row, params), row.held, jnp.int32(0))
    )
    row = _with_cache(row, cache)
    return row._replace(held=held, free_blocks=row.free_blocks + freed)


def settle(static: SimStatic, state: SimState, row: _Row) -> tuple[SimState, _Row]:
    """Evict LRU cached blocks until ``free_blocks >= 0``; ``ERR_PREFIX`` if it cannot."""
    cache, freed = pc.evict_lru(cache_of(row, None), jnp.maximum(-row.free_blocks, 0))
    row = _with_cache(row, cache)._replace(free_blocks=row.free_blocks + freed)
    return state.replace(error=state.error | jnp.where(row.free_blocks < 0, ERR_PREFIX, 0)), row


def route(static: SimStatic, params: SimParams, state: SimState, i: jax.Array) -> jax.Array:
    """() i32 replica for arriving request ``i`` under the ``prefix_affinity`` router.

    The replica whose cache holds the longest leading prefix of the request's blocks,
    among those with at most ``affinity_imbalance`` more outstanding requests (waiting,
    restarted included, as LOR counts them) than the least loaded one; ties and
    no-hit requests go to the least outstanding replica (LOR). With caching off it is LOR.
    """
    n = static.max_replicas
    pending = state.q_tail - state.q_head + state.slot_restarted.sum(axis=1)
    pending = jnp.where(jnp.arange(n) < params.num_replicas, pending, jnp.iinfo(jnp.int32).max)
    lor = jnp.argmin(pending).astype(jnp.int32)
    if not on(static):
        return lor
    hashes = params.prefix_hashes[jnp.minimum(i, static.num_requests - 1)]  # (K,)
    pos = pc._windows(
        hashes, jnp.maximum(params.num_blocks, 1).astype(jnp.int64), static.prefix_probes
    )
    found = ((state.pc_hash[:, pos] == hashes[None, :, None]) & (hashes >= 0)[None, :, None]).any(
        axis=2
    )
    hits = jnp.cumprod(found, axis=1).sum(axis=1)  # (N,) leading cached blocks per replica
    near = pending <= pending[lor] + params.affinity_imbalance
    score = jnp.where(near, hits, -1)
    best = jnp.argmax(score).astype(jnp.int32)
    return jnp.where(score[best] > hits[lor], best, lor)


#: summary.csv columns (nan for a config without prefix caching)
COLUMNS = ("prefix_hit_rate_tokens", "prefix_hit_rate_requests", "prefill_tokens_saved")


def summary(enabled: bool, state: SimState, i: int) -> dict[str, float]:
    """Prefix-cache summary of config ``i`` of a finished (stacked) state.

    ``prefix_hit_rate_tokens``: cached / prefill tokens over all admissions (restarts
    included); ``prefix_hit_rate_requests``: share of admissions that found at least one
    cached block; ``prefill_tokens_saved``: cached tokens (prefill compute skipped).
    All nan when ``enabled`` is False.
    """
    if not enabled:
        return dict.fromkeys(COLUMNS, float("nan"))
    admits, hit_admits, prompt, hit = (
        float(np.asarray(getattr(state, f"prefix_{n}")[i]))
        for n in ("admits", "hit_admits", "prompt_tokens", "hit_tokens")
    )
    return {
        "prefix_hit_rate_tokens": hit / prompt if prompt > 0 else float("nan"),
        "prefix_hit_rate_requests": hit_admits / admits if admits > 0 else float("nan"),
        "prefill_tokens_saved": hit,
    }
