"""Orca with a token cap: Orca's batches, admission stopped at ``max_tokens_in_batch``.

Orca batches every running request and admits queued ones in order while their
``max_tokens`` reservations fit. This variant also stops admitting once the batch's
tokens (one per decode, the rest of a running prefill, each admitted prompt) would pass
``max_tokens_in_batch`` — a bound on iteration time that serving systems built on Orca
add. A prompt longer than the cap is admitted alone into an otherwise empty batch, so
nothing waits forever. With a cap no batch reaches it is exactly Orca.

It is the worked example of docs/schedulers.md: a policy is this module, its YAML
(``conf/scheduler/orca_token_cap.yaml``) and its tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp

from vidur_jax.sim import scan
from vidur_jax.sim.policies.base import BatchPlan, Candidates, MaxLength, Policy, ReplicaView
from vidur_jax.sim.policies.common import empty_plan, rank, reservation_admission, reserved_blocks
from vidur_jax.sim.types import SimParams

if TYPE_CHECKING:
    from vidur_jax.sim.build import DeploymentConfig


class OrcaTokenCap(Policy):
    name = "orca_token_cap"
    title = "Orca (token cap)"
    knobs = ("max_tokens_in_batch",)
    memory = MaxLength()  # reserve max_tokens per sequence at admission, as Orca

    def plan(self, view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
        """Orca's batch; admission also keeps the batch within ``max_tokens_in_batch``."""
        elig = view.schedulable
        taken = elig & (rank(elig) < params.max_batch_size)
        ntok = jnp.where(
            taken, jnp.where(view.processed >= view.prefill, 1, view.prefill - view.processed), 0
        )
        k = jnp.arange(cands.req.shape[0])
        tokens = ntok.sum() + scan.cumsum(jnp.where(cands.valid, cands.prefill, 0))
        alone = (k == 0) & ~taken.any()  # a prompt over the cap still runs, by itself
        fits = (tokens <= params.max_tokens_in_batch) | alone
        admit = reservation_admission(view, cands, params, taken.sum()) & scan.prefix_true(fits)
        return empty_plan(view, cands)._replace(
            slot_in=taken,
            slot_ntok=ntok,
            cand_admit=admit,
            cand_ntok=jnp.where(admit, cands.prefill, 0),
            cand_blocks=jnp.where(admit, reserved_blocks(cands, params), 0),
        )

    def batch_token_bound(self, cfg: DeploymentConfig, num_slots: int) -> int:
        """A prompt over the cap runs alone: up to ``max_tokens``, else the cap."""
        return max(cfg.max_tokens_in_batch, cfg.max_tokens) + num_slots


POLICY = OrcaTokenCap()
