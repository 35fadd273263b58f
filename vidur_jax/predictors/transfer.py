"""Transfer: predictors for (model, device) pairs without their own profile.

Attention. Only ``a100/meta-llama/Llama-2-7b-hf/attention.csv`` exists. One prefill and
one decode model are fitted on it over all its TPs, with the effective number of 128-dim
heads per device (32/16/8/4 at TP 1/2/4/8; see ``datasets.effective_heads``) entering in
physical coordinates (``datasets.attention_transfer_job``): query heads for prefill
(FLOP-bound; latency + throughput, ``t = A(kv, chunk) + heads x B(kv, chunk)``), KV heads
for decode (KV-bandwidth-bound; FlashAttention's decode kernel runs one block per
sequence and KV head, so decode time is a function of ``batch x heads`` and ``kv``). For
a target model the heads are set from its shape, and:

* **GQA**: the predictor returns the raw kernel time from the heads feature (KV heads for
  decode, query heads for prefill), like Vidur's forests. Vidur's batching overhead for
  GQA models (``attention_decode_batching_overhead_fraction`` and its prefill twin,
  default 0.1, applied when ``num_q_heads > num_kv_heads`` and a batch holds more than
  one decode / prefill) depends on the batch composition and is applied once, by the
  simulator (``SimParams.gqa_overhead``); ``meta["attn_batching_overhead_fraction"]``
  records it. Basis: Vidur has no GQA profile either and uses the same x1.1 rule.
* **Another GPU**: times are scaled by the measured ratio of that GPU's GEMM times to the
  A100's on the same models/TPs (``device_scales``): the ratio at ``num_tokens <= 16``
  (weight-streaming, memory-bound like decode) for decode, and at ``num_tokens >= 2048``
  (compute-bound like prefill) for prefill.

Token ops of a model with no ``mlp.csv`` (e.g. InternLM-20B) come from per-op models fitted
across every profiled model of the device with shape features (tokens, K, N) per device
(``datasets.shape_dims``); all-reduce/send-recv depend only on message bytes and transfer
exactly.

Accuracy (``evaluate.run_transfer_eval``, ``experiments/results/predictor_transfer_eval.csv``):
attention with one TP degree held out (fitted on the other three) is within 10% MAPE at
every held-out TP (prefill 6.0/9.2/7.7/8.1, decode 6.7/3.3/3.9/7.2 at TP 1/2/4/8).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from vidur_jax.errors import ConfigError
from vidur_jax.predictors import datasets, hybrid
from vidur_jax.profiles import loader

REFERENCE_DEVICE = "a100"
REFERENCE_MODEL = "meta-llama/Llama-2-7b-hf"
#: Vidur's attention batching overhead fraction for GQA models (applied by the simulator).
GQA_BATCHING_OVERHEAD = 0.1
#: Version of the attention transfer features (part of the training cache key): 2 =
#: prefill affine in heads with an MLP on (kv, chunk, blocks), decode on (batch x heads, kv).
ATTENTION_TRANSFER_VERSION = 2
_GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")


def device_scales(profiles_dir: str, device: str, reference: str = REFERENCE_DEVICE) -> dict:
    """Measured ``device / reference`` time ratios for attention transfer.

    Returns:
      ``{"prefill": float, "decode": float, "basis": str}`` (1.0 for the reference).
    """
    if device == reference:
        return {"prefill": 1.0, "decode": 1.0, "basis": "reference device"}
    common = sorted(
        set(loader.list_compute_models(profiles_dir, device))
        & set(loader.list_compute_models(profiles_dir, reference))
    )
    if not common:
        raise ConfigError(
            f"cannot transfer attention to device '{device}': no model profiled on both {device} and {reference}"
        )
    small, large = [], []
    for model in common:
        a = loader.load_compute(profiles_dir, device, model)
        b = loader.load_compute(profiles_dir, reference, model)
        keys = ["num_tensor_parallel_workers", "num_tokens"]
        m = a.merge(b, on=keys, suffixes=("_d", "_r"))
        ratio = sum(m[f"{op}_d"] for op in _GEMM_OPS) / sum(m[f"{op}_r"] for op in _GEMM_OPS)
        small.append(ratio[m["num_tokens"] <= 16].to_numpy())
        large.append(ratio[m["num_tokens"] >= 2048].to_numpy())
    return {
        "prefill": float(np.median(np.concatenate(large))),
        "decode": float(np.median(np.concatenate(small))),
        "basis": f"median {device}/{reference} GEMM time ratio over {len(common)} models "
        "(num_tokens>=2048 for prefill, <=16 for decode)",
    }


def reference_shape(att: pd.DataFrame) -> dict:
    """Model shape recorded in an attention table (first row)."""
    row = att.iloc[0]
    return {
        "num_q_heads": int(row["n_q_head"]),
        "num_kv_heads": int(row["n_kv_head"]),
        "embedding_dim": int(row["n_embd"]),
    }


def attention_transfer_jobs(
    att: pd.DataFrame, exclude_tp: int | None = None
) -> dict[str, datasets.FitJob]:
    """Prefill and decode fit jobs over all TPs of the reference table (heads vary)."""
    shape = reference_shape(att)
    jobs = {}
    for kind in ("prefill", "decode"):
        rows = att[att["is_prefill"] == (kind == "prefill")]
        if exclude_tp is not None:
            rows = rows[rows["num_tensor_parallel_workers"] != exclude_tp]
        tps = rows["num_tensor_parallel_workers"].to_numpy()
        heads = np.array([datasets.effective_heads(shape, int(t), kind) for t in tps])
        jobs[f"attn_{kind}"] = datasets.attention_transfer_job(rows, kind, heads)
    return jobs


def specialize_attention(
    params: hybrid.Params, op: str, shape: dict, tp: int, scale: float
) -> hybrid.Params:
    """Transfer-model params for one target: fix its heads and device scale.

    Prefill: internal ``(kv, chunk, heads)``; decode: ``(batch x heads, kv, 1)`` (see
    ``datasets.attention_transfer_job``).
    """
    kind = "prefill" if op == "attn_prefill" else "decode"
    heads = datasets.effective_heads(shape, tp, kind)
    p = copy.deepcopy(params)
    if kind == "prefill":
        p["feat_scale"] = np.array([1.0, 1.0, 0.0], np.float32)
        p["feat_const"] = np.array([0.0, 0.0, heads], np.float32)
    else:
        p["feat_scale"] = np.array([heads, 1.0, 0.0], np.float32)
        p["feat_const"] = np.array([0.0, 0.0, 1.0], np.float32)
    p["out_scale"] = np.array(scale, np.float32)
    return p


def specialize_shape_op(params: hybrid.Params, op: str, shape: dict, tp: int) -> hybrid.Params:
    """Shape-transfer params for one target model/TP: fix its (K, N) features."""
    p = copy.deepcopy(params)
    a, b = datasets.shape_dims(op, shape, tp)
    p["feat_scale"] = np.array([1.0, 0.0, 0.0], np.float32)
    p["feat_const"] = np.array([0.0, a, b], np.float32)
    if op == "post_attention_layernorm" and not shape.get("post_attn_norm", True):
        p["out_scale"] = np.array(0.0, np.float32)
    return p


def with_bytes_per_token(params: hybrid.Params, embedding_dim: int) -> hybrid.Params:
    """Network params for a model: user ``num_tokens`` -> bytes (fp16 activations)."""
    p = copy.deepcopy(params)
    p["feat_scale"] = np.array([2.0 * embedding_dim, 0.0, 0.0], np.float32)
    return p
