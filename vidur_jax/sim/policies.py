"""Replica batch policies: Vidur's five replica schedulers (and two more) as array programs.

A policy looks at one replica — its running set (``S`` slots) and the head of its
waiting queue (``W`` candidates) — and decides the next batch: which running requests
take part and with how many tokens, which running requests are preempted (restarted by
recomputation), and which waiting candidates are admitted: a prefix, except under
S3's decreasing first fit, which skips candidates that do not fit (the engine keeps them
queued, in order).

Every rule of Vidur's sequential Python loops ("take requests in order until one does
not fit, then break") is a *prefix* rule, so it is computed with cumulative sums and
prefix-AND of the per-entry "fits" flags (``scan.py``); preemption victims, taken by Vidur from the
tail of the running list, are found with a reverse cumulative sum. S3's first fit is
the one sequential rule (:func:`first_fit_decreasing`, an unrolled scan over the W
candidates). No Python loop over slots, no ``lax.switch`` across policies:
:data:`POLICY_FNS` is resolved by name before ``jit``.

Orderings: the running list is processed in arrival order (request id order, requests
being sorted by arrival), as vLLM and Sarathi do after sorting; Orca and
FasterTransformer keep batch-end order in Vidur, which is the same order for one
pipeline stage. (S3's first fit admits out of arrival order, so its slots are not
sorted by request id; nothing in S3 depends on slot order.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vidur_jax.sim import scan
from vidur_jax.sim.types import SimParams

_BIG = jnp.iinfo(jnp.int32).max


class ReplicaView(NamedTuple):
    """One replica's running set and free memory at decision time."""

    req: jax.Array  # (S,) i32 request id, -1 = free slot
    prefill: jax.Array  # (S,) i32 current prefill length
    processed: jax.Array  # (S,) i32 tokens processed
    total: jax.Array  # (S,) i32 prefill + decode tokens (original, invariant)
    blocks: jax.Array  # (S,) i32 KV blocks held
    restarted: jax.Array  # (S,) bool waiting for re-admission
    in_flight: jax.Array  # (S,) bool part of a batch still running
    group: jax.Array  # (S,) i32 FasterTransformer batch group
    free_blocks: jax.Array  # () i32
    waiting_iters: jax.Array  # () i32 LightLLM counter
    now: jax.Array | float = 0.0  # () f64 s decision time (static batching's timeout)
    seqs: jax.Array | None = None  # (S,) i32 output sequences of each request (1 = Vidur)
    shared: jax.Array | None = None  # (S,) i32 full prompt blocks the sequences share
    prompt: jax.Array | None = None  # (S,) i32 original prompt tokens (S3 reservation)
    bucket: jax.Array | None = None  # (S,) i32 S3 output-length bucket reserved for

    @property
    def occupied(self) -> jax.Array:
        """(S,) bool slot holds a request."""
        return self.req >= 0

    @property
    def allocated(self) -> jax.Array:
        """(S,) bool request holds memory (Vidur's allocation map)."""
        return self.occupied & ~self.restarted

    @property
    def schedulable(self) -> jax.Array:
        """(S,) bool running request not currently in flight."""
        return self.allocated & ~self.in_flight


class Candidates(NamedTuple):
    """Head of the waiting queue, in queue order (restarted requests first)."""

    req: jax.Array  # (W,) i32 request id (-1 = none)
    prefill: jax.Array  # (W,) i32 prefill tokens to process
    total: jax.Array  # (W,) i32 prefill + decode tokens
    src_slot: jax.Array  # (W,) i32 slot of a restarted request, -1 for a queued one
    valid: jax.Array  # (W,) bool
    arrived_at: jax.Array | None = None  # (W,) f64 s arrival time of each candidate
    seqs: jax.Array | None = None  # (W,) i32 output sequences of each candidate
    prompt: jax.Array | None = None  # (W,) i32 original prompt tokens
    bucket: jax.Array | None = None  # (W,) i32 S3 output-length bucket to reserve for


class BatchPlan(NamedTuple):
    """The policy's decision for one iteration of one replica."""

    slot_in: jax.Array  # (S,) bool running request is in the batch
    slot_ntok: jax.Array  # (S,) i32 tokens it processes
    slot_alloc: jax.Array  # (S,) i32 blocks newly allocated to it
    slot_victim: jax.Array  # (S,) bool preempted and restarted (frees its blocks)
    cand_admit: jax.Array  # (W,) bool admitted candidates (a prefix, except S3's first fit)
    cand_ntok: jax.Array  # (W,) i32 tokens each admitted candidate processes
    cand_blocks: jax.Array  # (W,) i32 blocks allocated to each admitted candidate
    waiting_iters: jax.Array  # () i32 LightLLM counter after this decision
    oom: jax.Array  # () bool LightLLM decode could not allocate
    wake_at: jax.Array  # () f64 s act again at this time even without an event (inf = no)


def _excl_cumsum(x: jax.Array) -> jax.Array:
    return scan.excl_cumsum(x)


def _prefix(ok: jax.Array) -> jax.Array:
    """Longest all-True prefix of ``ok`` (Vidur's "break on first failure")."""
    return scan.prefix_true(ok)


def _ceil_div(a: jax.Array, b: jax.Array) -> jax.Array:
    return (a + b - 1) // b


def _rank(mask: jax.Array) -> jax.Array:
    """(S,) position of each True entry among the True entries (slot order = arrival)."""
    return _excl_cumsum(mask.astype(jnp.int32))


def _empty_plan(view: ReplicaView, cands: Candidates) -> BatchPlan:
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


def seq_blocks(tokens: jax.Array, seqs: jax.Array, shared: jax.Array, block_size: jax.Array) -> jax.Array:
    """KV blocks of a request whose ``seqs`` sequences each hold ``tokens`` tokens.

    The sequences share the ``shared`` full blocks of the prompt; every other block
    (the prompt's partial last block, copied on write, and the generated tokens) is
    per sequence. One sequence needs ``ceil(tokens / block_size)`` blocks (Vidur).
    """
    own = _ceil_div(tokens, block_size)
    return own + (seqs - 1) * jnp.maximum(own - shared, 0)


def _needs_block(view: ReplicaView, params: SimParams) -> jax.Array:
    """(S,) i32: blocks the next decode needs (vLLM's rule: 1 when the token does not fit;
    with n sequences, all their blocks beyond the held ones)."""
    one = (view.processed > view.blocks * params.block_size).astype(jnp.int32)
    if view.seqs is None:
        return one
    many = jnp.maximum(seq_blocks(view.processed, view.seqs, view.shared, params.block_size) - view.blocks, 0)
    return jnp.where(view.seqs > 1, many, one).astype(jnp.int32)


def _running_with_preemption(
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
    rank = _rank(elig)
    check = elig & is_decode
    need = _needs_block(view, params) * check
    held = jnp.where(elig, view.blocks, 0)
    # blocks freed by restarting every eligible request from this one to the tail
    tail = scan.cumsum(held[::-1])[::-1]
    # a decode needs max(its blocks, 1) free (Vidur: can_allocate(1) before every decode)
    need_free = jnp.maximum(need, 1) - view.free_blocks + _excl_cumsum(need)
    # s_req: first list position to restart so that this decode finds a free block
    # tail is non-increasing in slot order: the slots with tail >= need are a prefix
    n_prefix = jnp.searchsorted(-tail, -need_free, side="right", method="scan_unrolled")
    elig_upto = jnp.concatenate([jnp.zeros(1, jnp.int32), scan.cumsum(elig.astype(jnp.int32))])
    cut = elig_upto[n_prefix] + (need_free <= 0)
    s_req = jnp.where(check, cut - 1, big)
    limit_ok = _excl_cumsum(check.astype(jnp.int32)) < max_decodes
    prev_min = scan.cummin(jnp.concatenate([jnp.full(1, big), s_req[:-1]]))
    bound_excl = jnp.minimum(n, prev_min)
    reachable = elig & (rank < bound_excl) & limit_ok
    fail = reachable & check & (s_req <= rank)
    first_fail = jnp.min(jnp.where(fail, rank, big))
    reached = reachable & (rank < first_fail)
    taken = reached & check
    boundary = jnp.where(first_fail < big, first_fail, jnp.minimum(n, jnp.min(jnp.where(taken, s_req, big))))
    victim = elig & (rank >= boundary)
    kept = reached & ~check & ~victim
    return taken, kept, victim


def _vllm(view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
    """vLLM: a prefill-only batch of queued requests if any fits, else all decodes."""
    plan = _empty_plan(view, cands)
    w = cands.req.shape[0]
    blocks = _ceil_div(cands.prefill, params.block_size)
    k = jnp.arange(w)
    running_max = scan.cummax(jnp.where(cands.valid, cands.prefill, 0))
    ok = (
        cands.valid
        & (view.free_blocks - scan.cumsum(blocks) >= params.watermark_blocks)
        & ((k + 1) * running_max <= params.max_tokens_in_batch)
        & (view.allocated.sum() + k < params.batch_cap)
        & (k < params.max_micro_batch)
    )
    admit = _prefix(ok)
    any_admit = admit.any()
    taken, _, victim = _running_with_preemption(
        view, params, jnp.ones_like(view.req, bool), params.max_micro_batch
    )
    taken &= ~any_admit
    victim &= ~any_admit
    return plan._replace(
        slot_in=taken,
        slot_ntok=taken.astype(jnp.int32),
        slot_alloc=jnp.where(taken, _needs_block(view, params), 0),
        slot_victim=victim,
        cand_admit=admit,
        cand_ntok=jnp.where(admit, cands.prefill, 0),
        cand_blocks=jnp.where(admit, blocks, 0),
    )


def _sarathi(view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
    """Sarathi-Serve: decodes first, then partial prefills, then new requests, in a
    token budget of ``chunk_size`` per iteration (chunked prefill)."""
    plan = _empty_plan(view, cands)
    is_decode = view.processed >= view.prefill  # prefill complete (processed = prefill + 1)
    taken, kept, victim = _running_with_preemption(view, params, is_decode, params.max_micro_batch)
    budget = params.chunk_size - taken.sum()
    # partial prefills, in arrival (= slot) order, share what is left of the budget
    remaining = jnp.where(kept, view.prefill - view.processed, 0)
    chunk = jnp.clip(budget - _excl_cumsum(remaining), 0, remaining)
    partial_in = kept & (chunk > 0)
    used = taken.sum() + partial_in.sum()
    budget_left = budget - chunk.sum()
    # new requests from the queue
    w = cands.req.shape[0]
    k = jnp.arange(w)
    blocks = _ceil_div(cands.prefill, params.block_size)
    new_tok = jnp.clip(budget_left - _excl_cumsum(jnp.where(cands.valid, cands.prefill, 0)), 0, cands.prefill)
    freed = jnp.where(victim, view.blocks, 0).sum()
    ok = (
        cands.valid
        & (view.allocated.sum() - victim.sum() + k < params.batch_cap)
        & (used + k < params.max_micro_batch)
        & (view.free_blocks + freed - taken_alloc(view, params, taken) - scan.cumsum(blocks) >= params.watermark_blocks)
        & (new_tok > 0)
        # Vidur pushes this iteration's victims to the queue front, where they block new
        # requests (re-admitting them needs more memory than they just freed)
        & ~victim.any()
    )
    admit = _prefix(ok)
    return plan._replace(
        slot_in=taken | partial_in,
        slot_ntok=jnp.where(taken, 1, jnp.where(partial_in, chunk, 0)),
        slot_alloc=jnp.where(taken, _needs_block(view, params), 0),
        slot_victim=victim,
        cand_admit=admit,
        cand_ntok=jnp.where(admit, new_tok, 0),
        cand_blocks=jnp.where(admit, blocks, 0),
    )


def taken_alloc(view: ReplicaView, params: SimParams, taken: jax.Array) -> jax.Array:
    """Blocks newly allocated to the decodes in ``taken``."""
    return jnp.where(taken, _needs_block(view, params), 0).sum()


def _reserved_blocks(cands: Candidates, params: SimParams) -> jax.Array:
    """(W,) blocks reserved at admission by Orca / FasterTransformer: ``max_tokens`` worth
    per sequence."""
    seqs = 1 if cands.seqs is None else cands.seqs
    return params.max_blocks_per_seq * seqs


def _orca_admission(view: ReplicaView, cands: Candidates, params: SimParams, num_running: jax.Array):
    """Orca / FasterTransformer admission: reserve ``max_tokens`` worth of blocks each."""
    k = jnp.arange(cands.req.shape[0])
    ok = (
        cands.valid
        & (num_running + k < params.max_batch_size)
        & (view.free_blocks - scan.cumsum(_reserved_blocks(cands, params)) >= 0)
    )
    return _prefix(ok)


def _orca(view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
    """Orca: iteration-level batching of all running requests plus new ones, each new
    request reserving blocks for the maximum length."""
    plan = _empty_plan(view, cands)
    elig = view.schedulable
    taken = elig & (_rank(elig) < params.max_batch_size)
    admit = _orca_admission(view, cands, params, taken.sum())
    return plan._replace(
        slot_in=taken,
        slot_ntok=jnp.where(taken, jnp.where(view.processed >= view.prefill, 1, view.prefill - view.processed), 0),
        cand_admit=admit,
        cand_ntok=jnp.where(admit, cands.prefill, 0),
        cand_blocks=jnp.where(admit, _reserved_blocks(cands, params), 0),
    )


def _faster_transformer(view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
    """FasterTransformer: a static batch runs to completion before a new one forms."""
    plan = _empty_plan(view, cands)
    elig = view.schedulable
    first_group = jnp.min(jnp.where(elig, view.group, _BIG))
    taken = elig & (view.group == first_group)
    has_group = taken.any()
    admit = _orca_admission(view, cands, params, jnp.int32(0)) & ~has_group
    return plan._replace(
        slot_in=taken,
        slot_ntok=jnp.where(taken, 1, 0),
        cand_admit=admit,
        cand_ntok=jnp.where(admit, cands.prefill, 0),
        cand_blocks=jnp.where(admit, _reserved_blocks(cands, params), 0),
    )


def _lightllm(view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
    """LightLLM: prefill batches admitted by a future-token memory estimate; decode
    batches of every running request; a prefill is forced every ``max_waiting_iters``."""
    plan = _empty_plan(view, cands)
    running = view.schedulable
    has_running = running.any()
    # (tokens held now, tokens still to come) for running requests and candidates
    run_now = jnp.where(running, view.processed, 0)
    run_left = jnp.where(running, jnp.maximum(view.total - view.processed - 1, 0), 0)
    cand_now = cands.prefill + 1
    cand_left = jnp.maximum(cands.total - cands.prefill - 2, 0)
    w, s = cands.req.shape[0], view.req.shape[0]
    now = jnp.concatenate([run_now, cand_now])
    left = jnp.concatenate([run_left, cand_left])
    member_run = jnp.concatenate([running, jnp.zeros(w, bool)])
    order = jnp.argsort(-left, stable=True)
    # include[i, j]: item j (sorted) counts when the first i+1 candidates are admitted
    item_cand = jnp.concatenate([jnp.full(s, w, jnp.int32), jnp.arange(w)])[order]
    include = member_run[order][None, :] | (item_cand[None, :] <= jnp.arange(w)[:, None])
    cnt = scan.cumsum(include)
    cum_now = scan.cumsum(include * now[order][None, :])
    need = jnp.max(jnp.where(include, left[order][None, :] * cnt + cum_now, 0), axis=1)
    capacity = params.num_blocks * params.block_size
    k = jnp.arange(w)
    ok = (
        cands.valid
        & (scan.cumsum(cands.prefill) <= params.max_tokens_in_batch)
        & (view.allocated.sum() + k < params.batch_cap)
        & (k < params.max_micro_batch)
        & (need < capacity)
    )
    admit = _prefix(ok)
    want_prefill = ~has_running | (view.waiting_iters >= params.max_waiting_iters)
    do_prefill = want_prefill & admit.any()
    admit &= do_prefill
    do_decode = has_running & ~do_prefill
    taken = running & do_decode
    needs = _needs_block(view, params)
    oom = do_decode & (jnp.where(taken, needs, 0).sum() > view.free_blocks)
    # Vidur's counter: reset on a prefill (or a forced attempt), +1 per decode batch
    forced = has_running & (view.waiting_iters >= params.max_waiting_iters)
    waiting = jnp.where(
        ~has_running,
        jnp.where(do_prefill, 0, view.waiting_iters),
        jnp.where(forced, jnp.where(do_prefill, 0, 1), view.waiting_iters + 1),
    )
    return plan._replace(
        slot_in=taken,
        slot_ntok=taken.astype(jnp.int32),
        slot_alloc=jnp.where(taken, needs, 0),
        cand_admit=admit,
        cand_ntok=jnp.where(admit, cands.prefill, 0),
        cand_blocks=jnp.where(admit, _ceil_div(cands.prefill, params.block_size), 0),
        waiting_iters=waiting,
        oom=oom,
    )


def _static_batching(view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
    """Alpa-style request batching: collect arriving requests into one batch, run it to
    completion (prefill once, then decode every member until the last one finishes, as
    FasterTransformer), then collect the next.

    A waiting batch is launched when it is *complete* — it holds ``max_batch_size``
    requests, or its prompt + output tokens reach ``batch_max_tokens``, or the next
    waiting request does not fit (tokens, batch size or memory; each request reserves
    ``max_tokens`` worth of blocks, as FasterTransformer) — or when ``batch_timeout``
    seconds have passed since its oldest request arrived. Otherwise the replica sleeps
    until that timeout (``wake_at``) unless an arrival wakes it first.
    """
    plan = _empty_plan(view, cands)
    elig = view.schedulable
    first_group = jnp.min(jnp.where(elig, view.group, _BIG))
    taken = elig & (view.group == first_group)
    has_group = taken.any()
    k = jnp.arange(cands.req.shape[0])
    tokens = jnp.where(cands.valid, cands.total, 0)
    ok = (
        cands.valid
        & (k < params.max_batch_size)
        & (view.free_blocks - scan.cumsum(_reserved_blocks(cands, params)) >= 0)
        & ((scan.cumsum(tokens) <= params.batch_max_tokens) | (k == 0))
    )
    admit = _prefix(ok)
    full = (
        (admit.sum() >= params.max_batch_size)
        | (jnp.where(admit, tokens, 0).sum() >= params.batch_max_tokens)
        | (cands.valid & ~admit).any()
    )
    deadline = cands.arrived_at[0] + params.batch_timeout  # oldest waiting request
    waiting = ~has_group & cands.valid[0]
    go = waiting & (full | (view.now >= deadline))
    admit &= go
    return plan._replace(
        slot_in=taken,
        slot_ntok=jnp.where(taken, 1, 0),
        cand_admit=admit,
        cand_ntok=jnp.where(admit, cands.prefill, 0),
        cand_blocks=jnp.where(admit, _reserved_blocks(cands, params), 0),
        wake_at=jnp.where(waiting & ~go, deadline, jnp.inf),
    )


def s3_reserved_blocks(prompt: jax.Array, bucket: jax.Array, seqs: jax.Array, params: SimParams) -> jax.Array:
    """Blocks S3 reserves: prompt + the upper bound of the output-length bucket
    (at most ``max_tokens``), for every sequence."""
    tokens = jnp.minimum(prompt + (bucket + 1) * params.bucket_tokens, params.max_tokens)
    return seq_blocks(tokens, seqs, prompt // params.block_size, params.block_size)


def first_fit_decreasing(
    size: jax.Array, ok: jax.Array, free: jax.Array, room: jax.Array, tie: jax.Array
) -> jax.Array:
    """Pack items into one bin, largest first, each one that still fits (first fit).

    S3's scheduler as a bin-packing heuristic: walk the items in decreasing ``size``
    (ties: smaller ``tie`` first), admit an item when its size fits in what is left of
    ``free`` and fewer than ``room`` items were admitted, otherwise skip it and go on
    with the smaller ones. The order is found by pairwise comparison and applied as a
    one-hot (W, W) matrix (no sort: XLA CPU sorts cost ~10 us per vector); the greedy
    walk itself is sequential, an unrolled scan of W scalar steps.

    Args:
        size: (W,) i32 blocks each item needs.
        ok: (W,) bool item may be admitted.
        free: () i32 free blocks.
        room: () i32 items that may still be admitted.
        tie: (W,) i32 tie-breaker, unique among ``ok`` items (request id: arrival order).

    Returns:
        (W,) bool admitted items.
    """
    w = size.shape[0]
    size = size.astype(jnp.int32)
    first = (size[:, None] > size[None, :]) | ((size[:, None] == size[None, :]) & (tie[:, None] < tie[None, :]))
    # rank of each ok item among the ok items in packing order; onehot[item, position]
    rank = (first & ok[:, None]).sum(axis=0)
    onehot = ok[:, None] & (rank[:, None] == jnp.arange(w)[None, :])
    sorted_size = jnp.where(onehot, size[:, None], 0).max(axis=0)
    present = onehot.any(axis=0)

    def place(carry, item):
        left, slots = carry
        s, p = item
        fits = p & (s <= left) & (slots > 0)
        return (left - jnp.where(fits, s, 0), slots - fits.astype(jnp.int32)), fits

    init = (jnp.asarray(free, jnp.int32), jnp.asarray(room, jnp.int32))
    _, taken = jax.lax.scan(place, init, (sorted_size, present), unroll=True)
    return (onehot & taken[None, :]).any(axis=1)


def _s3(view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
    """S3: Orca-style iteration-level batching whose admission reserves KV memory for the
    *predicted* output length (prompt + the predicted bucket's upper bound) instead of
    the maximum, so more requests fit in a batch.

    Admission (``params.s3_first_fit``): S3's decreasing first fit — among the first
    ``s3_lookahead`` waiting requests, largest reservation first, admit every one that
    still fits in free memory and the batch cap, skipping those that do not (the engine
    keeps a skipped request at the queue head, in arrival order); or, with first fit
    off, an arrival-order prefix while the reservations fit (FCFS). A running sequence
    whose next token would not fit its reservation was under-predicted: it is preempted
    (restarted by recomputation, its blocks freed) and re-admitted with priority — the
    candidates are then the preempted requests only, and nothing is admitted in the
    iteration that preempts — at the next bucket (the engine counts it in
    ``num_restarts``; the bucket is the predicted one plus the restarts). The replica
    acts again at once after a preemption (``wake_at``) so a batch whose every member
    was preempted does not stall.
    """
    plan = _empty_plan(view, cands)
    elig = view.schedulable
    decoding = view.processed >= view.prefill
    victim = elig & decoding & (_needs_block(view, params) > 0)
    running = elig & ~victim
    taken = running & (_rank(running) < params.batch_cap)
    k = jnp.arange(cands.req.shape[0])
    reserve = s3_reserved_blocks(cands.prompt, cands.bucket, cands.seqs, params)
    room = params.batch_cap - (view.allocated.sum() - victim.sum())
    # preempted sequences are re-admitted first (they wait at the queue front)
    ok = cands.valid & ~victim.any()
    fcfs = _prefix(ok & (k < room) & (view.free_blocks - scan.cumsum(reserve) >= 0))
    dff = first_fit_decreasing(reserve, ok & (k < params.s3_lookahead), view.free_blocks, room, cands.req)
    admit = jnp.where(params.s3_first_fit, dff, fcfs)
    return plan._replace(
        slot_in=taken,
        slot_ntok=jnp.where(taken, jnp.where(decoding, 1, view.prefill - view.processed), 0),
        slot_victim=victim,
        cand_admit=admit,
        cand_ntok=jnp.where(admit, cands.prefill, 0),
        cand_blocks=jnp.where(admit, reserve, 0),
        wake_at=jnp.where(victim.any(), view.now, jnp.inf),
    )


PolicyFn = Callable[[ReplicaView, Candidates, SimParams], BatchPlan]

#: Policy functions by Vidur scheduler name (resolved in Python before ``jit``).
POLICY_FNS: dict[str, PolicyFn] = {
    "vllm": _vllm,
    "sarathi": _sarathi,
    "orca": _orca,
    "faster_transformer": _faster_transformer,
    "lightllm": _lightllm,
    "static_batching": _static_batching,
    "s3": _s3,
}
