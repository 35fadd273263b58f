"""Tests for vidur_jax.predictors: accuracy, sanity, compile count, gradients, I/O."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from vidur_jax import predictors
from vidur_jax.errors import ConfigError
from vidur_jax.predictors import datasets, hybrid, train
from vidur_jax.profiles import load_attention, load_compute, select_tp

MODEL = "meta-llama/Llama-2-7b-hf"
LINEAR_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")


def mape(pred, y) -> float:
    return float(np.mean(np.abs(np.asarray(pred) / np.asarray(y) - 1.0)) * 100)


@pytest.fixture(scope="module")
def holdout_fit(profiles_dir):
    """Fit mlp_up_proj (TP2) and attn_decode (TP4) with every 5th row held out."""
    comp = select_tp(load_compute(str(profiles_dir), "a100", MODEL), 2, "x")
    att = load_attention(str(profiles_dir), "a100", MODEL)
    dec = att[(~att["is_prefill"]) & (att["num_tensor_parallel_workers"] == 4)].reset_index(drop=True)
    n, y = comp["num_tokens"].to_numpy(float), comp["mlp_up_proj"].to_numpy(float)
    ti, di = np.arange(len(n)) % 5 == 0, np.arange(len(dec)) % 5 == 0
    jobs = [datasets.token_job(n[~ti], y[~ti]), datasets.attention_job(dec[~di], "decode", 8.0)]
    p_up, p_dec = train.fit_jobs(jobs)
    return {"up": (p_up, n[ti], y[ti]), "dec": (p_dec, dec[di])}


def test_heldout_accuracy(holdout_fit):
    p_up, n, y = holdout_fit["up"]
    pred = predictors.api.apply_op(p_up, "mlp_up_proj", num_tokens=n)
    assert mape(pred, y) < 8.0
    p_dec, rows = holdout_fit["dec"]
    pred = predictors.api.apply_op(p_dec, "attn_decode", batch_size=rows["batch_size"].to_numpy(),
                                   kv_cache_size=rows["kv_cache_size"].to_numpy())
    assert mape(pred, rows["attn_decode"]) < 8.0


def test_train_step_compiles_once():
    """Two fits with different data but the same bucket shapes trace the train loop once."""
    rng = np.random.default_rng(0)
    k, n = 3, 320
    before = train.TRACE_COUNT["fit_mlps"]
    for _ in range(2):
        mlp0 = jax.vmap(hybrid.init_mlp)(jax.random.split(jax.random.PRNGKey(1), k))
        z = jnp.asarray(rng.normal(size=(k, n, 3)), jnp.float32)
        r = jnp.asarray(rng.normal(size=(k, n)), jnp.float32)
        w = jnp.ones((k, n), jnp.float32)
        masks = jnp.stack([jnp.asarray(train.width_mask(8))] * k)
        _, loss = train.fit_mlps(mlp0, z, r, w, masks, num_steps=7)
        assert np.all(np.isfinite(loss))
    assert train.TRACE_COUNT["fit_mlps"] - before == 1


def test_zero_padded_units_are_exact():
    mlp = hybrid.init_mlp(jax.random.PRNGKey(3))
    mlp = jax.tree_util.tree_map(lambda a: a + 0.1, mlp)  # non-zero output layer
    mask = train.width_mask(8)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(50, 3)), jnp.float32)
    masked = hybrid.MLP.apply({"params": mlp}, z, jnp.asarray(mask))
    zeroed = hybrid.MLP.apply({"params": hybrid.zero_masked_units(mlp, mask)}, z, jnp.ones(hybrid.MAX_WIDTH))
    np.testing.assert_array_equal(np.asarray(masked), np.asarray(zeroed))


@pytest.fixture(scope="module")
def shipped():
    if not predictors.list_shipped():
        pytest.fail("no shipped predictor params; run python -m vidur_jax.predictors.build")
    return predictors.load(MODEL, "a100", 2)


def test_shipped_loads_without_profiles_and_has_identical_trees(shipped):
    assert shipped.meta["source"] == "trained" and shipped.meta["tp"] == 2
    other = predictors.load("meta-llama/Llama-2-70b-hf", "h100", 8)
    assert other.meta["source"] == "transferred"
    s1 = jax.tree_util.tree_structure(shipped.params)
    assert s1 == jax.tree_util.tree_structure(other.params)
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), shipped.params, other.params)
    out = jax.vmap(lambda p: predictors.predict_jax(p, "mlp_up_proj", num_tokens=jnp.array([64.0, 512.0])))(stacked)
    np.testing.assert_allclose(out[0], shipped.predict("mlp_up_proj", num_tokens=[64, 512]), rtol=1e-5)


def test_positive_and_monotone_ish(shipped):
    n = np.arange(1, 4097, 7)
    for op in predictors.OPS:
        if op in ("attn_prefill", "attn_decode"):
            continue
        y = shipped.predict(op, num_tokens=n)
        if op == "attn_kv_cache_save":
            assert np.all(y == 0)
            continue
        assert np.all(y > 0), op
        # never drops by more than 15% (+ the 1 us profile resolution) below the running max
        assert np.all(y[1:] >= 0.85 * np.maximum.accumulate(y)[:-1] - 1e-3), op
    dec = shipped.predict("attn_decode", batch_size=np.arange(1, 129)[:, None], kv_cache_size=np.array([256, 1024, 4096]))
    assert dec.shape == (128, 3) and np.all(dec > 0) and np.all(np.diff(dec, axis=1) > 0)


def test_extrapolation_stays_sane(shipped):
    for op in LINEAR_OPS:
        hi = shipped.meta["ranges"][op]["num_tokens"][1]
        ratio = shipped.predict(op, num_tokens=2 * hi) / shipped.predict(op, num_tokens=hi)
        assert 1.5 <= ratio <= 2.5, (op, ratio)
    d1 = shipped.predict("attn_decode", batch_size=256, kv_cache_size=4096)
    d0 = shipped.predict("attn_decode", batch_size=128, kv_cache_size=4096)
    assert 1.3 <= d1 / d0 <= 2.5


def test_save_load_round_trip_is_exact(shipped, tmp_path):
    base = str(tmp_path / "p")
    predictors.save_predictor(shipped, base)
    again = predictors.load_predictor(base)
    assert again.meta == shipped.meta
    for op in predictors.OPS:
        f = {k: np.array([3.0, 300.0, 3000.0]) for k in predictors.OP_FEATURES[op]}
        np.testing.assert_array_equal(again.predict(op, **f), shipped.predict(op, **f))


def test_gradients_finite_and_correct(shipped):
    params = jax.tree_util.tree_map(jnp.asarray, shipped.params)

    def prefill(kv, c):
        return predictors.predict_jax(params, "attn_prefill", kv_cache_size=kv, prefill_chunk_size=c).sum()

    kv, c = jnp.array([0.0, 512.0, 6000.0]), jnp.array([128.0, 1024.0, 8192.0])  # in and out of range
    g = jax.grad(prefill, argnums=(0, 1))(kv, c)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)
    check_grads(lambda n: predictors.predict_jax(params, "mlp_up_proj", num_tokens=n),
                (jnp.array([100.0, 3000.0, 9000.0]),), order=1, modes=["rev"], eps=1.0, atol=1e-3, rtol=5e-2)
    jitted = jax.jit(lambda n: predictors.predict_jax(params, "all_reduce", num_tokens=n))
    np.testing.assert_allclose(jitted(jnp.array([64.0])), shipped.predict("all_reduce", num_tokens=[64]), rtol=1e-6)


def test_transfer_unprofiled_model():
    shape = {"num_q_heads": 40, "num_kv_heads": 40, "embedding_dim": 5120, "mlp_hidden_dim": 13824,
             "use_gated_mlp": True, "vocab_size": 103168}
    p = predictors.transfer(shape, "a100", 2, model_name="internlm/internlm-20b")
    assert p.meta["source"] == "transferred"
    small = predictors.load(MODEL, "a100", 2)  # 4096-wide, should be cheaper per token
    for op in LINEAR_OPS:
        big, ref = p.predict(op, num_tokens=2048), small.predict(op, num_tokens=2048)
        assert 1.0 < big / ref < 3.0, op


def test_errors():
    with pytest.raises(ConfigError, match="no shipped predictor"):
        predictors.load("nobody/none", "a100", 1)
    with pytest.raises(ConfigError, match="tp=3"):
        predictors.load(MODEL, "a100", 3)
    p = predictors.load(MODEL, "a100", 1)
    with pytest.raises(ConfigError, match="unknown op"):
        p.predict("softmax", num_tokens=1)
    with pytest.raises(ConfigError, match="takes features"):
        p.predict("attn_decode", num_tokens=1)
