"""Host driver: simulate many configs, grow capacities on overflow, collect tables.

Configs sharing a replica scheduler and router run in one ``jit(vmap(simulate))``
call; others are separate calls. When a run reports a capacity overflow (slots or
timing tables), the host grows that capacity and re-runs the group — nothing is ever
silently dropped (DESIGN.md section 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from vidur_jax import catalog, metrics
from vidur_jax.errors import ConfigError
from vidur_jax.sim import (
    build,
    disagg,
    executables,
    policies,
    precision,
    prefix_engine,
    sessions,
    slots,
    speculative,
)
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.engine import (
    init_state,
    is_done,
    reset_lanes,
    simulate_batch,
    simulate_many,
    simulate_until,
    step,
)
from vidur_jax.sim.tables import PredictorLike
from vidur_jax.sim.types import (
    ERR_SLOTS,
    ERR_TOKENS,
    ERR_WINDOW,
    ERROR_NAMES,
    SimParams,
    SimState,
    SimStatic,
)
from vidur_jax.workload.types import Workload


@dataclasses.dataclass
class ConfigOutput:
    """Results of one simulated config (host numpy)."""

    config: DeploymentConfig
    requests: dict[str, np.ndarray]  # (R,) per-request arrays (metrics.REQUEST_FIELDS)
    tbt_hist: np.ndarray  # (H,) TBT counts
    counters: dict[str, float]
    summary: dict[str, float]
    batch_log: dict[str, np.ndarray] | None = None  # per-batch records when traced


def default_predictor_for(profiles_dir: str | None) -> Callable[[DeploymentConfig], PredictorLike]:
    """Predictor lookup by (model, device, TP, network), cached; a predictor is loaded
    (and the predictor package imported) only when the store lacks its answers."""

    @functools.cache
    def _load(model: str, device: str, tp: int, network: str) -> PredictorLike:
        from vidur_jax import predictors

        try:
            pred = predictors.load(model, device, tp, profiles_dir=profiles_dir, network_device=network)
            fitted = pred.meta.get("network_device")
            if tp > 1 and fitted and catalog.group_topology(device, fitted) != catalog.group_topology(
                device, network
            ):  # fitted on another topology's tables: rescale the all-reduce to this one
                from vidur_jax.predictors import roofline

                return roofline.load_network_scaled(pred, model, device, tp, network)
            return pred
        except ConfigError:
            from vidur_jax.predictors import roofline

            twin = catalog.get_device(device).compute_twin
            if twin is not None:  # same compute as a profiled GPU: its times x roofline ratio
                twin_net = network if catalog.is_node_of(network, twin) else None
                try:
                    base = _load(model, twin, tp, twin_net)
                except ConfigError as err:
                    raise ConfigError(f"{device} is timed from its compute twin {twin}: {err}") from None
                return roofline.load_twin_scaled(base, model, device, tp, network)
            if profiles_dir is not None:
                raise
            # nothing trained or transferable for this (model, device): roofline estimates
            return roofline.load_roofline(model, device, tp, network_device=network)

    @functools.cache
    def _stored(model: str, device: str, tp: int, network: str) -> PredictorLike:
        load = functools.partial(_load, model, device, tp, network)
        if profiles_dir is None:
            # shipped parameters: their identity is the package's files, known unloaded
            return StoredPredictions(load, identity=executables.hint_key(("shipped", model, device, tp, network)))
        return StoredPredictions(load)

    @functools.cache
    def _roofline(model: str, device: str, tp: int, ep: int, imbalance: float, network: str,
                  attention_dp: int = 1) -> PredictorLike:
        from vidur_jax.predictors import roofline

        return roofline.load_roofline(
            model, device, tp, ep=ep, moe_imbalance=imbalance, network_device=network,
            attention_dp=attention_dp,
        )

    def predictor_for(c: DeploymentConfig) -> PredictorLike:
        # MoE / MLA / unusual head sizes: no profile has their op shapes (catalog/moe.py)
        if catalog.needs_roofline(catalog.get_model(c.model)):
            return _roofline(c.model, c.device, c.tensor_parallel_size, c.expert_parallel, c.moe_imbalance,
                             c.network_device, c.attention_dp)
        return _stored(c.model, c.device, c.tensor_parallel_size, c.network_device)

    return predictor_for


class StoredPredictions:
    """A predictor whose ``predict`` answers and ``meta`` are kept on disk
    (:mod:`executables`' store), loaded only when something is not there.

    Tabulating a predictor into timing tables evaluates it on fixed grids; in a new
    process each evaluation first compiles its jitted forward pass (~1 s in all for
    Llama-2-7B), and loading the predictor package imports its training stack (optax,
    scipy). The answers are stored under the predictor's identity, the operation and the
    query arrays, so a repeat process reads them back (same float bits) and never loads
    the predictor. The identity is ``identity`` when given (shipped parameters: a hash
    of the names and of the package's files, :func:`executables.source_fingerprint`),
    else a hash of the loaded predictor's parameters and metadata. Predictors without
    ``params`` are passed through. Every other attribute is the wrapped predictor's; a
    predictor whose ``meta`` carries a ``warning`` (the roofline fallback) is loaded
    every time, so its warning is seen.

    Args:
        inner: a predictor, or a function of no arguments that loads it.
        identity: the predictor's identity, if known without loading it.
    """

    def __init__(self, inner, identity: str | None = None):
        if callable(inner) and not hasattr(inner, "predict"):
            self._loader, self._inner = inner, None
        else:
            self._loader, self._inner = None, inner
        self._fingerprint = identity

    def _get(self) -> PredictorLike:
        if self._inner is None:
            self._inner = self._loader()
        return self._inner

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._get(), name)

    def _identity(self) -> str | None:
        if self._fingerprint is None:
            inner = self._get()
            params = getattr(inner, "params", None)
            if params is None:
                return None
            import json

            leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
            meta = json.dumps(getattr(inner, "meta", {}), sort_keys=True, default=str)
            self._fingerprint = executables.array_fingerprint(*leaves) + executables.hint_key(
                (type(inner).__qualname__, str(jax.tree.structure(params)), meta))
        return self._fingerprint

    @property
    def meta(self) -> dict:
        """The predictor's metadata (stored as JSON under its identity)."""
        identity = self._identity() if executables.enabled() else None
        if identity is None:
            return getattr(self._get(), "meta", {})
        meta = executables.disk_json("predictor_meta", identity, lambda: getattr(self._get(), "meta", {}))
        if "warning" in meta:
            self._get()  # the fallback's warning is emitted when it loads
        return meta

    def predict(self, op: str, **features) -> np.ndarray:
        """``inner.predict(op, **features)``, from the store when it was computed before."""
        identity = self._identity() if executables.enabled() else None
        if identity is None:
            return self._get().predict(op, **features)
        names = sorted(features)
        key = executables.hint_key((identity, op, tuple(names),
                                    executables.array_fingerprint(*(features[k] for k in names))))
        return executables.disk_array("predictions", key, lambda: self._get().predict(op, **features))


def _config_output(cfg: DeploymentConfig, wl: Workload, state: SimState, i: int) -> ConfigOutput:
    n = wl.num_requests
    pick = lambda x: np.asarray(x[i])  # noqa: E731
    requests = {
        "arrived_at": sessions.request_arrivals(
            state.sess_arrived.shape[-1] > 0, state, i, n,
            np.where(np.asarray(wl.mask), np.asarray(wl.arrived_at, np.float64), np.nan)),
        "num_prefill": np.asarray(wl.num_prefill),
        "num_decode": np.asarray(wl.num_decode),
        "scheduled_at": pick(state.scheduled_at)[:n],
        "first_token_at": pick(state.first_token_at)[:n],
        "completed_at": pick(state.completed_at)[:n],
        "num_restarts": pick(state.num_restarts)[:n],
        "num_seqs": np.ones(n, np.int64) if wl.num_seqs is None else np.asarray(wl.num_seqs),
    }
    nb = float(pick(state.num_batches))
    counters = {
        "tbt_sum_s": float(pick(state.tbt_sum)),
        "tbt_count": float(pick(state.tbt_count)),
        "num_batches": nb,
        "batch_size_sum": float(pick(state.batch_size_sum)),
        "kv_util_sum": float(pick(state.kv_util_sum)),
        "busy_time_s": float(pick(state.busy_s)),
        "num_replicas": float(cfg.num_replicas),
        "flops_sum": float(pick(state.flops_sum)),
        "num_steps": float(pick(state.step)),
        "restart_tokens": float(pick(state.restart_tokens)),
    }
    peak = build.derive(cfg).peak_flops
    counters["mfu_mean"] = counters["flops_sum"] / (counters["busy_time_s"] * peak) if counters["busy_time_s"] > 0 else float("nan")
    hist = pick(state.tbt_hist)
    summary = metrics.summarize(requests, hist, counters)
    summary["num_batches"] = nb
    summary["recomputed_tokens"] = counters["restart_tokens"]  # KV discarded by preemptions
    summary["batch_size_max"] = float(pick(state.batch_size_max))
    summary.update(prefix_engine.summary(cfg.prefix_caching, state, i))
    summary.update(sessions.summary(wl, requests))
    summary.update(disagg.summary(cfg, state, i, n, summary["makespan_s"], lambda c: build.derive(c).peak_flops))
    requests.update(disagg.request_fields(cfg, state, i, n))
    summary.update(speculative.summary(cfg, requests["num_decode"], np.isfinite(requests["completed_at"]),
                                       speculative.params_fields(
                                           cfg, np.where(np.asarray(wl.mask), requests["num_decode"], 0).astype(np.int32),
                                           np.asarray(wl.mask))))
    if precision.is_scaled(*cfg.timing_variant):  # say where op times are estimates, in the table itself
        summary["op_times"] = precision.describe(*cfg.timing_variant)
    log = None
    if state.log_start.shape[-1] > 0:
        count = min(int(pick(state.log_count)), state.log_start.shape[-1])
        log = {name: pick(getattr(state, f"log_{name}"))[:count] for name in
               ("start", "end", "replica", "size", "prefill_tokens", "decode_tokens", "iters")}
        log["truncated"] = np.array(int(pick(state.log_count)) > count)
    return ConfigOutput(cfg, requests, hist, counters, summary, log)


def _raise_errors(cfgs: Sequence[DeploymentConfig], errors: np.ndarray) -> None:
    for cfg, err in zip(cfgs, errors, strict=True):
        if err:
            names = [msg for bit, msg in ERROR_NAMES.items() if err & bit]
            raise ConfigError(
                f"simulation of {cfg.replica_scheduler} on {cfg.model}/{cfg.device} tp={cfg.tensor_parallel_size} "
                f"pp={cfg.num_pipeline_stages} failed: {'; '.join(names)}"
            )


@functools.lru_cache(maxsize=64)
def state_bytes_per_config(static: SimStatic) -> int:
    """Bytes of one config's simulation state (x3 for loop buffers and temporaries).

    Cached per shape, in memory and on disk (:func:`executables.disk_memo`): tracing
    ``init_state`` costs ~30 ms, a tenth of a small run."""

    def compute() -> int:
        shapes = jax.eval_shape(lambda: init_state(static, _dummy_params(static)))
        return 3 * sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(shapes))

    return executables.disk_memo("state_bytes", (repr(static),), compute)


def _dummy_params(static: SimStatic):
    r = static.num_requests
    cfg = DeploymentConfig()
    from vidur_jax.workload.types import Workload

    wl = Workload(np.zeros(r), np.ones(r, np.int32), np.ones(r, np.int32), np.ones(r, bool))
    return jax.tree.map(jnp.asarray, build.build_params(cfg, build.derive(cfg), wl, 0, r))


def available_memory_bytes() -> int:
    """MemAvailable of this machine (Linux), else 8 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


def plan_chunk(static: SimStatic, num_configs: int, chunk_configs: int | None, memory_fraction: float = 0.6) -> int:
    """Configs per compiled call: ``chunk_configs`` if given (checked), else the most that fit.

    Raises:
        ConfigError: not even one config fits, or an explicit chunk does not fit (the
            message suggests a chunk size that does).
    """
    per = state_bytes_per_config(static)
    budget = int(available_memory_bytes() * memory_fraction)
    fits = budget // max(per, 1)
    if fits < 1:
        raise ConfigError(
            f"one configuration needs ~{per / 2**30:.1f} GiB of simulation state but only "
            f"{budget / 2**30:.1f} GiB is available; use fewer requests per config"
        )
    if chunk_configs is not None:
        if chunk_configs < 1:
            raise ConfigError(f"chunk_configs={chunk_configs} must be >= 1")
        if chunk_configs > fits:
            raise ConfigError(
                f"chunk_configs={chunk_configs} needs ~{chunk_configs * per / 2**30:.1f} GiB but "
                f"{budget / 2**30:.1f} GiB is available; use chunk_configs={fits} or less"
            )
        return int(min(chunk_configs, num_configs))
    return int(min(num_configs, fits))


@functools.lru_cache(maxsize=32)
def _sharded_runner(static: SimStatic, num_devices: int):
    """jit(shard_map(simulate_many)) over the local devices: each device runs its own
    while loop on its share of configs (no cross-device sync per step)."""
    from jax.sharding import Mesh, PartitionSpec

    mesh = Mesh(np.array(jax.local_devices()[:num_devices]), ("configs",))

    def local(tables, params):
        return simulate_many(static, tables, params)

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec("configs")),
                                 out_specs=PartitionSpec("configs"), check_vma=False))


def devices_for(num_configs: int) -> int:
    """Local devices :func:`simulate_stacked` shards ``num_configs`` over: the most that
    divide the count (device ``d`` gets the ``d``-th contiguous block of configs)."""
    n_dev = max(1, min(jax.local_device_count(), num_configs))
    while num_configs % n_dev:
        n_dev -= 1
    return n_dev


def simulate_stacked(static: SimStatic, tables, stacked: SimParams, progress: Callable | None = None) -> SimState:
    """``simulate_batch`` of stacked configs, sharded over as many local devices as
    divide the config count (each device runs its own loop on its share); one config on
    the CPU runs as :func:`simulate_single_chunked` (its event loop is one XLA kernel,
    re-entered from the host every ~0.25 s to report ``progress``)."""
    num_configs = int(np.shape(stacked.num_valid)[0])
    if num_configs == 1 and jax.default_backend() == "cpu":
        # one kernel for the whole event loop on XLA:CPU; on an accelerator the loop
        # form of the updates would launch a kernel per row, so it keeps the scatters
        return simulate_single_chunked(static, tables, stacked, progress)
    n_dev = devices_for(num_configs)
    if n_dev > 1:
        return _sharded_runner(static, n_dev)(tables, stacked)
    return executables.compiled("simulate_batch", simulate_batch, static, tables, stacked)(tables, stacked)


# ------------------------------------------------------------------ one config, chunked

#: Steps of the first chunk of a single-config run (~15 us each on the 2-core machine:
#: a 2,000-request run at 2 QPS, ~3,800 steps, is one chunk).
FIRST_CHUNK_STEPS = 8192
#: Wall time aimed at per chunk: progress updates and Ctrl-C are this responsive, while
#: the ~0.1 ms a re-entry costs stays negligible.
CHUNK_TARGET_S = 0.25
MIN_CHUNK_STEPS = 256
MAX_CHUNK_STEPS = 1 << 26


def _first(tree):
    return jax.tree.map(lambda x: x[0], tree)


@functools.partial(jax.jit, static_argnums=0)
def _single_init(static: SimStatic, params: SimParams) -> SimState:
    """Initial state of one config (``params`` with a leading axis of 1), unbatched."""
    return init_state(dataclasses.replace(static, scatter_free=True), _first(params))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _single_advance(static: SimStatic, tables, params: SimParams, state: SimState, budget: jax.Array) -> SimState:
    """Step one unbatched, scatter-free config until it is done or ``budget`` more steps ran.

    The same ``while_loop`` body as :func:`engine.simulate_one` (so XLA:CPU still emits
    the loop as one kernel); only the predicate also stops at ``state.step + budget``, so
    chained calls give exactly the unchunked run's state. ``budget`` is a () int64 array:
    any budget runs the same executable.
    """
    one = _first(params)
    static1 = dataclasses.replace(static, scatter_free=True)
    stop = state.step + budget
    return jax.lax.while_loop(
        lambda st: ~is_done(one, st) & (st.step < stop),
        lambda st: step(static1, tables, one, st),
        state,
    )


def _host_done(params: SimParams, state: SimState) -> tuple[bool, int, float]:
    """``(done, completed, clock_s)`` of a single-config state, read on the host."""
    completed, err, steps, clock = jax.device_get((state.num_completed, state.error, state.step, state.clock))
    done = (int(completed) >= int(np.asarray(params.num_valid).reshape(-1)[0]) or int(err) != 0
            or int(steps) >= int(np.asarray(params.max_steps).reshape(-1)[0]))
    return done, int(completed), float(clock)


def simulate_single_chunked(
    static: SimStatic, tables, params: SimParams, progress: Callable | None = None, first_chunk: int = FIRST_CHUNK_STEPS
) -> SimState:
    """Run one config (``params`` with a leading axis of 1) in host-visible chunks.

    Each chunk is one call of the same compiled loop (:func:`_single_advance`) with a step
    budget sized so a chunk takes ~:data:`CHUNK_TARGET_S`; between chunks the host calls
    ``progress(completed_requests, total_requests, simulated_s)`` and Python handles
    Ctrl-C. The result equals :func:`engine.simulate_single` bit for bit (tested).
    Executables come from the on-disk store (:mod:`executables`).

    Returns:
        The final :class:`SimState`, leading axis 1.
    """
    init = executables.compiled("single_init", _single_init, static, params)
    state = init(params)
    budget = np.int64(max(1, first_chunk))
    advance = executables.compiled("single_advance", _single_advance, static, tables, params, state, budget)
    total = int(np.asarray(params.num_valid).reshape(-1)[0])
    while True:
        t0 = time.perf_counter()
        state = advance(tables, params, state, budget)
        done, completed, clock = _host_done(params, state)
        if progress is not None:
            progress(completed, total, clock)
        if done:
            return _with_config_axis(state)
        wall = max(time.perf_counter() - t0, 1e-4)
        budget = np.int64(min(max(int(budget * CHUNK_TARGET_S / wall), MIN_CHUNK_STEPS), MAX_CHUNK_STEPS))


@jax.jit
def _with_config_axis(state: SimState) -> SimState:
    """``state`` with a leading config axis of 1: one compiled program for the whole tree
    (indexing each leaf eagerly compiled one small program per leaf shape, ~20 per
    process, ~0.3 s of a warm process)."""
    return jax.tree.map(lambda x: x[None], state)


#: Configs stepped together by default when a group has more configs than this: the
#: per-step cost of a lane is paid whether its config is running or done, so more lanes
#: amortize dispatch but a larger pool refills less often.
DEFAULT_LANES = 512
#: The host refills a device's lanes once this share of them has finished.
REFILL_FRACTION = 1 / 8
#: Once nothing is pending and at most 1/SHRINK_FACTOR of the lanes still run, they move
#: to a pool SHRINK_FACTOR times smaller: an iteration costs every lane, done or not.
SHRINK_FACTOR = 4
#: Smallest pool, in lanes per device, worth moving to (each pool size compiles once).
MIN_SHRINK_LANES = 32


@functools.lru_cache(maxsize=32)
def _pool_runner(static: SimStatic, num_devices: int):
    """``(init, advance, reset, done)``: jitted initial states of stacked params,
    :func:`simulate_until`, :func:`reset_lanes` and per-lane :func:`is_done`, each device
    running its own loop on its contiguous block of lanes."""
    init = jax.vmap(functools.partial(init_state, static))
    done = jax.jit(jax.vmap(is_done))
    advance = functools.partial(simulate_until, static, axis_name=None if num_devices == 1 else "configs")
    reset = functools.partial(reset_lanes, static)
    if num_devices == 1:
        return jax.jit(init), jax.jit(advance), jax.jit(reset), done
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.local_devices()[:num_devices]), ("configs",))
    shard = functools.partial(jax.shard_map, mesh=mesh, out_specs=P("configs"), check_vma=False)
    return (jax.jit(shard(init, in_specs=(P("configs"),))),
            jax.jit(shard(advance, in_specs=(P(), P("configs"), P("configs"), P(), P()))),
            jax.jit(shard(reset, in_specs=(P("configs"), P("configs"), P("configs")))), done)


def estimated_steps(cfg: DeploymentConfig, wl: Workload) -> float:
    """Rough event count of a config, to start long configs first in the lane pool.

    Prefill iterations (one per :meth:`Policy.prefill_chunk` prompt tokens where the
    policy chunks prefills, as Sarathi does; one per prompt otherwise) plus decode runs, which arrivals and completions cut more often the
    lighter the load. Only the order matters; on the bench_sweep grid its Spearman rank
    correlation with the measured steps is 0.94.
    """
    mask = np.asarray(wl.mask, bool)
    prefill = np.asarray(wl.num_prefill)[mask]
    n = max(int(mask.sum()), 1)
    chunk = policies.get(cfg.replica_scheduler).prefill_chunk(cfg) or max(int(prefill.max(initial=1)), 1)
    duration = float(np.asarray(wl.arrived_at)[mask].max(initial=0.0))
    rate = n / duration if duration > 0 else float(n)
    return float(np.ceil(prefill / chunk).sum() + np.asarray(wl.num_decode)[mask].sum() / (50.0 * rate))


def _execute(
    static: SimStatic, tables, params: list[SimParams], lanes: int, progress, cost: Sequence[float] | None = None
) -> list[tuple[SimState, int]]:
    """Run ``params`` on a pool of ``lanes`` configs stepped together, sharded over the
    local devices; returns one ``(host_state, index)`` per config, in order.

    When every config fits in the pool this is one call. Otherwise the pool is refilled:
    each call runs until a share (:data:`REFILL_FRACTION`) of the pool's lanes is done
    (counted over all devices, which stop together), the host reads the finished configs
    out and starts pending ones in their lanes, so lanes do not idle behind one long
    config (every iteration costs all lanes, running or done). Configs start in
    decreasing ``cost`` (longest first, so the pool drains on short ones).
    """
    n_dev = min(jax.local_device_count(), len(params))  # no device runs only padding
    lanes = max(1, min(lanes, len(params)))
    lanes = -(-lanes // n_dev) * n_dev
    idle = dataclasses.replace(params[-1], num_valid=np.int32(0))  # no requests: done at once
    if lanes >= len(params):
        part = list(params) + [idle] * (lanes - len(params))
        if len(params) == 1 or not _interactive(progress):
            requests = None if progress is None else progress.requests
            state = jax.device_get(simulate_stacked(static, tables, build.stack_params(part), requests))
            if progress is not None:
                progress.configs(len(params))
            return [(state, j) for j in range(len(params))]
        # on a terminal, several configs run in host-visible chunks (progress, Ctrl-C)

    init, advance, reset, lane_done = _pool_runner(static, n_dev)
    refill_block = max(1, int(np.ceil(lanes * REFILL_FRACTION)))
    order = np.argsort(-np.asarray(cost, float), kind="stable") if cost is not None else np.arange(len(params))
    pending = [int(i) for i in order[::-1]]  # pop() takes the next config
    lane_cfg = np.full(lanes, -1)
    idle_leaves = jax.tree.leaves(idle)
    param_leaves, treedef = jax.tree.flatten(jax.tree.map(lambda *xs: np.stack(xs), *([idle] * lanes)))

    def assign(lane: int, i: int) -> None:
        lane_cfg[lane] = i
        for leaf, value in zip(param_leaves, jax.tree.leaves(params[i]), strict=True):
            leaf[lane] = value

    def smaller_pool() -> int:
        """Lanes of the next smaller pool (0 when it would be too small)."""
        small = -(-(lanes // SHRINK_FACTOR) // n_dev) * n_dev
        return small if small >= MIN_SHRINK_LANES * n_dev and small < lanes else 0

    for lane in range(lanes):
        if pending:
            assign(lane, pending.pop())
    stacked = jax.tree.unflatten(treedef, [jnp.array(x) for x in param_leaves])
    state = init(stacked)
    out: list[tuple[SimState, int] | None] = [None] * len(params)
    chunked = _interactive(progress)
    iters = FIRST_CHUNK_STEPS if chunked else np.iinfo(np.int32).max
    total_requests = sum(int(p.num_valid) for p in params)
    finished_requests = 0
    while True:
        lane_busy = lane_cfg >= 0
        small = 0 if pending else smaller_pool()
        stop_at = (~lane_busy).sum() + refill_block if pending else lanes - small
        t0 = time.perf_counter()
        state = advance(tables, stacked, state, jnp.asarray(np.int32(stop_at)), jnp.asarray(np.int32(iters)))
        host = jax.device_get(state)
        done = lane_busy & np.asarray(lane_done(stacked, state))
        fresh = np.zeros(lanes, bool)
        for lane in np.flatnonzero(done):
            out[lane_cfg[lane]] = (jax.tree.map(lambda x, lane=lane: np.array(x[lane:lane + 1]), host), 0)
            finished_requests += int(np.asarray(host.num_completed)[lane])
            lane_cfg[lane] = -1
            if pending:
                assign(lane, pending.pop())
                fresh[lane] = True
        if progress is not None and done.any():
            progress.configs(int(done.sum()))
        if chunked:
            running = lane_busy & ~done
            completed = finished_requests + int(np.asarray(host.num_completed)[running].sum())
            progress.requests_of_all(completed, total_requests)
        busy = np.flatnonzero(lane_cfg >= 0)
        if busy.size == 0:
            return out  # type: ignore[return-value]
        if chunked:  # next chunk sized to take ~CHUNK_TARGET_S
            wall = max(time.perf_counter() - t0, 1e-4)
            iters = int(min(max(iters * CHUNK_TARGET_S / wall, MIN_CHUNK_STEPS), MAX_CHUNK_STEPS))
        if fresh.any():
            stacked = jax.tree.unflatten(treedef, [jnp.array(x) for x in param_leaves])
            state = reset(stacked, state, jnp.asarray(fresh))
        elif small and busy.size <= small:
            # move the running configs to a smaller pool; padding lanes get no requests
            rows = np.concatenate([busy, np.full(small - busy.size, busy[0])])
            pad = np.arange(small) >= busy.size
            param_leaves = [np.where(pad.reshape((-1,) + (1,) * (leaf.ndim - 1)), idle_value, leaf[rows]).astype(leaf.dtype)
                            for leaf, idle_value in zip(param_leaves, idle_leaves, strict=True)]
            lane_cfg = np.where(pad, -1, lane_cfg[rows])
            lanes = small
            stacked = jax.tree.unflatten(treedef, [jnp.array(x) for x in param_leaves])
            state = jax.tree.map(lambda x, rows=rows: jnp.array(x[rows]), host)


def _interactive(progress) -> bool:
    """Whether ``progress`` shows a bar (a terminal): then runs return to the host often."""
    return bool(getattr(progress, "interactive", False))


def _run_group(
    cfgs: Sequence[DeploymentConfig],
    workloads: Sequence[Workload],
    predictor_for: Callable[[DeploymentConfig], PredictorLike],
    num_slots: int | None,
    max_grow: int = 8,
    trace_capacity: int = 0,
    chunk_configs: int | None = None,
    progress=None,
    window: int | None = None,
) -> list[ConfigOutput]:
    """Run configs of one (policy, router); re-run only those that overflowed a
    capacity, with that capacity doubled.

    A single config starts at the capacities it needed last time on the same workload
    (:func:`executables.read_hint`), so a repeat run neither overflows nor recompiles;
    the result is that of the run that grew them (same shapes, same program). Without a
    hint it starts at the slots its request list is estimated to need
    (:func:`slots.first_slots`), so a normal run compiles once."""
    derived = [build.derive(c) for c in cfgs]
    num_requests = max(w.num_requests for w in workloads)
    static = build.make_static(cfgs, derived, num_requests, num_slots, window=window)
    static = dataclasses.replace(static, trace_capacity=int(trace_capacity),
                                 **build.prefix_static(cfgs, derived, workloads),
                                 session_capacity=sessions.capacity(workloads))
    slot_cap = max(8, max(build.slot_bound(c, d) for c, d in zip(cfgs, derived, strict=True)))
    spec = build.table_spec_for(cfgs, static.num_slots)
    hint_key = _capacity_hint_key(cfgs, workloads, static) if len(cfgs) == 1 else None
    hint = executables.read_hint(hint_key) if hint_key else None
    token_grows = 0
    if hint:
        static = dataclasses.replace(static, num_slots=max(static.num_slots, hint.get("num_slots", 0)),
                                     window=max(static.window, hint.get("window", 0)))
        spec = build.table_spec_for(cfgs, static.num_slots)
        for _ in range(hint.get("token_grows", 0)):
            spec, token_grows = spec.grown(), token_grows + 1
    elif num_slots is None and len(cfgs) == 1:  # start at what the request list needs: one compile
        tables, index = build.build_tables(cfgs, spec, predictor_for)
        one = build.build_params(cfgs[0], derived[0], workloads[0], index[0], num_requests)
        start = slots.first_slots(cfgs[0], workloads[0], static, tables, one, min(slot_cap, num_requests))
        if start != static.num_slots:
            static = dataclasses.replace(static, num_slots=start)
            spec = build.table_spec_for(cfgs, static.num_slots)
    grown = slot_grown = False
    results: list[ConfigOutput | None] = [None] * len(cfgs)
    pending = list(range(len(cfgs)))
    for _ in range(max_grow):
        sub = [cfgs[i] for i in pending]
        tables, index = build.build_tables(sub, spec, predictor_for)
        params = [
            build.build_params(cfgs[i], derived[i], workloads[i], k, num_requests, static.prefix_blocks,
                               sessions.on(static))
            for i, k in zip(pending, index, strict=True)
        ]
        lanes = plan_chunk(static, len(params), chunk_configs)
        if chunk_configs is None:
            lanes = min(lanes, DEFAULT_LANES)
        cost = [estimated_steps(cfgs[i], workloads[i]) for i in pending]
        runs = _execute(static, tables, params, lanes, progress, cost)
        errors = np.array([int(st.error[j]) for st, j in runs])
        grow = errors & (ERR_SLOTS | ERR_WINDOW | ERR_TOKENS)
        _raise_errors(sub, np.where(grow != 0, 0, errors))
        for (st, j), i, g in zip(runs, pending, grow, strict=True):
            if not g:
                results[i] = _config_output(cfgs[i], workloads[i], st, j)
        if not grow.any():
            if (grown or not hint) and hint_key:  # a repeat run skips the estimate and the growth
                executables.write_hint(hint_key, {"num_slots": static.num_slots, "window": static.window,
                                                  "token_grows": token_grows})
            return results  # type: ignore[return-value]
        grown = True
        pending = [i for i, g in zip(pending, grow, strict=True) if g]
        if (grow & ERR_SLOTS).any():
            static = dataclasses.replace(static, num_slots=grown_slots(static.num_slots, slot_cap, num_requests,
                                                                       single=len(cfgs) == 1, first=not slot_grown))
            slot_grown = True
            spec = build.table_spec_for(cfgs, static.num_slots)
        if (grow & ERR_WINDOW).any():
            static = dataclasses.replace(static, window=min(2 * static.window, static.num_slots))
        if (grow & ERR_TOKENS).any():
            spec, token_grows = spec.grown(), token_grows + 1
    raise ConfigError("capacity kept overflowing after growing it; please report this config")


#: Slot growth on overflow: a single config grows by half (its step costs O(slots) and its
#: capacity hint remembers the result), a vectorized group doubles (fewer re-runs).
SINGLE_SLOT_GROWTH = 1.5
#: Rungs of x1.5 a single config climbs at its first slot overflow. Each growth is a
#: compile (~8-11 s on the 2-core machine, against ~0.1 s for a 2,000-request run), so a
#: config that outgrew its start skips a rung (32 -> 72: one compile fewer for a need of
#: 49-112 slots, the same capacity as before for it); later overflows climb one rung.
SINGLE_FIRST_GROWTH_RUNGS = 2


def grown_slots(slots: int, cap: int, num_requests: int, single: bool, first: bool = False) -> int:
    """The slot capacity after an overflow at ``slots``: x2 (a vectorized group), or for
    one config x1.5 rounded up to a multiple of 8, :data:`SINGLE_FIRST_GROWTH_RUNGS` times
    at its ``first`` slot overflow, else once; at most ``cap`` (the policy's bound) and
    ``num_requests``."""
    if not single:
        target = int(np.ceil(slots * 2.0 / 8.0)) * 8
    else:
        target = slots
        for _ in range(SINGLE_FIRST_GROWTH_RUNGS if first else 1):
            target = int(np.ceil(target * SINGLE_SLOT_GROWTH / 8.0)) * 8
    return int(max(min(target, cap, num_requests), 1))


def _capacity_hint_key(cfgs: Sequence[DeploymentConfig], workloads: Sequence[Workload], static: SimStatic) -> str:
    """Identity of a group's run for its capacity hint: configs, workloads, start shape."""
    wl = [executables.array_fingerprint(w.arrived_at, w.num_prefill, w.num_decode, w.mask,
                                        np.zeros(0) if w.num_seqs is None else w.num_seqs,
                                        np.zeros(0) if w.prefix_hashes is None else w.prefix_hashes)
          for w in workloads]
    return executables.hint_key((tuple(repr(c) for c in cfgs), tuple(wl), repr(static)))


def simulate_configs(
    cfgs: Sequence[DeploymentConfig],
    workloads: Sequence[Workload],
    predictor_for: Callable[[DeploymentConfig], PredictorLike] | None = None,
    profiles_dir: str | None = None,
    num_slots: int | None = None,
    trace_capacity: int = 0,
    chunk_configs: int | None = None,
    progress: bool = False,
    window: int | None = None,
) -> list[ConfigOutput]:
    """Simulate every config on its workload; one compiled call per (policy, router).

    Configs run in chunks that fit in memory (``chunk_configs``, default: as many as fit)
    and are sharded over all local devices (GPUs, or CPU devices when
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N``).

    Args:
        cfgs: deployments.
        workloads: one workload per config (same object may repeat).
        predictor_for: config -> predictor; default loads trained predictors.
        profiles_dir: profiles to train predictors from (None = shipped parameters).
        num_slots: running-set capacity override (grown automatically on overflow).
        trace_capacity: record up to this many batches per config in
            ``ConfigOutput.batch_log`` (for Chrome traces); 0 = off.
        chunk_configs: configs per compiled call (checked against free memory).
        progress: show a progress bar with ETA on stderr: configs done, or for one
            config its requests completed and simulated time.
        window: admission-window capacity (default 16; grown automatically on overflow).

    Returns:
        One :class:`ConfigOutput` per config, in input order.
    """
    if len(cfgs) != len(workloads):
        raise ConfigError(f"{len(cfgs)} configs but {len(workloads)} workloads")
    if not cfgs:
        raise ConfigError("no configurations to simulate")
    predictor_for = predictor_for or default_predictor_for(profiles_dir)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault((c.replica_scheduler, c.global_scheduler), []).append(i)
    out: list[ConfigOutput | None] = [None] * len(cfgs)
    sources = [str(getattr(predictor_for(c), "meta", {}).get("source", "custom")) for c in cfgs]
    with _progress_bar(len(cfgs), progress) as bar:
        for idx in groups.values():
            res = _run_group([cfgs[i] for i in idx], [workloads[i] for i in idx], predictor_for, num_slots,
                             trace_capacity=trace_capacity, chunk_configs=chunk_configs, progress=bar,
                             window=window)
            for i, r in zip(idx, res, strict=True):
                r.summary["predictor_source"] = sources[i]
                out[i] = r
    return out  # type: ignore[return-value]


class _Progress:
    """Progress on stderr (rich, transient): configs done of many, or for one config its
    requests completed, simulated time and ETA. ``enabled=False``: every call is a no-op."""

    def __init__(self, bar, total_configs: int):
        self._bar = bar
        self._task = None if bar is None else bar.add_task("configs", total=total_configs, sim="")
        self._single = total_configs == 1

    @property
    def interactive(self) -> bool:
        """A bar is shown (stderr is a terminal): runs return to the host every ~0.25 s."""
        return self._bar is not None

    def configs(self, n: int) -> None:
        """``n`` more configs finished."""
        if self._bar is not None and not self._single:
            self._bar.advance(self._task, n)

    def requests_of_all(self, completed: int, total: int) -> None:
        """Several configs: ``completed`` of their ``total`` requests so far."""
        if self._bar is not None and not self._single:
            self._bar.update(self._task, sim=f"{completed:,}/{total:,} requests")

    def requests(self, completed: int, total: int, clock_s: float) -> None:
        """One config's progress: ``completed`` of ``total`` requests at ``clock_s``."""
        if self._bar is not None and self._single:
            self._bar.update(self._task, completed=completed, total=total, sim=f"sim {clock_s:,.0f} s")


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool):
    """Yields a :class:`_Progress` (a rich progress bar with ETA when ``enabled``)."""
    if not enabled:
        yield _Progress(None, total)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    what = "requests" if total == 1 else "configs"
    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn(what),
               TextColumn("{task.fields[sim]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, transient=True, console=_stderr_console()) as bar:
        yield _Progress(bar, total)


def _stderr_console():
    from rich.console import Console

    return Console(file=sys.stderr)


def requests_frame(outputs: Sequence[ConfigOutput]) -> pd.DataFrame:
    """``requests.parquet`` table: one row per request per config."""
    return pd.concat([metrics.requests_frame(i, o.requests) for i, o in enumerate(outputs)], ignore_index=True)
