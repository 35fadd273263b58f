"""FasterTransformer: static batches that run to completion.

A batch is admitted as Orca admits (``max_tokens`` reserved per sequence) when no batch
runs; it prefills once, then decodes until its last member completes; only then does
the next batch form. Fused runs: decode runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp

from vidur_jax.sim.policies.base import BatchPlan, Candidates, MaxLength, Policy, ReplicaView
from vidur_jax.sim.policies.common import (
    empty_plan,
    first_group,
    reservation_admission,
    reserved_blocks,
)
from vidur_jax.sim.types import SimParams

if TYPE_CHECKING:
    from vidur_jax.sim.build import DeploymentConfig


class FasterTransformer(Policy):
    name = "faster_transformer"
    title = "FasterTransformer"
    memory = MaxLength()

    def plan(self, view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
        """FasterTransformer: a static batch runs to completion before a new one forms."""
        plan = empty_plan(view, cands)
        taken = first_group(view)
        has_group = taken.any()
        admit = reservation_admission(view, cands, params, jnp.int32(0)) & ~has_group
        return plan._replace(
            slot_in=taken,
            slot_ntok=jnp.where(taken, 1, 0),
            cand_admit=admit,
            cand_ntok=jnp.where(admit, cands.prefill, 0),
            cand_blocks=jnp.where(admit, reserved_blocks(cands, params), 0),
        )

    def batch_token_bound(self, cfg: DeploymentConfig, num_slots: int) -> int:
        """Every slot may prefill a whole prompt of up to ``max_tokens``."""
        return num_slots * cfg.max_tokens


POLICY = FasterTransformer()
