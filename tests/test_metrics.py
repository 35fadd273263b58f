"""Metrics: hand-worked summaries, histogram quantile accuracy, frames, plots, atomic I/O."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pandas as pd
import pytest

from vidur_jax.errors import ConfigError
from vidur_jax.metrics import (
    REQUEST_COLUMNS,
    TBT_NUM_BINS,
    atomic_path,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_parquet,
    histogram_mean,
    histogram_quantile,
    plot_cdfs,
    requests_frame,
    summarize,
    table,
    tbt_bin_edges,
    tbt_bin_index,
)
from vidur_jax.metrics.summary import arrival_rate

NAN = float("nan")


def toy_requests() -> dict[str, np.ndarray]:
    """3 completed requests, 1 never finished, 1 padding row."""
    return {
        "arrived_at": np.array([0.0, 1.0, 2.0, 3.0, np.inf]),
        "num_prefill": np.array([10, 20, 30, 40, 0]),
        "num_decode": np.array([2, 4, 8, 1, 0]),
        "scheduled_at": np.array([0.5, 1.0, 2.5, NAN, NAN]),
        "first_token_at": np.array([1.0, 2.0, 3.0, NAN, NAN]),
        "completed_at": np.array([2.0, 4.0, 6.0, NAN, NAN]),
        "num_restarts": np.array([0, 1, 0, 0, 0]),
    }


TOY_EDGES = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
TOY_HIST = np.array([0, 2, 2, 0])


# ---------------------------------------------------------------- summary


def test_summarize_hand_worked():
    counters = {
        "tbt_sum_s": 7.0,
        "tbt_count": 4,
        "batch_size_sum": 30.0,
        "num_batches": 10,
        "kv_util_mean": 0.4,
        "busy_time_s": 3.0,
    }
    s = summarize(toy_requests(), TOY_HIST, counters, edges=TOY_EDGES)
    # TTFT = [1, 1, 1]
    assert (s["ttft_p50"], s["ttft_p99"], s["ttft_mean"]) == (1.0, 1.0, 1.0)
    # e2e = [2, 3, 4]: numpy linear, position (n - 1) q
    assert s["e2e_p50"] == 3.0
    assert s["e2e_p90"] == pytest.approx(3.8)
    assert s["e2e_p99"] == pytest.approx(3.98)
    assert s["e2e_mean"] == 3.0
    # norm_e2e = e2e / decode = [1, 0.75, 0.5]
    assert s["norm_e2e_p50"] == 0.75
    assert s["norm_e2e_p90"] == pytest.approx(0.95)
    assert s["norm_e2e_mean"] == pytest.approx(0.75)
    # sched_delay = [0.5, 0, 0.5]
    assert (s["sched_delay_p50"], s["sched_delay_p90"]) == (0.5, 0.5)
    assert s["sched_delay_mean"] == pytest.approx(1 / 3)
    # TBT from the histogram: counts [0, 2, 2, 0] on [0, 1, 2, 3, 4]
    assert s["tbt_p50"] == pytest.approx(2.0)
    assert s["tbt_p90"] == pytest.approx(2.8)
    assert s["tbt_p99"] == pytest.approx(2.98)
    assert s["tbt_mean"] == 1.75  # exact, from tbt_sum_s / tbt_count
    # throughput over makespan = last completion 6 - first arrival 0
    assert s["makespan_s"] == 6.0
    assert s["throughput_rps"] == 0.5
    assert s["throughput_tps"] == pytest.approx(74 / 6)
    assert s["throughput_output_tps"] == pytest.approx(14 / 6)
    # one sequence per request: the per-request output rate and sequence count would
    # repeat throughput_output_tps and num_completed, so they are left out
    assert "throughput_request_output_tps" not in s and "num_sequences" not in s
    # 4 requests arrive at 0, 1, 2, 3: (4 - 1) / (3 - 0); the last event is completion 6
    assert s["arrival_rate_rps"] == 1.0
    assert s["sim_duration_s"] == 6.0
    assert (s["num_requests"], s["num_completed"], s["num_restarts"]) == (4, 3, 1)
    assert s["batch_size_mean"] == 3.0
    assert s["kv_util_mean"] == 0.4
    assert math.isnan(s["mfu_mean"])
    assert s["busy_fraction"] == 0.5


def test_summarize_contract_columns():
    s = summarize(toy_requests(), np.zeros(TBT_NUM_BINS))
    for metric in ("ttft", "tbt", "e2e", "norm_e2e", "sched_delay"):
        for k in ("p50", "p90", "p99", "mean"):
            assert f"{metric}_{k}" in s
    for k in (
        "throughput_rps",
        "throughput_tps",
        "num_completed",
        "num_restarts",
        "mfu_mean",
        "kv_util_mean",
        "batch_size_mean",
        "makespan_s",
    ):
        assert k in s
    assert math.isnan(s["tbt_p50"]) and math.isnan(s["tbt_mean"])  # no TBT samples


def test_arrival_rate():
    assert arrival_rate(np.array([0.5, 1.0, 3.0, np.inf])) == 0.8  # 2 gaps over 2.5 s
    assert math.isnan(arrival_rate(np.array([2.0])))
    assert math.isnan(arrival_rate(np.zeros(5)))  # offline: everything at t = 0


def test_summarize_parallel_sampling_columns():
    req = toy_requests()
    req["num_seqs"] = np.array([2, 1, 1, 1, 1])
    s = summarize(req, TOY_HIST, edges=TOY_EDGES)
    assert s["num_sequences"] == 4  # completed requests 0, 1, 2 with 2 + 1 + 1 sequences
    assert s["throughput_output_tps"] == pytest.approx((2 * 2 + 4 + 8) / 6)
    assert s["throughput_request_output_tps"] == pytest.approx(14 / 6)


def test_summarize_mask_and_histogram_mean():
    req = toy_requests()
    req["mask"] = np.array([True, True, False, True, False])
    s = summarize(req, TOY_HIST, edges=TOY_EDGES)
    assert s["num_completed"] == 2 and s["e2e_mean"] == 2.5
    assert s["makespan_s"] == 4.0
    assert s["tbt_mean"] == histogram_mean(TOY_HIST, TOY_EDGES) == 2.0


def test_summarize_nothing_completed():
    req = toy_requests()
    req["completed_at"] = np.full(5, NAN)
    s = summarize(req, None)
    assert s["num_completed"] == 0
    assert all(math.isnan(s[k]) for k in ("ttft_p50", "e2e_mean", "throughput_rps", "makespan_s"))


def test_summarize_errors():
    req = toy_requests()
    del req["completed_at"]
    with pytest.raises(ConfigError, match=r"request arrays lack \['completed_at'\]"):
        summarize(req, None)
    bad = toy_requests()
    bad["num_decode"] = np.ones(3)
    with pytest.raises(ConfigError, match="must all have length 5"):
        summarize(bad, None)
    with pytest.raises(ConfigError, match=r"tbt_hist has shape \(3,\); expected \(4,\)"):
        summarize(toy_requests(), np.ones(3), edges=TOY_EDGES)


# ---------------------------------------------------------------- histograms


def test_bin_edges():
    e = tbt_bin_edges()
    assert e.shape == (TBT_NUM_BINS + 1,)
    assert e[0] == pytest.approx(1e-5) and e[-1] == pytest.approx(1e4)
    ratio = e[1:] / e[:-1]
    assert np.allclose(ratio, ratio[0]) and ratio[0] < 1.011


def test_bin_index_matches_searchsorted_and_clips():
    e = tbt_bin_edges()
    x = np.exp(np.random.default_rng(1).uniform(np.log(2e-5), np.log(5e3), 10_000))
    idx = np.asarray(jax.jit(tbt_bin_index)(x))
    ref = np.searchsorted(e, x, side="right") - 1
    # float32 log (x64 off) may put a value within ~1e-7 relative of an edge next door
    assert np.abs(idx - ref).max() <= 1 and np.mean(idx != ref) < 1e-3
    edge_cases = np.asarray(tbt_bin_index(np.array([0.0, 1e-9, 1e5, np.inf])))
    assert edge_cases.tolist() == [0, 0, TBT_NUM_BINS - 1, TBT_NUM_BINS - 1]


@pytest.mark.parametrize("seed", [0, 1])
def test_histogram_quantile_vs_numpy_within_bin_width(seed):
    e = tbt_bin_edges()
    x = np.random.default_rng(seed).lognormal(mean=-3.5, sigma=1.0, size=100_000)
    counts = np.bincount(np.asarray(tbt_bin_index(x)), minlength=TBT_NUM_BINS)
    qs = np.array([0.01, 0.5, 0.9, 0.99, 0.999])
    got = histogram_quantile(counts, e, qs)
    want = np.quantile(x, qs)
    b = np.searchsorted(e, want, side="right") - 1
    width = e[b + 1] - e[b]
    assert np.all(np.abs(got - want) <= width)
    assert histogram_mean(counts, e) == pytest.approx(x.mean(), rel=0.01)


def test_histogram_quantile_edges_and_errors():
    assert histogram_quantile(TOY_HIST, TOY_EDGES, 0.0) == 1.0  # first non-empty bin
    assert histogram_quantile(TOY_HIST, TOY_EDGES, 1.0) == 3.0  # last non-empty bin
    assert histogram_quantile(TOY_HIST, TOY_EDGES, 0.25) == 1.5
    assert math.isnan(histogram_quantile(np.zeros(4), TOY_EDGES, 0.5))
    with pytest.raises(ConfigError, match=r"quantile q=1.5 must be in \[0, 1\]"):
        histogram_quantile(TOY_HIST, TOY_EDGES, 1.5)
    with pytest.raises(ConfigError, match=r"must have shapes \(B,\) and \(B\+1,\)"):
        histogram_quantile(TOY_HIST, TOY_EDGES[:-1], 0.5)


# ---------------------------------------------------------------- frames, plots, I/O


def test_requests_frame():
    df = requests_frame(7, toy_requests())
    assert tuple(df.columns) == REQUEST_COLUMNS
    assert len(df) == 4  # padding row dropped
    assert df["config_id"].tolist() == [7] * 4
    assert df["request_id"].tolist() == [0, 1, 2, 3]
    assert df["num_prefill"].dtype == np.int64 and df["num_restarts"].tolist() == [0, 1, 0, 0]
    assert math.isnan(df["completed_at"].iloc[3])


def test_plot_cdfs(tmp_path):
    df = pd.concat([requests_frame(0, toy_requests()), requests_frame(1, toy_requests())])
    e = tbt_bin_edges()
    x = np.random.default_rng(0).lognormal(-3, 1, 1000)
    h = np.bincount(np.asarray(tbt_bin_index(x)), minlength=TBT_NUM_BINS)
    paths = plot_cdfs(df, np.stack([h, 2 * h]), tmp_path / "plots", edges=e)
    assert sorted(p.name for p in paths) == ["e2e_cdf.png", "tbt_cdf.png", "ttft_cdf.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plot_cdfs(df, {0: h}, tmp_path / "p2")) == 3
    assert len(plot_cdfs(df, None, tmp_path / "p3")) == 2
    assert not list((tmp_path / "plots").glob(".*tmp"))


def test_atomic_writers_roundtrip(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, NAN]})
    atomic_write_csv(df, tmp_path / "sub" / "x.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sub" / "x.csv"), df)
    atomic_write_parquet(df, tmp_path / "x.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "x.parquet"), df)
    atomic_write_json(
        {"wall_s": np.float64(1.5), "n": np.int64(3), "bad": NAN, "arr": np.arange(2)},
        tmp_path / "x.json",
    )
    assert json.loads((tmp_path / "x.json").read_text()) == {
        "wall_s": 1.5,
        "n": 3,
        "bad": None,
        "arr": [0, 1],
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "x.json", "x.parquet"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "summary.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("job died")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]
    with pytest.raises(TypeError):
        atomic_write_json({"x": object()}, target)
    assert target.read_text() == "old\n"


# ------------------------------------------------------------------ summary table


def _knobs(cid: int, scheduler: str, **extra):
    base = {"config_id": cid, "model": "m", "scheduler": scheduler, "chunk_size": 512,
            "max_tokens_in_batch": 4096, "watermark_blocks_fraction": 0.01, "qps": 2.0,
            "max_waiting_iters": 10, "batch_timeout_s": 0.1, "batch_max_tokens": 65536,
            "s3_predictor": "oracle", "s3_accuracy": 1.0, "s3_lookahead": 16,
            "s3_admission": "dff", "num_requests": 100}
    return {**base, **extra}


def test_summary_table_knob_columns_and_blanks():
    knobs = [
        _knobs(0, "vllm"),
        _knobs(1, "sarathi"),
        _knobs(2, "static_batching", batch_timeout_s=0.5),
        _knobs(3, "static_batching", batch_timeout_s=0.05),
    ]
    df = table.summary_table(knobs, [{"ttft_p50": float(i), "extra_stat": 1} for i in range(4)])
    extra_knobs = ["batch_timeout_s", "batch_max_tokens"]  # static batching's; nobody varies the rest
    assert list(df.columns) == [
        *table.STANDARD_KNOBS, *extra_knobs, *table.STANDARD_METRICS, "extra_stat"
    ]
    # a knob that does not apply is empty: chunk for all but Sarathi, the token budget
    # for all but vLLM (and LightLLM), the watermark for static batching
    assert df["chunk_size"].tolist() == [pd.NA, 512, pd.NA, pd.NA]
    assert str(df["chunk_size"].dtype) == "Int64"
    assert df["max_tokens_in_batch"].tolist() == [4096, pd.NA, pd.NA, pd.NA]
    assert df["watermark_blocks_fraction"].isna().tolist() == [False, False, True, True]
    assert df["batch_timeout_s"].tolist()[2:] == [0.5, 0.05]
    assert df["batch_timeout_s"].isna().tolist()[:2] == [True, True]
    assert df["ttft_p50"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert df["device"].isna().all()  # a standard knob nobody set: still a column
    # the CSV shows the empty cells as empty, integers without ".0"
    lines = df[["config_id", "chunk_size", "max_tokens_in_batch"]].to_csv(index=False).splitlines()
    assert lines == ["config_id,chunk_size,max_tokens_in_batch", "0,,4096", "1,512,", "2,,", "3,,"]


def test_summary_table_any_varying_knob_is_a_column():
    knobs = [
        _knobs(0, "s3", s3_predictor="confusion", s3_accuracy=0.8, num_requests=100),
        _knobs(1, "s3", s3_predictor="confusion", s3_accuracy=0.9, num_requests=200),
        _knobs(2, "s3", s3_predictor="oracle", s3_accuracy=0.9, num_requests=200),
    ]
    df = table.summary_table(knobs, [{}] * 3)
    knob_cols = list(df.columns[len(table.STANDARD_KNOBS) : df.columns.get_loc("ttft_p50")])
    assert knob_cols == ["s3_predictor", "s3_accuracy", "s3_lookahead", "s3_admission", "num_requests"]
    # accuracy applies only to the confusion predictor
    assert df["s3_accuracy"].tolist()[:2] == [0.8, 0.9] and math.isnan(df["s3_accuracy"][2])
    assert df["num_requests"].tolist() == [100, 200, 200]
    assert table.varying_knobs(df) == ["s3_predictor", "s3_accuracy", "num_requests"]
    assert table.constant_knobs(df, ["model", "scheduler", "qps", "device"]) == {
        "model": "m", "scheduler": "s3", "qps": 2.0
    }


def test_workload_knobs_qps_only_where_it_drives_arrivals():
    poisson = {"kind": "synthetic", "name": "w", "qps": 2.0, "num_requests": 10, "max_tokens": 4096,
               "seed": 1, "num_seqs": None, "arrival": {"kind": "poisson", "qps": 2.0},
               "lengths": {"kind": "fixed", "prefill": 8, "decode": 4}}
    assert table.workload_knobs(poisson) == {
        "workload": "w", "workload_kind": "synthetic", "qps": 2.0, "num_requests": 10,
        "arrival.kind": "poisson", "lengths.kind": "fixed", "lengths.prefill": 8,
        "lengths.decode": 4,
    }
    offline = {**poisson, "arrival": {"kind": "static"}}
    assert table.workload_knobs(offline)["qps"] is None
    replay = {"kind": "replay", "name": "r", "qps": 100.0, "num_requests": 10, "max_tokens": 4096,
              "seed": 1, "num_seqs": None, "path": "/t.csv", "prefill_scale_factor": 1.0,
              "decode_scale_factor": 1.0, "time_scale_factor": 0.5}
    k = table.workload_knobs(replay)
    assert k["qps"] is None and k["time_scale_factor"] == 0.5 and k["path"] == "/t.csv"


def test_scheduler_knobs_come_from_the_policy_modules():
    """Which scheduler reads which knob is declared by each policy module, so a new
    policy (the worked example orca_token_cap) gets its knob columns with no edit here."""
    from vidur_jax.metrics.table import applies, policy_knobs

    knobs = policy_knobs()
    assert knobs["chunk_size"] == ("sarathi",)
    assert set(knobs["max_tokens_in_batch"]) == {"vllm", "lightllm", "orca_token_cap"}
    assert set(knobs["watermark_blocks_fraction"]) == {"vllm", "sarathi"}
    assert knobs["batch_timeout_s"] == ("static_batching",) and knobs["s3_lookahead"] == ("s3",)
    assert applies("max_tokens_in_batch", {"scheduler": "orca_token_cap"})
    assert not applies("max_tokens_in_batch", {"scheduler": "orca"})
