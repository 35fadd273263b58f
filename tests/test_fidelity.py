"""Fidelity against Vidur's own outputs on the reference cases (../shared/reference).

Two runs per case:

* with **Vidur-style random-forest predictors** (experiments/vidur_forest.py), which
  isolates the simulation semantics: scheduling, memory, pipeline, metrics. Held to the
  signed error measured per case and metric (p50/p90/p99 of TTFT, TBT and e2e, makespan;
  all within 2.8%) plus or minus a stated margin;
* with vidur_jax's **shipped hybrid predictors**, whose remaining error against Vidur's
  forests is predictor error (docs/fidelity.md); held to the signed error measured per
  case and metric, plus or minus a stated margin.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import fidelity_decode_kv  # noqa: E402
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

#: Signed rel_err (ours - Vidur) / Vidur of the shipped hybrid predictors, measured per
#: case and metric by ``experiments/fidelity_vs_vidur.py`` (written to
#: experiments/results/fidelity_hybrid.csv, 4 decimals), in the order of CORE. The gaps
#: are explained op by op in docs/fidelity.md: what remains (TBT p90 and e2e of the TP1
#: cases, up to 16%) is decode attention between the KV lengths of the sparse attention
#: profile, where Vidur's forest is piecewise constant and vidur_jax's grid bilinear.
HYBRID_MEASURED = {
    "v1_sarathi_tp1": (-0.0174, -0.0244, +0.0047, -0.1588, -0.0053, -0.0347),
    "v2_vllm_tp1": (-0.0055, +0.0034, +0.0014, -0.1274, -0.0572, -0.0453),
    "v3_orca_tp2": (+0.0089, +0.0110, -0.0017, +0.0084, +0.0040, -0.0048),
    "v4_vllm_arxiv": (-0.0122, +0.0004, +0.0252, +0.0258, +0.0005, +0.0126),
    "v5_sarathi_pp2": (-0.0086, +0.0144, +0.0084, -0.0396, -0.0001, -0.0359),
    "v6_sarathi_2rep": (-0.0134, -0.0067, +0.0187, -0.1286, -0.0697, -0.0537),
}
#: Absolute margin on rel_err, both ways. The simulation is deterministic given the
#: shipped params, the params have no seed (knots only; attention a residual grid) and
#: the build reproduces them bit for bit (tests/test_predictors.py), so the margin covers
#: float differences of the simulation only: a predictor or simulator change that moves
#: any metric by more than 1 point, either way, fails (checked: every kernel time 2%
#: longer moves v1's TTFT p50 by 1.6 points). v5_sarathi_pp2's TBT and e2e percentiles are
#: ill-conditioned: every kernel time scaled by 1 +- 0.02% moves its TBT p90 from -8.7% to
#: -0.9% / -6.0% (results/predictor_kernel_scale_token_mlp0_network_mlp0.csv), so params
#: rebuilt on another platform (last-bit differences) may move v5 by several points:
#: there, rebuild the params and re-measure.
MARGIN = 0.01


def _run(case_dir: Path, predictor_for):
    name, cfg, wl, ref = fid.load_case(str(case_dir))
    (out,) = fid.simulate_configs([cfg], [wl], predictor_for=predictor_for)
    rows = {r["metric"]: r for r in fid.compare(name, out.summary, ref)}
    return out, ref, rows


@pytest.fixture(scope="module")
def forest_for(profiles_dir):
    return fid.forest_predictor_for(str(profiles_dir))


#: Signed rel_err with the forests, measured by ``experiments/fidelity_vs_vidur.py
#: --predictor forest`` (experiments/results/fidelity_forest.csv), in the order of
#: FOREST_METRICS.
FOREST_METRICS = (*CORE, "ttft_p99", "tbt_p99", "e2e_p99", "makespan_s")
FOREST_MEASURED = {
    "v1_sarathi_tp1": (
        -0.0019,
        -0.0032,
        -0.0022,
        -0.0136,
        -0.0013,
        +0.0001,
        +0.0160,
        +0.0053,
        -0.0013,
        -0.0000,
    ),
    "v2_vllm_tp1": (
        -0.0168,
        +0.0005,
        +0.0035,
        +0.0047,
        -0.0027,
        -0.0004,
        -0.0012,
        +0.0015,
        -0.0008,
        -0.0000,
    ),
    "v3_orca_tp2": (
        -0.0024,
        -0.0276,
        -0.0067,
        -0.0013,
        -0.0063,
        -0.0107,
        -0.0081,
        -0.0034,
        -0.0064,
        -0.0001,
    ),
    "v4_vllm_arxiv": (
        -0.0058,
        +0.0084,
        -0.0001,
        -0.0009,
        -0.0028,
        -0.0032,
        +0.0167,
        -0.0001,
        -0.0044,
        -0.0001,
    ),
    "v5_sarathi_pp2": (
        -0.0054,
        +0.0086,
        +0.0025,
        -0.0060,
        -0.0025,
        -0.0061,
        +0.0237,
        -0.0076,
        +0.0022,
        +0.0010,
    ),
    "v6_sarathi_2rep": (
        +0.0052,
        +0.0095,
        -0.0037,
        +0.0087,
        +0.0000,
        +0.0004,
        +0.0204,
        +0.0053,
        +0.0001,
        -0.0000,
    ),
}
#: The forests are fitted with a fixed random_state and the simulation is deterministic,
#: so the margin covers float and library-version differences only; a change of the
#: semantics that moves a metric by more than 1 point (e.g. every kernel time 2% longer)
#: fails.
FOREST_MARGIN = 0.01


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_simulation_semantics_match_vidur(case, reference_dir, forest_for):
    out, ref, rows = _run(reference_dir / case, forest_for)
    assert out.summary["num_completed"] == ref["num_completed"]
    assert out.summary["num_restarts"] == ref["num_restarts"]
    for metric, measured in zip(FOREST_METRICS, FOREST_MEASURED[case], strict=True):
        assert abs(rows[metric]["rel_err"] - measured) <= FOREST_MARGIN, (
            metric,
            measured,
            rows[metric],
        )


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_shipped_predictors_close_to_vidur(case, reference_dir):
    out, ref, rows = _run(reference_dir / case, None)
    assert out.summary["num_completed"] == ref["num_completed"]
    for metric, measured in zip(CORE, HYBRID_MEASURED[case], strict=True):
        assert abs(rows[metric]["rel_err"] - measured) <= MARGIN, (metric, measured, rows[metric])


#: Leave-one-KV-length-out MAPE (%) of TP1 decode attention, hybrid and forest, measured
#: by experiments/fidelity_decode_kv.py (results/fidelity_decode_kv.csv): kv -> (hybrid,
#: forest). Between profiled KV lengths the rows follow the hybrid's interpolation, not
#: the forest's steps: the explanation of the TP1 cases' TBT p90 gaps (docs/fidelity.md).
DECODE_KV_HELDOUT = {512: (1.75, 16.29), 1024: (2.30, 46.79), 2048: (2.16, 12.31)}


def test_decode_attention_interpolates_held_out_kv_lengths(profiles_dir):
    """Both fits are deterministic (seed-free grid, forest random_state 0): the margin
    (0.05 points) only covers platform float differences."""
    df = fidelity_decode_kv.measure(str(profiles_dir), [1], sorted(DECODE_KV_HELDOUT))
    assert sorted(df["kv"]) == sorted(DECODE_KV_HELDOUT)
    for row in df.itertuples():
        hybrid, forest = DECODE_KV_HELDOUT[row.kv]
        assert row.hybrid_mape <= hybrid + 0.05, (row.kv, row.hybrid_mape)
        assert row.forest_mape == pytest.approx(forest, abs=0.05), (row.kv, row.forest_mape)
        assert row.hybrid_mape < row.forest_mape / 4, row
