"""Many configs: chunked execution, sharding over devices, memory planning, progress."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vidur_jax.errors import ConfigError
from vidur_jax.sim import build
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import estimated_steps, plan_chunk, simulate_configs, state_bytes_per_config
from vidur_jax.sim.tables import LinearPredictor
from vidur_jax.workload import make_workload

PRED = LinearPredictor(per_token_ms=0.1 / 32, fixed_ms=10.0 / 32, decode_ms_per_kv=1e-5)


def _workload(seed, n=30, qps=10.0):
    rng = np.random.default_rng(seed)
    return make_workload(np.cumsum(rng.exponential(1 / qps, n)), rng.integers(1, 400, n), rng.integers(1, 40, n))


def _configs(n):
    return [DeploymentConfig(replica_scheduler="vllm", batch_size_cap=c, seed=i)
            for i, c in zip(range(n), [8, 16, 32] * n)]


def test_lane_pool_equals_one_call():
    """5 configs on a pool of 2 lanes (refilled as configs finish, longest first) give
    exactly the one-call results, in input order."""
    cfgs = _configs(5)
    wls = [_workload(i, n=20 + 10 * i, qps=[10.0, 3.0, 20.0, 5.0, 8.0][i]) for i in range(5)]
    whole = simulate_configs(cfgs, wls, predictor_for=lambda c: PRED)
    pooled = simulate_configs(cfgs, wls, predictor_for=lambda c: PRED, chunk_configs=2, progress=True)
    for a, b in zip(whole, pooled):
        assert a.config == b.config
        for name in a.requests:
            np.testing.assert_array_equal(a.requests[name], b.requests[name])
        np.testing.assert_array_equal(a.tbt_hist, b.tbt_hist)
        assert a.counters == b.counters


def test_lane_pool_shrinks_to_the_last_running_configs(monkeypatch):
    """Once few configs still run, they move to a smaller pool; results unchanged."""
    from vidur_jax.sim import run

    cfgs = [DeploymentConfig(replica_scheduler="vllm", batch_size_cap=8, seed=i) for i in range(10)]
    wls = [_workload(i, n=10 if i < 8 else 120, qps=5.0) for i in range(10)]  # two long configs
    whole = simulate_configs(cfgs, wls, predictor_for=lambda c: PRED)
    monkeypatch.setattr(run, "MIN_SHRINK_LANES", 1)
    sizes = []
    advance_of = run._pool_runner

    def spy(static, n_dev):
        init, advance, reset, done = advance_of(static, n_dev)
        return init, lambda tables, p, st, stop, it: (sizes.append(int(p.num_valid.shape[0])), advance(tables, p, st, stop, it))[1], reset, done

    monkeypatch.setattr(run, "_pool_runner", spy)
    pooled = simulate_configs(cfgs, wls, predictor_for=lambda c: PRED, chunk_configs=8)
    assert sizes[0] == 8 and sizes[-1] == 2  # 8 lanes, then the 2 long configs on 2
    for a, b in zip(whole, pooled):
        for name in a.requests:
            np.testing.assert_array_equal(a.requests[name], b.requests[name])
        assert a.counters == b.counters


@pytest.mark.parametrize("chunk_configs", [None, 2])
def test_configs_on_a_terminal_run_in_short_chunks(monkeypatch, chunk_configs):
    """With a progress bar (a terminal), several configs return to the host every few
    iterations (here 1-3: progress, Ctrl-C) and give exactly the one-call results."""
    from vidur_jax.sim import run

    cfgs = _configs(4)
    wls = [_workload(i, n=20 + 10 * i) for i in range(4)]
    whole = simulate_configs(cfgs, wls, predictor_for=lambda c: PRED)
    monkeypatch.setattr(run, "_interactive", lambda progress: True)
    monkeypatch.setattr(run, "FIRST_CHUNK_STEPS", 3)
    monkeypatch.setattr(run, "MIN_CHUNK_STEPS", 1)
    monkeypatch.setattr(run, "CHUNK_TARGET_S", 0.0)
    calls = []
    advance_of = run._pool_runner

    def spy(static, n_dev):
        init, advance, reset, done = advance_of(static, n_dev)
        return init, lambda *a: (calls.append(int(a[-1])), advance(*a))[1], reset, done

    monkeypatch.setattr(run, "_pool_runner", spy)
    chunked = simulate_configs(cfgs, wls, predictor_for=lambda c: PRED, chunk_configs=chunk_configs)
    steps = max(int(o.counters["num_steps"]) for o in whole)
    assert calls[0] == 3 and set(calls[1:]) == {1} and len(calls) >= steps // 1 - 3
    for a, b in zip(whole, chunked, strict=True):
        for name in a.requests:
            np.testing.assert_array_equal(a.requests[name], b.requests[name])
        np.testing.assert_array_equal(a.tbt_hist, b.tbt_hist)
        assert a.counters == b.counters


def test_estimated_steps_orders_configs_by_work():
    """The pool's longest-first order: smaller chunks and lighter load mean more events."""
    wl, light = _workload(0, n=50, qps=10.0), _workload(0, n=50, qps=1.0)
    sarathi = lambda chunk: DeploymentConfig(replica_scheduler="sarathi", chunk_size=chunk)  # noqa: E731
    assert estimated_steps(sarathi(64), wl) > estimated_steps(sarathi(512), wl)
    assert estimated_steps(sarathi(512), light) > estimated_steps(sarathi(512), wl)
    expected = np.ceil(np.asarray(wl.num_prefill) / 64).sum() + np.asarray(wl.num_decode).sum() / (50 * 50 / float(np.max(wl.arrived_at)))
    assert estimated_steps(sarathi(64), wl) == pytest.approx(expected)


def test_memory_plan_refuses_what_cannot_fit():
    cfg = DeploymentConfig()
    static = build.make_static([cfg], [build.derive(cfg)], 1000)
    per = state_bytes_per_config(static)
    assert per > 1000 * 8 * 3  # at least the three timestamp arrays
    assert plan_chunk(static, 10, None) == 10
    with pytest.raises(ConfigError, match="use chunk_configs="):
        plan_chunk(static, 10**9, 10**9)


def test_sharded_over_four_cpu_devices_matches_one_device(tmp_path):
    """Same results with the config axis sharded over 4 forced CPU devices."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, numpy as np, jax
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_sim_sweep import _configs, _workload, PRED
        from vidur_jax.sim.run import simulate_configs
        assert jax.local_device_count() == int(sys.argv[1])
        wls = [_workload(i) for i in range(6)]
        outs = simulate_configs(_configs(6), wls, predictor_for=lambda c: PRED)
        # and on a pool of 4 lanes (one per device) refilled as configs finish
        pooled = simulate_configs(_configs(6), wls, predictor_for=lambda c: PRED, chunk_configs=4)
        np.save(sys.argv[2], np.stack([o.requests["completed_at"] for o in outs + pooled]))
    """))
    results = []
    for n in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        out = tmp_path / f"r{n}.npy"
        subprocess.run([sys.executable, str(script), str(n), str(out)], check=True, env=env, timeout=600)
        results.append(np.load(out))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[1][:6], results[1][6:])


def test_tables_are_tabulated_once_per_predictor(monkeypatch):
    """Repeated calls reuse the tabulated tables of the same predictor object (read-only);
    another predictor object, even an equal one, is tabulated anew."""
    calls = []
    real = build.tabulate_one
    monkeypatch.setattr(build, "tabulate_one", lambda *a: calls.append(a) or real(*a))
    cfg = DeploymentConfig(replica_scheduler="sarathi")
    spec = build.table_spec_for([cfg], 32)
    pred = LinearPredictor(per_token_ms=0.2 / 32, fixed_ms=5.0 / 32)
    first, _ = build.build_tables([cfg], spec, lambda c: pred)
    second, _ = build.build_tables([cfg], spec, lambda c: pred)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.token_ops, second.token_ops)
    other = LinearPredictor(per_token_ms=0.2 / 32, fixed_ms=5.0 / 32)
    build.build_tables([cfg], spec, lambda c: other)
    assert len(calls) == 2
    slab = build._tabulated(pred, spec, 1, 1)
    with pytest.raises(ValueError):
        slab["token_ops"][0, 0] = 1.0  # shared: read-only
