"""Array building blocks the policies share (Vidur's sequential rules as prefix programs).

Every rule of Vidur's sequential Python loops ("take requests in order until one does
not fit, then break") is a *prefix* rule, computed with cumulative sums and prefix-AND of
the per-entry "fits" flags (:mod:`vidur_jax.sim.scan`); preemption victims, taken by
Vidur from the tail of the running list, are found with a reverse cumulative sum.

Orderings: the running list is processed in arrival order (request id order, requests
being sorted by arrival), as vLLM and Sarathi do after sorting; Orca and
FasterTransformer keep batch-end order in Vidur, which is the same order for one
pipeline stage.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vidur_jax.sim import scan
from vidur_jax.sim.policies.base import BatchPlan, Candidates, ReplicaView
from vidur_jax.sim.types import SimParams

BIG = jnp.iinfo(jnp.int32).max


def excl_cumsum(x: jax.Array) -> jax.Array:
    """Exclusive cumulative sum (first entry 0)."""
    return scan.excl_cumsum(x)


def prefix(ok: jax.Array) -> jax.Array:
    """Longest all-True prefix of ``ok`` (Vidur's "break on first failure")."""
    return scan.prefix_true(ok)


def ceil_div(a: jax.Array, b: jax.Array) -> jax.Array:
    """``ceil(a / b)`` for non-negative integers."""
    return (a + b - 1) // b


def rank(mask: jax.Array) -> jax.Array:
    """(S,) position of each True entry among the True entries (slot order = arrival)."""
    return excl_cumsum(mask.astype(jnp.int32))


def empty_plan(view: ReplicaView, cands: Candidates) -> BatchPlan:
    """A plan that does nothing (no batch, counters unchanged, no wake-up)."""
    s, w = view.req.shape[0], cands.req.shape[0]
    zs, zw = jnp.zeros(s, jnp.int32), jnp.zeros(w, jnp.int32)
    return BatchPlan(
        slot_in=jnp.zeros(s, bool),
        slot_ntok=zs,
        slot_alloc=zs,
        slot_victim=jnp.zeros(s, bool),
        cand_admit=jnp.zeros(w, bool),
        cand_ntok=zw,
        cand_blocks=zw,
        waiting_iters=view.waiting_iters,
        oom=jnp.array(False),
        wake_at=jnp.array(jnp.inf),
    )


def seq_blocks(
    tokens: jax.Array, seqs: jax.Array, shared: jax.Array, block_size: jax.Array
) -> jax.Array:
    """KV blocks of a request whose ``seqs`` sequences each hold ``tokens`` tokens.

    The sequences share the ``shared`` full blocks of the prompt; every other block
    (the prompt's partial last block, copied on write, and the generated tokens) is
    per sequence. One sequence needs ``ceil(tokens / block_size)`` blocks (Vidur).
    """
    own = ceil_div(tokens, block_size)
    return own + (seqs - 1) * jnp.maximum(own - shared, 0)


def uncached(cands: Candidates, blocks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Prefill tokens to compute and blocks charged to free memory, per candidate.

    Without prefix caching (``cands.cached is None``): the whole prefill and all its
    ``blocks``. With it, the cached leading tokens are not computed, and of the blocks
    only those already used by a running request (``cands.reuse``) cost nothing (a hit
    on an evictable cached block takes it out of the evictable pool).

    Args:
        cands: the candidates.
        blocks: (W,) i32 KV blocks each holds once admitted.

    Returns:
        ``(tokens, charge)``: (W,) i32 each.
    """
    if cands.cached is None:
        return cands.prefill, blocks
    return cands.prefill - cands.cached, blocks - cands.reuse


def needs_block(view: ReplicaView, params: SimParams) -> jax.Array:
    """(S,) i32: blocks the next decode needs (vLLM's rule: 1 when the token does not fit;
    with n sequences, all their blocks beyond the held ones)."""
    one = (view.processed > view.blocks * params.block_size).astype(jnp.int32)
    if view.seqs is None:
        return one
    many = jnp.maximum(
        seq_blocks(view.processed, view.seqs, view.shared, params.block_size) - view.blocks, 0
    )
    return jnp.where(view.seqs > 1, many, one).astype(jnp.int32)


def running_with_preemption(
    view: ReplicaView,
    params: SimParams,
    is_decode: jax.Array,
    max_decodes: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Walk the running list in arrival order, allocating decode blocks and preempting.

    Vidur (vLLM, Sarathi): for each running request in order, a decode needs one free
    block (``free >= 1``); while it cannot get one, the *last* request of the list is
    restarted (its blocks freed); when the list runs out, the request restarts itself.
    The walk stops after ``max_decodes`` decodes were taken. Slots are kept in arrival
    order, so list positions are ranks among the eligible slots.

    Args:
        view: the replica.
        params: knobs (block size).
        is_decode: (S,) bool running request whose prefill is complete.
        max_decodes: () i32 cap on decodes taken.

    Returns:
        ``(taken, kept, victim)`` masks over slots: decodes in the batch, non-decode
        running requests reached by the walk (Sarathi's partial prefills), restarts.
    """
    s = view.req.shape[0]
    big = jnp.int32(s + 1)
    elig = view.schedulable
    n = elig.sum().astype(jnp.int32)
    pos = rank(elig)
    check = elig & is_decode
    need = needs_block(view, params) * check
    held = jnp.where(elig, view.blocks if view.reclaim is None else view.reclaim, 0)
    # blocks freed by restarting every eligible request from this one to the tail
    tail = scan.cumsum(held[::-1])[::-1]
    # a decode needs max(its blocks, 1) free (Vidur: can_allocate(1) before every decode)
    need_free = jnp.maximum(need, 1) - view.free_blocks + excl_cumsum(need)
    # s_req: first list position to restart so that this decode finds a free block
    # tail is non-increasing in slot order: the slots with tail >= need are a prefix
    n_prefix = jnp.searchsorted(-tail, -need_free, side="right", method="scan_unrolled")
    elig_upto = jnp.concatenate([jnp.zeros(1, jnp.int32), scan.cumsum(elig.astype(jnp.int32))])
    cut = elig_upto[n_prefix] + (need_free <= 0)
    s_req = jnp.where(check, cut - 1, big)
    limit_ok = excl_cumsum(check.astype(jnp.int32)) < max_decodes
    prev_min = scan.cummin(jnp.concatenate([jnp.full(1, big), s_req[:-1]]))
    bound_excl = jnp.minimum(n, prev_min)
    reachable = elig & (pos < bound_excl) & limit_ok
    fail = reachable & check & (s_req <= pos)
    first_fail = jnp.min(jnp.where(fail, pos, big))
    reached = reachable & (pos < first_fail)
    taken = reached & check
    boundary = jnp.where(
        first_fail < big, first_fail, jnp.minimum(n, jnp.min(jnp.where(taken, s_req, big)))
    )
    victim = elig & (pos >= boundary)
    kept = reached & ~check & ~victim
    return taken, kept, victim


def taken_alloc(view: ReplicaView, params: SimParams, taken: jax.Array) -> jax.Array:
    """Blocks newly allocated to the decodes in ``taken``."""
    return jnp.where(taken, needs_block(view, params), 0).sum()


def reserved_blocks(cands: Candidates, params: SimParams) -> jax.Array:
    """(W,) blocks reserved at admission by Orca / FasterTransformer: ``max_tokens`` worth
    per sequence."""
    seqs = 1 if cands.seqs is None else cands.seqs
    return params.max_blocks_per_seq * seqs


def reservation_admission(
    view: ReplicaView, cands: Candidates, params: SimParams, num_running: jax.Array
):
    """Orca / FasterTransformer admission: reserve ``max_tokens`` worth of blocks each."""
    k = jnp.arange(cands.req.shape[0])
    ok = (
        cands.valid
        & (num_running + k < params.max_batch_size)
        & (view.free_blocks - scan.cumsum(reserved_blocks(cands, params)) >= 0)
    )
    return prefix(ok)


def first_group(view: ReplicaView) -> jax.Array:
    """(S,) bool the schedulable slots of the oldest static batch (FasterTransformer's
    and static batching's group: requests admitted together run together)."""
    elig = view.schedulable
    return elig & (view.group == jnp.min(jnp.where(elig, view.group, BIG)))
