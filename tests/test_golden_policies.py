"""Golden outputs: every replica policy, bit for bit, against a recording.

Each case runs small workloads (120 requests under memory pressure, so vLLM / Sarathi
preempt, S3 mispredicts, LightLLM forces prefills) through both simulator paths:

* ``single`` — one config alone: on the CPU, :func:`~vidur_jax.sim.engine.simulate_single`
  (the scatter-free event loop);
* ``batch`` — the case's configs (seeds, parallel sampling, two replicas, two pipeline
  stages) together: the vmapped :func:`~vidur_jax.sim.engine.simulate_batch`.

Every per-request timestamp and restart count, the TBT histogram and every summary
counter must equal the recording exactly. Each path is compared with its own recording:
single and batched Sarathi may differ by an f32 rounding of one iteration time (README).

Nothing here depends on the shipped predictor parameters: timing comes from a fixed
analytic :class:`~vidur_jax.sim.tables.LinearPredictor`, memory from explicit
``num_blocks``. The recording was made at commit 6841d9b (before the policies became
modules) with::

    PYTHONPATH=$PWD python tests/test_golden_policies.py --record

Re-record only for an intended change of results, and say so in the commit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs
from vidur_jax.sim.tables import LinearPredictor
from vidur_jax.workload import make_workload

GOLDEN = Path(__file__).parent / "golden" / "policies.npz"

#: 10 ms + 0.1 ms per token per iteration (32 layers), attention growing with KV and
#: chunk^2, and a send/recv cost so pipeline stages are not free.
PRED = LinearPredictor(
    per_token_ms=0.1 / 32,
    fixed_ms=10.0 / 32,
    decode_ms_per_kv=1e-5,
    prefill_ms_per_token2=1e-7,
    ops=("mlp_up_proj", "send_recv"),
)

REQUEST_FIELDS = ("scheduled_at", "first_token_at", "completed_at", "num_restarts")
COUNTERS = (
    "tbt_sum_s",
    "tbt_count",
    "num_batches",
    "batch_size_sum",
    "kv_util_sum",
    "busy_time_s",
    "flops_sum",
    "num_steps",
    "restart_tokens",
)


def workload(seed: int, n: int = 120, qps: float = 25.0, seqs: bool = False):
    """``n`` Poisson arrivals, prompts of 1..600 tokens, outputs of 1..80 tokens."""
    rng = np.random.default_rng(1000 + seed)
    arrivals = np.cumsum(rng.exponential(1.0 / qps, n))
    prefill = rng.integers(1, 600, n)
    decode = rng.integers(1, 80, n)
    num_seqs = rng.integers(1, 4, n) if seqs else None
    return make_workload(arrivals, prefill, decode, num_seqs=num_seqs)


def config(policy: str, **kw) -> DeploymentConfig:
    """A small replica: 8 requests, 120 blocks of 16 tokens (memory pressure)."""
    base = dict(
        replica_scheduler=policy,
        batch_size_cap=8,
        chunk_size=256,
        max_tokens=1024,
        num_blocks=120,
        block_size=16,
        max_tokens_in_batch=1024,
    )
    if policy == "lightllm":  # Vidur's LightLLM needs one-token blocks
        base.update(block_size=1, num_blocks=1920)
    if policy == "static_batching":
        base.update(batch_timeout_s=0.05, batch_max_tokens=2048)
    if policy == "s3":  # buckets of 26 output tokens, a predictor wrong half of the time
        base.update(s3_num_buckets=40, s3_predictor="confusion", s3_accuracy=0.5)
    base.update(kw)
    return DeploymentConfig(**base)


class Lane(NamedTuple):
    """One config of a case: its knobs, whether its requests sample several sequences,
    and whether it also runs alone (the single path)."""

    config: DeploymentConfig
    seqs: bool = False
    single: bool = True


def _cases() -> dict[str, list[Lane]]:
    """name -> lanes run together in one vmapped call (one compile per case and path).

    Variants that are numbers (seed, parallel sampling, replicas under round robin,
    pipeline stages) share a case; only a new router needs a case (and a compile) of its
    own. A lane whose shape differs from the others (more replicas or stages) runs on the
    batched path only, except the PP case, which runs alone too.
    """
    cases: dict[str, list[Lane]] = {}
    for policy in (
        "vllm",
        "sarathi",
        "orca",
        "faster_transformer",
        "lightllm",
        "static_batching",
        "s3",
    ):
        lanes = [Lane(config(policy, seed=0)), Lane(config(policy, seed=1))]
        # LightLLM supports neither pipeline parallelism nor, in its memory estimate,
        # several sequences per request (it runs out of memory: Vidur's OOM error)
        if policy != "lightllm":
            lanes.append(Lane(config(policy, num_blocks=200, seed=2), seqs=True))
            lanes.append(Lane(config(policy, num_pipeline_stages=2, seed=3), single=False))
        lanes.append(Lane(config(policy, num_replicas=2, seed=4), single=False))
        if policy == "s3":
            lanes.append(Lane(config("s3", s3_admission="fcfs", seed=5)))
        cases[policy] = lanes
    cases["sarathi_pp2"] = [Lane(config("sarathi", num_pipeline_stages=2, seed=6))]
    cases["sarathi_lor"] = [
        Lane(config("sarathi", num_replicas=3, global_scheduler="lor", seed=s)) for s in (7, 8)
    ]
    return cases


CASES = _cases()


def _flatten(prefix: str, out) -> dict[str, np.ndarray]:
    rec = {f"{prefix}/{f}": np.asarray(out.requests[f]) for f in REQUEST_FIELDS}
    rec[f"{prefix}/tbt_hist"] = np.asarray(out.tbt_hist)
    rec[f"{prefix}/counters"] = np.array([out.counters[c] for c in COUNTERS], np.float64)
    rec[f"{prefix}/batch_size_max"] = np.array(out.summary["batch_size_max"], np.float64)
    return rec


def run_case(name: str) -> dict[str, np.ndarray]:
    """Outputs of case ``name`` on both paths, flattened to ``{key: array}``."""
    lanes = CASES[name]
    cfgs = [lane.config for lane in lanes]
    wls = [workload(lane.config.seed, seqs=lane.seqs) for lane in lanes]
    rec: dict[str, np.ndarray] = {}
    for i, (lane, w) in enumerate(zip(lanes, wls, strict=True)):
        if lane.single:
            (out,) = simulate_configs([lane.config], [w], predictor_for=lambda _: PRED)
            rec.update(_flatten(f"{name}/single/{i}", out))
    if len(lanes) > 1:
        for i, out in enumerate(simulate_configs(cfgs, wls, predictor_for=lambda _: PRED)):
            rec.update(_flatten(f"{name}/batch/{i}", out))
    return rec


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return dict(data)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_recording(name, golden):
    got = run_case(name)
    want = {k: v for k, v in golden.items() if k.startswith(f"{name}/")}
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key, strict=True)


def test_cases_exercise_what_they_claim(golden):
    """The recording holds preemptions, S3 re-reservations and finished requests."""
    restarts = {name: int(golden[f"{name}/single/0/num_restarts"].sum()) for name in CASES}
    assert restarts["vllm"] > 0 and restarts["sarathi"] > 0 and restarts["s3"] > 0
    assert restarts["sarathi_pp2"] > 0
    for key, value in golden.items():
        if key.endswith("/completed_at"):
            assert np.isfinite(value).all(), key


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_golden_policies.py --record")
    GOLDEN.parent.mkdir(exist_ok=True)
    recording: dict[str, np.ndarray] = {}
    for case in CASES:
        recording.update(run_case(case))
    np.savez_compressed(GOLDEN, **recording)
    print(f"wrote {len(recording)} arrays for {len(CASES)} cases to {GOLDEN}")
