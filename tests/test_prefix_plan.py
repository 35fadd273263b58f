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


def mooncake_style_trace(path, with_hash_ids=True):
    """A 4-row replay CSV with Mooncake-style ``hash_ids`` (32-token trace blocks), rows
    10 s apart (each completes before the next arrives):

    row 0: 100-token prompt, blocks [1, 2, 3, 4] (3 full trace blocks + 4 tokens);
    row 1:  80 tokens, [1, 2, 5]: shares trace blocks 1, 2 = 64 tokens = 4 KV blocks of 16;
    row 2:  64 tokens, [7, 8]: shares nothing;
    row 3: 100 tokens, [1, 2, 3, 4]: row 0's prompt; its 6 full KV blocks (96 tokens) hit
    (the last 4 tokens are a partial block, never cached)."""
    import pandas as pd

    df = pd.DataFrame({
        "arrived_at": [0.0, 10.0, 20.0, 30.0],
        "num_prefill_tokens": [100, 80, 64, 100],
        "num_decode_tokens": [4, 4, 4, 4],
    })
    if with_hash_ids:
        df["hash_ids"] = ["[1, 2, 3, 4]", "[1, 2, 5]", "[7, 8]", "[1, 2, 3, 4]"]
    df.to_csv(path, index=False)
    return path


def replay_tree(path, **wl):
    return {
        "workload": {"kind": "replay", "path": str(path), "num_requests": 4, "max_tokens": 2048, **wl},
        "scheduler": {"block_size": 16},
    }


def test_trace_hash_ids_become_block_hashes(tmp_path):
    """The replay spec reads workload.hash_block_tokens (default 512, Mooncake's); the
    built workload's block hashes are equal exactly where the trace's blocks are."""
    path = mooncake_style_trace(tmp_path / "t.csv")
    assert workload_spec(replay_tree(path))["hash_block_tokens"] == 512
    wl = build_workload(workload_spec(replay_tree(path, hash_block_tokens=32)))
    h = np.asarray(wl.prefix_hashes)
    assert wl.prefix_block_size == 16 and h.shape == (4, 100 // 16)
    assert (h[0] >= 0).sum() == 6 and (h[2] >= 0).sum() == 4
    np.testing.assert_array_equal(h[3], h[0])
    np.testing.assert_array_equal(h[1, :4], h[0, :4])
    assert h[1, 4] != h[0, 4]  # trace block 5 vs 3
    assert not set(h[2][h[2] >= 0]) & set(h[0][h[0] >= 0])
    plain = build_workload(workload_spec(replay_tree(mooncake_style_trace(tmp_path / "p.csv", False))))
    assert plain.prefix_hashes is None
    for bad, msg in (({"hash_block_tokens": 0}, "hash_block_tokens=0 must be >= 1"),):
        with pytest.raises(ConfigError, match=msg):
            workload_spec(replay_tree(path, **bad))
    import pandas as pd

    df = pd.read_csv(path)
    df.loc[2, "hash_ids"] = "[7, x]"
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ConfigError, match=r"data row 2: hash_ids='\[7, x\]' must list integers") as err:
        build_workload(workload_spec(replay_tree(tmp_path / "bad.csv")))
    assert "\n" not in str(err.value)


def test_trace_hash_ids_from_the_command_line(tmp_path):
    """The command of docs/prefix_caching.md (as app.simulate overrides): rows 1 and 3 hit
    (0.5 of the requests), saving 64 + 96 = 160 prefill tokens."""
    from vidur_jax import app

    path = mooncake_style_trace(tmp_path / "t.csv")
    summary, requests = app.simulate([
        "workload=chat_replay",
        f"workload.path={path}",
        "workload.num_requests=4",
        "workload.hash_block_tokens=32",
        "scheduler=vllm",
        "scheduler.prefix_caching=true",
        "profiles_dir=null",
    ])
    row = summary.iloc[0]
    assert row["num_completed"] == 4
    assert row["prefill_tokens_saved"] == 160
    assert row["prefix_hit_rate_requests"] == 0.5
