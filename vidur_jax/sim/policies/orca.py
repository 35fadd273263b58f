"""Orca: iteration-level batching, each request reserving KV for the maximum length.

Every iteration batches all running requests (prefills whole) plus queued requests
admitted in order while ``max_tokens`` worth of blocks per sequence fits and the
memory-bound batch size holds. Nothing is ever preempted. Fused runs: decode runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp

from vidur_jax.sim.policies.base import BatchPlan, Candidates, MaxLength, Policy, ReplicaView
from vidur_jax.sim.policies.common import empty_plan, rank, reservation_admission, reserved_blocks
from vidur_jax.sim.types import SimParams

if TYPE_CHECKING:
    from vidur_jax.sim.build import DeploymentConfig


class Orca(Policy):
    name = "orca"
    title = "Orca"
    memory = MaxLength()

    def plan(self, view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
        """Orca: iteration-level batching of all running requests plus new ones, each new
        request reserving blocks for the maximum length."""
        plan = empty_plan(view, cands)
        elig = view.schedulable
        taken = elig & (rank(elig) < params.max_batch_size)
        admit = reservation_admission(view, cands, params, taken.sum())
        return plan._replace(
            slot_in=taken,
            slot_ntok=jnp.where(
                taken,
                jnp.where(view.processed >= view.prefill, 1, view.prefill - view.processed),
                0,
            ),
            cand_admit=admit,
            cand_ntok=jnp.where(admit, cands.prefill, 0),
            cand_blocks=jnp.where(admit, reserved_blocks(cands, params), 0),
        )

    def batch_token_bound(self, cfg: DeploymentConfig, num_slots: int) -> int:
        """Every slot may prefill a whole prompt of up to ``max_tokens``."""
        return num_slots * cfg.max_tokens


POLICY = Orca()
