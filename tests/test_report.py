"""report.html, plots and the files of a run dir, without simulating (fast).

A run dir is built from hand-made frames (the toy requests of tests/test_metrics.py), so
the page's content is known exactly. The page is opened in headless Chromium (Debian's
``chromium``; the session fixture installs it when missing, and the tests skip when it
cannot be installed outside CI): it must render with no console error, show the run's
configs in its table, the CDF charts and the search answer, and it is saved as a
screenshot (``$VIDUR_JAX_SCREENSHOTS`` or the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from vidur_jax.metrics import requests_frame, table
from vidur_jax.metrics.report import write_report
from vidur_jax.metrics.run_dir import write_outputs, written_names
from vidur_jax.metrics.terminal import describe_run

NAN = float("nan")


def toy_requests(shift: float) -> dict[str, np.ndarray]:
    return {
        "arrived_at": np.array([0.0, 1.0, 2.0, 3.0]),
        "num_prefill": np.array([10, 20, 30, 40]),
        "num_decode": np.array([2, 4, 8, 1]),
        "scheduled_at": np.array([0.5, 1.0, 2.5, 3.0]) + shift,
        "first_token_at": np.array([1.0, 2.0, 3.0, 3.5]) + shift,
        "completed_at": np.array([2.0, 4.0, 6.0, NAN]) + shift,
        "num_restarts": np.array([0, 1, 0, 0]),
    }


def toy_run(tmp_path: Path, plots: bool = True):
    knobs = [
        {
            "config_id": i,
            "model": "meta-llama/Llama-2-7b-hf",
            "device": "a100",
            "tp": 1,
            "pp": 1,
            "replicas": 1,
            "scheduler": sched,
            "chunk_size": 512,
            "qps": qps,
            "workload": "toy",
            "batch_timeout_s": 0.1,
        }
        for i, (sched, qps) in enumerate(
            [("sarathi", 1.0), ("sarathi", 3.0), ("static_batching", 3.0)]
        )
    ]
    reqs = [toy_requests(0.1 * i) for i in range(3)]
    from vidur_jax.metrics import summarize

    summary = table.summary_table(knobs, [summarize(r) for r in reqs])
    requests = pd.concat([requests_frame(i, r) for i, r in enumerate(reqs)], ignore_index=True)
    from vidur_jax.metrics import TBT_NUM_BINS, tbt_bin_index

    gaps = np.asarray(tbt_bin_index(np.array([0.01, 0.02, 0.05])))
    hist = np.bincount(gaps, minlength=TBT_NUM_BINS)
    outputs = [SimpleNamespace(tbt_hist=hist * (i + 1), batch_log=None) for i in range(len(reqs))]
    written = write_outputs(tmp_path, summary, requests, outputs, plots=plots)
    return summary, written


def test_labels_and_title_from_the_knobs_that_vary(tmp_path):
    summary, _ = toy_run(tmp_path)
    # scheduler and qps vary; chunk only applies to Sarathi; batch_timeout_s only to static
    assert table.varying_knobs(summary) == ["scheduler", "chunk_size", "qps", "batch_timeout_s"]
    # legends: only knobs whose set values differ (chunk 512 and timeout 0.1 are each
    # one value, left empty where they do not apply)
    assert table.varying_knobs(summary, strict=True) == ["scheduler", "qps"]
    assert table.config_labels(summary) == {
        0: "scheduler=sarathi, qps=1",
        1: "scheduler=sarathi, qps=3",
        2: "scheduler=static_batching, qps=3",
    }
    assert describe_run(summary) == "Llama-2-7b-hf on a100, TP1 PP1 x1 replica, toy"
    one = summary.iloc[:1]
    assert table.config_labels(one) == {0: "sarathi"}
    assert describe_run(one) == "Llama-2-7b-hf on a100, TP1 PP1 x1 replica, sarathi, toy at 1 QPS"


def test_title_names_the_pools_of_a_disaggregated_run():
    """Disaggregated configs are titled by their pools (each pool's GPU, TP, PP), not by
    the cluster's shape; pools that differ between configs leave the title to the table."""
    pools = {"prefill_replicas": 1, "prefill_pool_device": "h100", "prefill_pool_tp": 1.0,
             "prefill_pool_pp": 1.0, "decode_replicas": 3, "decode_pool_device": "a100",
             "decode_pool_tp": 2.0, "decode_pool_pp": 2.0}
    base = {"model": "meta-llama/Llama-2-7b-hf", "device": "a100", "tp": 1, "pp": 1,
            "replicas": 4, "scheduler": "vllm"}
    summary = pd.DataFrame([{**base, **pools, "qps": q} for q in (8, 16)])
    assert describe_run(summary) == (
        "Llama-2-7b-hf, 1 prefill h100 TP1 PP1 : 3 decode a100 TP2 PP2, vllm"
    )
    summary.loc[1, "decode_pool_pp"] = 1.0
    assert describe_run(summary) == "Llama-2-7b-hf on a100, TP1 PP1 x4 replicas, vllm"
    colocated = pd.DataFrame([{**base, **{c: np.nan for c in pools}, "qps": 8}])
    assert describe_run(colocated) == "Llama-2-7b-hf on a100, TP1 PP1 x4 replicas, vllm"


def test_write_outputs_files_and_names(tmp_path):
    _, written = toy_run(tmp_path / "a", plots=True)
    assert written_names(tmp_path / "a", written) == [
        "summary.csv",
        "requests.parquet",
        "plots/",
        "report.html",
    ]
    assert sorted(p.name for p in (tmp_path / "a" / "plots").iterdir()) == [
        "e2e_cdf.png",
        "tbt_cdf.png",
        "ttft_cdf.png",
    ]
    _, written = toy_run(tmp_path / "b", plots=False)
    # plots=false: no plots/ folder, and the terminal's "wrote" line does not name it
    assert written_names(tmp_path / "b", written) == [
        "summary.csv",
        "requests.parquet",
        "report.html",
    ]
    assert not (tmp_path / "b" / "plots").exists()


def _page_data(path: Path) -> dict:
    text = path.read_text()
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_report_is_self_contained(tmp_path):
    toy_run(tmp_path)
    page = (tmp_path / "report.html").read_text()
    # no server, no network: nothing is fetched from elsewhere
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    data = _page_data(tmp_path / "report.html")
    assert data["summary"]["total"] == 3
    cols = data["summary"]["columns"]
    # as on the terminal: id, the knobs that vary, the main metrics, then the rest
    assert cols[:7] == [
        "config_id",
        "scheduler",
        "chunk_size",
        "qps",
        "batch_timeout_s",
        "ttft_p90",
        "tbt_p99",
    ]
    assert [r[cols.index("scheduler")] for r in data["summary"]["rows"]] == [
        "sarathi",
        "sarathi",
        "static_batching",
    ]
    # CDFs: 3 completed requests per config, TTFT = [1, 1, 1] + 0.1 i
    ttft = data["cdfs"]["TTFT"]
    assert [s["name"] for s in ttft] == list(
        table.config_labels(pd.read_csv(tmp_path / "summary.csv")).values()
    )
    assert ttft[1]["points"] == [[1.1, 1 / 3], [1.1, 2 / 3], [1.1, 1.0]]
    # the TTFT / e2e PNGs are drawn as interactive charts instead; TBT stays a figure
    assert [im["name"] for im in data["images"]] == ["plots/tbt_cdf.png"]
    assert data["search"] is None


def toy_search(run_dir: Path) -> None:
    """A search.csv / best_config.json as the search task writes them (columns it may
    lack or add are tolerated)."""
    rows = [
        # name, tp, cost $/h, capacity, ttft_p90, meets
        ("tp1 x4", 1, 8.8, 8.0, 0.5, True),
        ("tp2 x2", 2, 8.8, 6.0, 0.3, True),
        ("tp4 x1", 4, 8.8, 3.0, 0.2, False),
        ("tp1 x8", 1, 17.6, 17.0, 0.6, True),
        ("tp2 x4", 2, 17.6, 10.0, 0.7, True),  # dominated: slower and less QPS per $
    ]
    df = pd.DataFrame(
        rows,
        columns=["name", "tp", "cost_per_hour", "capacity_qps", "ttft_p90", "meets_slo_default"],
    )
    df["qps_per_dollar"] = df["capacity_qps"] / df["cost_per_hour"]
    df["future_column"] = "x"
    df.to_csv(run_dir / "search.csv", index=False)
    best = df.iloc[3].to_dict()
    (run_dir / "best_config.json").write_text(
        json.dumps(
            {"best": {"default": {"slo": {"ttft_p90_s": 2.0}, "best": best, "num_meeting": 3}}}
        )
    )


def test_report_search_answer_and_pareto(tmp_path):
    toy_search(tmp_path)
    write_report(tmp_path)
    data = _page_data(tmp_path / "report.html")
    sc = data["search"]["scatter"]
    assert (sc["x"], sc["y"]) == ("ttft_p90", "qps_per_dollar")
    # front: lower latency and higher QPS/$ than every other: tp4 (0.2), tp2 (0.3, 0.68),
    # tp1 x4 (0.5, 0.91), tp1 x8 (0.6, 0.966)
    assert [p["tip"].split(",")[0] for p in sc["points"] if p["front"]] == [
        "name=tp1 x4",
        "name=tp2 x2",
        "name=tp4 x1",
        "name=tp1 x8",
    ]
    assert [p["meets"] for p in sc["points"]] == [True, True, False, True, True]
    assert not sc["points"][4]["front"]
    assert "tp=2" in sc["points"][1]["tip"] and "capacity_qps=6" in sc["points"][1]["tip"]
    assert data["search"]["best"]["best"]["default"]["best"]["name"] == "tp1 x8"
    assert data["summary"] is None


def test_report_never_puts_an_unmeasured_config_on_the_front(tmp_path):
    toy_search(tmp_path)
    df = pd.read_csv(tmp_path / "search.csv")
    # tp1 x8 could not be measured (capped): it would otherwise top the front
    df["flag"] = ["", "", "", "capped", ""]
    df.to_csv(tmp_path / "search.csv", index=False)
    write_report(tmp_path)
    sc = _page_data(tmp_path / "report.html")["search"]["scatter"]
    names = [p["tip"].split(",")[0] for p in sc["points"]]
    assert "name=tp1 x8" not in names
    # without it, tp2 x4 (0.7 s, 0.568 QPS/$) is dominated by tp1 x4 (0.5 s, 0.909)
    assert [n for n, p in zip(names, sc["points"], strict=True) if p["front"]] == [
        "name=tp1 x4",
        "name=tp2 x2",
        "name=tp4 x1",
    ]


# ------------------------------------------------------------------ in Chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium; installs Debian's package when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and shutil.which("apt-get"):
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
            shell=True,
            capture_output=True,
            timeout=900,
        )
        found = shutil.which("chromium")
    if not found:
        msg = "chromium is not installed and could not be installed (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def open_in_chromium(chromium: str, page: Path, shot: Path) -> tuple[str, str]:
    """(DOM after the scripts ran, Chromium's log) of ``page``; saves a screenshot."""
    # record uncaught errors and console.error calls on the page itself
    probe = page.with_name("probe_" + page.name)
    spy = (
        "<script>window.__e=[];addEventListener('error',e=>__e.push(String(e.message)));"
        "const _ce=console.error;console.error=(...a)=>{__e.push(a.join(' '));_ce(...a)};"
        "addEventListener('load',()=>document.body.setAttribute('data-errors',JSON.stringify(__e)));"
        "</script>"
    )
    probe.write_text(page.read_text().replace("<head>", "<head>" + spy, 1))
    common = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1400,2200",
        "--no-first-run",
        "--disable-extensions",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    )
    subprocess.run(
        [*common, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return dom.stdout, dom.stderr


def test_report_renders_in_chromium(tmp_path, chromium):
    summary, _ = toy_run(tmp_path)
    toy_search(tmp_path)
    page = write_report(tmp_path)
    shots = Path(os.environ.get("VIDUR_JAX_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    dom, log = open_in_chromium(chromium, page, shots / "report.png")
    assert 'data-errors="[]"' in dom, dom[-2000:]
    assert "Uncaught" not in log and ":ERROR:CONSOLE" not in log, log[-2000:]
    # the summary table lists the run's three configs, the CDF and Pareto charts are drawn
    body = dom.split("Summary: 3 configurations")[1]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", body.split("</table>")[0])
    assert cells.count("static_batching") == 1 and cells.count("sarathi") == 2
    assert dom.count("<svg") == 3  # Pareto front + TTFT and e2e CDFs
    assert "SLO default: tp1 x8" in dom
    assert "<title>Pareto front: name=tp1 x8" in dom  # hover text of a front point
    png = (shots / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
