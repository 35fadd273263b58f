"""LightLLM: admission by projected future token usage.

Prefill batches admit queued requests while the peak of the projected token usage
(every running and admitted request growing to its full length, longest-remaining
first) fits in memory; otherwise every running request decodes. A prefill is forced
every ``max_waiting_iters`` decode batches. No pipeline parallelism (as Vidur). Fused
runs: decode runs.
"""

from __future__ import annotations

import jax.numpy as jnp

from vidur_jax.sim import scan
from vidur_jax.sim.policies.base import BatchPlan, Candidates, OnDemand, Policy, ReplicaView
from vidur_jax.sim.policies.common import ceil_div, empty_plan, needs_block, prefix
from vidur_jax.sim.types import SimParams


class LightLLM(Policy):
    name = "lightllm"
    title = "LightLLM"
    knobs = ("max_tokens_in_batch", "max_waiting_iters")
    memory = OnDemand()
    pipeline = False

    def plan(self, view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
        """LightLLM: prefill batches admitted by a future-token memory estimate; decode
        batches of every running request; a prefill is forced every ``max_waiting_iters``."""
        plan = empty_plan(view, cands)
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
        admit = prefix(ok)
        want_prefill = ~has_running | (view.waiting_iters >= params.max_waiting_iters)
        do_prefill = want_prefill & admit.any()
        admit &= do_prefill
        do_decode = has_running & ~do_prefill
        taken = running & do_decode
        needs = needs_block(view, params)
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
            cand_blocks=jnp.where(admit, ceil_div(cands.prefill, params.block_size), 0),
            waiting_iters=waiting,
            oom=oom,
        )


POLICY = LightLLM()
