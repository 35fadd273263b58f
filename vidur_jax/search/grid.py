"""The search grid: models x clusters x TP x PP x schedulers x batch caps -> candidates.

Vidur-Search's grid (``vidur/config_optimizer/config_explorer/config/config.yml``):
for each model and cluster (a GPU type, a node type and a GPU count) every tensor-parallel
degree x pipeline depth x replica scheduler (vLLM, or Sarathi with one chunk size) x batch
cap, with ``num_replicas = num_gpus // (tp * pp)`` (or one replica per candidate when
planning for a target load). A cluster is given as GPU names x ``max_gpus`` or as a list
of ``{device, network_device, num_gpus, price_per_hour}``; replicas wider than the
cluster (``tp * pp > num_gpus``) are not part of the grid. Every other point becomes a
:class:`Candidate`; points that cannot run (TP not dividing the heads, PP not dividing
the layers, the model not fitting in GPU memory, no node wide enough for the TP degree)
are kept with ``reason`` set, never dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from vidur_jax import catalog
from vidur_jax.errors import ConfigError, require
from vidur_jax.sim import disagg, disagg_pools, policies
from vidur_jax.sim.build import DeploymentConfig, derive


@dataclasses.dataclass(frozen=True)
class Cluster:
    """One cluster type of the grid.

    Attributes:
        device: GPU SKU (catalog name, e.g. ``"a100"``).
        network_device: node SKU whose interconnect is used; a TP degree wider than its
            node switches to the widest node of the same GPU (e.g. ``a100_dgx`` for TP 8).
        num_gpus: GPUs in the cluster; replicas = ``num_gpus // (tp * pp)``.
        price_per_hour: $ per GPU-hour; None = the catalog price.
    """

    device: str
    network_device: str
    num_gpus: int
    price_per_hour: float | None = None


@dataclasses.dataclass(frozen=True)
class SchedulerChoice:
    """A replica scheduler of the grid: ``vllm``, or ``sarathi`` with a chunk size, and
    optionally its speculative draft tokens ``k`` (None: the base config's)."""

    scheduler: str
    chunk_size: int | None = None
    speculative_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One grid point.

    Attributes:
        config: the deployment (also set for infeasible points, unvalidated, so their
            knobs can be listed).
        num_gpus: GPUs the deployment uses (tp * pp * replicas).
        price_per_hour: $ per GPU-hour.
        reason: why the point cannot run, or ``""`` when it is feasible.
        cluster: the cluster it was drawn from, when its ``config.device`` need not be
            that cluster's GPU (pools with their own hardware); None: the cluster of
            ``config.device``.
    """

    config: DeploymentConfig
    num_gpus: int
    price_per_hour: float
    reason: str = ""
    cluster: Cluster | None = None

    @property
    def feasible(self) -> bool:
        """True when the deployment can be simulated."""
        return not self.reason

    @property
    def cost_per_hour(self) -> float:
        """$ per hour of the whole deployment."""
        return self.num_gpus * self.price_per_hour


@dataclasses.dataclass(frozen=True)
class PoolChoice:
    """Hardware of a disaggregated deployment's two pools (docs/disaggregation.md):
    each pool's TP and PP degree and GPU type (None: the cluster's GPU)."""

    prefill_tp: int = 1
    decode_tp: int = 1
    prefill_device: str | None = None
    decode_device: str | None = None
    prefill_pp: int = 1
    decode_pp: int = 1

    def gpus(self, pool: str) -> int:
        """GPUs of one replica of ``pool``: its TP x PP."""
        return getattr(self, f"{pool}_tp") * getattr(self, f"{pool}_pp")


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """Axes of the grid (Vidur's defaults).

    Attributes:
        models: model names (catalog).
        clusters: cluster types.
        tp: tensor-parallel degrees.
        pp: pipeline depths.
        schedulers: replica schedulers (with chunk sizes).
        batch_caps: batch size caps.
        ep: expert-parallel degrees of MoE models' experts; a point whose ``ep`` does
            not divide its ``tp`` (or ``ep > 1`` on a dense model) is not part of the grid.
        pd_splits: prefill shares of a cluster's replicas to try as disaggregated
            prefill/decode pools besides the colocated point (``()`` = colocated only;
            docs/disaggregation.md): share s gives ``P = round(s x replicas)`` prefill
            replicas (at least 1, leaving at least 1 decode replica).
        pd_pools: pool hardware to try with each ``pd_splits`` share, besides the
            colocated TP: per cluster of G GPUs, share s gives ``P = round(s x G /
            (prefill_tp x prefill_pp))`` prefill replicas (at least 1) and ``D = (G - P x
            prefill_tp x prefill_pp) // (decode_tp x decode_pp)`` decode replicas (at least
            1, else the point is not part of the grid).
    """

    models: tuple[str, ...]
    clusters: tuple[Cluster, ...]
    tp: tuple[int, ...] = (1, 2, 4, 8)
    pp: tuple[int, ...] = (1, 2, 4)
    schedulers: tuple[SchedulerChoice, ...] = (
        SchedulerChoice("vllm"),
        *(SchedulerChoice("sarathi", c) for c in (256, 512, 1024, 2048, 4096)),
    )
    batch_caps: tuple[int, ...] = (32, 64, 128)
    ep: tuple[int, ...] = (1,)
    pd_splits: tuple[float, ...] = ()
    pd_pools: tuple[PoolChoice, ...] = ()

    @property
    def size(self) -> int:
        """Number of colocated grid points (`pd_splits` adds pools after some of them)."""
        return (
            len(self.models)
            * len(self.clusters)
            * len(self.tp)
            * len(self.pp)
            * len(self.schedulers)
            * len(self.batch_caps)
            * len(self.ep)
        )


def _ints(name: str, values: Any) -> tuple[int, ...]:
    vals = list(values) if isinstance(values, (list, tuple)) else [values]
    require(len(vals) >= 1, f"search.{name} is an empty list")
    for v in vals:
        require(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            f"search.{name} has {v!r}; values must be integers >= 1",
        )
    return tuple(int(v) for v in vals)


def _clusters(
    block: Mapping[str, Any], default_device: str, default_node: str | None, price: Any
) -> list[Cluster]:
    """Cluster types of a ``search:`` block: ``clusters`` (list of mappings, full control)
    or ``gpus`` (GPU names, default: the config's hardware) x ``max_gpus``."""
    if block.get("clusters"):
        require(
            isinstance(block["clusters"], (list, tuple)),
            f"search.clusters={block['clusters']!r} must be a list of mappings",
        )
        items = list(block["clusters"])
    else:
        gpus = block.get("gpus") or [default_device]
        gpus = gpus if isinstance(gpus, (list, tuple)) else [gpus]
        max_gpus = block.get("max_gpus", 8)
        items = [
            {
                "device": g,
                "num_gpus": max_gpus,
                "network_device": default_node if g == default_device else None,
                "price_per_hour": price if g == default_device else None,
            }
            for g in gpus
        ]
    clusters = []
    for i, c in enumerate(items):
        require(isinstance(c, Mapping), f"search.clusters[{i}]={c!r} must be a mapping")
        unknown = sorted(set(c) - {"device", "network_device", "num_gpus", "price_per_hour"})
        require(
            not unknown,
            f"search.clusters[{i}] has unknown key(s) {unknown}; allowed: device, "
            "network_device, num_gpus, price_per_hour",
        )
        device = catalog.get_device(c.get("device", "")).name
        node = c.get("network_device") or _default_node(device)
        require(
            catalog.get_node(node).device == device,
            f"search.clusters[{i}].network_device={node!r} holds "
            f"{catalog.get_node(node).device} GPUs, not {device}",
        )
        num = _ints(f"clusters[{i}].num_gpus (or search.max_gpus)", c.get("num_gpus"))[0]
        p = c.get("price_per_hour")
        if p is not None:
            require(
                isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0,
                f"search.clusters[{i}].price_per_hour={p!r} must be a number >= 0",
            )
        clusters.append(Cluster(device, node, num, None if p is None else float(p)))
    return clusters


def grid_from_dict(
    block: Mapping[str, Any],
    default_model: str,
    default_device: str,
    default_node: str | None = None,
    default_price: float | None = None,
) -> GridSpec:
    """Parse the grid keys of a ``search:`` config block.

    Args:
        block: ``models, gpus, max_gpus, clusters, tp, pp, schedulers, batch_caps``
            (each optional).
        default_model: model used when ``models`` is null.
        default_device: GPU used when ``gpus`` and ``clusters`` are null.
        default_node: its node type (None = the smallest node of that GPU).
        default_price: its $/GPU-hour (None = catalog).

    Raises:
        ConfigError: malformed axis (one line naming it).
    """
    models = block.get("models") or [default_model]
    require(isinstance(models, (list, tuple)), f"search.models={models!r} must be a list")
    for m in models:
        catalog.get_model(m)
    clusters = _clusters(block, default_device, default_node, default_price)
    scheds = []
    for i, s in enumerate(block.get("schedulers") or [{"scheduler": "vllm"}]):
        if isinstance(s, str):
            s = {"scheduler": s}
        require(isinstance(s, Mapping), f"search.schedulers[{i}]={s!r} must be a mapping")
        name = s.get("scheduler")
        require(
            name in ("vllm", "sarathi", "orca", "faster_transformer", "lightllm"),
            f"search.schedulers[{i}].scheduler={name!r}; allowed: vllm, sarathi, orca, "
            "faster_transformer, lightllm",
        )
        chunk = s.get("chunk_size")
        if chunk is not None:
            chunk = _ints(f"schedulers[{i}].chunk_size", chunk)[0]
        k = s.get("speculative_tokens")
        if k is not None:  # a speculative-decoding axis: entries differing in k
            require(isinstance(k, int) and not isinstance(k, bool) and k >= 0,
                    f"search.schedulers[{i}].speculative_tokens={k!r} must be an integer >= 0")
        scheds.append(SchedulerChoice(name, chunk, k))
    return GridSpec(
        models=tuple(catalog.get_model(m).name for m in models),
        clusters=tuple(clusters),
        tp=_ints("tp", block.get("tp", [1, 2, 4, 8])),
        pp=_ints("pp", block.get("pp", [1, 2, 4])),
        schedulers=tuple(scheds),
        batch_caps=_ints("batch_caps", block.get("batch_caps", [32, 64, 128])),
        ep=_ints("ep", block.get("ep", [1])),
        pd_splits=_shares(block.get("pd_splits") or []),
        pd_pools=_pool_choices(block.get("pd_pools") or []),
    )


def _pool_choices(values: Any) -> tuple[PoolChoice, ...]:
    """``search.pd_pools`` entries ``{prefill_tp, decode_tp, prefill_device, decode_device}``."""
    require(isinstance(values, (list, tuple)), f"search.pd_pools={values!r} must be a list")
    out = []
    for i, v in enumerate(values):
        require(isinstance(v, Mapping), f"search.pd_pools[{i}]={v!r} must be a mapping")
        unknown = sorted(set(v) - {f.name for f in dataclasses.fields(PoolChoice)})
        require(not unknown, f"search.pd_pools[{i}] has unknown keys {unknown}; allowed: prefill_tp, decode_tp, "
                "prefill_pp, decode_pp, prefill_device, decode_device")
        tps = {k: _ints(f"pd_pools[{i}].{k}", v.get(k, 1))[0]
               for k in ("prefill_tp", "decode_tp", "prefill_pp", "decode_pp")}
        devices = {k: v.get(k) and catalog.get_device(v[k]).name for k in ("prefill_device", "decode_device")}
        out.append(PoolChoice(**tps, **devices))
    return tuple(out)


def _shares(values: Any) -> tuple[float, ...]:
    vals = list(values) if isinstance(values, (list, tuple)) else [values]
    for v in vals:
        require(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
            f"search.pd_splits has {v!r}; values are prefill shares of the replicas, in (0, 1)",
        )
    return tuple(float(v) for v in vals)


def pool_splits(replicas: int, shares: Sequence[float]) -> list[tuple[int, int]]:
    """Distinct ``(prefill, decode)`` replica counts for prefill ``shares`` of
    ``replicas`` (each pool at least one replica; none below 2 replicas)."""
    out = []
    for s in shares:
        p = min(max(round(s * replicas), 1), replicas - 1)
        if replicas >= 2 and (p, replicas - p) not in out:
            out.append((p, replicas - p))
    return out


def _default_node(device: str) -> str:
    nodes = [n for n in catalog.list_nodes() if catalog.get_node(n).device == device]
    require(bool(nodes), f"no node type holds {device} GPUs; set search.clusters[].network_device")
    return min(nodes, key=lambda n: catalog.get_node(n).devices_per_node)


def node_for_tp(network_device: str, tp: int) -> str | None:
    """The cluster's node type if ``tp`` GPUs fit in one node, else the smallest node of
    the same GPU that holds them (TP stays inside a node, as in Vidur); None if none."""
    node = catalog.get_node(network_device)
    if tp <= node.devices_per_node:
        return node.name
    wider = [
        catalog.get_node(n)
        for n in catalog.list_nodes()
        if catalog.get_node(n).device == node.device and catalog.get_node(n).devices_per_node >= tp
    ]
    return min(wider, key=lambda n: n.devices_per_node).name if wider else None


def expand_grid(
    spec: GridSpec, base: DeploymentConfig, per_replica: bool = False
) -> list[Candidate]:
    """Every grid point that fits its cluster as a :class:`Candidate` (infeasible ones
    carry their reason); points with ``tp * pp`` above the cluster's GPUs are not part
    of the grid.

    Args:
        spec: the axes.
        base: defaults for every knob the grid does not set (block size, watermark,
            token budget, memory margin, max tokens, predictor scales, seed, router).
        per_replica: one replica per candidate (target planning: the replicas needed
            are computed from its capacity); else ``num_gpus // (tp * pp)`` replicas.

    Returns:
        Candidates in grid order (model, cluster, tp, pp, scheduler, batch cap; each
        colocated point followed by its ``pd_splits`` pools, for pp 1 and the
        schedulers that run in pools).
    """
    require(not (per_replica and spec.pd_splits),
            "search.pd_splits needs search.target_qps=null (target planning sizes one colocated replica; "
            "pools are searched as whole clusters)")
    out = []
    for model, cl, tp, pp, sch, cap, ep in itertools.product(
        spec.models, spec.clusters, spec.tp, spec.pp, spec.schedulers, spec.batch_caps, spec.ep
    ):
        if tp * pp > cl.num_gpus or tp % ep or (ep > 1 and not catalog.get_model(model).is_moe):
            continue
        price = (
            cl.price_per_hour
            if cl.price_per_hour is not None
            else catalog.get_device(cl.device).price_per_hour
        )
        replicas = 1 if per_replica else cl.num_gpus // (tp * pp)
        node = node_for_tp(cl.network_device, tp)
        cfg = dataclasses.replace(
            base,
            model=model,
            device=cl.device,
            network_device=node or cl.network_device,
            tensor_parallel_size=tp,
            num_pipeline_stages=pp,
            num_replicas=max(replicas, 1),
            replica_scheduler=sch.scheduler,
            chunk_size=sch.chunk_size if sch.chunk_size is not None else base.chunk_size,
            batch_size_cap=cap,
            expert_parallel=ep,
            spec_tokens=sch.speculative_tokens if sch.speculative_tokens is not None else base.spec_tokens,
        )
        reason = ""
        if node is None:
            reason = f"tp={tp} exceeds every {cl.device} node type"
        else:
            try:
                derive(cfg)  # validates: divisibility, memory fit, batch cap >= pp
            except ConfigError as err:
                reason = str(err)
        out.append(Candidate(cfg, tp * pp * replicas, float(price), reason))
        if pp == 1 and sch.scheduler in disagg.SCHEDULERS:
            for p, d in pool_splits(replicas, spec.pd_splits):
                pooled = dataclasses.replace(cfg, prefill_replicas=p, decode_replicas=d)
                out.append(Candidate(pooled, tp * pp * replicas, float(price), _reason(pooled, node, reason)))
    if not per_replica:
        out += _pool_hardware_points(spec, base)
    return out


def pool_hardware_splits(gpus: int, choice: PoolChoice, shares: Sequence[float]) -> list[tuple[int, int]]:
    """Distinct ``(prefill, decode)`` replica counts of ``choice`` on ``gpus`` GPUs for
    prefill ``shares`` of the GPUs (:attr:`GridSpec.pd_pools`); none that leaves no
    decode replica."""
    out = []
    for s in shares:
        p = max(round(s * gpus / choice.gpus("prefill")), 1)
        d = (gpus - p * choice.gpus("prefill")) // choice.gpus("decode")
        if d >= 1 and (p, d) not in out:
            out.append((p, d))
    return out


def _pool_hardware_points(spec: GridSpec, base: DeploymentConfig) -> list[Candidate]:
    """The grid's pooled points with per-pool hardware (``spec.pd_pools`` x ``pd_splits``)
    for every model, cluster, pool-capable scheduler and batch cap. A point's GPUs are
    its pools' GPUs and its price their mean price (each pool's GPU at its own price)."""
    out = []
    schedulers = [s for s in spec.schedulers if s.scheduler in disagg.SCHEDULERS]
    for model, cl, sch, cap, choice in itertools.product(
        spec.models, spec.clusters, schedulers, spec.batch_caps, spec.pd_pools
    ):
        pre_dev = choice.prefill_device or cl.device
        node = node_for_tp(cl.network_device, choice.prefill_tp) if pre_dev == cl.device else None

        def price_of(device: str, cl=cl) -> float:
            own = device == cl.device and cl.price_per_hour is not None
            return float(cl.price_per_hour if own else catalog.get_device(device).price_per_hour)

        for p, d in pool_hardware_splits(cl.num_gpus, choice, spec.pd_splits):
            cfg = dataclasses.replace(
                base,
                model=model,
                device=pre_dev,
                network_device=node or _default_node(pre_dev),
                tensor_parallel_size=choice.prefill_tp,
                num_pipeline_stages=choice.prefill_pp,
                num_replicas=p + d,
                prefill_replicas=p,
                decode_replicas=d,
                decode_device=choice.decode_device or cl.device,
                decode_tp=choice.decode_tp,
                decode_pp=choice.decode_pp,
                replica_scheduler=sch.scheduler,
                chunk_size=sch.chunk_size if sch.chunk_size is not None else base.chunk_size,
                batch_size_cap=cap,
                spec_tokens=0,
            )
            gpus = disagg_pools.num_gpus(cfg)
            price = disagg_pools.cost_per_hour(cfg, price_of) / gpus
            out.append(Candidate(cfg, gpus, price, _reason(cfg, cfg.network_device, ""), cl))
    return out


def _reason(cfg: DeploymentConfig, node: str | None, colocated_reason: str) -> str:
    """Why a pooled point cannot run (its colocated point's reason first)."""
    if colocated_reason or node is None:
        return colocated_reason
    try:
        derive(cfg)
    except ConfigError as err:
        return str(err)
    return ""


def describe(c: DeploymentConfig) -> str:
    """Short human-readable name of a deployment, e.g. ``a100 tp2 pp1 x8 sarathi512 cap64``."""
    chunk = policies.get(c.replica_scheduler).prefill_chunk(c)
    sched = c.replica_scheduler + (str(chunk) if chunk else "")
    return (
        f"{c.device} tp{c.tensor_parallel_size} pp{c.num_pipeline_stages} "
        + (f"ep{c.expert_parallel} " if c.expert_parallel > 1 else "")
        + f"x{c.num_replicas} {sched} cap{c.batch_size_cap}"
    ) + (f" spec{c.spec_tokens}" if c.spec_tokens else "") + _pools(c)


def _pools(c: DeploymentConfig) -> str:
    """`` 1P:3D`` for a disaggregated deployment (`` 3P(h100 tp2):5D(a100 tp1)`` when its
    pools have their own hardware), else empty."""
    return disagg_pools.describe_pools(c)


def pool_hardware(c: DeploymentConfig) -> dict[str, Any]:
    """``search.csv`` columns of a pooled deployment's pools (None when colocated)."""
    pooled = c.prefill_replicas > 0
    return {
        f"{p}_{k}": (f(c, p) if pooled else None)
        for p in disagg_pools.POOLS
        for k, f in (("device", disagg_pools.pool_device), ("tp", disagg_pools.pool_tp), ("pp", disagg_pools.pool_pp))
    }


def label(c: DeploymentConfig) -> str:
    """A deployment's replica in words, e.g. ``1 x H100 (TP1, Sarathi chunk 1024, cap 128)``;
    pools with their own hardware: ``3 prefill (H100 TP2) : 5 decode (A100 TP1) (vLLM, cap 64)``."""
    gpus = c.tensor_parallel_size * c.num_pipeline_stages
    par = f"TP{c.tensor_parallel_size}" + (
        f" PP{c.num_pipeline_stages}" if c.num_pipeline_stages > 1 else ""
    ) + (f" EP{c.expert_parallel}" if c.expert_parallel > 1 else "")
    policy = policies.get(c.replica_scheduler)
    sched = policy.title or policy.name
    if policy.prefill_chunk(c):
        sched += f" chunk {policy.prefill_chunk(c)}"
    if c.spec_tokens:
        sched += f", speculative k={c.spec_tokens}"
    if disagg_pools.has_pool_hardware(c):
        pools = " : ".join(
            f"{getattr(c, f'{p}_replicas')} {p} ({disagg_pools.pool_device(c, p).upper()} "
            f"TP{disagg_pools.pool_tp(c, p)}"
            + (f" PP{disagg_pools.pool_pp(c, p)}" if disagg_pools.pool_pp(c, p) > 1 else "") + ")"
            for p in disagg_pools.POOLS)
        return f"{pools} ({sched}, cap {c.batch_size_cap})"
    return f"{gpus} x {c.device.upper()} ({par}, {sched}, cap {c.batch_size_cap}){_pools(c)}"


def feasible_configs(cands: Sequence[Candidate]) -> list[int]:
    """Indices of the feasible candidates."""
    return [i for i, c in enumerate(cands) if c.feasible]
