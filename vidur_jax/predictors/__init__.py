"""Execution-time predictors: hybrid MLP + polynomial models of Vidur's profiled ops.

Public API::

    pred = vidur_jax.predictors.load("meta-llama/Llama-2-7b-hf", "a100", tp=2)
    pred.predict("mlp_up_proj", num_tokens=[1, 512, 4096])            # ms, np.ndarray
    pred.predict("attn_decode", batch_size=32, kv_cache_size=1024)
    vidur_jax.predictors.predict_jax(pred.params, "attn_prefill",
                                     kv_cache_size=kv, prefill_chunk_size=c)  # jit/grad-safe

``load(..., profiles_dir=None)`` uses parameters shipped in ``predictors/params/``
(rebuilt with ``python -m vidur_jax.predictors.build --profiles-dir ../shared/data``);
with a ``profiles_dir`` it trains from those CSVs (cached). See :mod:`.hybrid` for the
model, :mod:`.train` for fitting, :mod:`.transfer` for unprofiled models/devices.
"""

from vidur_jax.predictors.api import (
    OP_FEATURES,
    OPS,
    Predictor,
    list_shipped,
    load,
    load_predictor,
    predict_jax,
    save_predictor,
    train_predictors,
    transfer,
)

__all__ = [
    "OPS",
    "OP_FEATURES",
    "Predictor",
    "list_shipped",
    "load",
    "load_predictor",
    "predict_jax",
    "save_predictor",
    "train_predictors",
    "transfer",
]
