"""Prefix-caching config keys: JAX-free checks (one clear line) and the workload they build."""

from __future__ import annotations

import numpy as np
import pytest

from vidur_jax.errors import ConfigError
from vidur_jax.plan.deployment import check_deployment, deployment_fields
from vidur_jax.plan.workloads import build_workload, workload_spec

WL = {
    "kind": "synthetic",
    "num_requests": 40,
    "max_tokens": 2048,
    "qps": 2.0,
    "arrival": {"kind": "poisson"},
    "lengths": {
        "kind": "uniform",
        "min_tokens": 32,
        "max_tokens": 512,
        "prefill_to_decode_ratio": 4.0,
    },
}


def tree(system_prompt=None, **scheduler):
    wl = dict(WL, **({} if system_prompt is None else {"system_prompt": system_prompt}))
    return {"workload": wl, "scheduler": {"block_size": 16, **scheduler}}


def test_system_prompt_spec_is_checked():
    spec = workload_spec(tree({"num_prompts": 2, "tokens": 100, "fraction": 0.5}))
    assert spec["system_prompt"] == {
        "num_prompts": 2,
        "tokens": 100,
        "fraction": 0.5,
        "popularity": {"kind": "uniform"},
        "block_size": 16,
    }
    assert workload_spec(tree())["system_prompt"] is None
    for bad, msg in (
        ({"tokens": 100, "size": 3}, "unknown keys"),
        ({"tokens": 0}, "tokens=0 must be >= 1"),
        ({"tokens": 64, "fraction": 1.5}, r"fraction=1.5 must be in \[0, 1\]"),
        ({"tokens": 64, "popularity": {"kind": "pareto"}}, "popularity.kind"),
    ):
        with pytest.raises(ConfigError, match=msg):
            workload_spec(tree(bad))


def test_system_prompt_workload_shares_prefix_blocks():
    wl = build_workload(workload_spec(tree({"num_prompts": 2, "tokens": 100, "fraction": 1.0})))
    h = np.asarray(wl.prefix_hashes)
    assert h.shape == (40, 100 // 16)
    assert wl.prefix_block_size == 16
    assert len({tuple(r) for r in h}) == 2  # two system prompts, all 6 blocks shared
    base = build_workload(workload_spec(tree()))
    assert (
        np.asarray(wl.num_prefill)
        == np.minimum(np.asarray(base.num_prefill) + 100, 2048 - np.asarray(base.num_decode))
    ).all()


def test_prefix_caching_refused_for_schedulers_without_it():
    from vidur_jax.plan.tree import compose, to_container

    f = deployment_fields(
        to_container(compose(["scheduler=orca", "scheduler.prefix_caching=true"]))
    )
    assert f["prefix_caching"] is True
    with pytest.raises(ConfigError, match="replica_scheduler=orca does not support prefix_caching"):
        check_deployment(f)
    check_deployment(dict(f, replica_scheduler="vllm"))
