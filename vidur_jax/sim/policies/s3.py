"""S3: reserve KV memory for a *predicted* output length; preempt on under-prediction.

S3 (Jin et al., NeurIPS 2023) is Orca-style iteration-level batching whose admission
reserves prompt + the upper bound of the request's predicted output-length bucket
(:mod:`vidur_jax.sim.s3` makes the predictions), packed by decreasing first fit (or in
arrival order). A sequence that outgrows its reservation is preempted and re-reserved
at the next bucket. First fit admits out of arrival order, so the policy skips queued
candidates and the running slots are not sorted by request id (nothing here depends on
slot order). Fused runs: decode runs that stop before a sequence outgrows its
reservation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from vidur_jax.sim import scan
from vidur_jax.sim.policies.base import BatchPlan, Candidates, Policy, Predicted, ReplicaView
from vidur_jax.sim.policies.common import empty_plan, needs_block, prefix, rank, seq_blocks
from vidur_jax.sim.types import SimParams

if TYPE_CHECKING:
    from vidur_jax.sim.build import DeploymentConfig


def s3_reserved_blocks(
    prompt: jax.Array, bucket: jax.Array, seqs: jax.Array, params: SimParams
) -> jax.Array:
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
    first = (size[:, None] > size[None, :]) | (
        (size[:, None] == size[None, :]) & (tie[:, None] < tie[None, :])
    )
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


class S3(Policy):
    name = "s3"
    title = "S3"
    knobs = ("s3_predictor", "s3_accuracy", "s3_error_buckets", "s3_num_buckets", "s3_admission", "s3_lookahead")
    memory = Predicted()
    skips_queue = True

    def plan(self, view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
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
        plan = empty_plan(view, cands)
        elig = view.schedulable
        decoding = view.processed >= view.prefill
        victim = elig & decoding & (needs_block(view, params) > 0)
        running = elig & ~victim
        taken = running & (rank(running) < params.batch_cap)
        k = jnp.arange(cands.req.shape[0])
        reserve = s3_reserved_blocks(cands.prompt, cands.bucket, cands.seqs, params)
        room = params.batch_cap - (view.allocated.sum() - victim.sum())
        # preempted sequences are re-admitted first (they wait at the queue front)
        ok = cands.valid & ~victim.any()
        fcfs = prefix(ok & (k < room) & (view.free_blocks - scan.cumsum(reserve) >= 0))
        dff = first_fit_decreasing(
            reserve, ok & (k < params.s3_lookahead), view.free_blocks, room, cands.req
        )
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

    def batch_token_bound(self, cfg: DeploymentConfig, num_slots: int) -> int:
        """Every slot may prefill a whole prompt of up to ``max_tokens``."""
        return num_slots * cfg.max_tokens

    def min_window(self, cfg: DeploymentConfig) -> int:
        """First fit chooses among ``s3_lookahead`` waiting requests: the window holds
        them from the start, so its choices never depend on how capacities grew (W > S is
        fine: admitting more than S requests sets the slot-overflow bit)."""
        return cfg.s3_lookahead if cfg.s3_admission == "dff" else 0


POLICY = S3()
