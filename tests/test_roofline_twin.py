"""A GPU without profiles but with a profiled compute twin (H200 <- H100) is timed from
the twin's predictor scaled by the calibrated roofline ratio, so it is never slower than
its twin on any op (same compute, more HBM bandwidth, NVSwitch boards)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from vidur_jax import catalog
from vidur_jax.errors import ConfigError
from vidur_jax.predictors import roofline
from vidur_jax.sim.run import default_predictor_for

TOKENS = np.array([1, 8, 64, 512, 4096, 16384], float)
KV, CHUNK = np.meshgrid([0.0, 1024.0, 4096.0], [64.0, 512.0, 2048.0])
BATCH, DKV = np.meshgrid([1.0, 16.0, 128.0], [128.0, 1024.0, 4096.0])
FEATURES = {op: {"num_tokens": TOKENS} for op in roofline.OPS}
FEATURES["attn_prefill"] = {"kv_cache_size": KV.ravel(), "prefill_chunk_size": CHUNK.ravel()}
FEATURES["attn_decode"] = {"batch_size": BATCH.ravel(), "kv_cache_size": DKV.ravel()}

#: profiled (Llama-2-70B), shape-transferred (Llama-3-70B, Llama-3.1-8B, Qwen2.5-7B) and
#: roofline-timed (Mixtral: MoE) models; the bug: Llama-3-70B was slower on H200 than H100
MODELS = (
    "meta-llama/Llama-2-70b-hf",
    "llama3-70b",
    "llama-3.1-8b-instruct",
    "qwen2.5-7b-instruct",
    "mixtral-8x7b-instruct-v0.1",
)


def _config(model: str, device: str, tp: int, network: str) -> SimpleNamespace:
    return SimpleNamespace(
        model=model,
        device=device,
        tensor_parallel_size=tp,
        network_device=network,
        expert_parallel=1,
        moe_imbalance=1.0,
        attention_dp=1,
    )


@pytest.mark.parametrize("model", MODELS)
def test_h200_never_slower_than_h100_on_any_op(model):
    """Each op at every feature point, TP 1/2/4/8 (shipped predictors, the default), each
    GPU on its shipped node and both on the same DGX node."""
    predictor_for = default_predictor_for(None)
    spec = catalog.get_model(model)
    for tp in (1, 2, 4, 8):
        if spec.num_q_heads % tp or spec.num_kv_heads % tp:
            continue
        for h100_net, h200_net in (("h100_pairwise_nvlink", "h100_dgx"), ("h100_dgx", "h100_dgx")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "op times are ... estimates"
                h100 = predictor_for(_config(model, "h100", tp, h100_net))
                h200 = predictor_for(_config(model, "h200", tp, h200_net))
                for op, feats in FEATURES.items():
                    a, b = h100.predict(op, **feats), h200.predict(op, **feats)
                    assert np.all(b <= a * (1 + 1e-9)), (model, tp, h100_net, op, a, b)
                    assert np.all(np.isfinite(b)) and np.all(b >= 0), (model, tp, op)


def test_twin_scaling_by_hand():
    """t(h200) = t(h100) x roofline(h200) / roofline(h100), checked on one GEMM point."""
    shape = {
        "num_q_heads": 8,
        "num_kv_heads": 8,
        "embedding_dim": 1024,
        "mlp_hidden_dim": 4096,
        "use_gated_mlp": False,
    }

    class Const:  # a twin predictor answering 1 ms for everything
        meta = {"source": "trained", "network_device": "h100_dgx"}

        def predict(self, op, **features):
            return np.ones(np.shape(next(iter(features.values()))))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = roofline.load_twin_scaled(Const(), shape, "h200", 1, "h100_dgx")
    n = np.array([1.0])
    fit = roofline.DEFAULT_CALIBRATION["ops"]["mlp_up_proj"]
    flops, nbytes = roofline.op_work("mlp_up_proj", shape, 1, num_tokens=n)
    h200 = roofline.roofline_ms(fit, flops, nbytes, 989.4e12, 4800e9)
    h100 = roofline.roofline_ms(fit, flops, nbytes, 989.4e12, 3350e9)
    np.testing.assert_allclose(pred.predict("mlp_up_proj", num_tokens=n), h200 / h100, rtol=1e-12)
    assert (h200 / h100)[0] < 1.0
    # same topology (NVSwitch), same NVLink: all-reduce unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp2 = roofline.load_twin_scaled(Const(), shape, "h200", 2, "h100_dgx")
    np.testing.assert_allclose(tp2.predict("all_reduce", num_tokens=n), 1.0, rtol=1e-12)
    assert pred.meta["source"] == "scaled from h100" and "estimates" in pred.meta["warning"]


def test_h200_from_h100_profiles_when_profiles_dir_is_set(profiles_dir):
    """With profiles (CI), H200 is H100's profile-trained predictor x the roofline ratio;
    a model H100 has no profile of fails with one line naming both GPUs."""
    predictor_for = default_predictor_for(str(profiles_dir))
    feats = {"num_tokens": np.array([1.0, 64.0, 4096.0])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h100 = predictor_for(_config("meta-llama/Llama-2-7b-hf", "h100", 2, "h100_dgx"))
        h200 = predictor_for(_config("meta-llama/Llama-2-7b-hf", "h200", 2, "h100_dgx"))
        assert h200.meta["source"] == "scaled from h100"
        for op in ("attn_pre_proj", "mlp_up_proj", "mlp_act", "add", "all_reduce"):
            a, b = h100.predict(op, **feats), h200.predict(op, **feats)
            assert np.all(b <= a) and np.all(b > 0), (op, a, b)
        np.testing.assert_array_equal(
            h200.predict("all_reduce", **feats), h100.predict("all_reduce", **feats)
        )
        with pytest.raises(ConfigError, match="h200 is timed from its compute twin h100") as err:
            predictor_for(_config("meta-llama/Meta-Llama-3-8B", "h200", 1, "h100_dgx")).predict(
                "add", **feats
            )
    assert "\n" not in str(err.value)
