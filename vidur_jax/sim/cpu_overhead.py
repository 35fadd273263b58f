"""CPU overheads per iteration as a function of batch size (Vidur's cpu-overhead ops).

Vidur models five CPU-side costs of one scheduler iteration, each a function of the
batch size (number of requests), and adds their sum to every pipeline stage's time
(``ExecutionTime.total_time = model_time + cpu_overhead``):

* ``schedule`` — the replica scheduler's batch formation,
* ``sampler_e2e`` — sampling the next token of every sequence,
* ``prepare_inputs_e2e`` — building the input tensors and attention metadata,
* ``process_model_outputs`` — appending tokens, stop checks, detokenization,
* ``ray_comm_time`` — driver <-> worker communication (Ray).

Sources, in order:

1. **Profiles**: ``{data_dir}/profiling/cpu_overhead/{network_device}/{model}/cpu_overheads.csv``
   in Vidur's format (columns ``model_name, batch_size, tensor_parallel_degree,
   schedule_median, sampler_e2e_median, prepare_inputs_e2e_median,
   process_model_outputs_median, ray_comm_time_mean``, milliseconds), as written by
   Vidur's ``vidur/profiling/cpu_overhead``. Each op is predicted per batch size by
   linear interpolation between the profiled batch sizes and a least-squares line
   beyond them (Vidur fits a forest / polynomial on ``batch_size`` alone).
2. **Parametric default** (:data:`DEFAULT_COEFFS`) when no profile exists — an
   **assumption**, not a measurement: each op is ``fixed + per_request x batch_size`` ms,
   totalling 1.0 ms + 0.05 ms per request (1.05 ms at batch 1, 7.4 ms at batch 128). The
   shape (linear in the number of sequences, dominated by input preparation and output
   processing, independent of the model) and the order of magnitude (vLLM v0.5 on A100
   spends several ms per iteration at large batches, up to half the iteration of an 8B
   model; SGLang stays under 3 ms) follow the WukLab study "Can Scheduling Overhead
   Dominate LLM Inference Performance?" (2024). The split between the five ops is ours.
   Replace it with profiles of the serving engine you study.

The overhead is off by default (Vidur's ``skip_cpu_overhead_modeling = True``); turn it
on with ``DeploymentConfig.cpu_overhead`` (Hydra ``predictor.cpu_overhead=true``).
"""

from __future__ import annotations

import functools
import os

import numpy as np

#: Vidur's CPU-overhead operations, in its order.
CPU_OPS = ("schedule", "sampler_e2e", "prepare_inputs_e2e", "process_model_outputs", "ray_comm_time")

#: Parametric default (an assumption, see the module docstring): op -> (fixed ms, ms per request).
DEFAULT_COEFFS: dict[str, tuple[float, float]] = {
    "schedule": (0.20, 0.005),
    "sampler_e2e": (0.25, 0.010),
    "prepare_inputs_e2e": (0.30, 0.020),
    "process_model_outputs": (0.15, 0.015),
    "ray_comm_time": (0.10, 0.000),
}


def profile_path(data_dir: str, network_device: str, model: str) -> str:
    """Vidur's location of the CPU-overhead profile of ``model`` on ``network_device``."""
    return os.path.join(data_dir, "profiling", "cpu_overhead", network_device, model, "cpu_overheads.csv")


def _target_column(op: str) -> str:
    return "ray_comm_time_mean" if op == "ray_comm_time" else f"{op}_median"


def _fit_op(batch: np.ndarray, ms: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Interpolate inside the profiled batch sizes, least-squares line outside."""
    order = np.argsort(batch)
    b, y = batch[order].astype(np.float64), ms[order].astype(np.float64)
    inside = np.interp(query, b, y)
    if b.size >= 2:
        slope, icpt = np.polyfit(b, y, 1)
    else:
        slope, icpt = 0.0, float(y[0])
    line = icpt + slope * query
    # continuous at the edges: shift the line to meet the last/first profiled point
    hi = line - (icpt + slope * b[-1]) + y[-1]
    lo = line - (icpt + slope * b[0]) + y[0]
    return np.where(query > b[-1], hi, np.where(query < b[0], lo, inside))


@functools.lru_cache(maxsize=64)
def _load_profile(path: str, model: str, tp: int) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    import pandas as pd

    from vidur_jax.errors import ConfigError

    df = pd.read_csv(path).drop_duplicates()
    need = ["batch_size", *(_target_column(op) for op in CPU_OPS)]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}")
    if "model_name" in df.columns:
        df = df[df["model_name"] == model]
    if "tensor_parallel_degree" in df.columns:
        df = df[df["tensor_parallel_degree"] == tp]
    if df.empty:
        return None
    cols = {op: df[_target_column(op)].to_numpy(np.float64) for op in CPU_OPS}
    for op, y in cols.items():
        if not np.all(np.isfinite(y)) or (y < 0).any():
            raise ConfigError(f"{path}: column {_target_column(op)} has NaN or negative times")
    return df["batch_size"].to_numpy(np.float64), cols


def op_times(
    model: str, network_device: str, tp: int, max_batch: int, data_dir: str | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """Per-op CPU overhead (ms) at batch sizes ``0..max_batch`` (0 at batch size 0).

    Args:
        model: model name (Vidur's, e.g. ``meta-llama/Llama-2-7b-hf``).
        network_device: Vidur network device (e.g. ``a100_pairwise_nvlink``).
        tp: tensor-parallel degree (profiles are filtered on it).
        max_batch: largest batch size to tabulate.
        data_dir: Vidur data root holding ``profiling/cpu_overhead``; None = parametric.

    Returns:
        ``({op: (max_batch + 1,) ms}, source)`` with ``source`` ``"profile:<path>"`` or
        ``"parametric"``.
    """
    query = np.arange(max_batch + 1, dtype=np.float64)
    loaded = None
    path = profile_path(data_dir, network_device, model) if data_dir else None
    if path and os.path.isfile(path):
        loaded = _load_profile(path, model, int(tp))
    if loaded is not None:
        batch, cols = loaded
        out = {op: np.maximum(_fit_op(batch, cols[op], query), 0.0) for op in CPU_OPS}
        source = f"profile:{path}"
    else:
        out = {op: a + b * query for op, (a, b) in DEFAULT_COEFFS.items()}
        source = "parametric"
    for v in out.values():
        v[0] = 0.0
    return out, source


def table(
    model: str, network_device: str, tp: int, max_batch: int, data_dir: str | None = None
) -> np.ndarray:
    """(max_batch + 1,) f32 total CPU overhead per iteration (ms) by batch size."""
    ops, _ = op_times(model, network_device, tp, max_batch, data_dir)
    return np.sum([ops[op] for op in CPU_OPS], axis=0).astype(np.float32)
