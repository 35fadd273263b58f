"""Tabulate predictors into the dense :class:`~vidur_jax.sim.types.TimingTables`.

Vidur itself tabulates its forests over every token count before simulating; we do the
same on coarser grids (tokens every 8 — Vidur's own rounding —, KV every 64, prefill
chunk every 16) and interpolate linearly between grid points inside the simulation.
Bundles (one per model x device x TP x network) are padded to common table sizes and
stacked along a leading axis, so configs of different models or GPUs share one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import jax.numpy as jnp
import numpy as np

from vidur_jax.sim.types import TOKEN_OPS, TimingTables

#: Vidur's NCCL launch overhead added to every all-reduce (ms).
NCCL_CPU_LAUNCH_OVERHEAD_MS = 0.02


class PredictorLike(Protocol):
    """Anything with Vidur-style ``predict(op, **features) -> ms`` (see ``predictors``)."""

    def predict(self, op: str, **features: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class TableSpec:
    """Grid extents of the tables (inclusive upper bounds, in tokens / requests)."""

    max_batch_tokens: int  # largest tokens in one batch
    max_decode_batch: int  # largest number of decodes in one batch
    max_kv: int  # largest mean decode KV length
    max_prefill_kv: int  # largest sum of prefill KV lengths in one batch
    max_chunk: int  # largest sqrt(sum chunk^2) of one batch
    token_step: int = 8
    kv_step: int = 64
    chunk_step: int = 16

    def grown(self, factor: int = 2) -> TableSpec:
        """A spec ``factor`` times larger on every axis (after an overflow)."""
        return TableSpec(
            self.max_batch_tokens * factor,
            self.max_decode_batch * factor,
            self.max_kv * factor,
            self.max_prefill_kv * factor,
            self.max_chunk * factor,
            self.token_step,
            self.kv_step,
            self.chunk_step,
        )


def _grid(upper: int, step: int) -> np.ndarray:
    return np.arange(0, int(np.ceil(upper / step)) + 1) * step


def tabulate_one(
    predictor: PredictorLike, spec: TableSpec, tp: int, pp: int
) -> dict[str, np.ndarray]:
    """Tables (ms per layer) for one predictor bundle.

    Args:
        predictor: execution-time predictor of one (model, device, TP, network).
        spec: grid extents.
        tp: tensor-parallel degree (all-reduce only when > 1, plus Vidur's NCCL launch
            overhead).
        pp: pipeline stages (send/recv only when > 1).

    Returns:
        dict with ``token_ops`` (G, K), ``kv_save`` (G,), ``decode`` (B+1, KD),
        ``prefill`` (KP, C) as float32 numpy arrays.
    """
    tokens = _grid(spec.max_batch_tokens, spec.token_step)
    query = np.maximum(tokens, 1).astype(np.float64)
    cols = []
    for op in TOKEN_OPS:
        if op == "all_reduce" and tp <= 1 or op == "send_recv" and pp <= 1:
            cols.append(np.zeros_like(query))
            continue
        t = np.asarray(predictor.predict(op, num_tokens=query), np.float64)
        if op == "all_reduce":
            t = t + NCCL_CPU_LAUNCH_OVERHEAD_MS
        cols.append(t)
    token_ops = np.stack(cols, axis=1)
    token_ops[0] = 0.0
    kv_save = np.asarray(predictor.predict("attn_kv_cache_save", num_tokens=query), np.float64)
    kv_save[0] = 0.0

    batch = np.arange(0, spec.max_decode_batch + 1)
    kv = _grid(spec.max_kv, spec.kv_step)
    bb, kk = np.meshgrid(np.maximum(batch, 1), kv, indexing="ij")
    decode = np.asarray(
        predictor.predict("attn_decode", batch_size=bb.ravel(), kv_cache_size=kk.ravel()), np.float64
    ).reshape(bb.shape)
    decode[0] = 0.0

    pkv = _grid(spec.max_prefill_kv, spec.kv_step)
    chunk = _grid(spec.max_chunk, spec.chunk_step)
    kk, cc = np.meshgrid(pkv, np.maximum(chunk, 1), indexing="ij")
    prefill = np.asarray(
        predictor.predict("attn_prefill", kv_cache_size=kk.ravel(), prefill_chunk_size=cc.ravel()),
        np.float64,
    ).reshape(kk.shape)
    prefill[:, 0] = 0.0
    out = {"token_ops": token_ops, "kv_save": kv_save, "decode": decode, "prefill": prefill}
    return {k: np.maximum(v, 0.0).astype(np.float32) for k, v in out.items()}


def stack_tables(slabs: Sequence[dict[str, np.ndarray]], spec: TableSpec) -> TimingTables:
    """Stack per-bundle tables (same ``spec``) into one :class:`TimingTables`."""
    return TimingTables(
        token_ops=jnp.asarray(np.stack([s["token_ops"] for s in slabs])),
        kv_save=jnp.asarray(np.stack([s["kv_save"] for s in slabs])),
        decode=jnp.asarray(np.stack([s["decode"] for s in slabs])),
        prefill=jnp.asarray(np.stack([s["prefill"] for s in slabs])),
        cpu_overhead=jnp.asarray(np.stack([
            s.get("cpu_overhead", np.zeros(spec.max_decode_batch + 1, np.float32)) for s in slabs
        ])),
        token_step=spec.token_step,
        kv_step=spec.kv_step,
        chunk_step=spec.chunk_step,
    )


class LinearPredictor:
    """A hand-checkable synthetic predictor: every op is ``a + b * feature`` ms.

    Used by the toy tests (exact timestamps) and as a documented fallback shape.

    Args:
        per_token_ms: ms per token for the token ops (shared by all of them).
        fixed_ms: ms per call of each token op.
        decode_ms_per_kv: decode attention ms per (request x KV token).
        prefill_ms_per_token2: prefill attention ms per chunk^2 token.
        ops: token ops that are non-zero (others return 0), default ``("mlp_up_proj",)``.
    """

    def __init__(
        self,
        per_token_ms: float = 0.0,
        fixed_ms: float = 0.0,
        decode_ms_per_kv: float = 0.0,
        prefill_ms_per_token2: float = 0.0,
        ops: Sequence[str] = ("mlp_up_proj",),
    ) -> None:
        self.per_token_ms = per_token_ms
        self.fixed_ms = fixed_ms
        self.decode_ms_per_kv = decode_ms_per_kv
        self.prefill_ms_per_token2 = prefill_ms_per_token2
        self.ops = tuple(ops)

    def predict(self, op: str, **f: np.ndarray) -> np.ndarray:
        """Milliseconds for ``op`` at the given features."""
        if op == "attn_decode":
            return self.decode_ms_per_kv * np.asarray(f["batch_size"]) * np.asarray(f["kv_cache_size"])
        if op == "attn_prefill":
            return self.prefill_ms_per_token2 * np.asarray(f["prefill_chunk_size"], np.float64) ** 2
        n = np.asarray(f["num_tokens"], np.float64)
        if op in self.ops:
            return self.fixed_ms + self.per_token_ms * n
        return np.zeros_like(n)
