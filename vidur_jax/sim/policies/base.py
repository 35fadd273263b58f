"""The contract between the engine and a replica policy.

A policy is one object (:class:`Policy`) resolved by name in Python before ``jit``
(never ``lax.switch`` across policies). It declares everything the engine needs to know
about it, so the engine never tests a policy's name:

* **admission and batch formation** — :meth:`Policy.plan`: from one replica's running
  set (:class:`ReplicaView`, ``S`` slots) and the head of its waiting queue
  (:class:`Candidates`, ``W`` entries), the next batch (:class:`BatchPlan`): which running
  requests take part with how many tokens, which are preempted (restarted by
  recomputation), which candidates are admitted with how many tokens and blocks;
* **memory reservation** — :attr:`Policy.memory`, one of :class:`OnDemand` (blocks grow
  with each decode), :class:`MaxLength` (``max_tokens`` reserved at admission) or
  :class:`Predicted` (a predicted length reserved at admission);
* **fused runs** (a run of iterations of the same batch simulated as one step, exactly):
  every policy may fuse decode runs; :meth:`Policy.run_prefill_budget` lets a run also
  carry one chunked prefill under a per-iteration token budget; :attr:`Policy.closed_batches`
  says a launched batch ignores arrivals and the queue (it runs to completion);
* **queue order** — :attr:`Policy.skips_queue`: admission may skip queued candidates;
* **build-time bounds** — slots, batch tokens (timing-table extent), admission window,
  pipeline support (:meth:`Policy.slot_bound`, :meth:`Policy.batch_token_bound`,
  :meth:`Policy.min_window`, :meth:`Policy.validate`).

Conventions as in :mod:`vidur_jax.sim.types`: ``-1`` = none, counts are int32, every
rule is a mask / cumulative-sum program over the ``S`` slots and ``W`` candidates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from vidur_jax.errors import require
from vidur_jax.sim.types import SimParams

if TYPE_CHECKING:
    from vidur_jax.sim.build import DeploymentConfig, DerivedConfig


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
    reclaim: jax.Array | None = None  # (S,) i32 prefix caching: blocks preempting the slot gives back

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
    cached: jax.Array | None = None  # (W,) i32 prefix caching: leading tokens found cached (None = off)
    reuse: jax.Array | None = None  # (W,) i32 of those blocks, already used by a running request


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


class Memory:
    """How a policy holds KV memory (base: blocks never bound a fused run)."""

    #: decodes allocate blocks as their KV grows; a fused run allocates what its decodes
    #: grew by at its end
    grows: bool = False
    #: memory may end a fused run early (:meth:`run_fits` is asked); otherwise a run's
    #: blocks were all reserved at admission
    bounds_runs: bool = False

    def run_fits(
        self, blocks: jax.Array, held: jax.Array, decodes: jax.Array, free: jax.Array
    ) -> jax.Array:
        """() bool: a fused run still fits once its decodes hold ``blocks`` each
        (asked only when :attr:`bounds_runs`; monotone: true up to some iteration j).

        Args:
            blocks: (S,) i32 blocks each slot would hold after iteration j of the run.
            held: (S,) i32 blocks each slot holds now.
            decodes: (S,) bool slots that decode in the run.
            free: () i32 free blocks after this iteration's admissions.

        Returns:
            () bool.
        """
        return jnp.array(True)

    def slot_bound(self, cfg: DeploymentConfig, derived: DerivedConfig) -> int:
        """Most requests one replica can hold at once (running-set capacity bound)."""
        return cfg.batch_size_cap


class OnDemand(Memory):
    """Paged blocks allocated as the KV grows (vLLM): a decode takes a block when its
    next token does not fit; a fused run stops before free memory would fall below one
    block."""

    grows = True
    bounds_runs = True

    def run_fits(self, blocks, held, decodes, free):
        new = jnp.where(decodes, jnp.maximum(blocks - held, 0), 0).sum()
        return new <= free - 1


class MaxLength(Memory):
    """``max_tokens`` worth of blocks reserved per sequence at admission (Orca,
    FasterTransformer): memory never bounds a run, and the batch size is bounded by
    memory / max length."""

    def slot_bound(self, cfg, derived):
        return derived.max_batch_size * cfg.num_pipeline_stages


class Predicted(Memory):
    """Blocks for a *predicted* length reserved at admission (S3): a fused run stops
    before a sequence outgrows its reservation (the policy preempts it there)."""

    bounds_runs = True

    def run_fits(self, blocks, held, decodes, free):
        return (~decodes | (blocks <= held)).all()


class Policy:
    """A replica scheduler. Subclass it in its own module of this package, set
    :attr:`name` and :attr:`memory`, implement :meth:`plan`, override what differs, and
    export the instance as ``POLICY`` (the package registers it by its name)."""

    #: Vidur's ``replica_scheduler`` name (and the YAML file ``conf/scheduler/<name>.yaml``).
    name: str = ""
    #: Scheduler knobs (``DeploymentConfig`` fields beyond ``batch_size_cap`` and
    #: ``block_size``) this policy reads; summary tables leave the others empty for it.
    knobs: tuple[str, ...] = ()
    #: how the policy reserves KV memory
    memory: Memory = Memory()
    #: a launched batch runs to completion: arrivals and the queue never cut a fused run
    closed_batches: bool = False
    #: admission may skip queued candidates (they stay queued, in arrival order)
    skips_queue: bool = False
    #: supports pipeline parallelism (num_pipeline_stages > 1)
    pipeline: bool = True
    #: supports prefix caching (reads ``Candidates.cached`` / ``reuse`` and
    #: ``ReplicaView.reclaim``; :mod:`vidur_jax.sim.prefix_engine`)
    prefix_caching: bool = False

    def plan(self, view: ReplicaView, cands: Candidates, params: SimParams) -> BatchPlan:
        """The next batch of one replica (admission, batch formation, preemption)."""
        raise NotImplementedError

    def run_prefill_budget(self, params: SimParams, iter_decodes: jax.Array) -> jax.Array | None:
        """Prefill tokens per iteration of a fused run that carries one chunked prefill.

        Args:
            params: the config's knobs.
            iter_decodes: (J,) i32 decoding requests in each iteration of the run.

        Returns:
            (J,) i32 tokens the prefill may take in each iteration, or None: runs carry
            no prefill (decode runs only).
        """
        return None

    def prefill_chunk(self, cfg: DeploymentConfig) -> int | None:
        """Most prompt tokens of one request one iteration prefills, or None: a prompt
        is prefilled whole in one iteration (used to estimate a config's event count)."""
        return None

    def batch_token_bound(self, cfg: DeploymentConfig, num_slots: int) -> int:
        """Most tokens one batch can hold (the timing tables' extent)."""
        return max(cfg.max_tokens_in_batch, num_slots)

    def slot_bound(self, cfg: DeploymentConfig, derived: DerivedConfig) -> int:
        """Most requests one replica can hold at once."""
        return self.memory.slot_bound(cfg, derived)

    def min_window(self, cfg: DeploymentConfig) -> int:
        """Queued requests one decision must see (the admission window's floor)."""
        return 0

    def validate(self, cfg: DeploymentConfig) -> None:
        """Raise :class:`~vidur_jax.errors.ConfigError` on a config the policy cannot run."""
        require(
            self.pipeline or cfg.num_pipeline_stages == 1,
            f"replica_scheduler={self.name} does not support pipeline parallelism (num_pipeline_stages must be 1)",
        )
        require(
            self.prefix_caching or not cfg.prefix_caching,
            f"replica_scheduler={self.name} does not support prefix_caching yet "
            f"(supported: {', '.join(_prefix_caching_policies())})",
        )


def _prefix_caching_policies() -> list[str]:
    """Names of the registered policies that support prefix caching, sorted."""
    from vidur_jax.sim.policies import REGISTRY

    return sorted(name for name, p in REGISTRY.items() if p.prefix_caching)
