"""Per-pool hardware of disaggregated deployments: each pool's GPU type, TP and PP degree,
their GPUs, price and node placement (JAX-free: config checking, labels and the search
use it without importing the simulator).

A pooled config (``prefill_replicas`` P > 0) may give its prefill pool and its decode
pool their own GPU type, TP and PP degree (``cluster.prefill_device`` / ``prefill_tp`` /
``prefill_pp`` and ``cluster.decode_device`` / ``decode_tp`` / ``decode_pp``; ``None`` =
the config's ``device`` / ``tensor_parallel_size`` / ``num_pipeline_stages``). Each pool
is then simulated as a :func:`pool_config`: the config with that pool's GPU, TP, PP and
node type, whose timing tables, KV blocks, layers per stage and FLOPs the pool's
replicas use (:func:`vidur_jax.sim.disagg.param_fields`). With no pool key set both
pool configs equal the config itself (same tables, same blocks): results are those of a
build without per-pool hardware.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from vidur_jax import catalog
from vidur_jax.errors import require

#: The two pools, in replica order (prefill replicas first).
POOLS = ("prefill", "decode")


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    """Field ``name`` of a ``DeploymentConfig`` or of a mapping of its field names."""
    return cfg.get(name, default) if isinstance(cfg, Mapping) else getattr(cfg, name, default)


def pool_device(cfg: Any, pool: str) -> str:
    """GPU type of ``pool``'s replicas: ``<pool>_device``, else the config's ``device``."""
    return _get(cfg, f"{pool}_device") or _get(cfg, "device")


def pool_tp(cfg: Any, pool: str) -> int:
    """TP degree of ``pool``'s replicas: ``<pool>_tp``, else ``tensor_parallel_size``."""
    tp = _get(cfg, f"{pool}_tp")
    return _get(cfg, "tensor_parallel_size") if tp is None else tp


def pool_pp(cfg: Any, pool: str) -> int:
    """Pipeline stages of ``pool``'s replicas: ``<pool>_pp``, else ``num_pipeline_stages``."""
    pp = _get(cfg, f"{pool}_pp")
    return _get(cfg, "num_pipeline_stages") if pp is None else pp


def _hardware(cfg: Any, pool: str) -> tuple[str, int, int]:
    """``(device, tp, pp)`` of ``pool``'s replicas."""
    return pool_device(cfg, pool), pool_tp(cfg, pool), pool_pp(cfg, pool)


def has_pool_hardware(cfg: Any) -> bool:
    """A pooled config (or mapping of its fields) whose pools' GPU, TP or PP differ from
    its own ``device`` / ``tensor_parallel_size`` / ``num_pipeline_stages``."""
    own = (_get(cfg, "device"), _get(cfg, "tensor_parallel_size"), _get(cfg, "num_pipeline_stages"))
    return _get(cfg, "prefill_replicas", 0) > 0 and any(_hardware(cfg, p) != own for p in POOLS)


def max_pp(cfg: Any) -> int:
    """Most pipeline stages any replica of the config has (its pools' for a pooled one)."""
    if _get(cfg, "prefill_replicas", 0) > 0:
        return max(pool_pp(cfg, p) for p in POOLS)
    return _get(cfg, "num_pipeline_stages")


def pool_node(cfg: Any, pool: str) -> str:
    """Node type of ``pool``'s replicas: the config's ``network_device`` when it holds the
    pool's GPUs and TP degree, else the smallest node of that GPU holding ``tp`` of them
    (TP stays inside a node, as in Vidur)."""
    device, tp = pool_device(cfg, pool), pool_tp(cfg, pool)
    node = catalog.get_node(cfg.network_device)
    if node.device == device and tp <= node.devices_per_node:
        return node.name
    wide = [catalog.get_node(n) for n in catalog.list_nodes()]
    wide = [n for n in wide if n.device == device and n.devices_per_node >= tp]
    require(bool(wide), f"cluster.{pool}_tp={tp}: no {device} node type holds {tp} GPUs")
    return min(wide, key=lambda n: n.devices_per_node).name


def pool_config(cfg: Any, pool: str) -> Any:
    """The colocated ``DeploymentConfig`` whose GPU, TP, PP and node ``pool``'s replicas
    use (the config itself when the pool has no hardware of its own)."""
    device, tp, pp = _hardware(cfg, pool)
    if (device, tp, pp) == (cfg.device, cfg.tensor_parallel_size, cfg.num_pipeline_stages):
        return cfg
    return dataclasses.replace(
        cfg,
        device=device,
        tensor_parallel_size=tp,
        num_pipeline_stages=pp,
        network_device=pool_node(cfg, pool),
        num_replicas=cfg.prefill_replicas if pool == "prefill" else cfg.decode_replicas,
        prefill_replicas=0,
        decode_replicas=0,
        prefill_device=None,
        prefill_tp=None,
        decode_device=None,
        decode_tp=None,
        prefill_pp=None,
        decode_pp=None,
    )


def pools_share_nodes(cfg: Any) -> bool:
    """Both pools run on one node type, so a prefill and a decode replica may share a
    node (replicas are packed on nodes in index order, prefill pool first); pools on
    different GPU or node types never do (every transfer crosses nodes)."""
    return pool_node(cfg, "prefill") == pool_node(cfg, "decode") if has_pool_hardware(cfg) else True


def num_gpus(fields: Any) -> int:
    """GPUs of a deployment (a ``DeploymentConfig`` or a mapping of its field names):
    ``P x TP_prefill x PP_prefill + D x TP_decode x PP_decode`` for pools with their own
    hardware, else TP x PP x replicas."""
    if has_pool_hardware(fields):
        return sum(_get(fields, f"{p}_replicas") * _gpus(fields, p) for p in POOLS)
    return (
        _get(fields, "tensor_parallel_size")
        * _get(fields, "num_pipeline_stages")
        * _get(fields, "num_replicas")
    )


def _gpus(fields: Any, pool: str) -> int:
    """GPUs of one replica of ``pool``: its TP x PP."""
    return pool_tp(fields, pool) * pool_pp(fields, pool)


def cost_per_hour(fields: Any, price_of: Callable[[str], float]) -> float:
    """$ per hour of a deployment (as :func:`num_gpus`): each pool's GPUs at
    ``price_of(its device)`` for pools with their own hardware, else
    ``num_gpus x price_of(device)``."""
    if has_pool_hardware(fields):
        return float(
            sum(
                _get(fields, f"{p}_replicas") * _gpus(fields, p) * price_of(pool_device(fields, p))
                for p in POOLS
            )
        )
    return num_gpus(fields) * price_of(_get(fields, "device"))


def describe_pools(cfg: Any) -> str:
    """`` 3P:5D`` for pools on the config's hardware, `` 3P(h100 tp2):5D(a100 tp1)`` for
    pools with their own (`` pp2`` added to a pool with more than one stage); empty for a
    colocated config."""
    if cfg.prefill_replicas <= 0:
        return ""
    if not has_pool_hardware(cfg):
        return f" {cfg.prefill_replicas}P:{cfg.decode_replicas}D"

    def hw(pool: str) -> str:
        device, tp, pp = _hardware(cfg, pool)
        return f"{device} tp{tp}" + (f" pp{pp}" if pp > 1 else "")

    return f" {cfg.prefill_replicas}P({hw('prefill')}):{cfg.decode_replicas}D({hw('decode')})"
