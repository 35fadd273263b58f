"""Fidelity against Vidur's own outputs on the reference cases (../shared/reference).

Two runs per case:

* with **Vidur-style random-forest predictors** (experiments/vidur_forest.py), which
  isolates the simulation semantics: scheduling, memory, pipeline, metrics. Held to 5%
  on p50/p90 of TTFT, TBT and e2e (measured: <= 3%);
* with vidur_jax's **shipped hybrid predictors**, whose remaining error against Vidur's
  forests is predictor error (docs/fidelity.md); held to the error measured per case and
  metric plus a 2-point margin.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import fidelity_vs_vidur as fid  # noqa: E402

pytest.importorskip("sklearn")

CORE = [f"{m}_{q}" for m in ("ttft", "tbt", "e2e") for q in ("p50", "p90")]
CASES = [
    "v1_sarathi_tp1",
    "v2_vllm_tp1",
    "v3_orca_tp2",
    "v4_vllm_arxiv",
    "v5_sarathi_pp2",
    "v6_sarathi_2rep",
]

#: |rel_err| of the shipped hybrid predictors against Vidur, measured per case and metric
#: (``experiments/fidelity_vs_vidur.py``, written to experiments/results/fidelity_hybrid.csv;
#: rounded up to 0.1%), in the order of CORE. The simulation is deterministic given the
#: shipped params, so the margin only covers platform float differences; a predictor
#: change that moves any metric by more than MARGIN fails. The gaps are explained op by op
#: in docs/fidelity.md: what remains (TBT p90 and e2e of the TP1 cases, up to 17%) is
#: decode attention between the rows of the sparse attention profile, where Vidur's
#: forest is piecewise constant and the hybrid smooth.
HYBRID_MEASURED = {
    "v1_sarathi_tp1": (0.032, 0.024, 0.001, 0.167, 0.002, 0.033),
    "v2_vllm_tp1": (0.015, 0.001, 0.002, 0.135, 0.054, 0.049),
    "v3_orca_tp2": (0.002, 0.005, 0.002, 0.009, 0.002, 0.009),
    "v4_vllm_arxiv": (0.021, 0.007, 0.017, 0.034, 0.002, 0.006),
    "v5_sarathi_pp2": (0.003, 0.010, 0.017, 0.084, 0.041, 0.053),
    "v6_sarathi_2rep": (0.027, 0.006, 0.027, 0.109, 0.062, 0.048),
}
#: Absolute margin on rel_err (2 percentage points).
MARGIN = 0.02


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
    for metric, measured in zip(CORE, HYBRID_MEASURED[case], strict=True):
        assert abs(rows[metric]["rel_err"]) <= measured + MARGIN, (metric, rows[metric])
