"""Reliability: nothing lost in sweeps, launchers, float64 clocks, Little's law."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs
from vidur_jax.sim.tables import LinearPredictor
from vidur_jax.workload import make_workload

REPO_ROOT = Path(__file__).resolve().parents[1]
PRED = LinearPredictor(per_token_ms=0.1 / 32, fixed_ms=10.0 / 32, decode_ms_per_kv=2e-5)
SMALL = ("+experiment=quickstart", "workload.num_requests=20", "plots=false")


def run_cli(*args: str, timeout: int = 900):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "vidur_jax", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_failing_job_keeps_others_and_rerun_skips_finished(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli("-m", *SMALL, "cluster.tp=1,3", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert (sweep / "0" / "summary.csv").exists()
    assert not (sweep / "1" / "summary.csv").exists()
    status = pd.read_csv(sweep / "sweep_status.csv")
    assert status.status.tolist() == ["ok", "failed"]
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert summary.job.tolist() == [0] and "cluster.tp=1" in summary.overrides[0]
    before = (sweep / "0" / "summary.csv").stat().st_mtime_ns

    res = run_cli("-m", *SMALL, "cluster.tp=1,3", "skip_existing=true", f"hydra.sweep.dir={sweep}")
    assert (sweep / "0" / "summary.csv").stat().st_mtime_ns == before  # not recomputed
    assert "skipped" in res.stderr
    status = pd.read_csv(sweep / "sweep_status.csv")
    assert status.status.tolist() == ["skipped", "failed"]


_LAUNCHER_PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher",
                     "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                     "ray": "hydra_plugins.hydra_ray_launcher"}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local"],
                                      ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"]])
def test_launchers_run_every_job(tmp_path, launcher):
    pytest.importorskip(_LAUNCHER_PLUGINS[launcher[0].split("=")[1]])
    sweep = tmp_path / "sweep"
    res = run_cli("-m", *SMALL, "scheduler=vllm,sarathi", *launcher, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert sorted(summary.scheduler) == ["sarathi", "vllm"]


def test_slurm_launcher_configuration_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # (--cfg prints the composed config; a real cluster runs the same line with -m)
    res = run_cli(*SMALL, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                  "hydra.launcher.timeout_min=60", "hydra.launcher.gpus_per_node=1", "--cfg", "hydra",
                  timeout=300)
    assert res.returncode == 0, res.stderr
    assert "SlurmLauncher" in res.stdout and "partition: gpu" in res.stdout


def test_ray_cluster_launcher_configuration_composes():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    # the README's line for an existing Ray cluster (a real cluster runs it with -m)
    res = run_cli(*SMALL, "hydra/launcher=ray", "+hydra.launcher.ray.init.address=auto",
                  "+hydra.launcher.ray.remote.num_cpus=2", "--cfg", "hydra", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "RayLauncher" in res.stdout and "address: auto" in res.stdout and "num_cpus: 2" in res.stdout


def _requests(n: int, seed: int, qps: float, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / qps, n)) + shift
    return make_workload(t, rng.integers(16, 800, n), rng.integers(2, 120, n))


def test_latencies_invariant_to_shifting_time_by_1e5_s():
    cfg = DeploymentConfig(replica_scheduler="sarathi")
    a, b = simulate_configs([cfg, cfg], [_requests(60, 1, 4.0), _requests(60, 1, 4.0, shift=1e5)],
                            predictor_for=lambda c: PRED)
    for key in ("ttft", "e2e", "sched_delay", "tbt"):
        for q in ("p50", "p90", "p99"):
            assert b.summary[f"{key}_{q}"] == pytest.approx(a.summary[f"{key}_{q}"], rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(b.requests["completed_at"] - 1e5, a.requests["completed_at"], atol=1e-8)


@pytest.mark.slow
def test_littles_law_on_a_long_run():
    """Time-average number in system == arrival rate x mean time in system (within 10%:
    the rate is the configured QPS, not the sample's)."""
    qps, n = 6.0, 2000
    (out,) = simulate_configs([DeploymentConfig(replica_scheduler="vllm")], [_requests(n, 3, qps)],
                              predictor_for=lambda c: PRED)
    r = out.requests
    arrive, done = r["arrived_at"], r["completed_at"]
    horizon = done.max() - arrive.min()
    events = np.concatenate([np.stack([arrive, np.ones(n)], 1), np.stack([done, -np.ones(n)], 1)])
    events = events[np.argsort(events[:, 0], kind="stable")]
    in_system = np.cumsum(events[:, 1])[:-1]
    mean_in_system = (in_system * np.diff(events[:, 0])).sum() / horizon
    mean_time = (done - arrive).mean()
    assert mean_in_system == pytest.approx(qps * mean_time, rel=0.10)
