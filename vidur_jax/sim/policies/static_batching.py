"""Alpa-style request batching: collect a batch until full or timed out, run it to completion.

Knobs: ``batch_timeout_s`` (TIMEOUT) and ``batch_max_tokens`` (MAX_TOKENS). Memory as
FasterTransformer (``max_tokens`` reserved per sequence). A launched batch is closed:
arrivals and the queue never change it, so its whole decode run fuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp

from vidur_jax.sim import scan
from vidur_jax.sim.policies.base import BatchPlan, Candidates, MaxLength, Policy, ReplicaView
from vidur_jax.sim.policies.common import empty_plan, first_group, prefix, reserved_blocks
from vidur_jax.sim.types import SimParams

if TYPE_CHECKING:
    from vidur_jax.sim.build import DeploymentConfig


class StaticBatching(Policy):
    name = "static_batching"
    title = "static batching"
    knobs = ("batch_timeout_s", "batch_max_tokens")
    memory = MaxLength()
    closed_batches = True

    def plan(self, view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
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
        plan = empty_plan(view, cands)
        taken = first_group(view)
        has_group = taken.any()
        k = jnp.arange(cands.req.shape[0])
        tokens = jnp.where(cands.valid, cands.total, 0)
        ok = (
            cands.valid
            & (k < params.max_batch_size)
            & (view.free_blocks - scan.cumsum(reserved_blocks(cands, params)) >= 0)
            & ((scan.cumsum(tokens) <= params.batch_max_tokens) | (k == 0))
        )
        admit = prefix(ok)
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
            cand_blocks=jnp.where(admit, reserved_blocks(cands, params), 0),
            wake_at=jnp.where(waiting & ~go, deadline, jnp.inf),
        )

    def batch_token_bound(self, cfg: DeploymentConfig, num_slots: int) -> int:
        """Every slot may prefill a whole prompt of up to ``max_tokens``."""
        return num_slots * cfg.max_tokens


POLICY = StaticBatching()
