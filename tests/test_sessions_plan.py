"""Session config keys: checked with one clear line, and the workloads they build
(synthetic sessions, replayed traces with session ids)."""

from __future__ import annotations

import numpy as np
import pytest

from vidur_jax.errors import ConfigError
from vidur_jax.plan.workloads import build_workload, workload_spec

WL = {
    "kind": "synthetic",
    "num_requests": 200,
    "max_tokens": 2048,
    "qps": 2.0,
    "arrival": {"kind": "poisson"},
    "lengths": {"kind": "uniform", "min_tokens": 32, "max_tokens": 256, "prefill_to_decode_ratio": 2.0},
}


def tree(sessions=None, **wl):
    w = dict(WL, **wl, **({} if sessions is None else {"sessions": sessions}))
    return {"workload": w, "scheduler": {"block_size": 16}}


def test_sessions_spec_is_checked_and_builds_closed_loop_turns():
    spec = workload_spec(tree({"num_sessions": 10, "turns": {"kind": "fixed", "n": 3}, "think_time_s": 1.5}))
    assert spec["sessions"] == {"num_sessions": 10, "turns": {"kind": "fixed", "n": 3}, "think_time_s": 1.5,
                                "block_size": 16}
    wl = build_workload(spec)
    prev = np.asarray(wl.session_prev)
    assert len(set(np.asarray(wl.session_id).tolist())) == 10
    assert (prev >= 0).sum() == wl.num_requests - 10
    # a later turn's prompt is its parent's prompt + answer + a new message
    p, d = np.asarray(wl.num_prefill), np.asarray(wl.num_decode)
    later = prev >= 0
    assert (p[later] > p[prev[later]] + d[prev[later]]).all()
    h = np.asarray(wl.prefix_hashes)
    k = (p[prev[later]] + d[prev[later]]) // 16  # the parent's full conversation blocks
    for row, parent, n in zip(np.flatnonzero(later), prev[later], k, strict=True):
        np.testing.assert_array_equal(h[row, :n], h[parent, :n])
    assert workload_spec(tree())["sessions"] is None
    for bad, msg in (
        ({"num_sessions": 0}, "num_sessions=0 must be >= 1"),
        ({"num_sessions": 2, "think": 1}, "unknown keys"),
        ({"num_sessions": 2, "think_time_s": -1}, "think_time_s=-1.0 must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=msg):
            workload_spec(tree(bad))
    with pytest.raises(ConfigError, match="num_sessions=500 exceeds workload.num_requests=200"):
        build_workload(workload_spec(tree({"num_sessions": 500})))


def test_replay_trace_with_session_columns(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens,session_id,think_time_s\n"
                    "0.0,40,30,5,0\n0.1,100,10,6,0\n0.2,80,2,5,0.25\n")
    base = {"kind": "replay", "path": str(path), "num_requests": 3, "max_tokens": 2048}
    wl = build_workload(workload_spec({"workload": base, "scheduler": {"block_size": 16}}))
    assert np.asarray(wl.session_prev).tolist() == [-1, -1, 0]
    np.testing.assert_allclose(np.asarray(wl.think_time_s), [0.0, 0.0, 0.25])
    h = np.asarray(wl.prefix_hashes)
    np.testing.assert_array_equal(h[2, :4], h[0, :4])  # 40 + 30 tokens of conversation: 4 full blocks
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens,session_id\n0.0,40,30,5\n0.2,80,2,5\n")
    wl = build_workload(workload_spec({"workload": dict(base, num_requests=2), "scheduler": {"block_size": 16}}))
    assert wl.session_prev is None  # no think times: open loop, shared prefixes only
    assert np.asarray(wl.prefix_hashes)[1, 0] == np.asarray(wl.prefix_hashes)[0, 0]
