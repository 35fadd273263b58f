"""Run the profiles and write Vidur-format CSVs.

Layout under ``<out>/profiling/`` (what :mod:`vidur_jax.profiles.loader` reads)::

    compute/<device>/<org>/<model>/mlp.csv         per-layer token ops x num_tokens x TP
    compute/<device>/<org>/<model>/attention.csv   prefill / decode attention grid x TP
    network/<node>/all_reduce.csv, send_recv.csv   collectives x message size

Every time column is ``time_stats.<op>.{min,max,mean,median,std}`` in milliseconds. Files
are written atomically (temp file + rename).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from profiling import collectives, grids, ops
from profiling.timing import TimingConfig, flatten_stats, stat_columns, time_call

ATTENTION_TIMED_OPS: tuple[str, ...] = (
    "attn_input_reshape",
    "attn_decode",
    "attn_output_reshape",
    "attn_prefill",
)
#: Known GPU names recognized in ``jax.Device.device_kind`` (catalog names).
_KNOWN_DEVICES = ("h200", "h100", "a100", "a40", "l40s", "l4", "a10g", "v100")


def device_name(device: jax.Device | None = None) -> str:
    """Short device id for output paths, e.g. ``"h100"`` from "NVIDIA H100 80GB HBM3"; ``"cpu"``."""
    device = device or jax.devices()[0]
    kind = str(getattr(device, "device_kind", device.platform)).lower()
    if device.platform == "cpu":
        return "cpu"
    for name in _KNOWN_DEVICES:
        if name in kind:
            return name
    return re.sub(r"[^a-z0-9]+", "_", kind).strip("_") or device.platform


def default_dtype(device: jax.Device | None = None) -> jnp.dtype:
    """float16 on accelerators (Vidur profiles fp16); float32 on CPU (fp16 GEMMs are emulated)."""
    device = device or jax.devices()[0]
    return jnp.float32 if device.platform == "cpu" else jnp.float16


def write_csv(df: pd.DataFrame, path: str, index: bool = False) -> str:
    """Write ``df`` to ``path`` atomically (temp file in the same folder, then rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".csv", dir=os.path.dirname(path))
    os.close(fd)
    try:
        df.to_csv(tmp, index=index)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def profile_mlp(
    shape: ops.ModelShape,
    tps: Sequence[int],
    num_tokens: Sequence[int],
    cfg: TimingConfig,
    dtype: jnp.dtype,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Time every per-layer op at every ``(tp, num_tokens)``; Vidur's ``mlp.csv`` rows.

    Rows are ordered like Vidur's (TP ascending, tokens descending); columns are the
    ``time_stats.<op>.*`` of :meth:`ModelShape.ops` followed by the model/grid columns.
    """
    rows = []
    rng = np.random.default_rng(seed)
    for tp in tps:
        shape.check_tp(tp)
        weights = ops.make_weights(shape, tp, dtype, rng)
        for n in sorted(num_tokens, reverse=True):
            row: dict = {}
            for op, (fn, args) in ops.mlp_calls(shape, tp, n, weights, dtype, rng).items():
                row.update(flatten_stats(op, time_call(fn, args, cfg)))
            row.update(
                n_head=shape.n_head,
                n_kv_head=shape.n_kv_head,
                n_embd=shape.n_embd,
                n_expanded_embd=shape.n_expanded_embd,
                vocab_size=shape.vocab_size,
                use_gated_mlp=bool(shape.use_gated_mlp),
                num_tokens=int(n),
                num_tensor_parallel_workers=int(tp),
            )
            rows.append(row)
            _log(progress, f"mlp tp={tp} num_tokens={n}")
        del weights
    columns = [c for op in shape.ops() for c in stat_columns(op)] + [
        "n_head",
        "n_kv_head",
        "n_embd",
        "n_expanded_embd",
        "vocab_size",
        "use_gated_mlp",
        "num_tokens",
        "num_tensor_parallel_workers",
    ]
    return pd.DataFrame(rows, columns=columns)


def profile_attention(
    shape: ops.ModelShape,
    tps: Sequence[int],
    points: Sequence[grids.AttentionPoint],
    cfg: TimingConfig,
    dtype: jnp.dtype,
    implementation: str | None = None,
    block_size: int = 16,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Time attention at every point and TP; Vidur's ``attention.csv`` rows.

    ``attn_prefill`` is filled on prefill rows and ``attn_decode`` on decode rows (the
    other is empty, as in Vidur). ``attn_input_reshape`` / ``attn_output_reshape`` are 0:
    the BTNH layout needs no reshape kernel in JAX (they are layout no-ops). If the
    requested ``implementation`` (e.g. ``"cudnn"``) rejects a point, the point is timed
    with ``"xla"`` and its ``attention_backend`` says so.
    """
    rows = []
    rng = np.random.default_rng(seed + 1)
    zero = {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "std": 0.0}
    nan = dict.fromkeys(zero, np.nan)
    for tp in tps:
        shape.check_tp(tp)
        for p in points:
            impl = implementation
            try:
                fn, args = ops.attention_call(shape, tp, p, dtype, rng, impl)
                stats = time_call(fn, args, cfg)
            except Exception:
                if impl in (None, "xla"):
                    raise
                impl = "xla"
                fn, args = ops.attention_call(shape, tp, p, dtype, rng, impl)
                stats = time_call(fn, args, cfg)
            row: dict = {}
            row.update(flatten_stats("attn_input_reshape", zero))
            row.update(flatten_stats("attn_decode", nan if p.is_prefill else stats))
            row.update(flatten_stats("attn_output_reshape", zero))
            row.update(flatten_stats("attn_prefill", stats if p.is_prefill else nan))
            row.update(
                n_embd=shape.n_embd,
                n_q_head=shape.n_head,
                n_kv_head=shape.n_kv_head,
                block_size=block_size,
                num_tensor_parallel_workers=int(tp),
                max_model_len=shape.max_model_len,
                batch_size=p.batch_size,
                prefill_chunk_size=p.prefill_chunk_size,
                kv_cache_size=p.kv_cache_size,
                is_prefill=bool(p.is_prefill),
                attention_backend=f"jax.nn.dot_product_attention[{impl or 'xla'}]",
            )
            rows.append(row)
            del args
            _log(progress, f"attention tp={tp} {p}")
    columns = [c for op in ATTENTION_TIMED_OPS for c in stat_columns(op)] + [
        "n_embd",
        "n_q_head",
        "n_kv_head",
        "block_size",
        "num_tensor_parallel_workers",
        "max_model_len",
        "batch_size",
        "prefill_chunk_size",
        "kv_cache_size",
        "is_prefill",
        "attention_backend",
    ]
    return pd.DataFrame(rows, columns=columns)


def profile_network(
    collective: str,
    sizes: Sequence[int],
    cfg: TimingConfig,
    dtype: jnp.dtype,
    devices: list | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Time ``collective`` over 2, 4, 8, ... local devices; Vidur's network rows.

    ``send_recv`` uses two devices. ``devices_per_node`` = ``num_workers`` (all local),
    ``max_devices_per_node`` = local device count, ``rank`` = 0, ``size`` in bytes.

    Raises:
        ValueError: fewer than two devices.
    """
    devices = list(devices if devices is not None else jax.local_devices())
    if len(devices) < 2:
        raise ValueError(f"{collective} needs at least 2 local devices, found {len(devices)}")
    counts = [2] if collective == "send_recv" else collectives.worker_counts(len(devices))
    item = jnp.dtype(dtype).itemsize
    rows = []
    for k in counts:
        for size in sizes:
            fn, args = collectives.collective_call(devices[:k], collective, size, dtype)
            row = flatten_stats(collective, time_call(fn, args, cfg))
            row.update(
                rank=0,
                num_workers=k,
                size=int(size * item),
                collective=collective,
                devices_per_node=k,
                max_devices_per_node=len(devices),
            )
            rows.append(row)
            _log(progress, f"{collective} workers={k} size={size}")
    columns = stat_columns(collective) + [
        "rank",
        "num_workers",
        "size",
        "collective",
        "devices_per_node",
        "max_devices_per_node",
    ]
    return pd.DataFrame(rows, columns=columns)


def compute_dir(out: str, device: str, model: str) -> str:
    """``<out>/profiling/compute/<device>/<org>/<model>``."""
    return os.path.join(out, "profiling", "compute", device, model)


def network_dir(out: str, node: str) -> str:
    """``<out>/profiling/network/<node>``."""
    return os.path.join(out, "profiling", "network", node)
