"""Load and validate Vidur-format profiling CSVs.

Vidur profiles every transformer operation on a GPU and stores the timings as CSV
tables (all times in **milliseconds**):

* ``compute/<device>/<org>/<model>/mlp.csv`` -- per-layer token ops on a grid of
  ``num_tokens`` x ``num_tensor_parallel_workers``;
* ``compute/<device>/<org>/<model>/attention.csv`` -- prefill attention on
  ``(kv_cache_size, prefill_chunk_size)`` and decode attention on
  ``(batch_size, kv_cache_size)``;
* ``network/<node>/all_reduce.csv`` and ``send_recv.csv`` -- collectives on message
  ``size`` in bytes.

The functions here read those tables, check them (missing file or column, NaN or
negative time, no rows for the requested model/TP) and select the rows that Vidur's
``SklearnExecutionTimePredictor`` would use. Every problem is raised as a
:class:`~vidur_jax.errors.ConfigError` with a one-line message. Duplicated grid points
(repeated measurements) are averaged so that each key appears once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from vidur_jax.errors import ConfigError

#: Token ops in ``mlp.csv`` that the predictors model (``emb`` is profiled but unused).
COMPUTE_OPS: tuple[str, ...] = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
#: Ops Vidur fills with 0 when their column is absent (e.g. phi-2 has no post-attn norm).
OPTIONAL_COMPUTE_OPS: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm", "add")
#: Model-shape columns of ``mlp.csv``.
SHAPE_COLUMNS: tuple[str, ...] = (
    "n_head",
    "n_kv_head",
    "n_embd",
    "n_expanded_embd",
    "vocab_size",
    "use_gated_mlp",
)
ATTENTION_KEYS: tuple[str, ...] = (
    "n_embd",
    "n_q_head",
    "n_kv_head",
    "block_size",
    "num_tensor_parallel_workers",
    "batch_size",
    "prefill_chunk_size",
    "kv_cache_size",
    "is_prefill",
)


def median_col(op: str) -> str:
    """Name of the median-time column of ``op`` (milliseconds)."""
    return f"time_stats.{op}.median"


def compute_path(profiles_dir: str, device: str, model: str, table: str = "mlp") -> str:
    """Path of a compute table, e.g. ``<dir>/profiling/compute/a100/<org>/<model>/mlp.csv``.

    ``profiles_dir`` may point at the data root (holding ``profiling/``) or at the
    ``profiling`` folder itself.
    """
    return os.path.join(_profiling_root(profiles_dir), "compute", device, model, f"{table}.csv")


def network_path(profiles_dir: str, network_device: str, collective: str) -> str:
    """Path of a network table, e.g. ``<dir>/profiling/network/a100_dgx/all_reduce.csv``."""
    return os.path.join(
        _profiling_root(profiles_dir), "network", network_device, f"{collective}.csv"
    )


def _profiling_root(profiles_dir: str) -> str:
    nested = os.path.join(profiles_dir, "profiling")
    return nested if os.path.isdir(nested) else profiles_dir


def read_csv(path: str, what: str) -> pd.DataFrame:
    """Read a CSV, raising a one-line :class:`ConfigError` when it is missing or unreadable.

    Args:
      path: file path.
      what: human description used in the message (e.g. ``"compute profile"``).

    Returns:
      The table with exact duplicate rows dropped (as Vidur does).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {path}")
    try:
        df = pd.read_csv(path)
    except Exception as err:  # pandas raises many types; report one line
        raise ConfigError(f"{what} {path} is not a readable CSV: {err}".splitlines()[0]) from None
    if df.empty:
        raise ConfigError(f"{what} {path} has no data rows")
    return df.drop_duplicates()


def require_columns(df: pd.DataFrame, columns: Sequence[str], path: str) -> None:
    """Raise :class:`ConfigError` naming the first of ``columns`` missing from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"profile {path} is missing column '{missing[0]}'{more}")


def check_times(df: pd.DataFrame, columns: Sequence[str], path: str) -> None:
    """Raise :class:`ConfigError` if a time column holds NaN, inf or negative values."""
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ConfigError(
                f"profile {path}: column '{col}' has a NaN/non-numeric time at data row {row}"
            )
        if (values < 0).any():
            row = int(np.flatnonzero(values < 0)[0])
            raise ConfigError(
                f"profile {path}: column '{col}' has a negative time ({values[row]}) at data row {row}"
            )


def average_duplicates(
    df: pd.DataFrame, keys: Sequence[str], values: Sequence[str]
) -> pd.DataFrame:
    """Average repeated measurements of the same grid point; one row per key."""
    return df.groupby(list(keys), as_index=False, sort=True)[list(values)].mean()


def load_compute(profiles_dir: str, device: str, model_profile_name: str) -> pd.DataFrame:
    """Load ``mlp.csv`` for one model on one device.

    Args:
      profiles_dir: data root (holding ``profiling/``) or the ``profiling`` folder.
      device: GPU name used in the path, e.g. ``"a100"``.
      model_profile_name: ``<org>/<model>``, e.g. ``"meta-llama/Llama-2-7b-hf"``.

    Returns:
      One row per ``(num_tokens, num_tensor_parallel_workers)`` with the shape columns
      and one column per op in :data:`COMPUTE_OPS` holding the median time in ms
      (optional ops absent from the file are 0, as in Vidur).
    """
    path = compute_path(profiles_dir, device, model_profile_name)
    df = read_csv(path, "compute profile")
    required = [median_col(op) for op in COMPUTE_OPS if op not in OPTIONAL_COMPUTE_OPS]
    require_columns(
        df, [*SHAPE_COLUMNS, "num_tokens", "num_tensor_parallel_workers", *required], path
    )
    present = [median_col(op) for op in COMPUTE_OPS if median_col(op) in df.columns]
    check_times(df, present, path)
    check_times(df, ["num_tokens", "num_tensor_parallel_workers"], path)
    out = pd.DataFrame(
        {k: df[k] for k in (*SHAPE_COLUMNS, "num_tokens", "num_tensor_parallel_workers")}
    )
    for op in COMPUTE_OPS:
        out[op] = df[median_col(op)].astype(float) if median_col(op) in df.columns else 0.0
    out["use_gated_mlp"] = out["use_gated_mlp"].astype(str).str.lower().eq("true")
    keys = [*SHAPE_COLUMNS, "num_tensor_parallel_workers", "num_tokens"]
    return average_duplicates(out, keys, list(COMPUTE_OPS))


def select_tp(
    df: pd.DataFrame, tp: int, path_hint: str, column: str = "num_tensor_parallel_workers"
) -> pd.DataFrame:
    """Rows of ``df`` for tensor-parallel degree ``tp``; ConfigError if there are none."""
    rows = df[df[column] == tp]
    if rows.empty:
        avail = sorted(int(v) for v in df[column].unique())
        raise ConfigError(f"no profile rows for tp={tp} in {path_hint} (available: {avail})")
    return rows.reset_index(drop=True)


def model_shape(df: pd.DataFrame) -> dict:
    """The model shape recorded in a compute table (first row), as a plain dict.

    Returns:
      ``{num_q_heads, num_kv_heads, embedding_dim, mlp_hidden_dim, vocab_size,
      use_gated_mlp}`` with Python ints/bools.
    """
    row = df.iloc[0]
    return {
        "num_q_heads": int(row["n_head"]),
        "num_kv_heads": int(row["n_kv_head"]),
        "embedding_dim": int(row["n_embd"]),
        "mlp_hidden_dim": int(row["n_expanded_embd"]),
        "vocab_size": int(row["vocab_size"]),
        "use_gated_mlp": bool(row["use_gated_mlp"]),
    }


def load_attention(profiles_dir: str, device: str, model_profile_name: str) -> pd.DataFrame:
    """Load ``attention.csv`` for one model on one device.

    Returns:
      One row per attention grid point with columns ``n_embd, n_q_head, n_kv_head,
      block_size, num_tensor_parallel_workers, batch_size, prefill_chunk_size,
      kv_cache_size, is_prefill`` and median times ``attn_prefill``, ``attn_decode``
      (NaN on rows of the other kind) and ``attn_kv_cache_save`` (0 when the column
      is absent, as in Vidur), all in ms.
    """
    path = compute_path(profiles_dir, device, model_profile_name, "attention")
    df = read_csv(path, "attention profile")
    require_columns(
        df, [*ATTENTION_KEYS, median_col("attn_prefill"), median_col("attn_decode")], path
    )
    is_prefill = df["is_prefill"].astype(str).str.lower().eq("true")
    check_times(df[is_prefill], [median_col("attn_prefill")], path)
    check_times(df[~is_prefill], [median_col("attn_decode")], path)
    check_times(df, ["batch_size", "prefill_chunk_size", "kv_cache_size"], path)
    out = pd.DataFrame({k: df[k] for k in ATTENTION_KEYS})
    out["is_prefill"] = is_prefill
    out["attn_prefill"] = df[median_col("attn_prefill")].where(is_prefill).astype(float)
    out["attn_decode"] = df[median_col("attn_decode")].where(~is_prefill).astype(float)
    kv_save = median_col("attn_kv_cache_save")
    if kv_save in df.columns:
        check_times(df, [kv_save], path)
        out["attn_kv_cache_save"] = df[kv_save].astype(float)
    else:
        out["attn_kv_cache_save"] = 0.0
    return out.groupby(list(ATTENTION_KEYS), as_index=False, sort=True).mean()


def _load_network(
    profiles_dir: str, network_device: str, collective: str
) -> tuple[pd.DataFrame, str]:
    path = network_path(profiles_dir, network_device, collective)
    df = read_csv(path, f"{collective} profile")
    require_columns(
        df, [median_col(collective), "num_workers", "size", "collective", "devices_per_node"], path
    )
    df = df[df["collective"] == collective]
    if df.empty:
        raise ConfigError(f"profile {path} has no rows with collective == '{collective}'")
    check_times(df, [median_col(collective), "size"], path)
    return df, path


def load_all_reduce(profiles_dir: str, network_device: str, tp: int) -> pd.DataFrame:
    """All-reduce times for a ``tp``-way group inside one node (Vidur's selection).

    Vidur keeps rows with ``num_workers == tp`` and ``devices_per_node == tp``.

    Returns:
      Columns ``size`` (bytes, ascending, unique) and ``all_reduce`` (median ms).
    """
    df, path = _load_network(profiles_dir, network_device, "all_reduce")
    rows = df[(df["num_workers"] == tp) & (df["devices_per_node"] == tp)]
    if rows.empty:
        avail = sorted(
            {
                int(w)
                for w, d in zip(df["num_workers"], df["devices_per_node"], strict=False)
                if w == d
            }
        )
        raise ConfigError(
            f"no all_reduce rows for tp={tp} (num_workers == devices_per_node == {tp}) in {path} "
            f"(available tp: {avail})"
        )
    rows = rows.rename(columns={median_col("all_reduce"): "all_reduce"})
    return average_duplicates(rows, ["size"], ["all_reduce"])


def load_send_recv(
    profiles_dir: str, network_device: str, multi_node: bool = False
) -> pd.DataFrame:
    """Pipeline send/recv times between two stages (Vidur's selection).

    Vidur uses ``devices_per_node == 2`` when the stages share a node and ``1`` when
    they span nodes.

    Returns:
      Columns ``size`` (bytes, ascending, unique) and ``send_recv`` (median ms).
    """
    df, path = _load_network(profiles_dir, network_device, "send_recv")
    dpn = 1 if multi_node else 2
    rows = df[df["devices_per_node"] == dpn]
    if rows.empty:
        raise ConfigError(f"no send_recv rows with devices_per_node={dpn} in {path}")
    rows = rows.rename(columns={median_col("send_recv"): "send_recv"})
    return average_duplicates(rows, ["size"], ["send_recv"])


def list_compute_models(profiles_dir: str, device: str) -> list[str]:
    """``<org>/<model>`` names that have an ``mlp.csv`` for ``device`` (sorted)."""
    root = os.path.join(_profiling_root(profiles_dir), "compute", device)
    if not os.path.isdir(root):
        return []
    found = []
    for org in sorted(os.listdir(root)):
        for model in sorted(os.listdir(os.path.join(root, org))):
            if os.path.isfile(os.path.join(root, org, model, "mlp.csv")):
                found.append(f"{org}/{model}")
    return found
