"""Workloads: arrival processes, length distributions and trace replay -> ``Workload``.

Generators are ``key -> Workload`` with explicit JAX PRNG keys (numpy sampling inside,
seeded from the key). Compose them with :func:`synthetic`, replay traces with
:func:`load_trace`, and pad to a static capacity with :func:`pad`. Shared prompt prefixes
(system prompts, multi-turn sessions, traces with block hash ids) and their KV-block
hashes are in :mod:`vidur_jax.workload.prefix`.
"""

from vidur_jax.workload import arrivals, lengths, prefix
from vidur_jax.workload.build import generator, make_workload, pad, synthetic, with_num_seqs
from vidur_jax.workload.prefix import with_system_prompts
from vidur_jax.workload.trace import clip_prefill, load_trace
from vidur_jax.workload.types import Workload

__all__ = [
    "Workload",
    "arrivals",
    "clip_prefill",
    "generator",
    "lengths",
    "load_trace",
    "make_workload",
    "pad",
    "prefix",
    "synthetic",
    "with_num_seqs",
    "with_system_prompts",
]
