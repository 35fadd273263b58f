"""Fidelity against Vidur's own outputs on the reference cases (../shared/reference).

Two runs per case:

* with **Vidur-style random-forest predictors** (experiments/vidur_forest.py), which
  isolates the simulation semantics: scheduling, memory, pipeline, metrics. Held to 5%
  on p50/p90 of TTFT, TBT and e2e (measured: <= 3%);
* with vidur_jax's **shipped hybrid predictors**, whose remaining error against Vidur's
  forests is predictor error (see the README's fidelity section); held to the tolerance
  reached.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import fidelity_vs_vidur as fid  # noqa: E402

pytest.importorskip("sklearn")

CORE = [f"{m}_{q}" for m in ("ttft", "tbt", "e2e") for q in ("p50", "p90")]
CASES = ["v1_sarathi_tp1", "v2_vllm_tp1", "v3_orca_tp2", "v4_vllm_arxiv", "v5_sarathi_pp2", "v6_sarathi_2rep"]

#: |rel_err| bounds for the shipped hybrid predictors (p50/p90 of TTFT, TBT, e2e).
HYBRID_TOLERANCE = 0.20
#: The Orca case runs near saturation (batch cap 8): its TTFT p90 is a queueing tail that
#: amplifies the hybrid's few-percent iteration-time error (see README, fidelity).
HYBRID_TOLERANCE_CASE = {"v3_orca_tp2": 0.60}


def _run(case_dir: Path, predictor_for):
    name, cfg, wl, ref = fid.load_case(str(case_dir))
    (out,) = fid.simulate_configs([cfg], [wl], predictor_for=predictor_for)
    rows = {r["metric"]: r for r in fid.compare(name, out.summary, ref)}
    return out, ref, rows


@pytest.fixture(scope="module")
def forest_for(profiles_dir):
    return fid.forest_predictor_for(str(profiles_dir))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_simulation_semantics_match_vidur(case, reference_dir, forest_for):
    out, ref, rows = _run(reference_dir / case, forest_for)
    assert out.summary["num_completed"] == ref["num_completed"]
    assert out.summary["num_restarts"] == ref["num_restarts"]
    assert abs(rows["makespan_s"]["rel_err"]) < 0.01
    for metric in CORE:
        assert abs(rows[metric]["rel_err"]) <= 0.05, (metric, rows[metric])
    for metric in ("ttft_p99", "tbt_p99", "e2e_p99"):
        assert abs(rows[metric]["rel_err"]) <= 0.10, (metric, rows[metric])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_shipped_predictors_close_to_vidur(case, reference_dir):
    out, ref, rows = _run(reference_dir / case, None)
    assert out.summary["num_completed"] == ref["num_completed"]
    for metric in CORE:
        bound = HYBRID_TOLERANCE_CASE.get(case, HYBRID_TOLERANCE)
        assert abs(rows[metric]["rel_err"]) <= bound, (metric, rows[metric])
