"""Tests for vidur_jax.profiles: Vidur CSV loading, validation and row selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vidur_jax.errors import ConfigError
from vidur_jax.profiles import (
    COMPUTE_OPS,
    load_all_reduce,
    load_attention,
    load_compute,
    load_send_recv,
    model_shape,
    select_tp,
)

MODEL = "meta-llama/Llama-2-7b-hf"


def _write_mlp(root, rows, drop=(), device="a100", model="org/toy"):
    """Write a tiny Vidur-format mlp.csv; returns the data root."""
    data = {}
    for op in COMPUTE_OPS:
        if op in drop:
            continue
        for stat in ("min", "max", "mean", "median", "std"):
            data[f"time_stats.{op}.{stat}"] = [r[1] for r in rows]
    shape = {
        "n_head": 4,
        "n_kv_head": 4,
        "n_embd": 64,
        "n_expanded_embd": 128,
        "vocab_size": 100,
        "use_gated_mlp": True,
    }
    for k, v in shape.items():
        data[k] = [v] * len(rows)
    data["num_tokens"] = [r[0] for r in rows]
    data["num_tensor_parallel_workers"] = [r[2] if len(r) > 2 else 1 for r in rows]
    path = root / "profiling" / "compute" / device / model
    path.mkdir(parents=True)
    pd.DataFrame(data).to_csv(path / "mlp.csv", index=False)
    return root


def test_toy_compute_averages_duplicates_and_fills_optional(tmp_path):
    root = _write_mlp(tmp_path, [(8, 1.0), (8, 3.0), (16, 2.0)], drop=("post_attention_layernorm",))
    df = load_compute(str(root), "a100", "org/toy")
    assert df["num_tokens"].tolist() == [8, 16]
    assert df["mlp_up_proj"].tolist() == [2.0, 2.0]  # (1 + 3) / 2 averaged
    assert (df["post_attention_layernorm"] == 0).all()  # absent column -> 0 (Vidur)
    assert model_shape(df)["num_q_heads"] == 4


def test_missing_file_is_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="compute profile not found") as err:
        load_compute(str(tmp_path), "a100", "org/none")
    assert "\n" not in str(err.value)


def test_missing_required_column(tmp_path):
    root = _write_mlp(tmp_path, [(8, 1.0)], drop=("mlp_up_proj",))
    with pytest.raises(ConfigError, match="missing column 'time_stats.mlp_up_proj.median'"):
        load_compute(str(root), "a100", "org/toy")


@pytest.mark.parametrize("bad", [float("nan"), -1.0])
def test_nan_or_negative_time(tmp_path, bad):
    root = _write_mlp(tmp_path, [(8, 1.0), (16, bad)])
    with pytest.raises(ConfigError, match="NaN|negative") as err:
        load_compute(str(root), "a100", "org/toy")
    assert "\n" not in str(err.value)


def test_tp_without_rows(tmp_path):
    root = _write_mlp(tmp_path, [(8, 1.0, 1), (16, 1.0, 2)])
    df = load_compute(str(root), "a100", "org/toy")
    with pytest.raises(ConfigError, match=r"tp=4 .*available: \[1, 2\]"):
        select_tp(df, 4, "toy")


def test_network_selection_and_errors(tmp_path):
    path = tmp_path / "profiling" / "network" / "toy"
    path.mkdir(parents=True)
    rows = []
    for w, dpn in [(2, 2), (4, 4), (4, 2)]:
        for size in (2048, 4096):
            rows.append(
                {
                    "time_stats.all_reduce.median": 0.01 * w + size * 1e-6,
                    "num_workers": w,
                    "size": size,
                    "collective": "all_reduce",
                    "devices_per_node": dpn,
                }
            )
    pd.DataFrame(rows).to_csv(path / "all_reduce.csv")
    ar = load_all_reduce(str(tmp_path), "toy", 4)
    assert ar["size"].tolist() == [2048, 4096]
    np.testing.assert_allclose(ar["all_reduce"], [0.04 + 2048e-6, 0.04 + 4096e-6])
    with pytest.raises(ConfigError, match=r"tp=8 .*available tp: \[2, 4\]"):
        load_all_reduce(str(tmp_path), "toy", 8)
    with pytest.raises(ConfigError, match="send_recv profile not found"):
        load_send_recv(str(tmp_path), "toy")


def test_real_tables(profiles_dir):
    comp = load_compute(str(profiles_dir), "a100", MODEL)
    assert sorted(comp["num_tensor_parallel_workers"].unique()) == [1, 2, 4, 8]
    assert not comp.duplicated(["num_tensor_parallel_workers", "num_tokens"]).any()
    att = load_attention(str(profiles_dir), "a100", MODEL)
    assert (att["attn_kv_cache_save"] == 0).all()  # column absent upstream
    assert att.loc[att["is_prefill"], "attn_prefill"].notna().all()
    assert att.loc[~att["is_prefill"], "attn_decode"].notna().all()
    ar = load_all_reduce(str(profiles_dir), "a100_pairwise_nvlink", 2)
    assert ar["size"].is_monotonic_increasing and (ar["all_reduce"] > 0).all()
    sr = load_send_recv(str(profiles_dir), "a100_pairwise_nvlink")
    assert len(sr) > 100
    phi = load_compute(str(profiles_dir), "a100", "microsoft/phi-2")
    assert (phi["post_attention_layernorm"] == 0).all()
