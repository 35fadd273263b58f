"""Sarathi-Serve: chunked prefills piggybacked on decodes, a token budget per iteration.

Every iteration takes the running decodes first (with vLLM's block allocation and
preemption), then partial prefills and new requests in arrival order, in a budget of
``chunk_size`` tokens. Fused runs: decode runs, and runs that carry one chunked prefill
taking what the decodes leave of ``chunk_size`` every iteration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from vidur_jax.sim import scan
from vidur_jax.sim.policies.base import BatchPlan, Candidates, OnDemand, Policy, ReplicaView
from vidur_jax.sim.policies.common import (
    ceil_div,
    empty_plan,
    excl_cumsum,
    needs_block,
    prefix,
    running_with_preemption,
    taken_alloc,
    uncached,
)
from vidur_jax.sim.types import SimParams

if TYPE_CHECKING:
    from vidur_jax.sim.build import DeploymentConfig


class Sarathi(Policy):
    name = "sarathi"
    knobs = ("chunk_size", "watermark_blocks_fraction")
    memory = OnDemand()
    prefix_caching = True

    def prefill_chunk(self, cfg: DeploymentConfig) -> int | None:
        return cfg.chunk_size

    def plan(self, view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
        """Sarathi-Serve: decodes first, then partial prefills, then new requests, in a
        token budget of ``chunk_size`` per iteration (chunked prefill)."""
        plan = empty_plan(view, cands)
        is_decode = view.processed >= view.prefill  # prefill complete (processed = prefill + 1)
        taken, kept, victim = running_with_preemption(
            view, params, is_decode, params.max_micro_batch
        )
        budget = params.chunk_size - taken.sum()
        # partial prefills, in arrival (= slot) order, share what is left of the budget
        remaining = jnp.where(kept, view.prefill - view.processed, 0)
        chunk = jnp.clip(budget - excl_cumsum(remaining), 0, remaining)
        partial_in = kept & (chunk > 0)
        used = taken.sum() + partial_in.sum()
        budget_left = budget - chunk.sum()
        # new requests from the queue
        w = cands.req.shape[0]
        k = jnp.arange(w)
        blocks = ceil_div(cands.prefill, params.block_size)
        todo, charge = uncached(cands, blocks)
        new_tok = jnp.clip(budget_left - excl_cumsum(jnp.where(cands.valid, todo, 0)), 0, todo)
        freed = jnp.where(victim, view.blocks if view.reclaim is None else view.reclaim, 0).sum()
        ok = (
            cands.valid
            & (view.allocated.sum() - victim.sum() + k < params.batch_cap)
            & (used + k < params.max_micro_batch)
            & (
                view.free_blocks + freed - taken_alloc(view, params, taken) - scan.cumsum(charge)
                >= params.watermark_blocks
            )
            & (new_tok > 0)
            # Vidur pushes this iteration's victims to the queue front, where they block new
            # requests (re-admitting them needs more memory than they just freed)
            & ~victim.any()
        )
        admit = prefix(ok)
        return plan._replace(
            slot_in=taken | partial_in,
            slot_ntok=jnp.where(taken, 1, jnp.where(partial_in, chunk, 0)),
            slot_alloc=jnp.where(taken, needs_block(view, params), 0),
            slot_victim=victim,
            cand_admit=admit,
            cand_ntok=jnp.where(admit, new_tok, 0),
            cand_blocks=jnp.where(admit, blocks, 0),
        )

    def run_prefill_budget(self, params: SimParams, iter_decodes: jax.Array) -> jax.Array:
        """(J,) the budget left after the decodes (one token each) of every iteration."""
        return jnp.maximum(params.chunk_size - iter_decodes, 0)

    def batch_token_bound(self, cfg: DeploymentConfig, num_slots: int) -> int:
        """A chunk plus one token per decode."""
        return cfg.chunk_size + num_slots


POLICY = Sarathi()
