"""Shared toy setup of the hand-worked engine tests (prefix caching, sessions, pools).

Timing as in tests/test_sim_toy.py: with :data:`PRED` every iteration on one A100 takes
``10 ms + 0.1 ms x T8`` (T8 the batch's token count rounded up to a multiple of 8,
:func:`it`), attention costs nothing. KV transfers between pools: Llama-2-7B keeps
2 (K, V) x 2 bytes x 128 x 32 heads x 32 layers = 524,288 bytes per token
(:data:`KV_BYTES`, on one GPU at TP1 PP1), moved at the link's bandwidth plus
``kv_transfer_latency_s`` (:data:`LATENCY`, 0.1 ms; :func:`xfer`).
"""

from __future__ import annotations

import numpy as np

from vidur_jax.sim import run as run_mod
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs
from vidur_jax.sim.tables import LinearPredictor
from vidur_jax.workload import prefix as wp

PRED = LinearPredictor(per_token_ms=0.1 / 32, fixed_ms=10.0 / 32)
KV_BYTES = 2 * 2 * 128 * 32 * 32  # per token, Llama-2-7B, whole model
LATENCY = 1e-4
#: iteration times come from float32 timing tables: measured relative error 7e-8 on the
#: toy timestamps, checked at 1e-6 (as tests/test_sim_toy.py)
RTOL = 1e-6


def it(tokens: int) -> float:
    """Iteration seconds for a batch of ``tokens`` tokens on one A100 (:data:`PRED`)."""
    t8 = -(-tokens // 8) * 8
    return (10.0 + 0.1 * t8) * 1e-3


def xfer(tokens: int, gbps: float = 300.0) -> float:
    """KV transfer seconds of a ``tokens``-token prompt (A100 NVLink 300 GB/s by default)."""
    return LATENCY + tokens * KV_BYTES / (gbps * 1e9)


def pooled(p: int = 1, d: int = 1, **kw) -> DeploymentConfig:
    """A config with ``p`` prefill and ``d`` decode replicas (vLLM unless ``kw`` says)."""
    kw.setdefault("replica_scheduler", "vllm")
    return DeploymentConfig(num_replicas=p + d, prefill_replicas=p, decode_replicas=d, **kw)


def run(cfgs, wls, capture=None, predictor_for=None):
    """``simulate_configs`` with :data:`PRED` (or ``predictor_for``); with a ``capture``
    list, each config's final state is appended to it as ``(cfg, wl, state, i)``."""
    if capture is not None:  # keep every config's final state
        orig = run_mod._config_output

        def keep(cfg, wl, state, i):
            capture.append((cfg, wl, state, i))
            return orig(cfg, wl, state, i)

        run_mod._config_output = keep
    try:
        return simulate_configs(
            list(cfgs), list(wls), predictor_for=predictor_for or (lambda c: PRED)
        )
    finally:
        if capture is not None:
            run_mod._config_output = orig


def check(out, scheduled, first, completed, arrived=None, atol=1e-9):
    """Requests' timestamps (s) equal the hand-worked ones within :data:`RTOL` / ``atol``."""
    cols = {"scheduled_at": scheduled, "first_token_at": first, "completed_at": completed}
    if arrived is not None:
        cols = {"arrived_at": arrived, **cols}
    for k, v in cols.items():
        np.testing.assert_allclose(out.requests[k], v, rtol=RTOL, atol=atol, err_msg=k)


def two_turns(think=0.5, start=0.0, sid=0, ids=(1, 2, 3)):
    """One session: turn 0 = 40-token message (id ids[0]), 30-token answer (ids[1]);
    turn 1 = that conversation (70) + a 10-token message (ids[2]), 2-token answer."""
    seg = wp.Segments(
        np.array([[ids[0], -1, -1], [ids[0], ids[1], ids[2]]]), np.array([[40, 0, 0], [40, 30, 10]])
    )
    return wp.SessionTable(
        arrived_at=np.array([start, start + think]),
        num_prefill=np.array([40, 80]),
        num_decode=np.array([30, 2]),
        session_id=np.array([sid, sid]),
        turn=np.array([0, 1]),
        session_prev=np.array([-1, 0]),
        think_time_s=np.array([0.0, think]),
        segments=seg,
        answer_id=np.array([ids[1], 99]),
    )
