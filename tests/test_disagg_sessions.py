"""Closed-loop sessions on disaggregated prefill/decode pools: each turn is prefilled in
the prefill pool, its KV transferred, decoded in the decode pool, and the session's next
turn arrives its think time after that decode completes (or after the prefill, for a
turn with one output token, which completes in the prefill pool).

Timing as in tests/toy_configs.py: every A100 iteration takes ``10 ms + 0.1 ms x T8``
(T8 the batch's tokens rounded up to a multiple of 8), attention costs nothing. The two
A100 TP1 replicas (1 prefill, 1 decode) share a node: KV moves over NVLink at 300 GB/s,
524,288 bytes per token (Llama-2-7B) + 0.1 ms per transfer (``xfer``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from toy_configs import check, it, pooled, run, two_turns, xfer

from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.workload import prefix as wp
from vidur_jax.workload import synthetic


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
def test_turns_prefill_in_one_pool_decode_in_the_other_and_close_the_loop(policy):
    """Turn 0 (40-token prompt, 30 output tokens) arrives at 0 on the prefill replica:
    first token at a = it(40); its KV lands at a + xfer(40); 29 decode iterations on the
    decode replica: c0 = a + xfer(40) + 29 it(1). Turn 1 (80-token prompt, 2 tokens)
    arrives at t1 = c0 + 0.5 (think time after the decode pool completes turn 0), is
    prefilled in the prefill pool (first token t1 + it(80), no cache: pools run without
    prefix caching) and decoded once: t1 + it(80) + xfer(80) + it(1)."""
    wl = wp.session_workload(two_turns(think=0.5), 16)
    (out,) = run([pooled(replica_scheduler=policy)], [wl])
    a = it(40)
    c0 = a + xfer(40) + 29 * it(1)
    t1 = c0 + 0.5
    f1 = t1 + it(80)
    check(out, [0.0, t1], [a, f1], [c0, f1 + xfer(80) + it(1)], arrived=[0.0, t1])
    np.testing.assert_allclose(out.requests["kv_transfer_s"], [xfer(40), xfer(80)], rtol=1e-9)
    assert out.summary["num_sessions"] == 1


def test_a_turn_completed_in_the_prefill_pool_sends_the_next():
    """Turn 0 has one output token: it completes in the prefill pool at a = it(40) (no
    transfer), and turn 1 (40 + 1 + 10 = 51 tokens, 2 output tokens) arrives at a + 0.25."""
    seg = wp.Segments(np.array([[1, -1, -1], [1, 2, 3]]), np.array([[40, 0, 0], [40, 1, 10]]))
    table = wp.SessionTable(
        arrived_at=np.array([0.0, 0.25]),
        num_prefill=np.array([40, 51]),
        num_decode=np.array([1, 2]),
        session_id=np.array([0, 0]),
        turn=np.array([0, 1]),
        session_prev=np.array([-1, 0]),
        think_time_s=np.array([0.0, 0.25]),
        segments=seg,
        answer_id=np.array([2, 99]),
    )
    (out,) = run([pooled()], [wp.session_workload(table, 16)])
    a = it(40)
    t1 = a + 0.25
    f1 = t1 + it(51)
    check(out, [0.0, t1], [a, f1], [a, f1 + xfer(51) + it(1)], arrived=[0.0, t1])
    assert np.isnan(out.requests["kv_transfer_s"][0])


def _chat(seed=0):
    key = jax.random.PRNGKey(seed)
    base = synthetic(
        key,
        120,
        {"kind": "poisson", "qps": 6.0},
        {"kind": "uniform", "min_tokens": 16, "max_tokens": 320, "prefill_to_decode_ratio": 2.0},
        4096,
    )
    return wp.sessions_from(
        base,
        jax.random.fold_in(key, 1),
        16,
        {"kind": "uniform", "min": 1, "max": 5},
        0.5,
        max_tokens=2048,
        block_size=16,
    )


def test_invariants_and_vmap_equals_single():
    """2 prefill : 2 decode (LOR) on chat sessions: every turn completes and arrives
    exactly its think time after its previous turn completes; TTFT <= e2e; transfers
    only for turns with more than one output token; no turn left pending. A pooled and a
    colocated config in one vmapped call get what each gets alone."""
    wl = _chat()
    cfg = pooled(2, 2, global_scheduler="lor")
    colo = DeploymentConfig(replica_scheduler="vllm", num_replicas=4, global_scheduler="lor")
    states = []
    out, out_colo = run([cfg, colo], [wl, wl], capture=states)
    r = out.requests
    prev = np.asarray(wl.session_prev)
    later = prev >= 0
    assert later.sum() > 10
    assert out.summary["num_completed"] == wl.num_requests
    np.testing.assert_array_equal(
        r["arrived_at"][later], r["completed_at"][prev[later]] + np.asarray(wl.think_time_s)[later]
    )
    assert (r["first_token_at"] <= r["completed_at"]).all()
    assert (np.isfinite(r["kv_transfer_s"]) == (np.asarray(wl.num_decode) > 1)).all()
    _, _, st, i = states[0]
    assert (np.asarray(st.sess_req[i]) == -1).all()
    for c, both in ((cfg, out), (colo, out_colo)):
        (one,) = run([c], [wl])
        for k in ("arrived_at", "scheduled_at", "first_token_at", "completed_at"):
            np.testing.assert_allclose(one.requests[k], both.requests[k], rtol=1e-12, err_msg=k)
