"""Public predictor API: train from profiles or load shipped params, and predict.

``load(model, device, tp)`` returns a :class:`Predictor` whose ``params`` is a dict
``{op: params pytree}`` with an identical tree for every (model, device, TP), so
predictors can be stacked with ``jax.tree.map(jnp.stack, ...)`` and vmapped.
``predict_jax(params, op, **features)`` is the pure JAX entry point (jit/grad-safe).
All times are milliseconds per layer (network ops: per collective call).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidur_jax.errors import ConfigError
from vidur_jax.predictors import datasets, hybrid, io, train
from vidur_jax.predictors import transfer as tr
from vidur_jax.profiles import loader

#: Version of the saved layout (npz ``data`` vector + json index, param tree, features).
#: Bump it whenever saved params change meaning or layout: it is part of the training
#: cache key and is checked on load, so stale files are retrained or reported clearly.
#: 2: single-array npz; no ``gqa_decode`` leaf (attention is the raw kernel time).
#: 3: residual-grid leaves (``grid_a``, ``grid_u0``, ``grid_u1``, ``grid_r``).
FORMAT_VERSION = 3
PARAMS_DIR = os.path.join(os.path.dirname(__file__), "params")
OPS = datasets.OPS
OP_FEATURES = datasets.OP_FEATURES
TP_DEGREES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Predictor:
    """Execution-time predictor for one (model, device, TP).

    Attributes:
      params: ``{op: params pytree}`` (numpy float32 leaves), see :mod:`hybrid`.
      meta: model, device, tp, network_device, source ("trained" | "transferred"),
        per-op ``op_source`` and profiled ``ranges`` (user feature units), ...
    """

    params: dict[str, Any]
    meta: dict = field(default_factory=dict)

    def predict(self, op: str, **features: Any) -> np.ndarray:
        """Predicted time in ms, broadcast over array features.

        Args:
          op: one of :data:`OPS`.
          **features: ``num_tokens`` for token/network ops; ``kv_cache_size,
            prefill_chunk_size`` for attn_prefill; ``batch_size, kv_cache_size`` for
            attn_decode. Scalars or arrays (broadcast together).

        Returns:
          ``np.ndarray`` (float64) of the broadcast shape, milliseconds.
        """
        feats, shape = _stack_features(_check_op(op), _check_features(op, features), xp=np)
        return _apply_bucketed(self.params[op], feats).reshape(shape)


def _check_op(op: str) -> str:
    if op not in OP_FEATURES:
        raise ConfigError(f"unknown op '{op}'; allowed: {', '.join(OPS)}")
    return op


def _check_features(op: str, features: dict) -> dict:
    names = OP_FEATURES[op]
    if set(features) != set(names):
        raise ConfigError(f"op '{op}' takes features {list(names)}, got {sorted(features)}")
    return features


def _stack_features(op: str, features: dict, xp: Any = jnp) -> tuple[Any, tuple[int, ...]]:
    """``(N, NUM_FEATURES)`` float32 rows of the broadcast ``features`` (zero-padded
    columns) and their broadcast shape; ``xp`` is ``jnp`` (traceable) or ``np`` (host)."""
    arrays = xp.broadcast_arrays(*[xp.asarray(features[n], xp.float32) for n in OP_FEATURES[op]])
    shape = arrays[0].shape
    cols = [a.reshape(-1) for a in arrays]
    cols += [xp.zeros_like(cols[0])] * (hybrid.NUM_FEATURES - len(cols))
    return xp.stack(cols, axis=1), shape


def apply_op(op_params: hybrid.Params, op: str, **features: Any) -> jax.Array:
    """Pure prediction from one op's params (ms, broadcast shape of the features)."""
    feats, shape = _stack_features(op, features)
    return hybrid.apply(op_params, feats).reshape(shape)


_apply_jit = jax.jit(hybrid.apply)
#: Smallest row bucket of host-side predictions (rows are padded up to a power of two).
_MIN_BUCKET = 256


def _apply_bucketed(op_params: hybrid.Params, feats: np.ndarray) -> np.ndarray:
    """:func:`hybrid.apply` on host rows, padded to a power-of-two row count.

    Every op's params have the same shapes, so one compiled program per bucket serves all
    ops and table sizes (building a config's timing tables used to compile once per op
    and per table shape, ~0.3 s each).
    """
    n = feats.shape[0]
    if n == 0:
        return np.zeros(0, np.float64)
    bucket = max(_MIN_BUCKET, 1 << (n - 1).bit_length())
    padded = (
        np.concatenate([feats, np.repeat(feats[-1:], bucket - n, axis=0)]) if bucket > n else feats
    )
    return np.asarray(_apply_jit(op_params, padded), np.float64)[:n]


def predict_jax(params: dict[str, Any], op: str, **features: Any) -> jax.Array:
    """Pure JAX prediction (ms) usable inside ``jit``/``vmap``/``grad``.

    Args:
      params: ``Predictor.params`` (``{op: pytree}``), possibly stacked/traced.
      op: static op name (one of :data:`OPS`).
      **features: as in :meth:`Predictor.predict`.
    """
    return apply_op(params[op], op, **features)


# --------------------------------------------------------------------------- training


def _network_for_tp(profiles_dir: str, device: str, tp: int, network_device: str | None) -> str:
    """Network table for ``tp``: the given one, else pairwise NVLink, else DGX (has TP 8)."""
    if network_device is not None:
        return network_device
    candidates = [f"{device}_pairwise_nvlink", f"{device}_dgx"]
    if tp == 1:
        return candidates[0]
    for cand in candidates:
        try:
            loader.load_all_reduce(profiles_dir, cand, tp)
            return cand
        except ConfigError:
            continue
    raise ConfigError(f"no all_reduce profile for device={device} tp={tp} in {candidates}")


def _params_ranges(params: hybrid.Params, op: str) -> dict[str, list[float]]:
    """Profiled range per user feature, recovered from the box (log1p space) and feature map."""
    names = OP_FEATURES[op]
    out = {}
    for j, name in enumerate(names):
        s = float(params["feat_scale"][j]) or 1.0
        lo = float(np.expm1(params["lo"][j]) - params["feat_const"][j]) / s
        hi = float(np.expm1(params["hi"][j]) - params["feat_const"][j]) / s
        out[name] = [round(lo, 4), round(hi, 4)]
    return out


def train_predictors(
    profiles_dir: str,
    targets: list[tuple[str, str]],
    tps: tuple[int, ...] | None = None,
    network_device: str | None = None,
    seed: int = 0,
) -> dict[tuple[str, str, int], Predictor]:
    """Train predictors for every (device, model) in ``targets`` and every available TP.

    All fits (every op of every target) go through one :func:`train.fit_jobs` call (the
    MLPs train in a few vmapped, compiled loops); each fit depends on its own job only, so
    training one target alone gives the same parameters as training it with others.

    Args:
      profiles_dir: data root holding ``profiling/``.
      targets: ``(device, "<org>/<model>")`` pairs with an ``mlp.csv``.
      tps: TP degrees to build (default: every degree with compute rows).
      network_device: force a network table (default: ``<device>_pairwise_nvlink``,
        falling back to ``<device>_dgx`` for TP degrees the former lacks).
      seed: PRNG seed.

    Returns:
      ``{(device, model, tp): Predictor}``.
    """
    jobs: dict[tuple, train.FitJob] = {}
    plans: dict[tuple[str, str, int], dict] = {}
    for device, model in targets:
        comp = loader.load_compute(profiles_dir, device, model)
        shape = loader.model_shape(comp)
        avail = sorted(int(t) for t in comp["num_tensor_parallel_workers"].unique())
        want = [t for t in (tps or avail) if t in avail]
        if not want:
            raise ConfigError(
                f"no compute profile rows for {model} on {device} at tp={list(tps or [])} (available: {avail})"
            )
        att_path = loader.compute_path(profiles_dir, device, model, "attention")
        att = (
            loader.load_attention(profiles_dir, device, model) if os.path.isfile(att_path) else None
        )
        for tp in want:
            rows = loader.select_tp(comp, tp, loader.compute_path(profiles_dir, device, model))
            plan = {"shape": shape, "ops": {}, "source": {}}
            for op in datasets.MLP_CSV_OPS:
                y = rows[op].to_numpy(float)
                if np.any(y > 0):
                    key = (device, model, tp, op)
                    jobs[key] = datasets.token_job(rows["num_tokens"].to_numpy(float), y)
                    plan["ops"][op], plan["source"][op] = ("job", key), "trained"
                else:
                    plan["ops"][op], plan["source"][op] = (
                        ("zero", None),
                        "absent (0 in profile, as Vidur)",
                    )
            plan["ops"]["attn_kv_cache_save"] = ("zero", None)
            plan["source"]["attn_kv_cache_save"] = "absent (no column in profile -> 0, as Vidur)"
            att_tp = att[att["num_tensor_parallel_workers"] == tp] if att is not None else None
            for op, kind in (("attn_prefill", "prefill"), ("attn_decode", "decode")):
                sub = (
                    None if att_tp is None else att_tp[att_tp["is_prefill"] == (kind == "prefill")]
                )
                if sub is not None and len(sub) > 0:
                    key = (device, model, tp, op)
                    heads = datasets.effective_heads(shape, tp, kind)
                    jobs[key] = datasets.attention_job(sub, kind, heads)
                    plan["ops"][op], plan["source"][op] = ("job", key), "trained"
                else:
                    plan["ops"][op], plan["source"][op] = (
                        ("transfer", ("_transfer", op)),
                        "transferred",
                    )
            if tp > 1:
                net = _network_for_tp(profiles_dir, device, tp, network_device)
                key = (net, tp, "all_reduce")
                if key not in jobs:
                    ar = loader.load_all_reduce(profiles_dir, net, tp)
                    jobs[key] = datasets.token_job(
                        ar["size"].to_numpy(float), ar["all_reduce"].to_numpy(float), network=True
                    )
                plan["ops"]["all_reduce"], plan["source"]["all_reduce"] = ("net", key), "trained"
                plan["network_device"] = net
            else:
                plan["ops"]["all_reduce"], plan["source"]["all_reduce"] = (
                    ("zero", None),
                    "absent (tp=1)",
                )
                plan["network_device"] = network_device or f"{device}_pairwise_nvlink"
            sr_net = network_device or f"{device}_pairwise_nvlink"
            key = (sr_net, "send_recv")
            if key not in jobs:
                sr = loader.load_send_recv(profiles_dir, sr_net)
                jobs[key] = datasets.token_job(
                    sr["size"].to_numpy(float), sr["send_recv"].to_numpy(float), network=True
                )
            plan["ops"]["send_recv"], plan["source"]["send_recv"] = ("net", key), "trained"
            plan["send_recv_network_device"] = sr_net
            plans[(device, model, tp)] = plan
    needs_transfer = any(v[0] == "transfer" for p in plans.values() for v in p["ops"].values())
    scales: dict[str, dict] = {}
    if needs_transfer:
        ref = loader.load_attention(profiles_dir, tr.REFERENCE_DEVICE, tr.REFERENCE_MODEL)
        for op, job in tr.attention_transfer_jobs(ref).items():
            jobs[("_transfer", op)] = job
        for device in {d for d, _ in targets}:
            scales[device] = tr.device_scales(profiles_dir, device)
    keys = list(jobs)
    fitted = dict(zip(keys, train.fit_jobs([jobs[k] for k in keys], seed=seed), strict=False))
    out = {}
    for (device, model, tp), plan in plans.items():
        shape = plan["shape"]
        params: dict[str, Any] = {}
        for op in OPS:
            kind, key = plan["ops"][op]
            if kind == "zero":
                params[op] = hybrid.zero_params()
            elif kind == "job":
                params[op] = fitted[key]
            elif kind == "net":
                params[op] = tr.with_bytes_per_token(fitted[key], shape["embedding_dim"])
            else:
                scale = scales[device]["prefill" if op == "attn_prefill" else "decode"]
                params[op] = tr.specialize_attention(fitted[key], op, shape, tp, scale)
        meta = _meta(model, device, tp, plan, params, scales.get(device))
        out[(device, model, tp)] = Predictor(params, meta)
    return out


def _meta(model: str, device: str, tp: int, plan: dict, params: dict, scales: dict | None) -> dict:
    transferred = any(s == "transferred" for s in plan["source"].values())
    shape = plan["shape"]
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "device": device,
        "tp": tp,
        "network_device": plan["network_device"],
        "send_recv_network_device": plan["send_recv_network_device"],
        "source": "transferred" if transferred else "trained",
        "op_source": plan["source"],
        "ranges": {
            op: _params_ranges(params[op], op)
            for op in OPS
            if plan["source"][op] in ("trained", "transferred")
        },
        "poly_terms": {op: int(np.sum(np.asarray(params[op]["coef"]) > 0)) for op in OPS},
        "mlp_width": {op: train.widths_of(params[op]) for op in OPS},
        "shape": shape,
        "units": "ms",
        "gqa": shape["num_q_heads"] > shape["num_kv_heads"],
        # Predictors return raw kernel times, like Vidur's forests; the simulator applies
        # Vidur's attention batching overhead (x(1 + fraction) for GQA models when a batch
        # has > 1 decode / > 1 prefill), see vidur_jax/sim/timing.py.
        "attn_overhead_included": False,
        "attn_batching_overhead_fraction": tr.GQA_BATCHING_OVERHEAD
        if shape["num_q_heads"] > shape["num_kv_heads"]
        else 0.0,
        "nccl_cpu_launch_overhead_ms": 0.02,
    }
    if transferred and scales is not None:
        meta["device_scales"] = scales
        meta["transfer_rule"] = tr.__doc__.strip().split("\n\n")[1].replace("\n", " ")
    return meta


# --------------------------------------------------------------------------- loading


def shipped_base(device: str, model: str, tp: int, root: str = PARAMS_DIR) -> str:
    """Path (no extension) of shipped params: ``params/<device>/<org>__<model>/tp<k>``."""
    return os.path.join(root, device, model.replace("/", "__"), f"tp{tp}")


def _live_width(mlp: dict) -> int:
    """Hidden units in use (trained widths keep the first ``w`` units; the rest are 0)."""
    used = np.zeros(hybrid.MAX_WIDTH, bool)
    for i in range(hybrid.DEPTH):
        used |= np.any(np.asarray(mlp[f"Dense_{i}"]["kernel"]) != 0, axis=0) | (
            np.asarray(mlp[f"Dense_{i}"]["bias"]) != 0
        )
    return int(np.flatnonzero(used).max() + 1) if used.any() else 0


def _resize_mlp(mlp: dict, width: int) -> dict:
    """Slice (``width`` < current) or zero-pad (``width`` > current) the hidden units."""

    def fit(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        a = np.asarray(a, np.float32)
        for ax in axes:
            if a.shape[ax] > width:
                a = np.take(a, np.arange(width), axis=ax)
            else:
                pad = [(0, 0)] * a.ndim
                pad[ax] = (0, width - a.shape[ax])
                a = np.pad(a, pad)
        return a

    out = {}
    for i in range(hybrid.DEPTH + 1):
        k, b = mlp[f"Dense_{i}"]["kernel"], mlp[f"Dense_{i}"]["bias"]
        k_axes = (1,) if i == 0 else ((0, 1) if i < hybrid.DEPTH else (0,))
        out[f"Dense_{i}"] = {
            "kernel": fit(k, k_axes),
            "bias": b if i == hybrid.DEPTH else fit(b, (0,)),
        }
    return out


def save_predictor(pred: Predictor, base: str) -> None:
    """Write a predictor to ``base.npz`` + ``base.json`` (MLPs stored at their live width)."""
    io.save(base, _trim(pred.params), pred.meta)


def _trim(params: dict) -> dict:
    return {
        op: dict(p, mlp=_resize_mlp(p["mlp"], _live_width(p["mlp"]))) for op, p in params.items()
    }


def _pad(params: dict) -> dict:
    return {op: dict(p, mlp=_resize_mlp(p["mlp"], hybrid.MAX_WIDTH)) for op, p in params.items()}


def load_predictor(base: str) -> Predictor:
    """Read a predictor written by :func:`save_predictor` (MLPs re-padded, exact).

    Raises:
      ConfigError: missing, unreadable, or written by another :data:`FORMAT_VERSION`.
    """
    params, meta = io.load(base)
    _check_version(meta, base)
    missing = [op for op in OPS if op not in params]
    if missing:
        raise ConfigError(f"predictor file {base}.npz lacks op '{missing[0]}'")
    try:
        params = _pad(params)
        _check_tree(params)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"predictor file {base}.npz has an unexpected layout ({err})") from err
    return Predictor(params, meta)


def _check_version(meta: dict, base: str) -> None:
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"predictor file {base}.json has format_version={version}, this code reads "
            f"{FORMAT_VERSION}; rebuild it (python -m vidur_jax.predictors.build --profiles-dir DIR)"
        )


def _check_tree(params: dict) -> None:
    """Raise ValueError unless every op has exactly the leaves of ``hybrid.zero_params()``."""
    ref = jax.tree_util.tree_structure(hybrid.zero_params())
    for op in OPS:
        if jax.tree_util.tree_structure(params[op]) != ref:
            raise ValueError(f"op '{op}' params do not match the current tree")


def _profile_files(
    profiles_dir: str, device: str, model: str, network_device: str | None
) -> list[str]:
    root = loader._profiling_root(profiles_dir)
    files = [
        loader.compute_path(profiles_dir, device, model),
        loader.compute_path(profiles_dir, device, model, "attention"),
        loader.compute_path(profiles_dir, tr.REFERENCE_DEVICE, tr.REFERENCE_MODEL, "attention"),
    ]
    for net in filter(None, [network_device, f"{device}_pairwise_nvlink", f"{device}_dgx"]):
        files += [
            loader.network_path(profiles_dir, net, "all_reduce"),
            loader.network_path(profiles_dir, net, "send_recv"),
        ]
    for dev in (device, tr.REFERENCE_DEVICE):  # device-scale inputs
        files += [
            loader.compute_path(profiles_dir, dev, m)
            for m in loader.list_compute_models(profiles_dir, dev)
        ]
    return [f for f in files if f.startswith(root)]


def load(
    model: str,
    device: str,
    tp: int,
    profiles_dir: str | None = None,
    network_device: str | None = None,
) -> Predictor:
    """Predictor for ``model`` on ``device`` with tensor parallelism ``tp``.

    Args:
      model: Hugging Face name, e.g. ``"meta-llama/Llama-2-7b-hf"``.
      device: GPU, ``"a100"`` or ``"h100"``.
      tp: tensor-parallel degree (1, 2, 4, 8).
      profiles_dir: Vidur data root; ``None`` loads the parameters shipped in the
        package, otherwise trains from it (cached under ``io.cache_dir()`` keyed by a
        hash of the input files).
      network_device: network table (default ``f"{device}_pairwise_nvlink"``, with the
        ``_dgx`` table for TP degrees the former lacks).

    Raises:
      ConfigError: unknown model/device/TP or missing/invalid profiles.
    """
    if tp not in TP_DEGREES:
        raise ConfigError(f"tp={tp} is not supported; allowed: {list(TP_DEGREES)}")
    if _needs_roofline(model):  # MoE / MLA op shapes: no profile or transfer covers them
        from vidur_jax.predictors import roofline

        return roofline.load_roofline(model, device, tp, network_device=network_device)
    if profiles_dir is None:
        base = shipped_base(device, model, tp)
        if os.path.isfile(base + ".npz"):
            return _with_network_note(load_predictor(base), network_device)
        shape = _catalog_shape(model)
        if shape is None:
            raise ConfigError(
                f"no shipped predictor for model '{model}' on device '{device}' at tp={tp}; "
                f"shipped: {', '.join(list_shipped())}"
            )
        return transfer(shape, device, tp, model_name=model)
    if not os.path.isdir(profiles_dir):
        raise ConfigError(f"profiles_dir does not exist: {profiles_dir}")
    if not os.path.isfile(loader.compute_path(profiles_dir, device, model)):
        raise ConfigError(
            f"no compute profile for model '{model}' on device '{device}' "
            f"(expected {loader.compute_path(profiles_dir, device, model)})"
        )
    key = io.files_hash(
        _profile_files(profiles_dir, device, model, network_device),
        f"v{FORMAT_VERSION}|{model}|{device}|{tp}|{network_device}|{train.config_key()}"
        f"|attn_transfer={tr.ATTENTION_TRANSFER_VERSION}" + datasets.mlp_key(),
    )
    base = os.path.join(io.cache_dir(), "predictors", key)
    if os.path.isfile(base + ".npz") or os.path.isfile(base + ".json"):
        try:
            return load_predictor(base)
        except ConfigError:
            pass  # stale or corrupt cache entry: retrain and overwrite it
    pred = train_predictors(profiles_dir, [(device, model)], (tp,), network_device)[
        (device, model, tp)
    ]
    save_predictor(pred, base)
    return pred


def _with_network_note(pred: Predictor, network_device: str | None) -> Predictor:
    """``pred``, its meta noting a requested network table it was not fitted on.

    Shipped parameters carry one network per TP degree (``meta["network_device"]``);
    without profiles there is nothing to refit the two network ops on, so the shipped
    compute ops (the part profiled for this model and GPU) are kept either way.
    """
    shipped = pred.meta.get("network_device")
    if network_device is None or network_device == shipped:
        return pred
    note = (
        f"network ops fitted on {shipped}, not the requested {network_device} "
        "(pass profiles_dir to fit them on it)"
    )
    return Predictor(pred.params, {**pred.meta, "network_note": note})


def list_shipped(root: str = PARAMS_DIR) -> list[str]:
    """``"<device>/<org>/<model>/tp<k>"`` for every shipped predictor."""
    out = []
    if not os.path.isdir(root):
        return out
    for device in sorted(os.listdir(root)):
        ddir = os.path.join(root, device)
        if device.startswith("_") or not os.path.isdir(ddir):  # e.g. roofline_calibration.json
            continue
        for m in sorted(os.listdir(ddir)):
            if m.startswith("_"):
                continue
            for f in sorted(os.listdir(os.path.join(ddir, m))):
                if f.endswith(".npz"):
                    out.append(f"{device}/{m.replace('__', '/')}/{f[:-4]}")
    return out


def _needs_roofline(model: str) -> bool:
    try:
        from vidur_jax import catalog

        return catalog.needs_roofline(catalog.get_model(model))
    except ConfigError:
        return False


def _catalog_shape(model: str) -> dict | None:
    try:
        from vidur_jax.catalog import models as catalog  # optional dependency at runtime

        spec = catalog.get_model(model)
    except Exception:
        return None
    return {
        "num_q_heads": spec.num_q_heads,
        "num_kv_heads": spec.num_kv_heads,
        "embedding_dim": spec.embedding_dim,
        "mlp_hidden_dim": spec.mlp_hidden_dim,
        "vocab_size": spec.vocab_size,
        "use_gated_mlp": spec.use_gated_mlp,
        "post_attn_norm": spec.post_attn_norm,
    }


def transfer_base(device: str, root: str = PARAMS_DIR) -> str:
    """Path (no extension) of a device's shipped transfer models."""
    return os.path.join(root, device, "_transfer", "shared")


def transfer(
    model_shape: dict, device: str, tp: int, model_name: str = "custom", root: str = PARAMS_DIR
) -> Predictor:
    """Predictor for a model without profiles, from shape features (all ops transferred).

    Args:
      model_shape: ``num_q_heads, num_kv_heads, embedding_dim, mlp_hidden_dim,
        use_gated_mlp`` (``num_layers, vocab_size, post_attn_norm`` optional).
      device: GPU with shipped transfer models (``a100``, ``h100``).
      tp: tensor-parallel degree.
      model_name: recorded in ``meta``.
    """
    required = ("num_q_heads", "num_kv_heads", "embedding_dim", "mlp_hidden_dim", "use_gated_mlp")
    missing = [k for k in required if k not in model_shape]
    if missing:
        raise ConfigError(f"model_shape lacks '{missing[0]}' (needs {', '.join(required)})")
    if (
        model_shape["num_q_heads"] % tp
        or model_shape["num_kv_heads"] % tp
        and tp % model_shape["num_kv_heads"]
    ):
        raise ConfigError(f"tp={tp} does not divide num_q_heads={model_shape['num_q_heads']}")
    shared, smeta = io.load(transfer_base(device, root))
    shared = _pad(shared)
    params: dict[str, Any] = {}
    for op in datasets.MLP_CSV_OPS:
        params[op] = tr.specialize_shape_op(shared[op], op, model_shape, tp)
    params["attn_kv_cache_save"] = hybrid.zero_params()
    for op in ("attn_prefill", "attn_decode"):
        scale = smeta["device_scales"]["prefill" if op == "attn_prefill" else "decode"]
        params[op] = tr.specialize_attention(shared[op], op, model_shape, tp, scale)
    if tp > 1:
        if f"all_reduce_tp{tp}" not in shared:
            raise ConfigError(f"no all_reduce transfer model for device={device} tp={tp}")
        params["all_reduce"] = tr.with_bytes_per_token(
            shared[f"all_reduce_tp{tp}"], model_shape["embedding_dim"]
        )
    else:
        params["all_reduce"] = hybrid.zero_params()
    params["send_recv"] = tr.with_bytes_per_token(shared["send_recv"], model_shape["embedding_dim"])
    shape = dict(model_shape)
    plan = {
        "shape": shape,
        "source": {op: "transferred" for op in OPS},
        "network_device": smeta["network_devices"].get(str(tp), f"{device}_pairwise_nvlink"),
        "send_recv_network_device": smeta["send_recv_network_device"],
    }
    plan["source"]["attn_kv_cache_save"] = "absent (0, as Vidur)"
    if tp == 1:
        plan["source"]["all_reduce"] = "absent (tp=1)"
    meta = _meta(model_name, device, tp, plan, params, smeta["device_scales"])
    return Predictor(params, meta)


def train_transfer_models(
    profiles_dir: str, device: str, seed: int = 0, row_stride: int = 2
) -> tuple[dict, dict]:
    """Fit a device's shared transfer models (shape ops, attention, network).

    Returns:
      ``(params {name: pytree}, meta)`` as stored by :func:`transfer_base`.
    """
    frames = []
    for model in loader.list_compute_models(profiles_dir, device):
        comp = loader.load_compute(profiles_dir, device, model)
        shape = loader.model_shape(comp)
        for tp in sorted(int(t) for t in comp["num_tensor_parallel_workers"].unique()):
            frames.append((shape, tp, loader.select_tp(comp, tp, model)))
    jobs = {op: datasets.shape_job(frames, op, row_stride) for op in datasets.MLP_CSV_OPS}
    ref = loader.load_attention(profiles_dir, tr.REFERENCE_DEVICE, tr.REFERENCE_MODEL)
    jobs.update(tr.attention_transfer_jobs(ref))
    nets = {}
    for tp in (2, 4, 8):
        try:
            net = _network_for_tp(profiles_dir, device, tp, None)
        except ConfigError:
            continue
        ar = loader.load_all_reduce(profiles_dir, net, tp)
        jobs[f"all_reduce_tp{tp}"] = datasets.token_job(
            ar["size"].to_numpy(float), ar["all_reduce"].to_numpy(float), network=True
        )
        nets[str(tp)] = net
    sr_net = f"{device}_pairwise_nvlink"
    sr = loader.load_send_recv(profiles_dir, sr_net)
    jobs["send_recv"] = datasets.token_job(
        sr["size"].to_numpy(float), sr["send_recv"].to_numpy(float), network=True
    )
    names = list(jobs)
    fitted = dict(zip(names, train.fit_jobs([jobs[n] for n in names], seed=seed), strict=False))
    meta = {
        "format_version": FORMAT_VERSION,
        "device": device,
        "device_scales": tr.device_scales(profiles_dir, device),
        "network_devices": nets,
        "send_recv_network_device": sr_net,
        "shape_models": loader.list_compute_models(profiles_dir, device),
    }
    return fitted, meta
