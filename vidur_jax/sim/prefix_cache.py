"""Prefix cache of one replica as a fixed-capacity array table (vLLM APC semantics).

Full KV blocks are identified by the hash of their whole token prefix
(:mod:`vidur_jax.workload.prefix`). A replica's KV pool of ``N`` blocks is, at any
time, split into

* free blocks (the engine's ``free_blocks`` counter),
* blocks private to one running request (a partial last block, decode blocks, or a
  full block that found no table entry), and
* blocks in this table: ``refs > 0`` while running requests use them (shared), and
  ``refs == 0`` once none does -- still cached, reused by a later hit, and evicted
  least-recently-used when an allocation finds no free block.

So ``free_blocks + table entries + private blocks == N`` always, and the memory a new
allocation can use is ``free_blocks + num_evictable``. Preemption and completion release
references (``refs -= 1``), never cached content.

The table is open-addressed: block hash ``h`` may live in the ``P`` entries
``(h + p) mod C``, ``p < P`` (``probes``), so a lookup costs ``P`` reads per block and
never scans the table; a block whose window is full of referenced entries stays private
(``insert`` reports how many leading blocks it placed). A request therefore holds its
first ``held`` prompt blocks through the table and the rest privately; it must release
exactly those ``held`` blocks (the engine keeps ``held`` per running slot).

Capacity 0 turns the cache off: every function is then a no-op and the engine's
results are bit-identical to a build without it. Updates go through
:func:`vidur_jax.sim.indexed.update`, scatter-free on the unbatched single-config path.
All functions are pure; shapes: ``C`` table entries, ``K`` leading blocks per request.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from vidur_jax.sim.indexed import update
from vidur_jax.struct import pytree_dataclass

EMPTY = -1


@pytree_dataclass
class PrefixCache:
    """Cached KV blocks of one replica.

    Attributes:
        block_hash: (C,) i64 prefix hash of the cached block; ``EMPTY`` for a free entry.
        refs: (C,) i32 running requests using the block (0: cached, evictable).
        last_used: (C,) f64 s, last time a request acquired or released the block.
        size: () i32 entries in use, <= C (None = C): hashes are placed modulo ``size``,
            so a config's table behaves the same whatever larger capacity C the configs
            it is simulated beside need (entries from ``size`` on stay empty).
    """

    block_hash: jax.Array  # (C,) i64, EMPTY = free entry
    refs: jax.Array  # (C,) i32 >= 0
    last_used: jax.Array  # (C,) f64 s
    size: jax.Array | None = None  # () i32 entries used (<= C); None = all C

    @property
    def capacity(self) -> int:
        """C, the number of entries (0 = prefix caching off)."""
        return self.block_hash.shape[-1]


def empty(capacity: int) -> PrefixCache:
    """A table of ``capacity`` free entries (0 = caching off)."""
    return PrefixCache(
        block_hash=jnp.full((capacity,), EMPTY, jnp.int64),
        refs=jnp.zeros((capacity,), jnp.int32),
        last_used=jnp.zeros((capacity,), jnp.float64),
    )


def _windows(hashes: jax.Array, capacity, probes: int) -> jax.Array:
    """(K, P) i32 table positions each block hash may occupy (``capacity``: the modulus,
    static or a () array)."""
    base = jnp.remainder(jnp.maximum(hashes, 0), capacity)
    return ((base[:, None] + jnp.arange(probes)[None, :]) % capacity).astype(jnp.int32)


def _modulus(cache: PrefixCache):
    return cache.capacity if cache.size is None else jnp.maximum(cache.size, 1).astype(jnp.int64)


def find(cache: PrefixCache, hashes: jax.Array, probes: int) -> jax.Array:
    """Entry holding each block, or -1.

    Args:
        cache: the table.
        hashes: (K,) i64 block hashes (negative = no block).
        probes: P, the probe window length.

    Returns:
        (K,) i32 entry index of each block, -1 where it is not cached.
    """
    if cache.capacity == 0:
        return jnp.full(hashes.shape, -1, jnp.int32)
    pos = _windows(hashes, _modulus(cache), probes)
    match = (cache.block_hash[pos] == hashes[:, None]) & (hashes[:, None] >= 0)
    return jnp.where(
        match.any(axis=1), pos[jnp.arange(pos.shape[0]), jnp.argmax(match, axis=1)], -1
    )


def leading_hits(entries: jax.Array) -> jax.Array:
    """() i32 number of leading found blocks (a prefix hit ends at the first miss)."""
    return jnp.cumprod(entries >= 0).sum().astype(jnp.int32)


def num_evictable(cache: PrefixCache) -> jax.Array:
    """() i32 cached blocks no running request uses (reclaimable memory)."""
    return ((cache.block_hash != EMPTY) & (cache.refs == 0)).sum().astype(jnp.int32)


def _touch(
    cache: PrefixCache, entries: jax.Array, count: jax.Array, delta: int, now, scatter_free: bool
) -> PrefixCache:
    k = jnp.arange(entries.shape[0])
    idx = jnp.where((k < count) & (entries >= 0), entries, cache.capacity)  # out of range: dropped
    return cache.replace(
        refs=update(cache.refs, idx, delta, "add", scatter_free),
        last_used=update(cache.last_used, idx, now, "max", scatter_free),
    )


def touch_many(
    cache: PrefixCache, hashes: jax.Array, counts: jax.Array, delta: int, now, probes: int,
    scatter_free: bool = False,
) -> PrefixCache:
    """Many requests acquire (``delta=1``) or release (``delta=-1``) their leading blocks.

    Args:
        cache: the table.
        hashes: (S, K) i64 block hashes of S requests.
        counts: (S,) i32 leading blocks of each request to touch (0 = none); every
            touched block must be in the table (held or just found).
        delta: +1 acquire, -1 release.
        now: () f64 s.
        probes: P.
        scatter_free: unbatched single-config path.
    """
    if cache.capacity == 0 or hashes.shape[-1] == 0:
        return cache
    s, k = hashes.shape
    entries = find(cache, hashes.reshape(-1), probes)
    use = (jnp.arange(k)[None, :] < counts[:, None]).reshape(-1) & (entries >= 0)
    idx = jnp.where(use, entries, cache.capacity)  # out of range: dropped
    return cache.replace(
        refs=update(cache.refs, idx, delta, "add", scatter_free),
        last_used=update(cache.last_used, idx, now, "max", scatter_free),
    )


def acquire(
    cache: PrefixCache, hashes: jax.Array, count, now, probes: int, scatter_free: bool = False
) -> PrefixCache:
    """A request starts using its first ``count`` blocks, all cached (a hit).

    Args:
        cache: the table.
        hashes: (K,) the request's block hashes.
        count: () blocks to acquire (at most :func:`leading_hits`).
        now: () f64 s, the time of use.
        probes: P.
        scatter_free: unbatched single-config path (see :mod:`vidur_jax.sim.indexed`).
    """
    if cache.capacity == 0:
        return cache
    return _touch(cache, find(cache, hashes, probes), count, 1, now, scatter_free)


def release(
    cache: PrefixCache, hashes: jax.Array, held, now, probes: int, scatter_free: bool = False
) -> PrefixCache:
    """A request (completed or preempted) stops using the ``held`` blocks it holds here.

    The blocks stay cached (``refs`` drops, content kept) until evicted.
    """
    if cache.capacity == 0:
        return cache
    return _touch(cache, find(cache, hashes, probes), held, -1, now, scatter_free)


def evict_lru(cache: PrefixCache, count) -> tuple[PrefixCache, jax.Array]:
    """Evict the ``count`` least recently used unreferenced blocks.

    Args:
        cache: the table.
        count: () i32 blocks the caller needs back (clipped to :func:`num_evictable`).

    Returns:
        ``(cache, freed)``: the table and () i32 blocks freed (to add to free_blocks).
    """
    if cache.capacity == 0:
        return cache, jnp.int32(0)
    evictable = (cache.block_hash != EMPTY) & (cache.refs == 0)
    age = jnp.where(evictable, cache.last_used, jnp.inf)
    # rank of each entry in LRU order (ties by entry index), without a scatter
    rank = jnp.argsort(jnp.argsort(age, stable=True), stable=True)
    gone = evictable & (rank < count)
    return cache.replace(block_hash=jnp.where(gone, EMPTY, cache.block_hash)), gone.sum().astype(
        jnp.int32
    )


def insert(
    cache: PrefixCache, hashes: jax.Array, start, stop, now, probes: int, scatter_free: bool = False
) -> tuple[PrefixCache, jax.Array, jax.Array]:
    """Publish a request's full blocks ``start <= k < stop`` (private until now).

    Each block takes a free entry of its window, else the least recently used
    unreferenced one (an eviction: that block's memory returns to the free pool), and
    starts with ``refs = 1`` (the publishing request). Publication stops at the first
    block that finds no entry: it and later blocks stay private, since a prefix is only
    reusable up to its first uncached block.

    Args:
        cache: the table.
        hashes: (K,) the request's block hashes.
        start: () i32 blocks already held through the table (its hits).
        stop: () i32 full blocks computed so far.
        now: () f64 s.
        probes: P.
        scatter_free: unbatched single-config path.

    Returns:
        ``(cache, held, freed)``: the table, () i32 blocks the request now holds through
        the table (``start`` + blocks placed), () i32 blocks freed by evictions.
    """
    if cache.capacity == 0:
        return cache, jnp.asarray(start, jnp.int32), jnp.int32(0)
    pos = _windows(hashes, _modulus(cache), probes)

    def place(k, carry):
        c, held, freed, going = carry
        window = pos[k]
        h = c.block_hash[window]
        already = (h == hashes[k]).any()  # published meanwhile by another request
        free = h == EMPTY
        evictable = (h != EMPTY) & (c.refs[window] == 0)
        score = jnp.where(free, -jnp.inf, jnp.where(evictable, c.last_used[window], jnp.inf))
        j = jnp.argmin(score)
        ok = going & (k >= start) & (k < stop) & (hashes[k] >= 0)
        found = ok & already
        target = jnp.where(found, window[jnp.argmax(h == hashes[k])], window[j])
        placed = ok & ~already & (score[j] < jnp.inf)
        use = found | placed
        e = jnp.where(use, target, c.capacity)
        c = c.replace(
            block_hash=update(c.block_hash, e, hashes[k], "set", scatter_free),
            refs=update(c.refs, e, jnp.where(placed, 1, c.refs[target] + 1), "set", scatter_free),
            last_used=update(c.last_used, e, now, "set", scatter_free),
        )
        # an already-published block: this request's private copy goes back to the pool
        freed = freed + (placed & evictable[j]).astype(jnp.int32) + found.astype(jnp.int32)
        held = held + use.astype(jnp.int32)
        going = going & (use | ~ok)
        return c, held, freed, going

    init = (cache, jnp.asarray(start, jnp.int32), jnp.int32(0), jnp.array(True))
    cache, held, freed, _ = lax.fori_loop(0, hashes.shape[0], place, init)
    return cache, held, freed
