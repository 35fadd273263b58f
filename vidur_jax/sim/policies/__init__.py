"""Replica policies (batch schedulers), one module each, found by name before ``jit``.

Every module of this package that exports ``POLICY`` (a :class:`~.base.Policy`) is a
replica scheduler, registered under ``POLICY.name``: Vidur's vLLM, Sarathi-Serve, Orca,
FasterTransformer and LightLLM, plus static batching (Alpa serving) and S3. Adding one
is a new module here, its ``conf/scheduler/<name>.yaml`` and its tests
(docs/schedulers.md walks through an example). :mod:`.base` holds the contract between
the engine and a policy, :mod:`.common` the array building blocks policies share.
"""

from __future__ import annotations

import importlib
import pkgutil

from vidur_jax.errors import ConfigError
from vidur_jax.sim.policies.base import BatchPlan, Candidates, Memory, Policy, ReplicaView
from vidur_jax.sim.policies.common import seq_blocks
from vidur_jax.sim.policies.s3 import first_fit_decreasing


def _discover() -> dict[str, Policy]:
    """``{name: policy}`` of every module of this package that exports ``POLICY``."""
    found: dict[str, Policy] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        policy = getattr(importlib.import_module(f"{__name__}.{info.name}"), "POLICY", None)
        if policy is None:
            continue
        if policy.name in found:
            raise RuntimeError(f"two policy modules are named {policy.name!r}")
        found[policy.name] = policy
    return found


#: Replica policies by Vidur ``replica_scheduler`` name.
REGISTRY: dict[str, Policy] = _discover()
#: Their names, sorted.
POLICIES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Policy:
    """The policy called ``name``.

    Raises:
        ConfigError: no such policy (one line listing the known ones).
    """
    if name not in REGISTRY:
        raise ConfigError(f"unknown replica_scheduler {name!r}; allowed: {', '.join(POLICIES)}")
    return REGISTRY[name]


__all__ = [
    "POLICIES",
    "REGISTRY",
    "BatchPlan",
    "Candidates",
    "Memory",
    "Policy",
    "ReplicaView",
    "first_fit_decreasing",
    "get",
    "seq_blocks",
]
