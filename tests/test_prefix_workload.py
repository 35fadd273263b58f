"""Prefix structure of workloads: KV-block hashes, system prompts, sessions, traces."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from vidur_jax.errors import ConfigError
from vidur_jax.workload import prefix
from vidur_jax.workload.prefix import NO_BLOCK, Segments


def _segs(rows):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), -1, np.int64)
    lens = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        for j, (sid, n) in enumerate(r):
            ids[i, j], lens[i, j] = sid, n
    return Segments(ids, lens)


def test_blocks_are_shared_exactly_while_the_prefix_is():
    # block_size 16. A and B share a 40-token system prompt (id 7), then differ.
    # Blocks ending at 16 and 32 lie in the system prompt: shared. The block ending at
    # 48 holds 8 system tokens + 8 own tokens: different. C (45 tokens) has 2 full blocks.
    # D has the same content as A but no system prompt segment: its first segment is
    # A's own part, so nothing is shared with A. E has A's own part after another system
    # prompt: a block is identified by its whole prefix, so E shares nothing with A.
    h = prefix.block_hashes(
        _segs(
            [
                [(7, 40), (100, 30)],
                [(7, 40), (101, 30)],
                [(7, 40), (102, 5)],
                [(100, 70)],
                [(8, 40), (100, 30)],
            ]
        ),
        block_size=16,
        max_blocks=5,
    )
    a, b, c, d, e = h
    assert not set(e[:4]) & set(a[:4])
    assert (a[:2] == b[:2]).all() and (a[:2] == c[:2]).all()
    assert a[2] != b[2]
    assert list(c[2:]) == [NO_BLOCK] * 3  # 45 tokens: blocks ending at 48.. are not full
    assert list(a[4:]) == [NO_BLOCK]  # 70 tokens: the block ending at 80 is not full
    assert (a[:4] >= 0).all()
    assert not set(d[:4]) & set(a[:4])
    assert len(set(a[:4])) == 4  # distinct positions give distinct hashes


def test_empty_segments_change_nothing():
    with_gap = prefix.block_hashes(_segs([[(-1, 0), (5, 64)]]), 16, 4)
    without = prefix.block_hashes(_segs([[(5, 64)]]), 16, 4)
    assert (with_gap == without).all()


def test_system_prompts_fraction_and_choice():
    p = np.full(1000, 100)
    segs = prefix.system_prompts(
        jax.random.PRNGKey(0), p, num_prompts=3, prompt_tokens=64, fraction=0.25
    )
    has = segs.lens[:, 0] > 0
    # 1000 Bernoulli(0.25) draws: 5 standard deviations are 68 requests
    assert abs(has.sum() - 250) < 69
    assert set(np.unique(segs.ids[has, 0])) == {0, 1, 2}
    assert (segs.prompt_tokens == np.where(has, 164, 100)).all()
    h = prefix.block_hashes(segs, 16, 10)
    same = has & (segs.ids[:, 0] == segs.ids[has][0, 0])
    # every request with the same system prompt shares its 4 leading blocks, no more
    assert len({tuple(r) for r in h[same, :4]}) == 1
    assert len({r for r in h[same, 4]}) == same.sum()
    with pytest.raises(ConfigError, match="fraction"):
        prefix.system_prompts(jax.random.PRNGKey(0), p, 3, 64, fraction=1.5)


def test_sessions_grow_the_conversation_and_share_it():
    # Two sessions of 3 turns; user messages 20, 21, 22, 23, 24, 25 tokens and
    # answers 30..35, consumed in session order. Session 0's prompts are
    # 20, 20+30+21 = 71, 71+31+22 = 124 tokens; session 1's 23, 23+33+24 = 80,
    # 80+34+25 = 139.
    t = prefix.sessions(
        jax.random.PRNGKey(1),
        session_starts=np.array([0.0, 0.5]),
        turns={"kind": "fixed", "n": 3},
        user_tokens=np.arange(20, 26),
        answer_tokens=np.arange(30, 36),
        think_time_s=2.0,
        max_tokens=4096,
    )
    by = {(int(s), int(k)): i for i, (s, k) in enumerate(zip(t.session_id, t.turn, strict=True))}
    assert [int(t.num_prefill[by[0, k]]) for k in range(3)] == [20, 71, 124]
    assert [int(t.num_prefill[by[1, k]]) for k in range(3)] == [23, 80, 139]
    assert [int(t.num_decode[by[0, k]]) for k in range(3)] == [30, 31, 32]
    assert t.session_prev[by[0, 0]] == -1 and t.session_prev[by[0, 2]] == by[0, 1]
    assert (np.diff(t.arrived_at) >= 0).all()
    # earliest arrival = previous turn's + think time
    i = by[1, 2]
    assert t.arrived_at[i] == pytest.approx(t.arrived_at[t.session_prev[i]] + t.think_time_s[i])
    h = prefix.block_hashes(t.segments, 16, 8)
    # turn 2 of session 0 (124 tokens, 7 full blocks) starts with turn 1's 4 full blocks
    # (71 tokens), and turn 1 with turn 0's one full block (20 tokens)
    assert (h[by[0, 2], :4] == h[by[0, 1], :4]).all()
    assert h[by[0, 1], 0] == h[by[0, 0], 0]
    assert h[by[0, 0], 1] == NO_BLOCK
    assert not set(h[by[1, 2]]) - {NO_BLOCK} & set(h[by[0, 2]])


def test_sessions_stop_at_the_context_limit():
    t = prefix.sessions(
        jax.random.PRNGKey(0),
        np.array([0.0]),
        {"kind": "fixed", "n": 5},
        np.full(5, 100),
        np.full(5, 100),
        1.0,
        max_tokens=450,
    )
    # prompts 100 (+100 answer = 200), 300 (+100 = 400), then 500 > 450: stops
    assert list(t.num_prefill) == [100, 300]


def test_trace_block_ids_mooncake_format():
    # 512-token trace blocks, 16-token KV blocks: requests with ids [1, 2, 3] and
    # [1, 2, 4] share 64 KV blocks (two trace blocks) and no more.
    h = prefix.hashes_from_trace_blocks(
        [[1, 2, 3], [1, 2, 4]],
        np.array([1500, 1536]),
        hash_block_tokens=512,
        block_size=16,
        max_blocks=96,
    )
    assert (h[0, :64] == h[1, :64]).all()
    assert not (h[0, 64:93] == h[1, 64:93]).any()
    assert h[0, 93] == NO_BLOCK and h[1, 95] != NO_BLOCK  # 1500 // 16 = 93 full blocks
