"""The prefix-cache table: hand-worked cases, invariants, vmap == loop, off == no-op."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidur_jax.sim import prefix_cache as pc

jax.config.update("jax_enable_x64", True)
P = 2  # probe window

# jitted once per shape (eager JAX would dispatch every primitive)
_static = ("probes", "scatter_free")
insert = jax.jit(pc.insert, static_argnames=_static)
acquire = jax.jit(pc.acquire, static_argnames=_static)
release = jax.jit(pc.release, static_argnames=_static)
find = jax.jit(pc.find, static_argnames=("probes",))
evict_lru = jax.jit(pc.evict_lru)


def h(*xs):
    return jnp.asarray(xs, jnp.int64)


def state(cache):
    return (
        np.asarray(cache.block_hash).tolist(),
        np.asarray(cache.refs).tolist(),
        np.asarray(cache.last_used).tolist(),
    )


@pytest.mark.parametrize("scatter_free", [False, True])
def test_publish_hit_release_evict_by_hand(scatter_free):
    # C = 8 entries; hash h lives at h % 8 or the next entry.
    c = pc.empty(8)
    # A computed 3 full blocks (hashes 10, 11, 12 -> entries 2, 3, 4) and publishes them.
    c, held, freed = insert(c, h(10, 11, 12), 0, 3, 1.0, P, scatter_free)
    assert (int(held), int(freed)) == (3, 0)
    assert state(c)[0] == [-1, -1, 10, 11, 12, -1, -1, -1]
    assert state(c)[1] == [0, 0, 1, 1, 1, 0, 0, 0]
    # B shares A's first two blocks, then differs (99).
    found = find(c, h(10, 11, 99), P)
    assert found.tolist() == [2, 3, -1] and int(pc.leading_hits(found)) == 2
    c = acquire(c, h(10, 11, 99), 2, 2.0, P, scatter_free)
    assert state(c)[1] == [0, 0, 2, 2, 1, 0, 0, 0]
    # A completes at t=3: references drop, content stays.
    c = release(c, h(10, 11, 12), 3, 3.0, P, scatter_free)
    assert state(c)[0] == [-1, -1, 10, 11, 12, -1, -1, -1]
    assert state(c)[1] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert state(c)[2][2:5] == [3.0, 3.0, 3.0]
    assert int(pc.num_evictable(c)) == 1
    # Memory pressure: two blocks wanted, only one evictable (12).
    c, got = evict_lru(c, 2)
    assert int(got) == 1 and state(c)[0] == [-1, -1, 10, 11, -1, -1, -1, -1]
    # B completes at t=4; an allocation needing 1 block evicts the LRU one: both were
    # released at t=4, so the lower entry (10) goes first.
    c = release(c, h(10, 11, 99), 2, 4.0, P, scatter_free)
    c, got = evict_lru(c, 1)
    assert int(got) == 1 and state(c)[0] == [-1, -1, -1, 11, -1, -1, -1, -1]


@pytest.mark.parametrize("scatter_free", [False, True])
def test_full_windows_keep_blocks_private_and_evict_lru(scatter_free):
    c = pc.empty(8)
    # hashes 2, 10 both start at entry 2 (window 2, 3)
    c, held, _ = insert(c, h(2), 0, 1, 1.0, P, scatter_free)
    c, held, _ = insert(c, h(10), 0, 1, 2.0, P, scatter_free)
    assert state(c)[0][2:4] == [2, 10]
    # 18 also maps to entry 2: the window is full of referenced blocks -> stays private,
    # and so does every later block of that request (a prefix ends at its first miss)
    c, held, freed = insert(c, h(18, 5), 0, 2, 3.0, P, scatter_free)
    assert (int(held), int(freed)) == (0, 0)
    assert state(c)[0] == [-1, -1, 2, 10, -1, -1, -1, -1]
    # once 10 is released, inserting 18 evicts it (its memory returns to the pool)
    c = release(c, h(10), 1, 4.0, P, scatter_free)
    c, held, freed = insert(c, h(18, 5), 0, 2, 5.0, P, scatter_free)
    assert (int(held), int(freed)) == (2, 1)
    assert state(c)[0] == [-1, -1, 2, 18, -1, 5, -1, -1]


def test_publishing_an_already_cached_block_shares_it():
    c = pc.empty(8)
    c, _, _ = insert(c, h(3, 4), 0, 2, 1.0, P)
    # a second request computed the same two blocks concurrently: it shares the cached
    # ones and its two private copies return to the pool
    c, held, freed = insert(c, h(3, 4), 0, 2, 2.0, P)
    assert (int(held), int(freed)) == (2, 2)
    assert state(c)[1][3:5] == [2, 2]


def test_start_and_stop_bound_what_is_published():
    c = pc.empty(8)
    c, _, _ = insert(c, h(1), 0, 1, 1.0, P)
    # the request hit block 0 (start=1), computed blocks 1..2 of 4 so far (stop=3)
    c = acquire(c, h(1, 2, 3, 4), 1, 2.0, P)
    c, held, _ = insert(c, h(1, 2, 3, 4), 1, 3, 2.0, P)
    assert int(held) == 3
    assert sorted(x for x in state(c)[0] if x >= 0) == [1, 2, 3]
    # negative hashes (blocks not full) are never published
    c, held, _ = insert(c, h(7, -1), 0, 2, 3.0, P)
    assert int(held) == 1


def test_capacity_zero_is_off():
    c = pc.empty(0)
    hs = h(1, 2)
    assert pc.find(c, hs, P).tolist() == [-1, -1]
    c2, held, freed = pc.insert(c, hs, 0, 2, 1.0, P)
    assert (int(held), int(freed)) == (0, 0) and c2 is c
    assert pc.acquire(c, hs, 2, 1.0, P) is c and pc.release(c, hs, 2, 1.0, P) is c
    assert int(pc.evict_lru(c, 3)[1]) == 0


def _random_ops(seed, n_ops=60, cap=16, k=4):
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, 40, size=(6, k))  # small id space: many collisions
    return [
        (int(rng.integers(0, 4)), prompts[rng.integers(0, 6)], float(t)) for t in range(n_ops)
    ], cap


@pytest.mark.parametrize("seed", range(4))
def test_invariants_and_vmap_equals_loop(seed):
    ops, cap = _random_ops(seed)

    def run(scatter_free):
        c, holders, free_back = pc.empty(cap), [], 0
        for kind, prompt, now in ops:
            hs = jnp.asarray(prompt, jnp.int64)
            if kind <= 1:  # a request arrives: hit, then publish the rest
                hit = int(pc.leading_hits(find(c, hs, probes=P)))
                c = acquire(c, hs, hit, now, P, scatter_free)
                c, held, freed = insert(c, hs, hit, len(prompt), now, P, scatter_free)
                holders.append((hs, int(held)))
                free_back += int(freed)
            elif kind == 2 and holders:  # the oldest running request completes
                hs, held = holders.pop(0)
                c = release(c, hs, held, now, P, scatter_free)
            else:
                c, got = evict_lru(c, 2)
                free_back += int(got)
            refs = np.asarray(c.refs)
            cached = np.asarray(c.block_hash)
            assert (refs >= 0).all()
            assert (refs[cached == pc.EMPTY] == 0).all()  # no reference to a freed entry
            assert len(set(cached[cached >= 0])) == (cached >= 0).sum()  # one copy each
            assert refs.sum() == sum(held for _, held in holders)  # references balance
        return state(c), free_back

    assert run(False) == run(True)  # scatter-free == scatter


def test_vmap_over_tables_equals_one_by_one():
    tables = [pc.empty(8) for _ in range(3)]
    hashes = jnp.asarray([[1, 2, 3], [9, 10, 11], [1, 9, 17]], jnp.int64)
    one = [pc.insert(t, hs, 0, 3, 1.0, P) for t, hs in zip(tables, hashes, strict=True)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *tables)
    many = jax.vmap(lambda t, hs: pc.insert(t, hs, 0, 3, 1.0, P))(stacked, hashes)
    for i, (c, held, freed) in enumerate(one):
        assert state(jax.tree.map(lambda x, i=i: x[i], many[0])) == state(c)
        assert int(many[1][i]) == int(held) and int(many[2][i]) == int(freed)
