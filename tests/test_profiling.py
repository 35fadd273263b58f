"""The JAX profiling harness: smoke run, Vidur CSV format, loading through vidur_jax.profiles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidur_jax.profiles import loader

REPO = Path(__file__).resolve().parents[1]
# profiling/ is a top-level folder run with `python -m profiling` from the repository
# root, not part of the installed package; make it importable under plain `pytest`.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from profiling import grids, ops  # noqa: E402
from profiling.__main__ import main  # noqa: E402
from profiling.timing import summarize  # noqa: E402

SMOKE_MODEL = ops.SMOKE_SHAPE.name


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prof")
    assert main(["--smoke", "--out", str(out), "--quiet"]) == 0
    return out


def test_token_grid_matches_vidur():
    g = grids.num_tokens_grid(4096)
    assert len(g) == 259  # the row count per TP of Vidur's mlp.csv (see data/README.md)
    assert g[:5] == [1, 2, 4, 8, 16] and g[-1] == 4096
    assert len(grids.num_tokens_grid(32768)) == 451


def test_attention_points_valid_and_memory_capped():
    pts = grids.attention_points(512, 1, 8, max_kv_tokens=2048)
    assert pts and all(p.valid(512) and p.kv_tokens <= 2048 for p in pts)
    assert {p.is_prefill for p in pts} == {True, False}
    assert all(p.batch_size == 1 for p in pts if p.is_prefill)


def test_summarize_is_vidurs_stats():
    s = summarize([1.0, 2.0, 3.0, 10.0])
    assert s == {
        "min": 1.0,
        "max": 10.0,
        "mean": 4.0,
        "median": 2.5,
        "std": pytest.approx(np.std([1, 2, 3, 10])),
    }


def test_chunk_mask_is_bottom_right_causal():
    m = ops.chunk_mask(2, 3)[0, 0]
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_smoke_mlp_loads_through_profiles(smoke_out):
    raw = pd.read_csv(loader.compute_path(str(smoke_out), "cpu", SMOKE_MODEL))
    stats = [c for c in raw.columns if c.startswith("time_stats.")]
    assert stats[:5] == [f"time_stats.emb.{s}" for s in ("min", "max", "mean", "median", "std")]
    assert len(stats) == 50 and raw.columns[-8:].tolist() == [
        "n_head",
        "n_kv_head",
        "n_embd",
        "n_expanded_embd",
        "vocab_size",
        "use_gated_mlp",
        "num_tokens",
        "num_tensor_parallel_workers",
    ]
    df = loader.load_compute(str(smoke_out), "cpu", SMOKE_MODEL)
    assert sorted(df["num_tensor_parallel_workers"].unique()) == [1, 2]
    assert sorted(df["num_tokens"].unique()) == [1, 16, 64]
    for op in loader.COMPUTE_OPS:
        assert (df[op] > 0).all(), op
    assert loader.model_shape(df)["num_kv_heads"] == ops.SMOKE_SHAPE.n_kv_head


def test_smoke_attention_loads_through_profiles(smoke_out):
    df = loader.load_attention(str(smoke_out), "cpu", SMOKE_MODEL)
    pre, dec = df[df["is_prefill"]], df[~df["is_prefill"]]
    assert len(pre) and len(dec)
    assert (pre["attn_prefill"] > 0).all() and (dec["attn_decode"] > 0).all()
    assert pre["attn_decode"].isna().all() and dec["attn_prefill"].isna().all()
    assert set(df["num_tensor_parallel_workers"]) == {1, 2}


def test_network_across_forced_host_devices(tmp_path):
    """Two+ CPU 'devices' (XLA flag) exercise all_reduce / send_recv; tables load."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    cmd = [
        sys.executable,
        "-m",
        "profiling",
        "--smoke",
        "--quiet",
        "--what",
        "network",
        "--out",
        str(tmp_path),
        "--device-name",
        "cpu4",
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    for tp in (2, 4):
        ar = loader.load_all_reduce(str(tmp_path), "cpu4_pairwise_nvlink", tp)
        assert (ar["all_reduce"] > 0).all() and ar["size"].is_monotonic_increasing
    sr = loader.load_send_recv(str(tmp_path), "cpu4_pairwise_nvlink")
    assert (sr["send_recv"] > 0).all()


def test_one_device_skips_network_with_note(tmp_path):
    # one device in a fresh process (importing vidur_jax gives pytest one CPU device per core)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "profiling", "--smoke", "--quiet", "--what", "network", "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "network skipped" in res.stdout


def test_bad_tp_is_one_line_error(tmp_path, capsys):
    assert main(["--smoke", "--quiet", "--what", "mlp", "--tp", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tp=3 does not divide") and "\n" not in err
