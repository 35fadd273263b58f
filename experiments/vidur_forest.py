"""A Vidur-style random-forest predictor, for like-for-like fidelity diagnosis.

Vidur predicts every operation with a scikit-learn random forest on its own features
(``num_tokens``; ``kv_cache_size, prefill_chunk_size^2`` for prefill attention;
``batch_size, kv_cache_size`` for decode attention; message size as tokens for the
collectives). Plugging the same kind of predictor into vidur_jax separates the two
sources of disagreement with Vidur: simulation semantics and predictor error. It is an
experiment helper (scikit-learn is an optional dependency), duck-typed like
:class:`vidur_jax.predictors.Predictor` (``predict(op, **features) -> ms``).
"""

from __future__ import annotations

import numpy as np

from vidur_jax import catalog
from vidur_jax.profiles import loader

TOKEN_OPS = (
    "attn_pre_proj", "attn_post_proj", "attn_rope", "mlp_up_proj", "mlp_down_proj", "mlp_act",
    "input_layernorm", "post_attention_layernorm", "add",
)


def _forest(x: np.ndarray, y: np.ndarray, seed: int = 0):
    from sklearn.ensemble import RandomForestRegressor

    # one member of Vidur's grid (n_estimators 250/500/750, max_depth 8/16/32, split 2/5/10)
    rf = RandomForestRegressor(n_estimators=250, max_depth=32, min_samples_split=2, n_jobs=-1, random_state=seed)
    return rf.fit(x, y)


class ForestPredictor:
    """Vidur-style forests for one (model, device, TP, network)."""

    def __init__(self, profiles_dir: str, model: str, device: str, tp: int, network_device: str) -> None:
        spec = catalog.get_model(model)
        comp = loader.select_tp(loader.load_compute(profiles_dir, device, model), tp, "mlp.csv")
        x = comp[["num_tokens"]].to_numpy(float)
        self.models = {op: _forest(x, comp[op].to_numpy(float)) for op in TOKEN_OPS}
        att = loader.select_tp(loader.load_attention(profiles_dir, device, model), tp, "attention.csv")
        pre, dec = att[att.is_prefill], att[~att.is_prefill]
        xp = np.stack([pre.kv_cache_size, pre.prefill_chunk_size.astype(float) ** 2], axis=1)
        self.models["attn_prefill"] = _forest(xp, pre.attn_prefill.to_numpy(float))
        xd = np.stack([dec.batch_size, dec.kv_cache_size], axis=1).astype(float)
        self.models["attn_decode"] = _forest(xd, dec.attn_decode.to_numpy(float))
        tokens = np.maximum(att.prefill_chunk_size, att.batch_size).to_numpy(float)[:, None]
        self.models["attn_kv_cache_save"] = _forest(tokens, att.attn_kv_cache_save.to_numpy(float))
        if tp > 1:
            ar = loader.load_all_reduce(profiles_dir, network_device, tp)
            self.models["all_reduce"] = _forest((ar["size"] / spec.embedding_dim / 2).to_numpy(float)[:, None],
                                                ar["all_reduce"].to_numpy(float))
        sr = loader.load_send_recv(profiles_dir, network_device)
        col = "send_recv" if "send_recv" in sr.columns else sr.columns[-1]
        self.models["send_recv"] = _forest((sr["size"] / spec.embedding_dim / 2).to_numpy(float)[:, None],
                                           sr[col].to_numpy(float))

    def predict(self, op: str, **f: np.ndarray) -> np.ndarray:
        """Milliseconds for ``op`` at the given features (Vidur's feature encoding)."""
        if op == "attn_prefill":
            kv, c = np.broadcast_arrays(np.asarray(f["kv_cache_size"], float), np.asarray(f["prefill_chunk_size"], float))
            x = np.stack([kv.ravel(), c.ravel() ** 2], axis=1)
            shape = kv.shape
        elif op == "attn_decode":
            b, kv = np.broadcast_arrays(np.asarray(f["batch_size"], float), np.asarray(f["kv_cache_size"], float))
            x = np.stack([b.ravel(), kv.ravel()], axis=1)
            shape = b.shape
        else:
            n = np.asarray(f["num_tokens"], float)
            x, shape = n.ravel()[:, None], n.shape
            if op not in self.models:
                return np.zeros(shape)
        return self.models[op].predict(x).reshape(shape)
