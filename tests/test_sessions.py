"""Closed-loop multi-turn sessions in the engine: hand-worked toy cases, invariants,
vmap == single config, sessions off == today, routing on arrival.

Timing as in tests/test_sim_toy.py: every iteration takes ``10 ms + 0.1 ms x T8`` (T8 the
batch's token count rounded up to a multiple of 8), attention costs nothing. Block size 16.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import toy_configs as toy
from toy_configs import it, run, two_turns

from vidur_jax.sim import run as run_mod
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.workload import prefix as wp
from vidur_jax.workload import synthetic


def check(out, arrived, scheduled, first, completed):
    toy.check(out, scheduled, first, completed, arrived=arrived)  # f32 op times


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_second_turn_arrives_think_time_after_first_completes_and_hits_its_blocks(policy):
    wl = wp.session_workload(two_turns(), 16)
    on, off = run([DeploymentConfig(replica_scheduler=policy, prefix_caching=c) for c in (True, False)], [wl, wl])
    # Turn 0: prefill 40 -> a = it(40); 29 decodes -> completes at c0 = a + 29 it(1).
    # Its KV then holds 40 + 29 = 69 tokens: 4 full blocks (prompt 2 + answer 2), all cached.
    # Turn 1 arrives at c0 + 0.5 (not at its lower bound 0.5); its first 4 blocks are
    # turn 0's conversation: hit (64 tokens), so it prefills 80 - 64 = 16 tokens.
    a = it(40)
    c0 = a + 29 * it(1)
    t1 = c0 + 0.5
    check(on, [0.0, t1], [0.0, t1], [a, t1 + it(16)], [c0, t1 + it(16) + it(1)])
    check(off, [0.0, t1], [0.0, t1], [a, t1 + it(80)], [c0, t1 + it(80) + it(1)])
    assert on.summary["prefill_tokens_saved"] == 64
    assert on.summary["prefix_hit_rate_tokens"] == pytest.approx(64 / 120)
    assert on.summary["prefix_hit_rate_requests"] == pytest.approx(0.5)
    assert on.summary["num_sessions"] == 1 and on.summary["session_turns_mean"] == 2
    assert on.summary["session_time_p50"] == pytest.approx(t1 + it(16) + it(1))


def test_zero_think_time_and_two_sessions_interleave():
    # Session A starts at 0, session B at 5 ms (ids distinct); think 0: A's turn 1 arrives
    # exactly when A's turn 0 completes. vLLM, caching on.
    a_tab, b_tab = two_turns(think=0.0), two_turns(think=0.0, start=0.005, sid=1, ids=(4, 5, 6))
    rows = [0, 1, 2, 3]  # sorted by earliest arrival: A0 (0), A1 (0), B0 (5 ms), B1 (5 ms)

    def cat(f):
        return np.concatenate([getattr(a_tab, f), getattr(b_tab, f)])[rows]

    seg = wp.Segments(np.concatenate([a_tab.segments.ids, b_tab.segments.ids])[rows],
                      np.concatenate([a_tab.segments.lens, b_tab.segments.lens])[rows])
    prev = np.array([-1, 0, -1, 2])
    table = wp.SessionTable(cat("arrived_at"), cat("num_prefill"), cat("num_decode"), cat("session_id"),
                            cat("turn"), prev, cat("think_time_s"), seg, cat("answer_id"))
    (out,) = run([DeploymentConfig(replica_scheduler="vllm", prefix_caching=True)], [wp.session_workload(table, 16)])
    # 0: prefill A0 (40) -> a. a: prefill-only batch B0 (40) -> b = 2a. b: decodes A0, B0
    # together (2 tokens: it(2) = it(1)); A0 needs 29, B0 29 -> both complete at
    # c = b + 29 it(1). Their turns arrive at c (think 0) and each hits 4 blocks:
    # one prefill batch of 16 + 16 tokens -> c + it(32), then one decode -> + it(2).
    a = it(40)
    b = 2 * a
    c = b + 29 * it(1)
    r = out.requests
    np.testing.assert_allclose(r["arrived_at"], [0.0, c, 0.005, c], rtol=1e-6)
    np.testing.assert_allclose(r["first_token_at"], [a, c + it(32), b, c + it(32)], rtol=1e-6)
    np.testing.assert_allclose(r["completed_at"], [c, c + it(32) + it(2), c, c + it(32) + it(2)], rtol=1e-6)
    assert out.summary["prefill_tokens_saved"] == 128


def _chat_sessions(n_sessions=24, think=1.0, seed=0, turns=None, qps=4.0):
    key = jax.random.PRNGKey(seed)
    base = synthetic(key, 200, {"kind": "poisson", "qps": qps},
                     {"kind": "uniform", "min_tokens": 16, "max_tokens": 320, "prefill_to_decode_ratio": 2.0}, 4096)
    return wp.sessions_from(base, jax.random.fold_in(key, 1), n_sessions, turns or {"kind": "uniform", "min": 1,
                                                                                    "max": 6},
                            think, max_tokens=2048, block_size=16, system_prompt_tokens=64, num_system_prompts=2)


@pytest.mark.parametrize("policy,router,blocks", [("vllm", "lor", 200), ("sarathi", "round_robin", 200),
                                                  ("sarathi", "prefix_affinity", 120)])
def test_invariants(policy, router, blocks):
    """Every turn arrives exactly its think time after its previous turn completes; TTFT
    <= e2e; no block referenced at the end; free + cached == capacity; hits happen."""
    wl = _chat_sessions()
    states = []
    cfg = DeploymentConfig(replica_scheduler=policy, prefix_caching=True, num_blocks=blocks,
                           num_replicas=2, global_scheduler=router)
    (out,) = run([cfg], [wl], capture=states)
    _, _, st, i = states[-1]
    r = out.requests
    prev = np.asarray(wl.session_prev)
    later = prev >= 0
    assert later.sum() > 20
    assert out.summary["num_completed"] == wl.num_requests
    np.testing.assert_array_equal(r["arrived_at"][later], r["completed_at"][prev[later]]
                                  + np.asarray(wl.think_time_s)[later])
    assert (r["arrived_at"][later] >= r["completed_at"][prev[later]]).all()
    assert (r["arrived_at"] <= r["scheduled_at"]).all()
    assert (r["first_token_at"] - r["arrived_at"] <= r["completed_at"] - r["arrived_at"]).all()
    assert (np.asarray(st.pc_refs[i]) == 0).all()
    cached = (np.asarray(st.pc_hash[i]) >= 0).sum(axis=-1)
    assert (np.asarray(st.free_blocks[i]) + cached == blocks).all()
    assert (np.asarray(st.sess_req[i]) == -1).all()  # no turn left pending
    assert out.summary["prefix_hit_rate_requests"] > 0.5
    assert out.summary["session_time_p90"] >= out.summary["session_time_p50"] > 0


def test_batched_equals_single_config_path():
    """Configs of one vmapped call (lanes) get exactly what each gets alone (single path)."""
    wl = _chat_sessions()
    cfgs = [DeploymentConfig(replica_scheduler="vllm", prefix_caching=c, num_replicas=2, global_scheduler="lor")
            for c in (True, False)]
    both = run(cfgs, [wl, wl])
    for cfg, b in zip(cfgs, both, strict=True):
        (one,) = run([cfg], [wl])
        for k in ("arrived_at", "scheduled_at", "first_token_at", "completed_at"):
            np.testing.assert_allclose(one.requests[k], b.requests[k], rtol=1e-12, err_msg=k)


def test_workload_without_sessions_beside_one_with_equals_alone():
    """Sessions compiled in (another config of the call has them) change nothing for a
    config whose workload has none, whatever its router."""
    sess = _chat_sessions()
    key = jax.random.PRNGKey(3)
    plain = synthetic(key, 60, {"kind": "poisson", "qps": 6.0},
                      {"kind": "uniform", "min_tokens": 16, "max_tokens": 320, "prefill_to_decode_ratio": 2.0}, 4096)
    for router in ("round_robin", "lor"):
        cfg = DeploymentConfig(replica_scheduler="sarathi", num_replicas=2, global_scheduler=router)
        _, mixed = run([cfg, cfg], [sess, plain])
        (alone,) = run([cfg], [plain])
        for k in ("arrived_at", "scheduled_at", "first_token_at", "completed_at"):
            np.testing.assert_array_equal(mixed.requests[k], alone.requests[k], err_msg=k)
        assert np.isnan(alone.summary["num_sessions"])


def test_caching_cuts_the_later_turns_prefill():
    """Caching on vs off on the same sessions: later turns prefill only their new tokens
    (plus the partial block), so prefill_tokens_saved is the turns' conversation blocks."""
    wl = _chat_sessions(think=0.5)
    on, off = run([DeploymentConfig(replica_scheduler="sarathi", prefix_caching=c) for c in (True, False)], [wl, wl])
    prev = np.asarray(wl.session_prev)
    later = prev >= 0
    saved = on.summary["prefill_tokens_saved"]
    # a turn's reusable prefix: its parent's prompt + answer KV, full blocks only (at most
    # its own prompt - 1 token); the 64-token system prompt blocks are shared across sessions too
    p, d = np.asarray(wl.num_prefill), np.asarray(wl.num_decode)
    parent_blocks = ((p[prev] + d[prev] - 1) // 16)[later]
    assert saved >= (np.minimum(parent_blocks, (p[later] - 1) // 16) * 16).sum()
    ttft = lambda o: o.requests["first_token_at"] - o.requests["arrived_at"]  # noqa: E731
    assert np.median(ttft(on)[later]) < np.median(ttft(off)[later])


def test_trace_sessions_share_prefixes_and_close_the_loop():
    from vidur_jax.workload import make_workload

    wl = make_workload(np.array([0.0, 0.2, 0.3]), np.array([40, 80, 30]), np.array([30, 2, 5]))
    open_loop = wp.trace_sessions(wl, np.array([7, 7, 9]), None, 16)
    assert open_loop.session_prev is None
    h = np.asarray(open_loop.prefix_hashes)
    # turn 1's first 4 blocks are turn 0's conversation (40 + 30 tokens); row 2 shares nothing
    np.testing.assert_array_equal(h[1, :4], h[0, :4])
    assert not set(h[2][h[2] >= 0]) & set(h[0][h[0] >= 0])
    closed = wp.trace_sessions(wl, np.array([7, 7, 9]), np.array([0.0, 0.25, 0.0]), 16)
    assert np.asarray(closed.session_prev).tolist() == [-1, 0, -1]
    (out,) = run([DeploymentConfig(replica_scheduler="vllm", prefix_caching=True)], [closed])
    r = out.requests
    assert r["arrived_at"][1] == r["completed_at"][0] + 0.25
    assert out.summary["prefill_tokens_saved"] == 64


def test_fused_runs_equal_unfused_with_sessions():
    """The run cut at a completion with a next turn keeps fused == one iteration per step."""
    wl = _chat_sessions(think=0.0)
    cfg = DeploymentConfig(replica_scheduler="sarathi", prefix_caching=True, num_replicas=2,
                           global_scheduler="prefix_affinity")
    (fused,) = run([cfg], [wl])
    orig = run_mod.build.make_static

    def unfused(*a, **k):
        return dataclasses.replace(orig(*a, **k), fuse_iters=1)

    run_mod.build.make_static = unfused
    try:
        (plain,) = run([cfg], [wl])
    finally:
        run_mod.build.make_static = orig
    for k in ("arrived_at", "scheduled_at", "first_token_at", "completed_at"):
        np.testing.assert_allclose(fused.requests[k], plain.requests[k], rtol=1e-9, err_msg=k)
