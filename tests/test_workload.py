"""Workload generators, trace replay and padding: exact hand cases, determinism, errors."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from vidur_jax.errors import ConfigError
from vidur_jax.workload import (
    Workload,
    arrivals,
    clip_prefill,
    generator,
    lengths,
    load_trace,
    make_workload,
    pad,
    synthetic,
)

KEY = jax.random.PRNGKey(0)


def _np(w: Workload) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(x) for x in (w.arrived_at, w.num_prefill, w.num_decode, w.mask))


def _write(tmp_path, text: str, name: str = "trace.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- arrivals


def test_poisson_uncapped_mean_rate():
    t = arrivals.poisson(KEY, 200_000, qps=5.0, max_interval_factor=None)
    assert t.dtype == np.float64 and np.all(np.diff(t) >= 0) and t[0] > 0
    rate = len(t) / t[-1]
    assert rate == pytest.approx(5.0, rel=0.01)


def test_poisson_vidur_cap():
    # Vidur caps each gap at 3/qps: E[min(X, 3/qps)] = (1 - e^-3) / qps.
    qps = 2.0
    t = arrivals.poisson(KEY, 200_000, qps=qps)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert gaps.max() <= 3.0 / qps + 1e-12
    assert gaps.mean() == pytest.approx((1 - math.exp(-3)) / qps, rel=0.01)


def test_gamma_mean_and_cv():
    t = arrivals.gamma(KEY, 200_000, qps=4.0, cv=2.0)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.05)


def test_static_and_trace_arrivals(tmp_path):
    assert np.array_equal(arrivals.static(KEY, 3), np.zeros(3))
    p = _write(tmp_path, "arrived_at,x\n0.0,1\n1.5,1\n4.0,1\n")
    assert np.array_equal(arrivals.trace(KEY, 2, p, time_scale_factor=0.5), [0.0, 0.75])
    with pytest.raises(ConfigError, match=r"has 3 arrivals but num_requests=4"):
        arrivals.trace(KEY, 4, p)


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: arrivals.poisson(KEY, 10, 0.0), r"qps=0.0 must be a finite number > 0"),
        (lambda: arrivals.poisson(KEY, 10, -1), r"qps=-1"),
        (lambda: arrivals.poisson(KEY, 10, float("nan")), r"qps=nan"),
        (lambda: arrivals.poisson(KEY, 0, 1.0), r"num_requests=0 must be an integer >= 1"),
        (lambda: arrivals.gamma(KEY, 10, 1.0, 0.0), r"cv=0.0"),
        (lambda: arrivals.static(KEY, -3), r"num_requests=-3"),
        (lambda: arrivals.poisson("seed", 10, 1.0), r"expected a jax PRNG key"),
    ],
)
def test_arrival_errors(call, pattern):
    with pytest.raises(ConfigError, match=pattern):
        call()


# ---------------------------------------------------------------- lengths


def test_fixed():
    p, d = lengths.fixed(KEY, 4, 2048, 512)
    assert p.tolist() == [2048] * 4 and d.tolist() == [512] * 4


def test_uniform_split_rule():
    p, d = lengths.uniform(KEY, 10_000, 1024, 4096, prefill_to_decode_ratio=3.0)
    total = p + d
    assert total.min() >= 1023 and total.max() <= 4096
    # decode = ceil(T / 4) puts T in (4d - 4, 4d], so prefill = floor(T - d) in [3d - 4, 3d]
    assert np.all((p >= 3 * d - 4) & (p <= 3 * d))
    assert total.mean() == pytest.approx((1024 + 4096) / 2, rel=0.02)


def test_zipf_totals_hand_cases():
    # theta = 0.5, range 10..19 (10 items): zetan = sum_{i=1}^{9} i^-0.5
    zetan = sum(i**-0.5 for i in range(1, 10))
    u = np.array([0.0, 0.99 / zetan, 1.5 / zetan, 0.999999])
    out = lengths.zipf_totals(u, 10, 19, 0.5)
    assert out[:3].tolist() == [10, 10, 11]  # uz < 1 -> min; uz < 1 + 0.5^0.5 -> min + 1
    assert 10 <= out[3] <= 19


def test_zipf_skew_and_scramble():
    p, d = lengths.zipf(KEY, 20_000, 0.9, False, 100, 1000, 1.0)
    total = p + d
    assert total.min() >= 99 and total.max() <= 1000
    values, counts = np.unique(total, return_counts=True)
    assert values[np.argmax(counts)] in (99, 100)  # most popular = smallest (floor split)
    ps, ds = lengths.zipf(KEY, 20_000, 0.9, True, 100, 1000, 1.0)
    assert (ps + ds).min() >= 99 and (ps + ds).max() <= 1000
    assert np.median(ps + ds) > np.median(total)  # popular ranks spread over the range
    p2, d2 = lengths.zipf(KEY, 20_000, 0.9, True, 100, 1000, 1.0)
    assert np.array_equal(ps, p2) and np.array_equal(ds, d2)


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: lengths.fixed(KEY, 4, 0, 5), r"prefill=0 must be an integer >= 1"),
        (lambda: lengths.uniform(KEY, 4, 1, 10, 1.0), r"min_tokens=1 must be >= 2"),
        (lambda: lengths.uniform(KEY, 4, 100, 10, 1.0), r"max_tokens=10 must be >= min_tokens=100"),
        (lambda: lengths.uniform(KEY, 4, 10, 100, -1.0), r"prefill_to_decode_ratio=-1.0"),
        (lambda: lengths.zipf(KEY, 4, 1.0, False, 10, 100, 1.0), r"theta=1.0 must be in \(0, 1\)"),
        (lambda: lengths.zipf(KEY, 4, 0.0, False, 10, 100, 1.0), r"theta=0.0"),
    ],
)
def test_length_errors(call, pattern):
    with pytest.raises(ConfigError, match=pattern):
        call()


def test_clip_proportional_hand_case():
    # diff = 904: prefill -= ceil(904 * 0.6) = 543, decode -= ceil(904 * 0.4) = 362
    p, d = lengths.clip_proportional(np.array([3000, 100, 1]), np.array([2000, 50, 5000]), 4096)
    assert p.tolist() == [2457, 100, 1]
    assert d.tolist() == [1638, 50, 4095]


def test_trace_lengths_sampling(tmp_path):
    path = _write(
        tmp_path,
        "num_prefill_tokens,num_decode_tokens,extra\n10,1,a\n20,2,b\n30,3,c\n3000,2000,d\n",
    )
    p, d = lengths.trace(KEY, 4, path, max_tokens=4096)
    assert sorted(zip(p.tolist(), d.tolist(), strict=True)) == [
        (10, 1),
        (20, 2),
        (30, 3),
        (2457, 1638),
    ]
    p10, _ = lengths.trace(KEY, 10, path, max_tokens=4096)  # cycles through new shuffles
    assert sorted(p10[:4].tolist()) == sorted(p.tolist()) and len(p10) == 10
    ps, ds = lengths.trace(
        KEY, 4, path, max_tokens=100_000, prefill_scale_factor=0.5, decode_scale_factor=2.0
    )
    assert sorted(zip(ps.tolist(), ds.tolist(), strict=True)) == [
        (5, 2),
        (10, 4),
        (15, 6),
        (1500, 4000),
    ]
    assert np.array_equal(lengths.trace(KEY, 4, path, 4096)[0], p)


# ---------------------------------------------------------------- synthetic

ARXIV = "processed_traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"


def test_synthetic_determinism_and_types():
    arrival = {"kind": "poisson", "qps": 3.0}
    lens = {"kind": "uniform", "min_tokens": 64, "prefill_to_decode_ratio": 4.0}
    w1 = synthetic(KEY, 500, arrival, lens, max_tokens=2048)
    w2 = generator(500, arrival, lens, max_tokens=2048)(KEY)
    w3 = synthetic(jax.random.PRNGKey(1), 500, arrival, lens, max_tokens=2048)
    for a, b in zip(_np(w1), _np(w2), strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(_np(w1)[0], _np(w3)[0])
    assert w1.arrived_at.dtype == np.float64
    assert w1.num_prefill.dtype == np.int32 and w1.mask.dtype == bool
    assert w1.num_requests == 500 and bool(np.all(_np(w1)[3]))
    assert int((w1.num_prefill + w1.num_decode).max()) <= 2048  # max_tokens default for uniform
    w4 = synthetic(
        jax.random.key(0), 5, {"kind": "static"}, {"kind": "fixed", "prefill": 8, "decode": 2}
    )
    assert np.array_equal(_np(w4)[0], np.zeros(5))


def test_synthetic_trace_lengths(data_dir):
    w = synthetic(
        KEY,
        2000,
        {"kind": "gamma", "qps": 8.0, "cv": 3.0},
        {"kind": "trace", "path": str(data_dir / ARXIV)},
        max_tokens=4096,
    )
    total = np.asarray(w.num_prefill + w.num_decode)
    assert total.max() <= 4096 and np.asarray(w.num_decode).min() >= 1


@pytest.mark.parametrize(
    "arrival, lens, n, pattern",
    [
        (
            {"kind": "poisson", "qps": 0},
            {"kind": "fixed", "prefill": 1, "decode": 1},
            5,
            r"qps=0 must be a finite number > 0",
        ),
        (
            {"kind": "poisson", "qps": 1},
            {"kind": "fixed", "prefill": 1, "decode": 1},
            0,
            r"num_requests=0",
        ),
        (
            {"kind": "weibull"},
            {"kind": "fixed", "prefill": 1, "decode": 1},
            5,
            r"unknown arrival kind 'weibull'; allowed: poisson, gamma, static, trace",
        ),
        (
            {"kind": "poisson", "qps": 1},
            {"kind": "normal"},
            5,
            r"unknown lengths kind 'normal'; allowed: fixed, uniform, zipf, trace",
        ),
        (
            {"kind": "poisson", "rate": 1},
            {"kind": "fixed", "prefill": 1, "decode": 1},
            5,
            r"unknown arrival parameter\(s\) \['rate'\] for kind 'poisson'; allowed: \['qps'",
        ),
        (
            {"kind": "gamma", "qps": 1},
            {"kind": "fixed", "prefill": 1, "decode": 1},
            5,
            r"arrival kind 'gamma' needs parameter\(s\) \['cv'\]",
        ),
        (
            {"kind": "static"},
            {"kind": "fixed", "prefill": 4000, "decode": 512},
            5,
            r"request 0 has 4512 tokens \(prefill 4000 \+ decode 512\) > max_tokens=4096",
        ),
        (
            "poisson",
            {"kind": "fixed", "prefill": 1, "decode": 1},
            5,
            r"arrival must be a mapping with a 'kind' key",
        ),
    ],
)
def test_synthetic_errors(arrival, lens, n, pattern):
    with pytest.raises(ConfigError, match=pattern):
        synthetic(KEY, n, arrival, lens, max_tokens=4096)


# ---------------------------------------------------------------- trace replay

TINY = (
    "arrived_at,num_prefill_tokens,num_decode_tokens\n"
    "0.0,100,10\n"
    "0.5,4000,200\n"
    "0.5,4096,1\n"
    "2.0,1,1\n"
)


def test_load_trace_clipping_exact(tmp_path):
    w = load_trace(_write(tmp_path, TINY), max_tokens=4096)
    t, p, d, m = _np(w)
    assert t.tolist() == [0.0, 0.5, 0.5, 2.0]
    assert p.tolist() == [100, 3896, 4095, 1]  # prompt trimmed so prefill + decode <= 4096
    assert d.tolist() == [10, 200, 1, 1]
    assert m.all() and t.dtype == np.float64


def test_load_trace_scaling(tmp_path):
    w = load_trace(
        _write(tmp_path, TINY),
        max_tokens=4096,
        prefill_scale_factor=0.5,
        decode_scale_factor=3.0,
        time_scale_factor=2.0,
    )
    t, p, d, _ = _np(w)
    assert t.tolist() == [0.0, 1.0, 1.0, 4.0]
    assert d.tolist() == [30, 600, 3, 3]
    # trunc(4000 * 0.5) = 2000; trunc(1 * 0.5) = 0 -> clipped to 1 (Vidur)
    assert p.tolist() == [50, 2000, 2048, 1]
    w2 = load_trace(_write(tmp_path, TINY), max_tokens=4096, num_requests=2)
    assert w2.num_requests == 2


def test_load_trace_real_splitwise(data_dir):
    w = load_trace(data_dir / "processed_traces/splitwise_conv.csv", max_tokens=4096)
    assert w.num_requests == 19_366
    t, p, d, _ = _np(w)
    assert (p + d).max() <= 4096 and p.min() >= 1 and d.min() >= 1
    assert np.all(np.diff(t) >= 0)


@pytest.mark.parametrize(
    "text, kwargs, pattern",
    [
        ("", {}, r"is empty"),
        ("arrived_at,num_prefill_tokens,num_decode_tokens\n", {}, r"has no rows"),
        (
            "arrived_at,num_prefill_tokens\n0,1\n",
            {},
            r"lacks column\(s\) \['num_decode_tokens'\]; required: \['arrived_at', ",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,,1\n",
            {},
            r"column 'num_prefill_tokens' has a missing/NaN/non-numeric value in data row 1",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\nabc,1,1\n",
            {},
            r"column 'arrived_at' has a missing/NaN/non-numeric value in data row 1",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,0,1\n",
            {},
            r"column 'num_prefill_tokens' has non-positive value 0.0 in data row 1",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,5,-2\n",
            {},
            r"column 'num_decode_tokens' has non-positive value -2.0 in data row 1",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n-1,1,1\n",
            {},
            r"arrived_at must be finite and >= 0",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n2,1,1\n1,1,1\n",
            {},
            r"must be sorted \(non-decreasing\); data row 2 arrives at 1.0 before row 1 at 2.0",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,4096\n",
            {},
            r"data row 0 has num_decode_tokens=4096 which leaves no room for a prompt",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,4000,200\n",
            {"clip": False},
            r"data row 0 has 4200 tokens \(prefill 4000 \+ decode 200\) > max_tokens=4096",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n",
            {"max_model_len": 2048},
            r"max_tokens=4096 exceeds the model's context length 2048",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n",
            {"num_requests": 5},
            r"has 1 rows but num_requests=5",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n",
            {"time_scale_factor": 0},
            r"time_scale_factor=0 must be a finite number > 0",
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n",
            {"max_tokens": 0},
            r"max_tokens=0 must be an integer >= 1",
        ),
    ],
)
def test_load_trace_errors(tmp_path, text, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_trace(_write(tmp_path, text), **kwargs)


def test_load_trace_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"trace file '.*nope.csv' does not exist"):
        load_trace(tmp_path / "nope.csv")


def test_clip_prefill():
    assert clip_prefill(np.array([10, 4000]), np.array([5, 200]), 4096).tolist() == [10, 3896]


# ---------------------------------------------------------------- workload packing


def test_pad():
    w = make_workload(np.array([0.0, 1.0]), np.array([3, 4]), np.array([1, 2]))
    assert pad(w, 2) is w
    p = pad(w, 5)
    t, pre, dec, m = _np(p)
    assert p.num_requests == 5
    assert t[:2].tolist() == [0.0, 1.0] and np.all(np.isinf(t[2:]))
    assert pre.tolist() == [3, 4, 0, 0, 0] and dec.tolist() == [1, 2, 0, 0, 0]
    assert m.tolist() == [True, True, False, False, False]
    assert p.arrived_at.dtype == np.float64 and p.num_prefill.dtype == np.int32
    with pytest.raises(ConfigError, match=r"capacity=1 is smaller than the workload's 2 requests"):
        pad(w, 1)
    with pytest.raises(ConfigError, match=r"capacity=0"):
        pad(w, 0)


def test_workload_is_a_pytree():
    w = pad(make_workload(np.array([0.0, 1.0]), np.array([3, 4]), np.array([1, 2])), 4)
    total = jax.jit(lambda w: (w.num_prefill + w.num_decode).sum())(w)
    assert int(total) == 10


@pytest.mark.parametrize(
    "args, pattern",
    [
        ((np.array([]), np.array([]), np.array([])), r"needs at least one request"),
        ((np.array([0.0]), np.array([1, 2]), np.array([1])), r"must have the same length"),
        ((np.array([0.0]), np.array([0]), np.array([1])), r"num_prefill must be >= 1"),
        ((np.array([1.0, 0.0]), np.array([1, 1]), np.array([1, 1])), r"must be sorted"),
    ],
)
def test_make_workload_errors(args, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_workload(*args)
