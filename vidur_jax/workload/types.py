"""The request table every simulator input is turned into."""

from __future__ import annotations

import jax

from vidur_jax.struct import pytree_dataclass, static_field


@pytree_dataclass
class Workload:
    """Requests of one workload, sorted by arrival time.

    Padding rows (``mask == False``) have ``arrived_at = +inf`` and zero tokens, so
    a workload can be padded to a static request capacity. ``num_seqs`` (n > 1: parallel
    sampling or beam search, n sequences sharing the prompt) is optional; None means one
    sequence per request. ``prefix_hashes`` (:mod:`vidur_jax.workload.prefix`) identify each
    prompt's full KV blocks by their whole token prefix, for prefix caching. ``session_*``
    and ``think_time_s`` (:mod:`vidur_jax.sim.sessions`) make later turns of multi-turn
    sessions arrive a think time after their previous turn completes (closed loop); their
    ``arrived_at`` is then only a lower bound.
    """

    arrived_at: jax.Array  # (R,) f64 s, non-decreasing over valid rows
    num_prefill: jax.Array  # (R,) i32 tokens, >= 1 on valid rows
    num_decode: jax.Array  # (R,) i32 tokens, >= 1 on valid rows
    mask: jax.Array  # (R,) bool, True for real requests
    num_seqs: jax.Array | None = None  # (R,) i32 output sequences per request (parallel sampling / beam width); None = 1 each
    prefix_hashes: jax.Array | None = None  # (R, K) i64 hash of each full prompt KV block (-1 = none); None = no shared prefixes
    prefix_block_size: int = static_field(default=16)  # tokens per block of prefix_hashes
    session_id: jax.Array | None = None  # (R,) i64 session of each row (multi-turn); None = no sessions
    session_prev: jax.Array | None = None  # (R,) i32 row of the previous turn (-1 = none): arrives think_time_s after it completes
    think_time_s: jax.Array | None = None  # (R,) f64 s think time before a later turn (0 for first turns)

    @property
    def num_requests(self) -> int:
        """Static capacity R (valid + padding rows)."""
        return self.arrived_at.shape[-1]
