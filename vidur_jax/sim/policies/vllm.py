"""vLLM: paged KV blocks, prefill-only or decode-only batches, recompute preemption.

Admission takes queued requests in order while their prompt blocks fit above the
watermark, the padded prompt tokens (batch x longest prompt) fit ``max_tokens_in_batch``
and the batch caps hold; a batch with any admitted prefill is prefill-only. Otherwise
every running request decodes, each taking a block when its next token does not fit,
preempting from the tail of the running list (restart by recomputation) when memory
runs out. Fused runs: decode runs.
"""

from __future__ import annotations

import jax.numpy as jnp

from vidur_jax.sim import scan
from vidur_jax.sim.policies.base import BatchPlan, Candidates, OnDemand, Policy, ReplicaView
from vidur_jax.sim.policies.common import (
    ceil_div,
    empty_plan,
    needs_block,
    prefix,
    running_with_preemption,
    uncached,
)
from vidur_jax.sim.types import SimParams


class Vllm(Policy):
    name = "vllm"
    title = "vLLM"
    knobs = ("max_tokens_in_batch", "watermark_blocks_fraction")
    memory = OnDemand()
    prefix_caching = True

    def plan(self, view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
        """vLLM: a prefill-only batch of queued requests if any fits, else all decodes."""
        plan = empty_plan(view, cands)
        w = cands.req.shape[0]
        blocks = ceil_div(cands.prefill, params.block_size)
        new_tok, charge = uncached(cands, blocks)
        k = jnp.arange(w)
        running_max = scan.cummax(jnp.where(cands.valid, new_tok, 0))
        ok = (
            cands.valid
            & (view.free_blocks - scan.cumsum(charge) >= params.watermark_blocks)
            & ((k + 1) * running_max <= params.max_tokens_in_batch)
            & (view.allocated.sum() + k < params.batch_cap)
            & (k < params.max_micro_batch)
        )
        admit = prefix(ok)
        any_admit = admit.any()
        taken, _, victim = running_with_preemption(
            view, params, jnp.ones_like(view.req, bool), params.max_micro_batch
        )
        taken &= ~any_admit
        victim &= ~any_admit
        return plan._replace(
            slot_in=taken,
            slot_ntok=taken.astype(jnp.int32),
            slot_alloc=jnp.where(taken, needs_block(view, params), 0),
            slot_victim=victim,
            cand_admit=admit,
            cand_ntok=jnp.where(admit, new_tok, 0),
            cand_blocks=jnp.where(admit, blocks, 0),
        )


POLICY = Vllm()
