"""Named workloads, ready-made studies and the Chrome trace export.

Two small simulations (one traced, one study end to end) keep this file near a minute on
a 2-core CPU; the figures themselves are made by ``experiments/study_gallery.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidur_jax import app, studies
from vidur_jax.errors import ConfigError
from vidur_jax.metrics import chrome_trace

STUDY_EXPERIMENTS = sorted(p.stem for p in (app.CONF_DIR / "experiment").glob("study_*.yaml"))
WORKLOADS = sorted(p.stem for p in (app.CONF_DIR / "workload").glob("*.yaml"))
DATA_FREE_WORKLOADS = [w for w in WORKLOADS if w.startswith("synthetic_")]


def test_every_study_kind_has_an_experiment():
    kinds = {app.compose([f"+experiment={n}"]).study.kind for n in STUDY_EXPERIMENTS}
    assert kinds == set(studies.STUDIES)


@pytest.mark.parametrize("name", STUDY_EXPERIMENTS)
def test_study_experiment_composes_and_plans(name, data_dir):
    cfg = app.compose([f"+experiment={name}", f"data_dir={data_dir}", "workload.num_requests=8"])
    assert cfg.task == "study" and cfg.study.kind in studies.STUDIES
    plan = app.plan_from_config(cfg)
    assert len(plan.configs) >= 1 and all(w.num_requests == 8 for w in plan.workloads)


@pytest.mark.parametrize("name", DATA_FREE_WORKLOADS)
def test_data_free_workloads_build(name):
    cfg = app.compose([f"workload={name}", "workload.num_requests=64"])
    wl = app.plan_from_config(cfg).workloads[0]
    t = np.asarray(wl.arrived_at)
    assert wl.num_requests == 64 and np.all(np.diff(t) >= 0)
    assert np.all(np.asarray(wl.num_prefill) >= 1) and np.all(np.asarray(wl.num_decode) >= 1)


@pytest.mark.parametrize("name", ["chat", "code", "arxiv", "chat_replay"])
def test_trace_workloads_missing_data_dir_is_one_clear_error(name, tmp_path):
    cfg = app.compose([f"workload={name}", f"data_dir={tmp_path / 'absent'}"])
    with pytest.raises(ConfigError, match="data_dir") as err:
        app.plan_from_config(cfg)
    assert "\n" not in str(err.value) and "processed_traces" in str(err.value)


def test_unknown_study_kind_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="allowed: readme_scenario"):
        studies.run_task({"study": {"kind": "nope"}}, str(tmp_path))
    with pytest.raises(ConfigError, match="study"):
        studies.run_task({}, str(tmp_path))


def test_chrome_trace_option_must_be_bool():
    with pytest.raises(ConfigError, match="chrome_trace"):
        app.plan_from_config(app.compose(["+experiment=quickstart", "chrome_trace=3"]))


# ------------------------------------------------------------------- chrome trace


def test_lanes_split_only_overlapping_batches():
    log = {
        "start": np.array([0.0, 1.0, 1.5, 3.0, 0.0]),
        "end": np.array([1.0, 2.0, 2.5, 4.0, 5.0]),
        "replica": np.array([0, 0, 0, 0, 1]),
        "size": np.array([1, 2, 3, 4, 5]),
        "prefill_tokens": np.array([10, 0, 5, 0, 7]),
        "decode_tokens": np.array([0, 2, 3, 8, 0]),
        "iters": np.array([1, 1, 1, 2, 1]),
    }
    ev = chrome_trace.trace_events(log, config_id=3, num_replicas=2)
    x = [e for e in ev if e["ph"] == "X"]
    assert [e["tid"] for e in x] == [0, 1, 0, 0 + chrome_trace.LANE_STRIDE, 0]
    assert [e["name"] for e in x] == ["prefill", "prefill", "decode", "mixed", "decode x2"]
    names = {e["tid"]: e["args"]["name"] for e in ev if e["name"] == "thread_name"}
    assert names == {0: "replica 0", 1: "replica 1", chrome_trace.LANE_STRIDE: "replica 0 / lane 1"}
    assert all(e["pid"] == 3 for e in ev)
    with pytest.raises(ConfigError, match="truncated"):
        chrome_trace.trace_events({**log, "truncated": np.array(True)})


TRACED = [
    "+experiment=study_readme_scenario",
    "workload=synthetic_conv",
    "workload.num_requests=40",
    "workload.qps=4.0",
    "cluster=replicas4",
    "cluster.num_replicas=2",
]


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    """The README scenario's deployment, shrunk (2 replicas, 40 synthetic requests), run
    as a plain simulation with ``chrome_trace=true``; the study test below reuses its
    compiled program."""
    out = tmp_path_factory.mktemp("traced")
    cfg = app.compose([*TRACED, "task=simulate", "chrome_trace=true"])
    plan = app.plan_from_config(cfg)
    assert plan.chrome_trace
    summary, requests, outputs = app.run_plan(plan)
    written = app.write_outputs(out, summary, requests, outputs, plots=False)
    return out, outputs, written


def test_chrome_trace_json_matches_batch_log(traced_run):
    out, outputs, written = traced_run
    path = out / "chrome_trace.json"
    assert path in written
    doc = json.loads(path.read_text())  # strict JSON
    assert doc["displayTimeUnit"] == "ms"
    events = doc["traceEvents"]
    log = outputs[0].batch_log
    assert not bool(log["truncated"]) and len(log["start"]) > 0
    x = [e for e in events if e["ph"] == "X"]
    assert len(x) == len(log["start"])
    # every event is a batch of the log: same start, duration and composition
    order = np.argsort(log["start"], kind="stable")
    for e, i in zip(x, order, strict=True):
        assert e["pid"] == 0 and e["tid"] == int(log["replica"][i])  # no PP: one track each
        assert e["ts"] == pytest.approx(float(log["start"][i]) * 1e6)
        assert e["dur"] == pytest.approx(float(log["end"][i] - log["start"][i]) * 1e6)
        assert e["args"] == {
            "size": int(log["size"][i]),
            "prefill_tokens": int(log["prefill_tokens"][i]),
            "decode_tokens": int(log["decode_tokens"][i]),
            "iterations": int(log["iters"][i]),
        }
    threads = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert threads == {0: "replica 0", 1: "replica 1"}
    # tokens in the trace = tokens the requests needed (every prompt and output token)
    req = outputs[0].requests
    assert sum(e["args"]["prefill_tokens"] for e in x) == int(req["num_prefill"].sum())
    assert sum(e["args"]["decode_tokens"] for e in x) == int(req["num_decode"].sum()) - len(
        req["num_decode"]
    )  # the first output token comes with the last prefill chunk
    # batches on one track do not overlap
    for tid in threads:
        ev = sorted((e for e in x if e["tid"] == tid), key=lambda e: e["ts"])
        ends = np.array([e["ts"] + e["dur"] for e in ev[:-1]])
        assert np.all(np.array([e["ts"] for e in ev[1:]]) >= ends - 1e-3)


# ------------------------------------------------------------------ tiny studies


def test_readme_study_end_to_end(traced_run, tmp_path):
    studies.run_task(app.to_container(app.compose(TRACED)), str(tmp_path))
    res = pd.read_csv(tmp_path / "readme_scenario.csv").set_index("metric")
    assert list(res.index) == ["ttft_s", "e2e_s", "tbt_s", "batch_size"]
    assert res.loc["ttft_s", "count"] == 40
    assert (res["p50"] <= res["p90"]).all() and (res["p90"] <= res["p99"]).all()
    # batch sizes are per iteration: mean over the log weighted by fused iterations
    log = traced_run[1][0].batch_log
    mean = (log["size"] * log["iters"]).sum() / log["iters"].sum()
    assert res.loc["batch_size", "mean"] == pytest.approx(mean)
    assert (tmp_path / "readme_scenario.png").read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((tmp_path / "chrome_trace.json").read_text())
    assert sum(e["ph"] == "X" for e in doc["traceEvents"]) == len(log["start"])
    meta = json.loads((tmp_path / "study.json").read_text())
    (source,) = meta["predictor_source"].values()
    assert source.startswith("transferred") and "attn_prefill" in source
    assert any("transferred" in n for n in meta["notes"])


def test_chunk_size_study_end_to_end(tmp_path):
    cfg = app.compose(
        [
            "+experiment=study_chunk_size",
            "workload=synthetic_conv",
            "workload.num_requests=30",
            "sweep.chunk_size=[256,1024]",
            "sweep.qps=[3.0]",
        ]
    )
    studies.run_task(app.to_container(cfg), str(tmp_path))
    res = pd.read_csv(tmp_path / "chunk_size.csv")
    assert sorted(res.chunk_size) == [256, 1024] and (res.qps == 3.0).all()
    assert res[["ttft_p90", "tbt_p99"]].notna().all().all()
    png = tmp_path / "chunk_size.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 2 and (summary.num_completed == 30).all()
    meta = json.loads((tmp_path / "study.json").read_text())
    assert meta["predictor_source"] == {"meta-llama/Llama-2-7b-hf/a100/tp1": "trained"}


def test_gallery_pngs_are_small():
    gallery = Path(__file__).resolve().parents[1] / "docs" / "gallery"
    for png in gallery.glob("*.png"):
        assert png.stat().st_size < 200_000, png
