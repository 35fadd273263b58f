"""Vidur-Search: grid expansion, bracket logic, capacity vs a brute-force scan, the
representative-replica decomposition, and the task's outputs."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pandas as pd
import pytest

from vidur_jax import app, workload
from vidur_jax.errors import ConfigError
from vidur_jax.search import capacity as cap
from vidur_jax.search import grid as grid_mod
from vidur_jax.search import select
from vidur_jax.search.task import run_search, write_outputs
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import simulate_configs

LLAMA7 = "meta-llama/Llama-2-7b-hf"
LLAMA70 = "meta-llama/Llama-2-70b-hf"


def test_grid_lists_infeasible_with_reason():
    spec = grid_mod.GridSpec(
        models=(LLAMA7, LLAMA70),
        clusters=(grid_mod.Cluster("a100", "a100_pairwise_nvlink", 8),),
        tp=(1, 8),
        pp=(1, 3),
        schedulers=(grid_mod.SchedulerChoice("vllm"), grid_mod.SchedulerChoice("sarathi", 512)),
        batch_caps=(64,),
    )
    cands = grid_mod.expand_grid(spec, DeploymentConfig())
    assert len(cands) == spec.size == 16
    by = {
        (
            c.config.model,
            c.config.tensor_parallel_size,
            c.config.num_pipeline_stages,
            c.config.replica_scheduler,
        ): c
        for c in cands
    }
    ok = by[(LLAMA7, 1, 1, "sarathi")]
    assert ok.feasible and ok.config.num_replicas == 8 and ok.num_gpus == 8
    assert ok.config.chunk_size == 512 and ok.cost_per_hour == pytest.approx(8 * 2.21)
    # TP 8 does not fit a 4-GPU pairwise-NVLink node: the DGX node of the same GPU is used
    assert by[(LLAMA7, 8, 1, "vllm")].config.network_device == "a100_dgx"
    assert "layers" in by[(LLAMA7, 1, 3, "vllm")].reason  # 32 layers % 3
    assert "exceeds the cluster" in by[(LLAMA7, 8, 3, "vllm")].reason  # 24 GPUs > 8
    assert "fit" in by[(LLAMA70, 1, 1, "vllm")].reason.lower()  # 70B on one 80 GB GPU
    assert by[(LLAMA70, 8, 1, "vllm")].feasible
    table = select.search_table(cands, {}, [select.Slo()])
    assert len(table) == 16 and (~table["feasible"]).sum() == sum(not c.feasible for c in cands)
    assert (table.loc[~table["feasible"], "infeasible_reason"] != "").all()


def _p(q, passed, steps=100.0, tput=None):
    return cap.Probe(
        0,
        q,
        delay_s=1.0 if passed else 9.0,
        passed=passed,
        steps=steps,
        summary={"throughput_rps": tput} if tput else {"throughput_rps": 1.0},
    )


def test_next_qps_refines_to_granularity():
    s = cap.SearchSettings(branching=4, granularity=0.025)
    # round 1: K points on [T/2, 2T] around the saturating probe's throughput (x replicas)
    qs, st = cap.next_qps([_p(512.0, False, tput=3.0)], s, num_replicas=2, tput_scale=2.0)
    assert st == "" and np.allclose(qs, [3.0, 3.0 * 4 ** (1 / 3), 3.0 * 4 ** (2 / 3), 12.0])
    # a wide bracket gets K interior points
    qs, st = cap.next_qps([_p(512, False), _p(4.0, True), _p(8.0, False)], s, 1)
    assert len(qs) == 4 and 4.0 < min(qs) and max(qs) < 8.0
    # a narrow one only as many as needed to reach the granularity in this round
    qs, _ = cap.next_qps([_p(512, False), _p(4.0, True), _p(4.16, False)], s, 1)
    assert len(qs) == 1
    ratios = np.diff(np.log([4.0, *qs, 4.16]))
    assert np.all(np.exp(ratios) <= 1.025 + 1e-12)
    assert cap.next_qps([_p(512, False), _p(4.0, True), _p(4.09, False)], s, 1) == ([], "ok")
    # nothing passes: halve downwards, stop at qps_min
    qs, _ = cap.next_qps([_p(512, False), _p(1.0, False)], s, 1)
    assert max(qs) == 0.5
    assert cap.next_qps([_p(512, False), _p(0.01, False)], s, 1)[1] == "below_min"
    assert cap.next_qps([_p(512.0, True)], s, 2)[1] == "capped"


def test_capacity_under_slo_criterion():
    s = cap.SearchSettings(max_delay_s=5.0)
    summ = {"ttft_p90": 3.0, "tbt_p99": 0.1}
    assert cap.passes(1.0, summ, s) and not cap.passes(6.0, summ, s)
    strict = cap.SearchSettings(max_delay_s=5.0, ttft_p90_max_s=2.0, tbt_p99_max_s=0.2)
    assert not cap.passes(1.0, summ, strict)
    assert cap.passes(1.0, {"ttft_p90": 1.0, "tbt_p99": 0.1}, strict)


def test_settings_reject_bad_values():
    with pytest.raises(ConfigError, match="granularity"):
        cap.SearchSettings(granularity=0).check()
    with pytest.raises(ConfigError, match="mode"):
        cap.SearchSettings(mode="fast").check()


def test_representative_replica_equals_round_robin_cluster():
    """Round robin sends requests 0, N, 2N, ... to replica 0, which never interacts with
    the others: a single replica fed that sub-stream reproduces replica 0 exactly."""
    r, n, qps = 40, 2, 6.0
    p, d = workload.lengths.fixed(jax.random.PRNGKey(0), n * r, 300, 60)
    p = p + (np.arange(n * r) * 37) % 400  # varied prompts
    u = workload.arrivals.poisson(jax.random.PRNGKey(1), n * r, 1.0)
    base = DeploymentConfig(replica_scheduler="sarathi", batch_size_cap=32)
    cluster = DeploymentConfig(replica_scheduler="sarathi", batch_size_cap=32, num_replicas=n)
    outs = simulate_configs(
        [cluster, base],
        [
            workload.make_workload(u / qps, p, d),
            workload.make_workload(u[::n] / qps, p[::n], d[::n]),
        ],
    )
    for key in ("scheduled_at", "first_token_at", "completed_at"):
        np.testing.assert_allclose(
            outs[0].requests[key][::n], outs[1].requests[key], rtol=0, atol=1e-9
        )


@pytest.fixture(scope="module")
def small_search():
    cfg = app.to_container(
        app.compose(
            [
                "+experiment=search_llama2_7b",
                "workload=synthetic_conv",
                "search.clusters=[{device: a100, num_gpus: 2}]",
                "search.tp=[1,2]",
                "search.pp=[1,3]",
                "search.schedulers=[{scheduler: sarathi, chunk_size: 512}]",
                "search.batch_caps=[32]",
                "search.num_requests=80",
                # 80 short requests drain in < 5 s even when all arrive at once: tighten
                "search.sched_delay_max_s=0.5",
                "search.width=8",
                "profiles_dir=null",
            ]
        )
    )
    return run_search(cfg, log=lambda msg: None)


def test_search_matches_brute_force_scan(small_search):
    res = small_search
    table, runner, s = res["table"], res["runner"], res["settings"]
    feas = table[table["feasible"]].reset_index(drop=True)
    assert len(feas) == 2 and (~table["feasible"]).sum() == 2
    assert s.mode == "replica"
    step = 0.015
    for k, row in feas.iterrows():
        c, hi = row["capacity_qps"], row["capacity_upper_qps"]
        assert row["search_status"] == "ok" and 0 < c < hi <= c * (1 + s.granularity) * (1 + 1e-9)
        qs = c * np.exp(np.arange(-40, 41) * math.log1p(step))  # +-80% around, 1.5% steps
        bf = cap.brute_force_capacity(runner, k, qs)
        assert qs[0] < bf < qs[-1], "boundary outside the brute-force window"
        # same simulator, same requests: the boundaries agree within the granularities
        assert abs(math.log(bf / c)) <= math.log1p(s.granularity) + math.log1p(step) + 1e-9


def test_search_outputs(small_search, tmp_path):
    res = small_search
    write_outputs(res, str(tmp_path))
    df = pd.read_csv(tmp_path / "search.csv")
    for col in (
        "capacity_qps",
        "num_gpus",
        "cost_per_hour",
        "qps_per_dollar",
        "ttft_p90",
        "tbt_p99",
        "meets_slo",
        "bottleneck",
        "infeasible_reason",
        "sched_delay_p99",
    ):
        assert col in df.columns
    ok = df[df["feasible"]]
    np.testing.assert_allclose(ok["qps_per_dollar"], ok["capacity_qps"] / ok["cost_per_hour"])
    assert (ok["sched_delay_p99"] <= 5.0 + 1e-9).all()
    assert ok["bottleneck"].str.len().min() > 0
    doc = json.loads((tmp_path / "best_config.json").read_text())
    assert "default" in doc["best"] and doc["grid_size"] == 4 and doc["search"]["probes"] > 0
    meeting = ok[ok["meets_slo"]]
    if len(meeting):
        assert doc["best"]["default"]["best"]["config_id"] == int(
            meeting.sort_values("qps_per_dollar").iloc[-1]["config_id"]
        )
    for name in ("search_pareto.png", "search_capacity.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    probes = pd.read_csv(tmp_path / "probes.csv")
    assert len(probes) == doc["search"]["probes"]


def test_pareto_front():
    x = np.array([1.0, 2.0, 3.0, 1.5, np.nan])
    y = np.array([1.0, 3.0, 2.0, 0.5, 9.0])
    assert list(select.pareto_front(x, y)) == [0, 1]


def test_search_experiments_compose():
    for name in ("search_llama2_7b", "search_llama2_70b"):
        cfg = app.to_container(app.compose([f"+experiment={name}"]))
        assert cfg["task"] == "search" and cfg["search"]["predictor_note"]
    assert "TRANSFERRED" in cfg["search"]["predictor_note"]
