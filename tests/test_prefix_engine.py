"""Prefix caching in the engine: hand-worked toy cases, invariants, vmap == single, off == today.

Timing as in tests/test_sim_toy.py: every iteration takes ``10 ms + 0.1 ms x T8`` (T8 the
batch's token count rounded up to a multiple of 8), attention costs nothing, so a prefill
that skips cached tokens is shorter by exactly their share of T8. Block size 16.
Prompts are a system prompt segment (content id 7 or 8, 32 tokens = 2 full blocks) and
the request's own 8 tokens: 40 tokens, 3 blocks (the last one partial, never shared).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from toy_configs import PRED, check, it, run

from vidur_jax.errors import ConfigError
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.workload import make_workload, synthetic, with_system_prompts
from vidur_jax.workload import prefix as wp


def toy(arrivals, system_ids, num_decode, own=None):
    """Requests of 32 system-prompt tokens (content ``system_ids``) + ``own`` (8) own tokens."""
    n = len(arrivals)
    own = np.full(n, 8) if own is None else np.array(own)
    wl = make_workload(np.array(arrivals), 32 + own, np.array(num_decode))
    seg = wp.Segments(
        np.stack([np.array(system_ids), 100 + np.arange(n)], axis=1),
        np.stack([np.full(n, 32), own], axis=1),
    )
    return wl.replace(prefix_hashes=wp.block_hashes(seg, 16, 2))


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_second_request_with_same_system_prompt_prefills_only_its_own_tokens(policy):
    wl = toy([0.0, 0.1], [7, 7], [2, 2])
    on, off = run(
        [DeploymentConfig(replica_scheduler=policy, prefix_caching=c) for c in (True, False)],
        [wl, wl],
    )
    # R0: prefill 40 tokens, then 1 decode. Its 2 system-prompt blocks are published at
    # its first token and stay cached (unreferenced) after it completes.
    # R1 at 100 ms: 2 blocks hit -> prefills 8 tokens (not 40), then 1 decode.
    check(on, [0.0, 0.1], [it(40), 0.1 + it(8)], [it(40) + it(1), 0.1 + it(8) + it(1)])
    check(off, [0.0, 0.1], [it(40), 0.1 + it(40)], [it(40) + it(1), 0.1 + it(40) + it(1)])
    s = on.summary
    assert s["prefix_hit_rate_tokens"] == pytest.approx(32 / 80)
    assert s["prefix_hit_rate_requests"] == pytest.approx(0.5)
    assert s["prefill_tokens_saved"] == 32
    assert all(
        np.isnan(off.summary[k])
        for k in ("prefix_hit_rate_tokens", "prefix_hit_rate_requests", "prefill_tokens_saved")
    )


def test_eviction_lru_when_memory_is_short():
    # 5 KV blocks. R0 (prompt A + 8 tokens: 3 blocks) completes: A's 2 blocks stay
    # cached, 3 free. R1 (prompt B + 40 tokens = 72: 5 blocks, 1 output token) at 100 ms:
    # free 3 + evictable 2 = 5 -> admitted, both A blocks evicted; it completes at its
    # prefill. R2 (prompt A) at 200 ms finds nothing (B is cached now): full prefill.
    # With 8 blocks nothing is evicted and R2 hits A (8 tokens to prefill).
    wl = toy([0.0, 0.1, 0.2], [7, 8, 7], [2, 1, 2], own=[8, 40, 8])
    small, big = run(
        [
            DeploymentConfig(replica_scheduler="vllm", prefix_caching=True, num_blocks=n)
            for n in (5, 8)
        ],
        [wl, wl],
    )
    r1 = 0.1 + it(72)
    check(
        small,
        [0.0, 0.1, 0.2],
        [it(40), r1, 0.2 + it(40)],
        [it(40) + it(1), r1, 0.2 + it(40) + it(1)],
    )
    assert small.summary["prefill_tokens_saved"] == 0
    check(
        big, [0.0, 0.1, 0.2], [it(40), r1, 0.2 + it(8)], [it(40) + it(1), r1, 0.2 + it(8) + it(1)]
    )
    assert big.summary["prefill_tokens_saved"] == 32


def test_preempted_request_finds_its_cached_prefix_on_restart():
    # 5 blocks, vLLM. R0 at 0, R1 at 5 ms, both prompt A, 12 output tokens each.
    # 0: prefill R0 (40) -> a = 14 ms; A published (R0 holds 2 shared + 1 private).
    # a: prefill-only batch R1: 2 hits (shared, no memory) -> 8 tokens -> b = a + it(8);
    #    R1 holds 1 private block; free = 5 - 2 - 1 - 1 = 1.
    # b: decodes of both (it(2) each); after 8 of them both hold 49 tokens (> 3 blocks):
    #    R0 takes the free block, R1 finds none and is preempted (restart by recompute,
    #    prefill := 49); its A references are released, the blocks stay cached (R0 uses them).
    #    R1's re-admission needs 4 - 2 = 2 blocks, 1 is free: R0 decodes alone for its
    #    last 3 tokens -> c = b + 11 it(1), R0 completes, A is evictable, 3 blocks free.
    # c: R1 re-admitted: A hits (2 blocks) -> prefills 49 - 32 = 17 tokens -> c + it(17),
    #    then 2 decodes (50 -> 52 tokens).
    wl = toy([0.0, 0.005], [7, 7], [12, 12])
    (out,) = run(
        [DeploymentConfig(replica_scheduler="vllm", prefix_caching=True, num_blocks=5)], [wl]
    )
    a = it(40)
    b = a + it(8)
    c = b + 11 * it(1)
    check(out, [0.0, a], [a, b], [c, c + it(17) + 2 * it(1)])
    assert out.requests["num_restarts"].tolist() == [0, 1]
    assert out.summary["prefill_tokens_saved"] == 64  # R1's admission and its re-admission
    # (without the cache R1 would recompute all 49 tokens on restart: it(49) > it(17))


def _chat(n=160, qps=8.0, seed=0, fraction=0.8, tokens=256):
    import jax

    key = jax.random.PRNGKey(seed)
    wl = synthetic(
        key,
        n,
        {"kind": "poisson", "qps": qps},
        {
            "kind": "zipf",
            "theta": 0.6,
            "scramble": False,
            "min_tokens": 32,
            "max_tokens": 1024,
            "prefill_to_decode_ratio": 4.0,
        },
        2048,
    )
    return with_system_prompts(
        wl,
        jax.random.fold_in(key, 1),
        num_prompts=3,
        tokens=tokens,
        fraction=fraction,
        block_size=16,
        max_tokens=2048,
    )


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_invariants_under_memory_pressure(policy):
    """Many requests, 3 system prompts, memory tight enough to preempt and evict:
    no overcommit (ERR_PREFIX would raise), every reference released at the end,
    free + cached == capacity, TTFT <= e2e, and hits save prefill tokens."""
    wl = _chat()
    states = []
    cfg = DeploymentConfig(replica_scheduler=policy, prefix_caching=True, num_blocks=160)
    (out,) = run([cfg], [wl], capture=states)
    _, _, st, i = states[-1]
    refs = np.asarray(st.pc_refs[i])
    cached = (np.asarray(st.pc_hash[i]) >= 0).sum(axis=-1)
    assert (refs == 0).all()
    assert (np.asarray(st.free_blocks[i]) + cached == 160).all()
    assert (np.asarray(st.slot_held[i]) == 0).all()
    r = out.requests
    assert out.summary["num_completed"] == 160
    assert (r["first_token_at"] - r["arrived_at"] <= r["completed_at"] - r["arrived_at"]).all()
    assert out.summary["recomputed_tokens"] > 0  # memory pressure did preempt
    assert 0.3 < out.summary["prefix_hit_rate_requests"] <= 1.0
    assert out.summary["prefill_tokens_saved"] > 0


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_caching_on_without_shared_prefixes_equals_off(policy):
    """Caching on with unique prompts (no hit possible without preemption) reproduces
    caching off bit for bit, although the cached blocks fill memory and are evicted.
    (Under preemption a restarted request does hit its own cached prompt.)"""
    wl = _chat(fraction=0.0)
    # no system prompt: every request's blocks hold its own (unique) tokens
    h = np.asarray(wl.prefix_hashes)
    assert len({x for x in h.ravel() if x >= 0}) == (h >= 0).sum() > 0
    blocks = 1000
    assert (np.asarray(wl.num_prefill) // 16).sum() > blocks  # published blocks overflow memory
    on, off = run(
        [
            DeploymentConfig(replica_scheduler=policy, prefix_caching=c, num_blocks=blocks)
            for c in (True, False)
        ],
        [wl, wl],
    )
    assert off.summary["recomputed_tokens"] == 0
    for k in ("scheduled_at", "first_token_at", "completed_at", "num_restarts"):
        np.testing.assert_array_equal(on.requests[k], off.requests[k])
    assert on.summary["prefill_tokens_saved"] == 0


def test_batched_equals_single_config_path():
    wl = _chat()
    cfgs = [
        DeploymentConfig(replica_scheduler="sarathi", prefix_caching=True, num_blocks=n)
        for n in (160, 400)
    ]
    both = run(cfgs, [wl, wl])
    for cfg, b in zip(cfgs, both, strict=True):
        (one,) = run([cfg], [wl])
        for k in ("scheduled_at", "first_token_at", "completed_at"):
            np.testing.assert_allclose(one.requests[k], b.requests[k], rtol=1e-12)
        assert one.summary["prefill_tokens_saved"] == b.summary["prefill_tokens_saved"]


def test_mixed_group_off_config_equals_alone():
    """A config with caching off simulated beside one with it on gets today's results."""
    wl = _chat()
    on = DeploymentConfig(replica_scheduler="vllm", prefix_caching=True, num_blocks=160)
    off = dataclasses.replace(on, prefix_caching=False)
    _, mixed_off = run([on, off], [wl, wl])
    (alone,) = run([off], [wl])
    for k in ("scheduled_at", "first_token_at", "completed_at"):
        np.testing.assert_allclose(mixed_off.requests[k], alone.requests[k], rtol=1e-12)


def test_unsupported_policy_and_missing_prefixes_are_refused():
    wl = toy([0.0], [7], [2])
    with pytest.raises(ConfigError, match="does not support prefix_caching"):
        run([DeploymentConfig(replica_scheduler="orca", prefix_caching=True)], [wl])
    with pytest.raises(ConfigError, match="needs a workload with shared prefixes"):
        run(
            [DeploymentConfig(replica_scheduler="vllm", prefix_caching=True)],
            [make_workload(np.array([0.0]), np.array([40]), np.array([2]))],
        )


def test_plan_scheduler_list_matches_policies():
    from vidur_jax.plan.deployment import PREFIX_CACHING_SCHEDULERS
    from vidur_jax.sim import policies

    assert set(PREFIX_CACHING_SCHEDULERS) == {
        n for n in policies.POLICIES if policies.get(n).prefix_caching
    }


def test_prefix_affinity_routes_to_the_replica_caching_the_prompt():
    # 2 replicas. R0 (prompt A) and R1 (prompt B) arrive together at 0: R0 -> replica 0,
    # R1 -> replica 1 (LOR: R0 waits at replica 0), each computes 40 tokens. R2 (B) at
    # 300 ms and R3 (A) at 400 ms find both replicas idle: LOR sends both to replica 0
    # (R2 misses B there: 40 tokens; R3 hits A: 8), prefix affinity sends R2 to replica 1
    # where B is cached (8 tokens) and R3 to replica 0 (8 tokens).
    wl = toy([0.0, 0.0, 0.3, 0.4], [7, 8, 8, 7], [2, 2, 2, 2])
    aff, lor = run(
        [
            DeploymentConfig(
                replica_scheduler="vllm", prefix_caching=True, num_replicas=2, global_scheduler=g
            )
            for g in ("prefix_affinity", "lor")
        ],
        [wl, wl],
    )
    done = lambda a, p: a + it(p) + it(1)  # noqa: E731
    check(
        aff,
        [0.0, 0.0, 0.3, 0.4],
        [it(40), it(40), 0.3 + it(8), 0.4 + it(8)],
        [done(0, 40), done(0, 40), done(0.3, 8), done(0.4, 8)],
    )
    check(
        lor,
        [0.0, 0.0, 0.3, 0.4],
        [it(40), it(40), 0.3 + it(40), 0.4 + it(8)],
        [done(0, 40), done(0, 40), done(0.3, 40), done(0.4, 8)],
    )
    assert aff.summary["prefix_hit_rate_requests"] == pytest.approx(0.5)
    assert lor.summary["prefix_hit_rate_requests"] == pytest.approx(0.25)


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_single_config_loop_stays_scatter_free_with_caching(policy):
    """The single-config event loop (caching and prefix-affinity routing on) holds no
    scatter, so XLA:CPU still compiles it into one kernel (tests/test_indexed.py)."""
    import jax

    from vidur_jax.sim import build
    from vidur_jax.sim.engine import simulate_single

    wl = toy([0.0, 0.1], [7, 7], [2, 2])
    cfg = DeploymentConfig(
        replica_scheduler=policy,
        prefix_caching=True,
        num_replicas=2,
        global_scheduler="prefix_affinity",
    )
    d = build.derive(cfg)
    static = build.make_static([cfg], [d], wl.num_requests, num_slots=8)
    static = dataclasses.replace(static, **build.prefix_static([cfg], [d], [wl]))
    assert static.prefix_capacity == d.num_blocks and static.prefix_blocks == 2
    tables, index = build.build_tables([cfg], build.table_spec_for([cfg], 8), lambda c: PRED)
    params = build.stack_params([build.build_params(cfg, d, wl, index[0], wl.num_requests, 2)])
    jaxpr = jax.make_jaxpr(lambda t, p: simulate_single(static, t, p))(tables, params)
    text = str(jaxpr)
    assert "scatter" not in text
