"""Roofline fallback: op times from peak FLOP/s and bandwidth, for unprofiled (model, GPU).

Every op Vidur profiles is reduced to its work per tensor-parallel worker -- FLOPs and
bytes moved (fp16, 2 bytes per element) -- and its time is predicted as a smooth roofline

    t = overhead + (t_c**p + t_m**p) ** (1/p),   t_c = FLOPs / (eff_c * peak_flops),
                                                 t_m = bytes / (eff_m * bandwidth)

with per-op efficiency factors ``eff_c``, ``eff_m`` (fraction of the datasheet peak that
the op's kernels reach), a per-op launch ``overhead`` (ms) and a sharpness ``p`` (large
``p`` -> hard ``max``). The four constants per op are **calibrated** on profiled GPUs
(:func:`calibrate`, a least-squares fit of ``log t`` on Vidur's tables) and then
transferred to any GPU of the catalog through its ``fp16_tflops`` and ``hbm_gbps``.
Collectives use the bandwidth of the slowest hop of the group's ring in place of HBM
bandwidth (:func:`ring_bandwidth`: NVLink per GPU, :data:`LINK_GBPS`, on NVSwitch boards
and within an NVLink pair; the host PCIe link where a ring crosses it, as a 4-GPU group
of Vidur's pairwise-NVLink nodes does; a share of the links on a mesh) and ring
all-reduce traffic ``2 (p-1)/p x message``. The all-reduce is calibrated per hop class
(``nvlink`` / ``pcie``) and group size on the profiled tables of that class, so a
DGX/HGX group is never timed with a PCIe-crossing calibration.

Work per op (``n`` tokens, ``E`` hidden, ``F`` MLP inner, ``d`` head dim, ``hq = H/tp``
query heads, ``hkv = ceil(Hkv/tp)`` KV heads per worker):

=========================  ===================================  =======================
op                         FLOPs                                bytes / 2
=========================  ===================================  =======================
GEMM (n,K)x(K,N)           2 n K N                              n K + K N + n N
  attn_pre_proj            K=E, N=(hq + 2 hkv) d
  attn_post_proj           K=hq d, N=E
  mlp_up_proj              K=E, N=(2 if gated else 1) F/tp
  mlp_down_proj            K=F/tp, N=E
norms                      --                                   2 n E + E
add                        --                                   3 n E
mlp_act                    --                                   3 n F/tp (gated), 2 n F/tp
attn_rope                  --                                   2 n (hq + hkv) d
attn_prefill (kv, c)       4 hq d c (kv + c)                    2 c hq d + 2 (kv+c) hkv d
attn_decode (b, kv)        4 b hq d kv                          2 b kv hkv d + 2 b hq d
all_reduce (n)             --                                   (link) 2 (p-1)/p n E
send_recv (n)              --                                   (link) n E
=========================  ===================================  =======================

``attn_kv_cache_save`` is 0, like the profiled predictors (Vidur's tables lack it).
Evaluation (calibrate on one GPU, predict the other): ``experiments/roofline_eval.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from vidur_jax.errors import ConfigError

#: Per-direction NVLink bandwidth per GPU, GB/s (NVIDIA datasheets: A100 SXM NVLink3
#: 600 GB/s and H100/H200 SXM NVLink4 900 GB/s bidirectional; A40 NVLink bridge 112.5).
LINK_GBPS: dict[str, float] = {"a40": 56.25, "a100": 300.0, "h100": 450.0, "h200": 450.0}
BYTES_PER_ELEMENT = 2.0  # fp16 / bf16
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
MEMORY_OPS = ("input_layernorm", "post_attention_layernorm", "add", "mlp_act", "attn_rope")
ATTENTION_OPS = ("attn_prefill", "attn_decode")
NETWORK_OPS = ("all_reduce", "send_recv")
#: Ops the roofline answers (same names and features as ``vidur_jax.predictors.OPS``).
OPS: tuple[str, ...] = (
    "attn_pre_proj",
    "attn_post_proj",
    "attn_rope",
    "attn_kv_cache_save",
    "mlp_up_proj",
    "mlp_down_proj",
    "mlp_act",
    "input_layernorm",
    "post_attention_layernorm",
    "add",
    "attn_prefill",
    "attn_decode",
    "all_reduce",
    "send_recv",
)
OP_FEATURES: dict[str, tuple[str, ...]] = {op: ("num_tokens",) for op in OPS}
OP_FEATURES["attn_prefill"] = ("kv_cache_size", "prefill_chunk_size")
OP_FEATURES["attn_decode"] = ("batch_size", "kv_cache_size")


# ----------------------------------------------------------------------------- work model


def _shape(model: Any) -> dict:
    """Model shape dict from a catalog name / ModelSpec / dict (predictors' shape keys)."""
    if isinstance(model, dict):
        need = ("num_q_heads", "num_kv_heads", "embedding_dim", "mlp_hidden_dim", "use_gated_mlp")
        missing = [k for k in need if k not in model]
        if missing:
            raise ConfigError(f"model shape lacks '{missing[0]}' (needs {', '.join(need)})")
        return dict(model)
    from vidur_jax.catalog import get_model

    spec = get_model(model)
    shape = {
        "name": spec.name,
        "num_q_heads": spec.num_q_heads,
        "num_kv_heads": spec.num_kv_heads,
        "embedding_dim": spec.embedding_dim,
        "mlp_hidden_dim": spec.mlp_hidden_dim,
        "vocab_size": spec.vocab_size,
        "use_gated_mlp": spec.use_gated_mlp,
        "post_attn_norm": spec.post_attn_norm,
    }
    if spec.explicit_head_dim is not None:
        shape["head_dim"] = spec.explicit_head_dim
    if spec.moe is not None:
        shape["num_layers"] = spec.num_layers
        shape["moe"] = dataclasses.asdict(spec.moe)
    if spec.mla is not None:
        shape["mla"] = dataclasses.asdict(spec.mla)
    if spec.num_sliding_layers:
        shape["num_layers"] = spec.num_layers
        shape["sliding_window"] = spec.sliding_window
        shape["num_sliding_layers"] = spec.num_sliding_layers
    return shape


def _device(device: Any) -> dict:
    """``{name, peak_flops (FLOP/s), hbm_bw, link_bw, pcie_bw (B/s), fabric}`` of a GPU
    (a dict may give ``pcie_gbps``, default 32, and ``fabric``, default ``nvswitch``)."""
    if isinstance(device, dict):
        name = str(device.get("name", "custom"))
        tflops, gbps = float(device["fp16_tflops"]), float(device["hbm_gbps"])
        link = float(device.get("link_gbps", LINK_GBPS.get(name, 0.0)))
        pcie, fabric = float(device.get("pcie_gbps", 32.0)), str(device.get("fabric", "nvswitch"))
    else:
        from vidur_jax.catalog import get_device

        spec = get_device(device)
        name, tflops, gbps, link, pcie, fabric = (
            spec.name,
            spec.fp16_tflops,
            spec.hbm_gbps,
            LINK_GBPS.get(spec.name, spec.link_gbps),  # else the catalog's spec sheet
            spec.pcie_gbps,
            spec.fabric,
        )
    return {
        "name": name,
        "peak_flops": tflops * 1e12,
        "hbm_bw": gbps * 1e9,
        "link_bw": link * 1e9,
        "pcie_bw": pcie * 1e9,
        "fabric": fabric,
    }


#: GPUs of an Infinity Fabric mesh platform (MI300X: each GPU has 7 direct peer links).
MESH_GPUS = 8


def ring_bandwidth(topology: str, dev: dict, group: int) -> tuple[float, str]:
    """Per-GPU bandwidth (B/s, one direction) of a collective over ``group`` GPUs, and
    the hop class its calibration is fitted on (``"nvlink"`` or ``"pcie"``).

    * ``nvswitch``: every GPU reaches every other at its full NVLink bandwidth.
    * ``pairwise_nvlink``: NVLink within a pair (``group <= 2``); a larger ring crosses
      the host PCIe link, the slowest hop, which bounds it.
    * ``mesh``: ``link_bw`` is the sum over ``MESH_GPUS - 1`` direct links, of which a
      group uses ``group - 1``.
    * ``pcie``: no NVLink; the host PCIe link.

    Raises:
        ConfigError: for an unknown topology.
    """
    if topology == "nvswitch" or (topology == "pairwise_nvlink" and group <= 2):
        return dev["link_bw"], "nvlink"
    if topology == "pairwise_nvlink" or topology == "pcie":
        return dev["pcie_bw"], "pcie"
    if topology == "mesh":
        return dev["link_bw"] * max(group - 1, 1) / (MESH_GPUS - 1), "nvlink"
    raise ConfigError(
        f"unknown topology '{topology}'; allowed: nvswitch, pairwise_nvlink, mesh, pcie"
    )


def all_reduce_fit(fits: dict, hop: str, group: int) -> dict:
    """The all-reduce calibration for a ``group``-GPU ring over ``hop`` links: fitted on
    that hop class and group size if profiled, else on that hop class, else pooled."""
    return fits.get(f"all_reduce@{hop}@{group}", fits.get(f"all_reduce@{hop}", fits["all_reduce"]))


def op_work(op: str, shape: dict, tp: int, **features: Any) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and bytes of one call of ``op`` on one TP worker (see the module table).

    Args:
        op: an op of :data:`OPS` except ``attn_kv_cache_save``.
        shape: model shape (``num_q_heads, num_kv_heads, embedding_dim, mlp_hidden_dim,
            use_gated_mlp``).
        tp: tensor-parallel degree (group size for ``all_reduce``).
        **features: as in :meth:`RooflinePredictor.predict`.

    Returns:
        ``(flops, bytes)`` float64 arrays of the broadcast feature shape. For network
        ops ``bytes`` is link traffic per GPU.
    """
    e = float(shape["embedding_dim"])
    d = float(shape["head_dim"]) if "head_dim" in shape else e / shape["num_q_heads"]
    hq = float(shape["num_q_heads"] // tp)
    hkv = float(math.ceil(shape["num_kv_heads"] / tp))
    f = float(shape["mlp_hidden_dim"] // tp)
    b = BYTES_PER_ELEMENT
    if "mla" in shape and op in _MLA_OPS:
        return _mla_work(op, shape["mla"], e, hq, **features)
    if op == "attn_prefill":
        kv, c = np.broadcast_arrays(*(np.asarray(features[k], np.float64) for k in OP_FEATURES[op]))
        # Full c x (kv + c) score block: Vidur's profiled kernels take as long for the
        # causal chunk as for a full one (A100 Llama-2-7B: ~100 TFLOP/s either way).
        flops = 4.0 * hq * d * c * (kv + c)
        return flops, b * (2.0 * c * hq * d + 2.0 * (kv + c) * hkv * d)
    if op == "attn_decode":
        bs, kv = np.broadcast_arrays(
            *(np.asarray(features[k], np.float64) for k in OP_FEATURES[op])
        )
        return 4.0 * bs * hq * d * kv, b * (2.0 * bs * kv * hkv * d + 2.0 * bs * hq * d)
    n = np.asarray(features["num_tokens"], np.float64)
    zero = np.zeros_like(n)
    gemm = {
        "attn_pre_proj": (e, (hq + 2.0 * hkv) * d),
        "attn_post_proj": (hq * d, e),
        "mlp_up_proj": (e, (2.0 if shape["use_gated_mlp"] else 1.0) * f),
        "mlp_down_proj": (f, e),
    }
    if op in gemm:
        k, m = gemm[op]
        return 2.0 * n * k * m, b * (n * k + k * m + n * m)
    if op in ("input_layernorm", "post_attention_layernorm"):
        return zero, b * (2.0 * n * e + e)
    if op == "add":
        return zero, b * 3.0 * n * e
    if op == "mlp_act":
        return zero, b * (3.0 if shape["use_gated_mlp"] else 2.0) * n * f
    if op == "attn_rope":
        return zero, b * 2.0 * n * (hq + hkv) * d
    if op == "all_reduce":
        return zero, b * n * e * 2.0 * (tp - 1) / tp
    if op == "send_recv":
        return zero, b * n * e
    raise ConfigError(f"unknown op '{op}'; allowed: {', '.join(OPS)}")


_MLA_OPS = ("attn_pre_proj", "attn_post_proj", "attn_rope", "attn_prefill", "attn_decode")


def _mla_work(
    op: str, a: dict, e: float, hq: float, **features: Any
) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and bytes of an attention op of multi-head latent attention (DeepSeek-V2/V3)
    on one TP worker of ``hq`` heads (see :mod:`vidur_jax.catalog.moe` for the sharding).

    Projections are one GEMM over all of a token's MLA weights (``q_a``, ``q_b``,
    ``kv_a``, ``kv_b``; per-token FLOPs are the same whether ``kv_b`` is absorbed into
    the query and output, as decode kernels do, or applied to the new tokens' latents).
    Prefill attends per head with decompressed keys (``qk_nope + qk_rope``) and values
    (``v``); decode attends over the cached latent (``kv_lora + qk_rope`` per token,
    read once for all heads) with absorbed queries.
    """
    b = BYTES_PER_ELEMENT
    qk = float(a["qk_nope_head_dim"] + a["qk_rope_head_dim"])
    v, lat, rope = float(a["v_head_dim"]), float(a["kv_lora_rank"]), float(a["qk_rope_head_dim"])
    if op == "attn_prefill":
        kv, c = np.broadcast_arrays(*(np.asarray(features[k], np.float64) for k in OP_FEATURES[op]))
        flops = 2.0 * hq * c * (kv + c) * (qk + v)
        return flops, b * (c * hq * (qk + v) + (kv + c) * hq * (qk + v))
    if op == "attn_decode":
        bs, kv = np.broadcast_arrays(
            *(np.asarray(features[k], np.float64) for k in OP_FEATURES[op])
        )
        flops = 2.0 * bs * hq * kv * (lat + rope + lat)
        return flops, b * (bs * kv * (lat + rope) + 2.0 * bs * hq * (lat + rope))
    n = np.asarray(features["num_tokens"], np.float64)
    if op == "attn_rope":
        return np.zeros_like(n), b * 2.0 * n * (hq + 1.0) * rope
    if op == "attn_post_proj":
        k, m = hq * v, e
        return 2.0 * n * k * m, b * (n * k + k * m + n * m)
    q_rank = float(a["q_lora_rank"])
    weights = (e * q_rank + q_rank * hq * qk if q_rank else e * hq * qk) + e * (lat + rope)
    weights += lat * hq * (a["qk_nope_head_dim"] + v)
    out = hq * qk + lat + rope
    return 2.0 * n * weights, b * (n * e + weights + n * out)


#: The parts of a MoE layer's feed-forward block, by the MLP op they are reported under,
#: each with the op whose calibration times it (see :func:`moe_part_work`).
MOE_PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "mlp_up_proj": (
        ("router", "mlp_up_proj"),
        ("dispatch", "send_recv"),
        ("expert_up", "mlp_up_proj"),
        ("shared_up", "mlp_up_proj"),
    ),
    "mlp_act": (("expert_act", "mlp_act"), ("shared_act", "mlp_act")),
    "mlp_down_proj": (
        ("expert_down", "mlp_down_proj"),
        ("shared_down", "mlp_down_proj"),
        ("combine", "send_recv"),
    ),
}


def routed_tokens(moe: dict, ep: int, imbalance: float, n: np.ndarray) -> np.ndarray:
    """Token-expert assignments on the busiest EP rank for a batch of ``n`` tokens:
    ``n k imbalance / ep``, at most ``n min(k, E / ep)`` (a token visits an expert once).
    At ``ep = 1`` every GPU holds a slice of every expert, so skew between experts does
    not change its work and ``imbalance`` is ignored."""
    k, local = float(moe["experts_per_token"]), moe["num_experts"] / ep
    skew = float(imbalance) if ep > 1 else 1.0
    return np.minimum(n * k * skew / ep, n * min(k, local))


def experts_touched(moe: dict, ep: int, n: np.ndarray) -> np.ndarray:
    """Expected distinct experts of one EP rank that ``n`` tokens hit (uniform top-k
    routing): ``(E / ep) (1 - (1 - k/E)^n)``; their weights are what a step reads."""
    e, k = float(moe["num_experts"]), float(moe["experts_per_token"])
    if e <= 1.0:
        return np.where(n > 0, 1.0, 0.0)
    return (e / ep) * (1.0 - (1.0 - k / e) ** n)


def moe_part_work(
    part: str, shape: dict, tp: int, ep: int, imbalance: float, num_tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """FLOPs and bytes of one part of a MoE layer on the busiest GPU, or None if absent.

    Experts are split over the ``tp`` GPUs of a stage: ``ep`` ranks of ``E / ep`` experts,
    each expert split ``tp / ep`` ways. With ``ep > 1`` every EP rank keeps ``1 / ep`` of
    the batch's tokens, routes them (``router``: ``n/ep x H x E`` GEMM) and exchanges
    their top-k copies by all-to-all (``dispatch``, ``combine``: the busiest rank moves
    its ``a`` assignments of ``H`` elements, ``(ep-1)/ep`` of them off-rank; link bytes).
    The busiest rank runs its experts on ``a`` = :func:`routed_tokens` assignments as a
    grouped GEMM that reads the weights of the :func:`experts_touched` experts. Shared
    experts run on all ``n`` tokens, split ``tp`` ways like a dense MLP. The router is
    absent with one expert (routing is then the identity), shared parts without shared
    experts, the all-to-all at ``ep = 1``.

    Args:
        part: ``router, dispatch, expert_up, expert_act, expert_down, shared_up,
            shared_act, shared_down, combine``.
        shape: model shape with a ``moe`` entry (:func:`_shape`).
        tp: GPUs of a stage; ep: expert-parallel degree (divides ``tp``).
        imbalance: load of the busiest EP rank over the mean (>= 1).
        num_tokens: tokens of the batch (array).

    Returns:
        ``(flops, bytes)`` arrays, bytes being link traffic for dispatch/combine.
    """
    moe, e, b = shape["moe"], float(shape["embedding_dim"]), BYTES_PER_ELEMENT
    n = np.asarray(num_tokens, np.float64)
    f_local = float(moe["expert_hidden_dim"] // (tp // ep))
    f_shared = float(moe["shared_expert_hidden_dim"] // tp)
    a = routed_tokens(moe, ep, imbalance, n)
    zero = np.zeros_like(n)
    if part == "router":
        if moe["num_experts"] <= 1:
            return None
        k, m, rows = e, float(moe["num_experts"]), n / ep
        return 2.0 * rows * k * m, b * (rows * k + k * m + rows * m)
    if part in ("dispatch", "combine"):
        return None if ep == 1 else (zero, b * a * e * (ep - 1) / ep)
    if part.startswith("shared_") and f_shared == 0:
        return None
    rows, width = (a, f_local) if part.startswith("expert_") else (n, f_shared)
    touched = experts_touched(moe, ep, n) if part.startswith("expert_") else 1.0
    if part.endswith("_act"):
        return zero, b * 3.0 * rows * width
    k, m = (e, 2.0 * width) if part.endswith("_up") else (width, e)
    # quantized experts (gpt-oss MXFP4) stream fewer weight bytes; their GEMMs run at the
    # 16-bit peak (dequantized in the kernel: no FP4 tensor-core path is assumed)
    bits = moe.get("expert_bits") if part.startswith("expert_") else None
    wb = b if bits is None else bits / 8.0
    return 2.0 * rows * k * m, b * (rows * k + rows * m) + wb * touched * k * m


def roofline_ms(
    fit: dict, flops: np.ndarray, nbytes: np.ndarray, peak_flops: float, bandwidth: float
) -> np.ndarray:
    """Smooth roofline time (ms) from work and one op's fitted constants.

    Args:
        fit: ``{eff_compute, eff_memory, overhead_ms, sharpness}``.
        flops, nbytes: work per call (broadcastable arrays).
        peak_flops: FLOP/s; bandwidth: bytes/s.
    """
    p = float(fit["sharpness"])
    tc = np.asarray(flops, np.float64) / (fit["eff_compute"] * peak_flops) * 1e3
    tm = np.asarray(nbytes, np.float64) / (fit["eff_memory"] * bandwidth) * 1e3
    # (tc^p + tm^p)^(1/p), scaled for stability; 0 work -> 0
    top = np.maximum(np.maximum(tc, tm), 1e-30)
    body = top * ((tc / top) ** p + (tm / top) ** p) ** (1.0 / p)
    return fit["overhead_ms"] + body


# ----------------------------------------------------------------------------- calibration


def _bandwidth(op: str, dev: dict) -> float:
    return dev["link_bw"] if op in NETWORK_OPS else dev["hbm_bw"]


def _row_bandwidth(op: str, shape: dict, tp: int, dev: dict) -> float:
    """Bandwidth of a profiled row: a ring's slowest hop for all-reduce rows."""
    if op == "all_reduce":
        return ring_bandwidth(shape["topology"], dev, tp)[0]
    return _bandwidth(op, dev)


def _hop(shape: dict, tp: int, dev: dict) -> str:
    return ring_bandwidth(shape["topology"], dev, tp)[1]


#: Row filter ``keep(op, source, tp) -> bool`` of :func:`calibration_rows`; ``source`` is the
#: ``<org>/<model>`` of a compute table or the network table's name for collectives.
RowFilter = Callable[[str, str, int], bool]


def calibration_rows(
    profiles_dir: str,
    device: str,
    models: Sequence[str] | None = None,
    keep: RowFilter | None = None,
) -> dict:
    """Profiled medians of ``device`` as ``{op: [(shape, tp, features, ms array), ...]}``.

    Token ops come from every ``mlp.csv`` of the device (all models, all TPs), attention
    from every ``attention.csv`` (only a100 Llama-2-7B exists), all-reduce from every
    group size of ``<device>_pairwise_nvlink`` and ``<device>_dgx`` (each row's shape
    carries its node's ``topology``), send/recv from ``<device>_pairwise_nvlink``.
    ``keep`` (see :data:`RowFilter`) selects tables, e.g. to hold some out.
    """
    from vidur_jax.profiles import loader

    out: dict[str, list] = {}

    def add(op: str, source: str, row: tuple) -> None:
        if keep is None or keep(op, source, row[1]):
            out.setdefault(op, []).append(row)

    names = models or loader.list_compute_models(profiles_dir, device)
    for model in names:
        comp = loader.load_compute(profiles_dir, device, model)
        shape = loader.model_shape(comp)
        for tp in sorted(int(t) for t in comp["num_tensor_parallel_workers"].unique()):
            rows = comp[comp["num_tensor_parallel_workers"] == tp]
            n = rows["num_tokens"].to_numpy(float)
            for op in GEMM_OPS + MEMORY_OPS:
                y = rows[op].to_numpy(float)
                # phi-2 has no post-attention norm (0 in the table)
                live = y > 0
                if live.any():
                    add(op, model, (shape, tp, {"num_tokens": n[live]}, y[live]))
        try:
            att = loader.load_attention(profiles_dir, device, model)
        except ConfigError:
            att = None
        if att is not None:
            for tp in sorted(int(t) for t in att["num_tensor_parallel_workers"].unique()):
                sub = att[att["num_tensor_parallel_workers"] == tp]
                pre, dec = sub[sub["is_prefill"]], sub[~sub["is_prefill"]]
                feats = {
                    "kv_cache_size": pre["kv_cache_size"].to_numpy(float),
                    "prefill_chunk_size": pre["prefill_chunk_size"].to_numpy(float),
                }
                add("attn_prefill", model, (shape, tp, feats, pre["attn_prefill"].to_numpy(float)))
                feats = {
                    "batch_size": dec["batch_size"].to_numpy(float),
                    "kv_cache_size": dec["kv_cache_size"].to_numpy(float),
                }
                add("attn_decode", model, (shape, tp, feats, dec["attn_decode"].to_numpy(float)))
    unit = {
        "num_q_heads": 1,
        "num_kv_heads": 1,
        "embedding_dim": 1,
        "mlp_hidden_dim": 1,
        "use_gated_mlp": False,
    }  # network features are bytes: n tokens of E=1 element... x2
    from vidur_jax.catalog import hardware

    for tp in (2, 4, 8):
        for net in (f"{device}_pairwise_nvlink", f"{device}_dgx"):
            try:
                ar = loader.load_all_reduce(profiles_dir, net, tp)
            except ConfigError:
                continue
            feats = {"num_tokens": ar["size"].to_numpy(float) / BYTES_PER_ELEMENT}
            topo = {**unit, "topology": hardware.group_topology(device, net)}
            add("all_reduce", net, (topo, tp, feats, ar["all_reduce"].to_numpy(float)))
    try:
        sr = loader.load_send_recv(profiles_dir, f"{device}_pairwise_nvlink")
        feats = {"num_tokens": sr["size"].to_numpy(float) / BYTES_PER_ELEMENT}
        add(
            "send_recv",
            f"{device}_pairwise_nvlink",
            (unit, 1, feats, sr["send_recv"].to_numpy(float)),
        )
    except ConfigError:
        pass
    return out


def _work_arrays(
    op: str, rows: list, dev: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    flops, nbytes, y, peak, bw = [], [], [], [], []
    for shape, tp, feats, ms in rows:
        fl, by = op_work(op, shape, tp, **feats)
        flops.append(fl)
        nbytes.append(by)
        y.append(ms)
        peak.append(np.full(len(ms), dev["peak_flops"]))
        bw.append(np.full(len(ms), _row_bandwidth(op, shape, tp, dev)))
    return (
        np.concatenate(flops) / np.concatenate(peak),
        np.concatenate(nbytes) / np.concatenate(bw),
        np.concatenate(y),
        np.ones(1),
    )


def _fit_op(op: str, tc0: np.ndarray, tm0: np.ndarray, y: np.ndarray) -> dict:
    """Least squares on log time; tc0/tm0 are times (s) at 100% efficiency."""
    from scipy.optimize import least_squares

    compute = op in GEMM_OPS or op in ATTENTION_OPS
    y = np.maximum(y, 1e-4)

    def unpack(x):
        eff_c = 1.0 / (1.0 + np.exp(-x[0]))
        eff_m = 1.0 / (1.0 + np.exp(-x[1]))
        return {
            "eff_compute": float(eff_c) if compute else 1.0,
            "eff_memory": float(eff_m),
            "overhead_ms": float(np.exp(x[2])),
            "sharpness": float(1.0 + 63.0 / (1.0 + np.exp(-x[3]))),
        }

    def resid(x):
        fit = unpack(x)
        pred = roofline_ms(fit, tc0 if compute else 0.0 * tc0, tm0, 1.0, 1.0)
        return np.log(pred) - np.log(y)

    best = None
    for p0 in (-2.5, -1.0):  # sharpness ~3 and ~13; two starts guard against a flat basin
        x0 = np.array([1.0, 1.0, np.log(max(np.min(y) * 0.5, 1e-4)), p0])
        res = least_squares(resid, x0, loss="soft_l1", f_scale=0.1)
        if best is None or res.cost < best.cost:
            best = res
    fit = unpack(best.x)
    err = np.abs(np.exp(resid(best.x)) - 1.0)
    fit["fit_mape_pct"] = float(100.0 * err.mean())
    fit["num_rows"] = int(len(y))
    return fit


def calibrate(
    profiles_dir: str,
    devices: Iterable[str] = ("a100",),
    models: Sequence[str] | None = None,
    keep: RowFilter | None = None,
) -> dict:
    """Fit per-op roofline constants on the profiles of ``devices`` (jointly).

    Args:
        profiles_dir: Vidur data root.
        devices: profiled GPUs whose tables are pooled (catalog names).
        models: restrict to these ``<org>/<model>`` (default: all with an ``mlp.csv``).
        keep: table filter (:data:`RowFilter`), e.g. to hold tables out.

    Returns:
        ``{"devices": [...], "ops": {op: {eff_compute, eff_memory, overhead_ms,
        sharpness, fit_mape_pct, num_rows}}}``, JSON-serializable.
    """
    devices = list(devices)
    pooled: dict[str, list] = {}
    for name in devices:
        dev = _device(name)
        for op, rows in calibration_rows(profiles_dir, name, models, keep).items():
            tc0, tm0, y, _ = _work_arrays(op, rows, dev)
            pooled.setdefault(op, []).append((tc0, tm0, y))
    if not pooled:
        raise ConfigError(
            f"no profiles to calibrate the roofline on for {devices} under {profiles_dir}"
        )
    ops = {}
    for op, parts in pooled.items():
        tc0, tm0, y = (np.concatenate([p[i] for p in parts]) for i in range(3))
        ops[op] = _fit_op(op, tc0, tm0, y)
    # all-reduce efficiency and latency depend on the hop class of the ring (NVLink /
    # NVSwitch, or crossing PCIe) and on the group size: fits per class and per class x size
    for name in devices:
        dev = _device(name)
        for shape, tp, feats, ms in calibration_rows(profiles_dir, name, models, keep).get(
            "all_reduce", []
        ):
            work = _work_arrays("all_reduce", [(shape, tp, feats, ms)], dev)[:3]
            hop = _hop(shape, tp, dev)
            pooled.setdefault(f"all_reduce@{hop}", []).append(work)
            pooled.setdefault(f"all_reduce@{hop}@{tp}", []).append(work)
    for key in sorted(k for k in pooled if k.startswith("all_reduce@")):
        tc0, tm0, y = (np.concatenate([p[i] for p in pooled[key]]) for i in range(3))
        ops[key] = _fit_op("all_reduce", tc0, tm0, y)
    return {"devices": devices, "ops": ops}


#: GPUs whose profiles the shipped calibration pools.
CALIBRATION_DEVICES: tuple[str, ...] = ("a100", "h100")
#: The shipped calibration, produced from the profiles by
#: ``python -m vidur_jax.predictors.roofline --profiles-dir DIR`` (:func:`main`).
CALIBRATION_PATH = os.path.join(os.path.dirname(__file__), "params", "roofline_calibration.json")
#: Significant digits kept in the calibration file (values differ across machines only far
#: below this, so the command reproduces the file exactly).
CALIBRATION_DIGITS = 6


def round_calibration(calibration: dict, digits: int = CALIBRATION_DIGITS) -> dict:
    """``calibration`` with every float rounded to ``digits`` significant digits."""

    def rnd(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: rnd(x) for k, x in v.items()}
        if isinstance(v, float):
            return float(f"{v:.{digits}g}")
        return v

    return rnd(calibration)


def load_calibration(path: str = CALIBRATION_PATH) -> dict:
    """Read a calibration written by :func:`write_calibration` (``ConfigError`` if unreadable)."""
    try:
        with open(path) as fh:
            cal = json.load(fh)
        if not isinstance(cal.get("ops"), dict):
            raise ValueError("no 'ops' table")
    except (OSError, ValueError) as err:
        raise ConfigError(f"unreadable roofline calibration {path}: {err}") from err
    return cal


def write_calibration(calibration: dict, path: str = CALIBRATION_PATH) -> None:
    """Write ``calibration`` (rounded, sorted keys) as JSON."""
    with open(path, "w") as fh:
        json.dump(round_calibration(calibration), fh, indent=1, sort_keys=True)
        fh.write("\n")


@functools.lru_cache(maxsize=1)
def _default_calibration() -> dict:
    return load_calibration()


def __getattr__(name: str) -> Any:
    # ``DEFAULT_CALIBRATION``: the shipped calibration (a100 + h100, all models/TPs of the
    # profiles; attention: a100 Llama-2-7B only), read from CALIBRATION_PATH on first use
    # so that the command that writes the file imports without it.
    if name == "DEFAULT_CALIBRATION":
        return _default_calibration()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- predictor


def _format_notes(shape: dict) -> str:
    """Warning text for parts of a model timed or sized as stated bounds/estimates."""
    notes = ""
    bits = (shape.get("moe") or {}).get("expert_bits")
    if bits is not None:
        notes += f"; experts stored at {bits:g} bits/weight (MXFP4), their GEMMs at the 16-bit peak"
    if shape.get("num_sliding_layers"):
        notes += (
            f"; {shape['num_sliding_layers']} of {shape['num_layers']} layers attend over a "
            f"{shape['sliding_window']}-token window, but their KV cache is counted for every "
            "token (an upper bound on KV memory: fewer requests fit than in vLLM)"
        )
    return notes


class RooflinePredictor:
    """Duck-typed predictor (``predict(op, **features) -> ms``) from the roofline.

    Args:
        model: catalog name / alias, ``ModelSpec``, or a shape dict.
        device: catalog GPU name, ``DeviceSpec``, or ``{name, fp16_tflops, hbm_gbps,
            link_gbps}``.
        tp: tensor-parallel degree.
        calibration: output of :func:`calibrate` (default: the shipped
            :data:`CALIBRATION_PATH`).
        ep: expert-parallel degree (MoE models; divides ``tp`` and the experts).
        moe_imbalance: tokens of the busiest EP rank over the mean (>= 1; MoE models).
        network_device: the node whose tables the config names (e.g. ``h100_dgx``); with
            ``device`` it sets the group topology (:func:`catalog.group_topology`;
            default: the GPU's own boards).
        attention_dp: attention data-parallel ranks (replicas of ``tp`` GPUs) sharing one
            expert group of ``attention_dp x tp`` GPUs with ``ep = attention_dp x tp``
            (DeepSeek style; 1 = off). The MoE block then runs on the tokens of every
            rank, assumed equal to this rank's (``attention_dp x num_tokens``).

    The MLP ops of a MoE model answer for its whole feed-forward block, averaged over
    the layers (dense first layers included): ``mlp_up_proj`` = router + all-to-all
    dispatch + routed and shared expert up-projections, ``mlp_act`` = their
    activations, ``mlp_down_proj`` = down-projections + all-to-all combine
    (:data:`MOE_PARTS`, :meth:`moe_parts`).

    Attributes:
        meta: ``source="roofline"``, model, device, tp, peaks used, calibration devices,
            per-op ``op_source`` and a one-line ``warning`` for the simulator to print.
    """

    def __init__(
        self,
        model: Any,
        device: Any,
        tp: int,
        calibration: dict | None = None,
        *,
        ep: int = 1,
        moe_imbalance: float = 1.0,
        network_device: str | None = None,
        attention_dp: int = 1,
    ) -> None:
        self.shape = _shape(model)
        self.device = _device(device)
        if isinstance(device, dict):
            self.topology = self.device["fabric"]
        else:
            from vidur_jax.catalog import hardware

            self.topology = hardware.group_topology(self.device["name"], network_device)
        self.tp = int(tp)
        if self.tp < 1 or self.shape["num_q_heads"] % self.tp:
            raise ConfigError(f"tp={tp} does not divide num_q_heads={self.shape['num_q_heads']}")
        self.ep, self.moe_imbalance = int(ep), float(moe_imbalance)
        self.attention_dp = int(attention_dp)
        #: GPUs over which the experts are spread
        self.moe_group = self.tp * self.attention_dp
        moe = self.shape.get("moe")
        if self.attention_dp > 1 and (
            moe is None or self.ep != self.moe_group or moe["num_experts"] % self.ep
        ):
            raise ConfigError(
                f"attention_dp={attention_dp} needs a MoE model and ep = attention_dp x tp "
                f"= {self.moe_group} dividing its experts (got ep={ep})"
            )
        if self.ep != 1 and (
            moe is None or self.moe_group % self.ep or moe["num_experts"] % self.ep
        ):
            raise ConfigError(f"ep={ep} must be 1, or divide tp={tp} and the model's experts")
        if not self.moe_imbalance >= 1.0:
            raise ConfigError(f"moe_imbalance={moe_imbalance} must be >= 1 (busiest rank / mean)")
        self.calibration = calibration if calibration is not None else _default_calibration()
        if self.device["link_bw"] <= 0:
            warnings.warn(
                f"no NVLink bandwidth known for {self.device['name']}; collectives use PCIe 4.0 x16 "
                "(32 GB/s)",
                stacklevel=2,
            )
            self.device["link_bw"] = 32e9
        name = self.shape.get("name", "custom")
        cal = "+".join(self.calibration.get("devices", []))
        self.meta = {
            "source": "roofline",
            "model": name,
            "device": self.device["name"],
            "tp": self.tp,
            "units": "ms",
            "peak_tflops": self.device["peak_flops"] / 1e12,
            "hbm_gbps": self.device["hbm_bw"] / 1e9,
            "link_gbps": self.device["link_bw"] / 1e9,
            "topology": self.topology,
            "all_reduce_gbps": ring_bandwidth(self.topology, self.device, self.tp)[0] / 1e9,
            "calibrated_on": self.calibration.get("devices", []),
            "op_source": {
                op: ("absent (0, as Vidur)" if op == "attn_kv_cache_save" else "roofline")
                for op in OPS
            },
            "ep": self.ep,
            "moe_imbalance": self.moe_imbalance,
            "attention_dp": self.attention_dp,
            "shape": self.shape,
            "warning": f"no profiles for {name} on {self.device['name']} (tp={self.tp}): op times are "
            f"roofline estimates (efficiencies calibrated on {cal}); expect 10-40% error"
            + (
                f"; MoE all-to-all at ep={self.ep}: link-bandwidth roofline estimate"
                if self.ep > 1
                else ""
            )
            + _format_notes(self.shape)
            + (
                f"; attention data parallelism over {self.attention_dp} ranks: the MoE block "
                "assumes every rank holds as many tokens, ranks are not run in lock-step"
                if self.attention_dp > 1
                else ""
            ),
        }

    def predict(self, op: str, **features: Any) -> np.ndarray:
        """Predicted time (ms, float64) of ``op``, broadcast over array features.

        Args:
            op: one of :data:`OPS`.
            **features: ``num_tokens`` for token and network ops; ``kv_cache_size,
                prefill_chunk_size`` for attn_prefill; ``batch_size, kv_cache_size`` for
                attn_decode.
        """
        if op not in OP_FEATURES:
            raise ConfigError(f"unknown op '{op}'; allowed: {', '.join(OPS)}")
        if set(features) != set(OP_FEATURES[op]):
            raise ConfigError(
                f"op '{op}' takes features {list(OP_FEATURES[op])}, got {sorted(features)}"
            )
        if op == "attn_kv_cache_save" or (op == "all_reduce" and self.tp == 1):
            return np.zeros(np.shape(features["num_tokens"]), np.float64)
        if "moe" in self.shape and op in MOE_PARTS:
            return self._moe_mlp_ms(op, features["num_tokens"])
        if op in ATTENTION_OPS and self.shape.get("num_sliding_layers"):
            return self._sliding_attention_ms(op, features)
        flops, nbytes = op_work(op, self.shape, self.tp, **features)
        fits = self.calibration.get("ops", {})
        if op not in fits:
            cal = "+".join(self.calibration.get("devices", [])) or "?"
            raise ConfigError(
                f"roofline calibration ({cal}) has no fit for op '{op}' (no profile of it)"
            )
        if op == "all_reduce":
            bw, hop = ring_bandwidth(self.topology, self.device, self.tp)
            fit = all_reduce_fit(fits, hop, self.tp)
        else:
            bw, fit = _bandwidth(op, self.device), fits[op]
        return roofline_ms(fit, flops, nbytes, self.device["peak_flops"], bw)

    def _sliding_attention_ms(self, op: str, features: dict) -> np.ndarray:
        """Attention ms averaged over the full and the sliding-window layers.

        A sliding layer's query attends to at most ``window`` keys: decode reads
        ``min(kv, window)`` cached tokens; a prefill chunk of ``c`` queries after ``kv``
        cached tokens computes ``c x min(kv + c, window)`` scores and reads the K/V of
        the last ``min(kv + c, window + c)`` tokens (tile granularity is not counted).
        """
        layers, sliding = self.shape["num_layers"], self.shape["num_sliding_layers"]
        window = float(self.shape["sliding_window"])
        fit, peak, bw = self._fit(op), self.device["peak_flops"], self.device["hbm_bw"]
        full = roofline_ms(fit, *op_work(op, self.shape, self.tp, **features), peak, bw)
        if op == "attn_decode":
            kv = np.minimum(np.asarray(features["kv_cache_size"], np.float64), window)
            near = op_work(
                op, self.shape, self.tp, batch_size=features["batch_size"], kv_cache_size=kv
            )
        else:
            kv, c = np.broadcast_arrays(
                *(np.asarray(features[k], np.float64) for k in OP_FEATURES[op])
            )
            d = float(
                self.shape.get("head_dim", self.shape["embedding_dim"] / self.shape["num_q_heads"])
            )
            hq = float(self.shape["num_q_heads"] // self.tp)
            hkv = float(math.ceil(self.shape["num_kv_heads"] / self.tp))
            keys = np.minimum(kv + c, window)
            near = (
                4.0 * hq * d * c * keys,
                BYTES_PER_ELEMENT
                * (2.0 * c * hq * d + 2.0 * np.minimum(kv + c, window + c) * hkv * d),
            )
        slid = roofline_ms(fit, *near, peak, bw)
        return ((layers - sliding) * full + sliding * slid) / layers

    def _fit(self, op: str) -> dict:
        fits = self.calibration.get("ops", {})
        if op not in fits:
            cal = "+".join(self.calibration.get("devices", [])) or "?"
            raise ConfigError(
                f"roofline calibration ({cal}) has no fit for op '{op}' (no profile of it)"
            )
        return fits[op]

    def moe_parts(self, op: str, num_tokens: Any) -> dict[str, np.ndarray]:
        """Per-part ms of one MoE layer's ``op`` (a key of :data:`MOE_PARTS`) at
        ``num_tokens`` batch tokens (of this attention rank); absent parts are left out."""
        out = {}
        # attention DP: the expert group's GPUs serve the tokens of all its ranks
        tokens = np.asarray(num_tokens, np.float64) * self.attention_dp
        for part, fit_op in MOE_PARTS[op]:
            work = moe_part_work(
                part, self.shape, self.moe_group, self.ep, self.moe_imbalance, tokens
            )
            if work is not None:
                # the all-to-all reaches ep - 1 peers over the group's slowest hop
                bw = (
                    ring_bandwidth(self.topology, self.device, self.ep)[0]
                    if fit_op in NETWORK_OPS
                    else _bandwidth(fit_op, self.device)
                )
                out[part] = roofline_ms(self._fit(fit_op), *work, self.device["peak_flops"], bw)
        return out

    def _moe_mlp_ms(self, op: str, num_tokens: Any) -> np.ndarray:
        """``op``'s ms averaged over the layers: dense MLP layers and MoE layers."""
        moe_ms = sum(self.moe_parts(op, num_tokens).values())
        dense_layers = self.shape["moe"]["first_dense_layers"]
        if dense_layers == 0:
            return np.asarray(moe_ms, np.float64)
        flops, nbytes = op_work(op, self.shape, self.tp, num_tokens=num_tokens)
        dense_ms = roofline_ms(
            self._fit(op), flops, nbytes, self.device["peak_flops"], self.device["hbm_bw"]
        )
        layers = self.shape["num_layers"]
        return (dense_layers * dense_ms + (layers - dense_layers) * moe_ms) / layers


class TwinScaledPredictor:
    """A GPU without profiles timed from a profiled *compute twin* (same die, SM count and
    clocks: H200 from H100), as precision scales BF16 to FP8 (``sim/precision.py``)::

        t(op, target) = t_twin(op) x roofline(op, target) / roofline(op, twin)

    ``t_twin`` is the twin's predictor (trained on its profiles or shipped); the two
    rooflines share one calibration and the same features, so only the datasheet numbers
    that differ move the ratio (HBM bandwidth; the all-reduce ring's slowest hop, by
    each side's topology). Equal compute peaks make every ratio <= 1 when the target's
    bandwidths are >= the twin's, so the target is never slower than its twin on any op.

    Args:
        base: the twin's predictor (``predict(op, **features) -> ms``, ``meta``).
        model: catalog name / ``ModelSpec`` / shape dict.
        device: the target GPU (catalog name); twin: the profiled GPU.
        tp: tensor-parallel degree.
        network_device: the config's node (sets the target's topology).
        calibration: roofline calibration (default: the shipped one).
    """

    def __init__(
        self,
        base: Any,
        model: Any,
        device: str,
        twin: str,
        tp: int,
        network_device: str | None = None,
        calibration: dict | None = None,
    ) -> None:
        base_meta = dict(getattr(base, "meta", {}))
        self.base = base
        self.target = RooflinePredictor(
            model, device, tp, calibration, network_device=network_device
        )
        self.twin = RooflinePredictor(
            model, twin, tp, calibration, network_device=base_meta.get("network_device")
        )
        src = base_meta.get("source", "roofline")
        name = self.target.meta["model"]
        self.meta = {
            **{k: v for k, v in base_meta.items() if k not in ("warning", "ranges")},
            "source": f"scaled from {twin}",
            "device": self.target.device["name"],
            "twin_device": twin,
            "twin_source": src,
            "topology": self.target.topology,
            "op_source": {op: f"{twin} ({src}) x roofline ratio" for op in OPS},
            "warning": f"no profiles for {name} on {self.target.device['name']} (tp={tp}): op "
            f"times are {twin}'s ({src}) x the calibrated roofline ratio "
            f"{self.target.device['name']}/{twin} (same compute; memory and interconnect "
            "from the datasheets): estimates",
        }

    def predict(self, op: str, **features: Any) -> np.ndarray:
        """``op``'s ms on the target GPU (features as :meth:`RooflinePredictor.predict`)."""
        base = np.asarray(self.base.predict(op, **features), np.float64)
        num = self.target.predict(op, **features)
        den = self.twin.predict(op, **features)
        ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
        return base * ratio


def load_twin_scaled(
    base: Any, model: Any, device: str, tp: int, network_device: str | None = None
) -> TwinScaledPredictor:
    """:class:`TwinScaledPredictor` of ``device`` from its twin's predictor ``base``
    (``device`` must have :attr:`DeviceSpec.compute_twin`); warns like the fallback."""
    from vidur_jax.catalog import get_device

    twin = get_device(device).compute_twin
    if twin is None:
        raise ConfigError(f"device '{device}' has no profiled compute twin")
    pred = TwinScaledPredictor(base, model, device, twin, tp, network_device)
    warnings.warn(pred.meta["warning"], stacklevel=2)
    return pred


def load_network_scaled(
    base: Any, model: Any, device: str, tp: int, network_device: str
) -> TwinScaledPredictor:
    """``base`` (fitted on another node's collective tables, ``meta["network_device"]``)
    with its all-reduce scaled to ``network_device``'s topology by the roofline ratio;
    every other op is unchanged (same GPU: ratio exactly 1). Warns that it is an
    estimate. Used when shipped parameters lack the requested node's tables (e.g. H100
    TP4 fitted on the pairwise-NVLink node, run on a DGX)."""
    pred = TwinScaledPredictor(base, model, device, device, tp, network_device)
    fitted = dict(getattr(base, "meta", {})).get("network_device")
    name = pred.target.meta["model"]
    pred.meta.update(
        source=dict(getattr(base, "meta", {})).get("source", "trained"),
        network_device=network_device,  # what its all-reduce now stands for
        network_scaled_from=fitted,
        op_source={
            **dict(getattr(base, "meta", {})).get("op_source", {}),
            "all_reduce": f"{fitted} fit x roofline ratio to {network_device}",
        },
        warning=f"{name} on {device} (tp={tp}): all-reduce fitted on {fitted}, scaled to "
        f"{network_device} ({pred.target.topology}) by the calibrated roofline ratio: estimate",
    )
    warnings.warn(pred.meta["warning"], stacklevel=2)
    return pred


def evaluate(
    calibration: dict,
    profiles_dir: str,
    device: str,
    models: Sequence[str] | None = None,
    keep: RowFilter | None = None,
) -> list[dict]:
    """Error of a calibration on ``device``'s profiles (every table :func:`calibrate` reads).

    Returns:
        One dict per op: ``op, rows, mape_pct, median_ape_pct, p90_ape_pct, bias_pct``
        (``bias`` = mean signed relative error; + means the roofline is too slow).
        Ops the calibration lacks are skipped.
    """
    dev = _device(device)
    out = []
    for op, rows in calibration_rows(profiles_dir, device, models, keep).items():
        if op not in calibration["ops"]:
            continue
        pred, y = [], []
        for shape, tp, feats, ms in rows:
            fits = calibration["ops"]
            fit = all_reduce_fit(fits, _hop(shape, tp, dev), tp) if op == "all_reduce" else fits[op]
            fl, by = op_work(op, shape, tp, **feats)
            bw = _row_bandwidth(op, shape, tp, dev)
            pred.append(roofline_ms(fit, fl, by, dev["peak_flops"], bw))
            y.append(ms)
        rel = np.concatenate(pred) / np.concatenate(y) - 1.0
        ape = 100.0 * np.abs(rel)
        out.append(
            {
                "op": op,
                "rows": int(len(rel)),
                "mape_pct": float(ape.mean()),
                "median_ape_pct": float(np.median(ape)),
                "p90_ape_pct": float(np.percentile(ape, 90)),
                "bias_pct": float(100.0 * rel.mean()),
            }
        )
    return out


def load_roofline(
    model: Any, device: Any, tp: int, calibration: dict | None = None, **kw: Any
) -> RooflinePredictor:
    """The fallback for ``predictors.load`` when no profile or shipped predictor exists,
    and the predictor of MoE / MLA models (``kw``: ``ep``, ``moe_imbalance``,
    ``network_device``).

    Emits a ``UserWarning`` with ``meta["warning"]`` so the run says it is on a fallback.
    """
    pred = RooflinePredictor(model, device, tp, calibration, **kw)
    warnings.warn(pred.meta["warning"], stacklevel=2)
    return pred


def main(argv: list[str] | None = None) -> int:
    """``python -m vidur_jax.predictors.roofline --profiles-dir DIR [--out PATH]``.

    Calibrates on :data:`CALIBRATION_DEVICES` (or ``--devices``) and writes the JSON
    (default: the shipped :data:`CALIBRATION_PATH`). Returns the exit status.
    """
    parser = argparse.ArgumentParser(description="Fit the roofline calibration from profiles")
    parser.add_argument("--profiles-dir", required=True, help="Vidur data root (holds profiling/)")
    parser.add_argument("--devices", nargs="+", default=list(CALIBRATION_DEVICES))
    parser.add_argument("--out", default=CALIBRATION_PATH)
    args = parser.parse_args(argv)
    try:
        cal = calibrate(args.profiles_dir, args.devices)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_calibration(cal, args.out)
    print(f"wrote {args.out} ({len(cal['ops'])} op fits on {'+'.join(args.devices)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
