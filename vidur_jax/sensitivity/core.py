"""Derivatives of serving metrics with respect to deployment knobs.

Contract: a :class:`Case` is one deployment on one workload, built once on the host by
:func:`make_case`. :func:`evaluate` maps a knob dict ``{name: value}`` to a dict of
metric scalars through the real simulator (``engine.simulate_one``); the map underneath
(``_run``) is a pure JAX function, so :func:`sensitivities` can take forward-mode
derivatives of it (``jacfwd``, i.e. ``jvp`` through the event ``while_loop``) or
reverse-mode ones through a bounded ``lax.scan`` of the same ``engine.step`` with
``jax.checkpoint`` (:func:`simulate_scan`).

**Knobs** (all are *values*; elasticities are ``d log metric / d log knob``):

* ``qps`` — arrival rate. Arrival times are rescaled, ``t_i(qps) = t_i(qps0) qps0 / qps``
  (common random numbers: the same draws, denser or sparser).
* ``compute_speed`` — speed-up of the compute-bound kernels (GEMMs: attention pre/post
  projections, MLP up/down; prefill attention). ``memory_bandwidth`` — speed-up of the
  memory-bound kernels (decode attention, KV-cache save, rope, activation, norms, add).
  ``interconnect_speed`` — speed-up of all-reduce and pipeline send/recv. Each divides
  the tabulated kernel times it covers (1 = as profiled). The compute/memory split is the
  usual roofline reading of a transformer layer; small-batch GEMMs are in truth partly
  bandwidth bound, which is why the per-operation knobs exist too.
* ``op_time:<op>`` — multiplier on one operation's time (1 = as profiled), for every
  token operation of :data:`~vidur_jax.sim.types.TOKEN_OPS` plus ``attn_kv_cache_save``,
  ``attn_decode``, ``attn_prefill``. Their elasticities sum to the elasticity with respect
  to a uniform slow-down.
* ``cpu_overhead_ms`` — fixed CPU time per iteration.
* ``price_per_gpu_hour`` — $/GPU-hour; enters the cost metrics linearly.
* ``chunk_size``, ``batch_cap`` — integer knobs; see *Relaxation* below.

**Metrics**: ``{ttft,tbt,e2e,norm_e2e}_{mean,p50,p90,p99}``, ``throughput_rps``,
``cost_per_1k_requests`` (``1000 x GPUs x $/GPU-h x makespan / 3600 / completed``) and
``qps_per_dollar`` (``qps / ($ per hour)``). Request-level percentiles are numpy's
``linear`` method on the sorted per-request values, so their derivative is the
derivative of the interpolated order statistics (exactly what ``summary.csv`` reports).

**Piecewise-constant schedules.** Which requests share a batch is a discrete decision;
the simulator's timestamps are smooth in the float knobs only while that schedule stays
the same. The jvp is the derivative *with the schedule held fixed* (the one-sided limits
agree almost everywhere); it matches central finite differences with small steps, while
over a wide step schedule changes add jumps the derivative does not see. For the load
(``qps``) this bias can dominate: with the schedule fixed, earlier arrivals simply wait
longer for the same batches, whereas a real load change re-forms the batches. On the
30-request test case the jvp of mean TTFT in qps is 0.21 s/qps while central differences
over 1-20% steps and the smoothed slope give 0.003-0.01 s/qps. Hence
``sensitivities(..., smooth_continuous=True)`` also returns the *schedule-aware* slope
of every continuous knob (the Gaussian-smoothed one below, default width 5%); the
sensitivity task reports both.

**TBT percentiles** come from the simulator's fixed-bin histogram, which is piecewise
constant. The value reported is the histogram quantile (as in ``summary.csv``); its
derivative is taken as the derivative of the *mean of the TBT samples in the quantile's
bin* (``SimState.tbt_bin_sum / tbt_hist``), a differentiable estimate of the order
statistic's derivative (samples in one bin differ by < 1% of their value). The TBT mean
is exact (``tbt_sum / tbt_count``).

**Relaxation of integer knobs.** ``chunk_size`` and ``batch_cap`` are replaced by the
Gaussian-smoothed metric ``M_s(c) = E[M(round(c + s Z))]``, ``Z ~ N(0, 1)``, whose
derivative is ``E[Z M(round(c + s Z))] / s`` (Stein's identity). It is evaluated with
Gauss-Hermite nodes in antithetic pairs (one vmapped simulation of all nodes), so it is a
weighted central difference over steps of about ``s``. Bias: ``M_s' - M' = s^2 M'''/2 +
...`` where ``M`` is smooth, and where ``M`` has jumps the smoothed derivative spreads
them over a width ``s`` — it is the slope a user sees over that range, not an
infinitesimal one (which is 0 almost everywhere).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vidur_jax import catalog
from vidur_jax.errors import ConfigError, require
from vidur_jax.metrics.histogram import tbt_bin_edges
from vidur_jax.sim import build, engine
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.tables import PredictorLike
from vidur_jax.sim.types import (
    ERR_SLOTS,
    ERR_TOKENS,
    ERR_WINDOW,
    ERROR_NAMES,
    TOKEN_OPS,
    SimParams,
    SimState,
    SimStatic,
    TimingTables,
)
from vidur_jax.workload.types import Workload

jax.config.update("jax_enable_x64", True)

#: Attention-kernel operations (timing-table slabs other than ``token_ops``).
ATTN_OPS = ("attn_kv_cache_save", "attn_decode", "attn_prefill")
#: Every operation with its own ``op_time:<op>`` knob.
ALL_OPS = (*TOKEN_OPS, *ATTN_OPS)
#: Roofline grouping of operations behind the overall speed knobs.
COMPUTE_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj", "attn_prefill")
MEMORY_OPS = (
    "attn_rope",
    "mlp_act",
    "input_layernorm",
    "post_attention_layernorm",
    "add",
    "attn_kv_cache_save",
    "attn_decode",
)
NETWORK_OPS = ("all_reduce", "send_recv")
SPEED_GROUPS = {
    "compute_speed": COMPUTE_OPS,
    "memory_bandwidth": MEMORY_OPS,
    "interconnect_speed": NETWORK_OPS,
}

#: Continuous knobs differentiated with ``jvp`` / ``grad``.
CONTINUOUS_KNOBS = (
    "qps",
    *SPEED_GROUPS,
    "cpu_overhead_ms",
    "price_per_gpu_hour",
    *(f"op_time:{op}" for op in ALL_OPS),
)
#: Integer knobs, differentiated through the Gaussian-smoothing relaxation.
DISCRETE_KNOBS = ("chunk_size", "batch_cap")
#: Default knobs of a sensitivity table (per-operation knobs on request).
DEFAULT_KNOBS = ("qps", *SPEED_GROUPS, "cpu_overhead_ms", "price_per_gpu_hour", *DISCRETE_KNOBS)

_LATENCY = ("ttft", "tbt", "e2e", "norm_e2e")
_STATS = ("mean", "p50", "p90", "p99")
#: Metrics :func:`evaluate` returns.
METRICS = (
    *(f"{m}_{s}" for m in _LATENCY for s in _STATS),
    "throughput_rps",
    "cost_per_1k_requests",
    "qps_per_dollar",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One deployment on one workload, ready to differentiate.

    Attributes:
        config: the deployment.
        workload: its workload at rate ``qps``.
        static: simulator shapes (slots cover every batch cap the relaxation visits).
        tables: float64 timing tables of the deployment (one bundle).
        params: host :class:`SimParams` of the deployment (no config axis).
        qps: arrival rate the workload was generated at, requests/s.
        price_per_gpu_hour: $ per GPU-hour.
        num_gpus: GPUs of the deployment (TP x PP x replicas).
        num_valid: real requests in the workload (static).
    """

    config: DeploymentConfig
    workload: Workload
    static: SimStatic
    tables: TimingTables
    params: SimParams
    qps: float
    price_per_gpu_hour: float
    num_gpus: int
    num_valid: int

    def base_knobs(self) -> dict[str, float]:
        """Every continuous and discrete knob at the case's own value."""
        out = {
            "qps": self.qps,
            "cpu_overhead_ms": float(self.config.cpu_overhead_ms),
            "price_per_gpu_hour": self.price_per_gpu_hour,
            "chunk_size": float(self.config.chunk_size),
            "batch_cap": float(self.config.batch_size_cap),
        }
        out.update({k: 1.0 for k in SPEED_GROUPS})
        out.update({f"op_time:{op}": 1.0 for op in ALL_OPS})
        return out


def _params_for(case_cfg: DeploymentConfig, workload: Workload, num_requests: int) -> SimParams:
    return build.build_params(case_cfg, build.derive(case_cfg), workload, 0, num_requests)


def make_case(
    config: DeploymentConfig,
    workload: Workload,
    predictor: PredictorLike,
    qps: float,
    price_per_gpu_hour: float | None = None,
    max_chunk: int | None = None,
    max_batch_cap: int | None = None,
) -> Case:
    """Build a :class:`Case` and check that it simulates without overflow.

    Args:
        config: deployment (one replica scheduler, one router).
        workload: requests, generated at rate ``qps``.
        predictor: execution-time predictor of the deployment.
        qps: arrival rate of ``workload``, requests/s (the ``qps`` knob's base value).
        price_per_gpu_hour: $/GPU-hour; None = the catalog price of the device.
        max_chunk: largest chunk size the relaxation may visit (table extents).
        max_batch_cap: largest batch cap the relaxation may visit (slot capacity).

    Returns:
        The case. Raises :class:`ConfigError` when the simulation fails.
    """
    require(qps > 0, f"qps={qps} must be > 0")
    derived = build.derive(config)
    if price_per_gpu_hour is None:
        price_per_gpu_hour = catalog.get_device(config.device).price_per_hour
    n = int(np.asarray(workload.mask).sum())
    num_requests = workload.num_requests
    cap = max(config.batch_size_cap, max_batch_cap or 0)
    big = dataclasses.replace(
        config, batch_size_cap=cap, chunk_size=max(config.chunk_size, max_chunk or 0)
    )
    slots = int(min(num_requests, max(build.slot_bound(big, build.derive(big)), 8)))
    static = build.make_static([config], [derived], num_requests, num_slots=slots, window=slots)
    spec = build.table_spec_for([big], static.num_slots)
    params = _params_for(config, workload, num_requests)
    num_gpus = config.tensor_parallel_size * config.num_pipeline_stages * config.num_replicas
    for _ in range(4):
        tables, _ = build.build_tables([config], spec, lambda c: predictor)
        tables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tables)
        case = Case(
            config,
            workload,
            static,
            tables,
            params,
            float(qps),
            float(price_per_gpu_hour),
            num_gpus,
            n,
        )
        try:
            evaluate(case)
        except _Overflow:
            spec = spec.grown()
            continue
        return case
    raise ConfigError("sensitivity case: timing tables kept overflowing")


class _Overflow(ConfigError):
    """Timing tables too small (the case builder grows them)."""


# --------------------------------------------------------------------------- knobs -> sim


def _op_multipliers(knobs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Time multiplier of every operation from the speed and per-op knobs."""
    mult = {}
    for op in ALL_OPS:
        m = jnp.asarray(knobs.get(f"op_time:{op}", 1.0), jnp.float64)
        for group, ops in SPEED_GROUPS.items():
            if op in ops and group in knobs:
                m = m / knobs[group]
        mult[op] = m
    return mult


def _apply(
    tables0: TimingTables, params: SimParams, qps0: jax.Array, knobs: Mapping[str, jax.Array]
) -> tuple[TimingTables, SimParams]:
    mult = _op_multipliers(knobs)
    col = jnp.stack([mult[op] for op in TOKEN_OPS])
    tables = tables0.replace(
        token_ops=tables0.token_ops * col,
        kv_save=tables0.kv_save * mult["attn_kv_cache_save"],
        decode=tables0.decode * mult["attn_decode"],
        prefill=tables0.prefill * mult["attn_prefill"],
    )
    base = jnp.asarray(params.arrived_at, jnp.float64)
    finite = jnp.isfinite(base)
    safe = jnp.where(finite, base, 0.0)  # keeps inf out of the tangents / cotangents
    scale = qps0 / jnp.asarray(knobs.get("qps", qps0), jnp.float64)
    cpu = knobs.get("cpu_overhead_ms", params.cpu_overhead_ms)
    new = params.replace(
        arrived_at=jnp.where(finite, safe * scale, jnp.inf),
        cpu_overhead_ms=jnp.asarray(cpu, jnp.float64),
    )
    return tables, new


def apply_knobs(
    case: Case, knobs: Mapping[str, jax.Array], params: SimParams | None = None
) -> tuple[TimingTables, SimParams]:
    """Timing tables and params of ``case`` with the continuous ``knobs`` applied.

    Missing knobs keep the case's value. Kernel-time knobs scale the tabulated times
    (exactly what the iteration-time model sums); ``qps`` rescales arrival times.
    """
    params = jax.tree.map(jnp.asarray, case.params if params is None else params)
    return _apply(case.tables, params, jnp.float64(case.qps), knobs)


# ------------------------------------------------------------------------------- metrics


def _percentile_sorted(xs: jax.Array, q: float) -> jax.Array:
    """numpy ``linear`` percentile of an already sorted (n,) array (static n)."""
    n = xs.shape[0]
    pos = q / 100.0 * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def _stats(x: jax.Array, prefix: str) -> dict[str, jax.Array]:
    xs = jnp.sort(x)
    out = {f"{prefix}_mean": jnp.mean(x)}
    for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
        out[f"{prefix}_{name}"] = _percentile_sorted(xs, q)
    return out


def _tbt_quantile(state: SimState, q: float) -> jax.Array:
    """Histogram quantile (value) with the derivative of its bin's sample mean."""
    h = state.tbt_hist.shape[0]
    edges = jnp.asarray(tbt_bin_edges(h))
    c = state.tbt_hist.astype(jnp.float64)
    cum = jnp.cumsum(c)
    total = cum[-1]
    target = q * total
    b = jnp.searchsorted(cum, target, side="left")
    nonempty = c > 0
    first = jnp.argmax(nonempty)
    last = h - 1 - jnp.argmax(nonempty[::-1])
    b = jnp.clip(b, first, last)
    before = cum[b] - c[b]
    frac = jnp.clip((target - before) / jnp.maximum(c[b], 1.0), 0.0, 1.0)
    value = edges[b] + frac * (edges[b + 1] - edges[b])
    mean_in_bin = state.tbt_bin_sum[b] / jnp.maximum(c[b], 1.0)
    # straight-through: histogram value, derivative of the bin mean
    return jax.lax.stop_gradient(value) + mean_in_bin - jax.lax.stop_gradient(mean_in_bin)


def _state_metrics(
    n: int,
    num_gpus: int,
    qps0: jax.Array,
    price0: jax.Array,
    knobs: Mapping[str, jax.Array],
    params: SimParams,
    state: SimState,
) -> dict[str, jax.Array]:
    arr = params.arrived_at[:n]
    ttft = state.first_token_at[:n] - arr
    e2e = state.completed_at[:n] - arr
    out = {}
    out.update(_stats(ttft, "ttft"))
    out.update(_stats(e2e, "e2e"))
    out.update(_stats(e2e / params.num_decode[:n].astype(jnp.float64), "norm_e2e"))
    out["tbt_mean"] = state.tbt_sum / jnp.maximum(state.tbt_count, 1)
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        out[f"tbt_{name}"] = _tbt_quantile(state, q)
    makespan = jnp.max(state.completed_at[:n]) - jnp.min(arr)
    price = jnp.asarray(knobs.get("price_per_gpu_hour", price0), jnp.float64)
    qps = jnp.asarray(knobs.get("qps", qps0), jnp.float64)
    out["throughput_rps"] = n / makespan
    out["cost_per_1k_requests"] = 1000.0 * num_gpus * price * makespan / 3600.0 / n
    out["qps_per_dollar"] = qps / (num_gpus * price)
    return {k: out[k] for k in METRICS}


def _aux(params: SimParams, state: SimState) -> dict[str, jax.Array]:
    return {
        "error": state.error,
        "num_completed": state.num_completed,
        "steps": state.step,
        "done": engine.is_done(params, state),
    }


def _run(
    static: SimStatic,
    n: int,
    num_gpus: int,
    steps: int | None,
    block: int,
    tables0: TimingTables,
    params0: SimParams,
    qps0: jax.Array,
    price0: jax.Array,
    knobs: Mapping[str, jax.Array],
):
    tables, p = _apply(tables0, params0, qps0, knobs)
    if steps is None:
        state = engine.simulate_one(static, tables, p)
    else:
        state = simulate_scan(static, tables, p, steps, block)
    return _state_metrics(n, num_gpus, qps0, price0, knobs, p, state), _aux(p, state)


def simulate_scan(
    static: SimStatic, tables: TimingTables, params: SimParams, num_steps: int, block: int = 64
) -> SimState:
    """Run ``num_steps`` events with a bounded, checkpointed ``lax.scan`` (reverse mode).

    Equivalent to :func:`engine.simulate_one` when ``num_steps`` covers the run (a done
    config's ``step`` is a masked no-op). Each block of ``block`` steps is
    rematerialized in the backward pass (``jax.checkpoint``), so it stores about
    ``num_steps / block + block`` states instead of ``num_steps``.
    """
    outer = max(1, -(-num_steps // block))

    @jax.checkpoint
    def run_block(state, _):
        state, _ = jax.lax.scan(
            lambda s, _: (engine.step(static, tables, params, s), None), state, None, length=block
        )
        return state, None

    state, _ = jax.lax.scan(run_block, engine.init_state(static, params), None, length=outer)
    return state


_S = (0, 1, 2, 3, 4)  # static args of the jitted entry points: static, n, gpus, steps, block


@functools.partial(jax.jit, static_argnums=_S)
def _values(static, n, num_gpus, steps, block, tables0, params0, qps0, price0, knobs):
    return _run(static, n, num_gpus, steps, block, tables0, params0, qps0, price0, knobs)


@functools.partial(jax.jit, static_argnums=_S)
def _values_batch(static, n, num_gpus, steps, block, tables0, params0, qps0, price0, knobs):
    """Metrics of a stack of (params, knobs) points (leading axis on both)."""
    f = lambda p, k: _run(static, n, num_gpus, steps, block, tables0, p, qps0, price0, k)  # noqa: E731
    return jax.vmap(f)(params0, knobs)


@functools.partial(jax.jit, static_argnums=_S)
def _jac_fwd(static, n, num_gpus, steps, block, tables0, params0, qps0, price0, diff, fixed):
    def f(d):
        m, aux = _run(static, n, num_gpus, steps, block, tables0, params0, qps0, price0, fixed | d)
        return m, (m, aux)

    return jax.jacfwd(f, has_aux=True)(diff)


@functools.partial(jax.jit, static_argnums=_S)
def _jac_rev(static, n, num_gpus, steps, block, tables0, params0, qps0, price0, diff, fixed):
    def f(d):
        m, aux = _run(static, n, num_gpus, steps, block, tables0, params0, qps0, price0, fixed | d)
        return m, (m, aux)

    return jax.jacrev(f, has_aux=True)(diff)


def _args(case: Case, params: SimParams | None = None):
    params = case.params if params is None else params
    return (
        case.tables,
        jax.tree.map(jnp.asarray, params),
        jnp.float64(case.qps),
        jnp.float64(case.price_per_gpu_hour),
    )


def _to_float(tree):
    return jax.tree.map(lambda x: float(np.asarray(x)), tree)


def _check(aux: Mapping[str, jax.Array], what: str) -> None:
    err = np.asarray(aux["error"])
    if err.any():
        bits = int(np.bitwise_or.reduce(err.reshape(-1)))
        if bits == ERR_TOKENS:
            raise _Overflow(f"{what}: batch larger than the timing tables cover")
        names = "; ".join(m for b, m in ERROR_NAMES.items() if bits & b)
        hint = (
            " (grow max_chunk / max_batch_cap of make_case)"
            if bits & (ERR_SLOTS | ERR_WINDOW | ERR_TOKENS)
            else ""
        )
        raise ConfigError(f"{what}: simulation failed: {names}{hint}")
    if not np.asarray(aux["done"]).all():
        raise ConfigError(
            f"{what}: the scan ended before the simulation finished (raise num_steps)"
        )


def _knob_dict(knobs: Mapping[str, float]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v, jnp.float64) for k, v in knobs.items() if k in CONTINUOUS_KNOBS}


#: Points per batched primal evaluation (padded), so every evaluation shares one compile.
EVAL_BATCH = 4


def evaluate_many(case: Case, points: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """Metrics of ``case`` at several knob points, simulated together (vmapped).

    Integer knobs are rounded to the nearest integer (no smoothing); missing knobs keep
    the case's values.
    """
    full = [case.base_knobs() | dict(p) for p in points]
    pad = (-len(full)) % EVAL_BATCH
    full_p = full + [full[-1]] * pad
    params = _discrete_params(case, [(p["chunk_size"], p["batch_cap"]) for p in full_p])
    knobs = {k: jnp.asarray([p[k] for p in full_p], jnp.float64) for k in _knob_dict(full_p[0])}
    out: list[dict[str, float]] = []
    for b in range(0, len(full_p), EVAL_BATCH):  # fixed batch shape: one compile
        sl = slice(b, b + EVAL_BATCH)
        m, aux = _values_batch(
            case.static,
            case.num_valid,
            case.num_gpus,
            None,
            64,
            case.tables,
            jax.tree.map(lambda x, sl=sl: x[sl], params),
            jnp.float64(case.qps),
            jnp.float64(case.price_per_gpu_hour),
            {k: v[sl] for k, v in knobs.items()},
        )
        _check(aux, "evaluate")
        m = {k: np.asarray(v, np.float64) for k, v in m.items()}
        out += [{k: float(v[i]) for k, v in m.items()} for i in range(EVAL_BATCH)]
    return out[: len(full)]


def evaluate(case: Case, knobs: Mapping[str, float] | None = None) -> dict[str, float]:
    """Metrics of ``case`` at ``knobs`` (see :func:`evaluate_many`)."""
    return evaluate_many(case, [knobs or {}])[0]


def _discrete_params(case: Case, points: Sequence[tuple[float, float]]) -> SimParams:
    """Stacked params of ``case`` at (chunk_size, batch_cap) points (rounded)."""
    out = []
    cache: dict[tuple[int, int], SimParams] = {}
    for chunk, cap in points:
        key = (max(1, int(round(chunk))), max(case.config.num_pipeline_stages, int(round(cap))))
        if key not in cache:
            cfg = dataclasses.replace(case.config, chunk_size=key[0], batch_size_cap=key[1])
            require(
                key[1] <= case.static.num_slots or case.static.num_slots >= case.num_valid,
                f"batch_cap={key[1]} exceeds the case's {case.static.num_slots} slots "
                "(pass max_batch_cap to make_case)",
            )
            cache[key] = build.build_params(
                cfg, build.derive(cfg), case.workload, 0, case.static.num_requests
            )
        out.append(cache[key])
    return build.stack_params(out)


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """Derivatives of metrics at one operating point.

    Attributes:
        point: knob values, ``{knob: value}``.
        values: ``{metric: value}`` at the point (seconds, requests/s, $).
        derivative: ``{metric: {knob: d metric / d knob}}``.
        method: ``{knob: "jvp" | "vjp" | "smoothed(s=...)"}``.
        smoothed: ``{metric: {knob: slope of the Gaussian-smoothed metric}}`` for
            continuous knobs when requested (schedule-aware; see
            :func:`smoothed_derivatives`), and the integer knobs' relaxation.
        widths: ``{knob: s}`` smoothing widths used.
    """

    point: dict[str, float]
    values: dict[str, float]
    derivative: dict[str, dict[str, float]]
    method: dict[str, str]
    smoothed: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    widths: dict[str, float] = dataclasses.field(default_factory=dict)

    def elasticity(self, metric: str, knob: str) -> float:
        """``d log metric / d log knob`` (NaN where the metric or knob is 0)."""
        v, x = self.values[metric], self.point[knob]
        if v == 0 or not np.isfinite(v):
            return float("nan")
        return self.derivative[metric][knob] * x / v

    def smoothed_elasticity(self, metric: str, knob: str) -> float:
        """Elasticity from the smoothed (schedule-aware) slope; NaN if not computed."""
        d = self.smoothed.get(metric, {}).get(knob)
        v, x = self.values[metric], self.point[knob]
        if d is None or v == 0 or not np.isfinite(v):
            return float("nan")
        return d * x / v

    def frame(self, **labels):
        """Long table: ``metric, knob, value, derivative, elasticity`` (+ ``knob_value,
        method, derivative_smoothed, elasticity_smoothed, smoothing_width`` and labels)."""
        import pandas as pd

        rows = []
        for metric, row in self.derivative.items():
            for knob, d in row.items():
                rows.append(
                    {
                        **labels,
                        "metric": metric,
                        "knob": knob,
                        "value": self.values[metric],
                        "derivative": d,
                        "elasticity": self.elasticity(metric, knob),
                        "knob_value": self.point[knob],
                        "method": self.method[knob],
                        "derivative_smoothed": self.smoothed.get(metric, {}).get(
                            knob, float("nan")
                        ),
                        "elasticity_smoothed": self.smoothed_elasticity(metric, knob),
                        "smoothing_width": self.widths.get(knob, float("nan")),
                    }
                )
        return pd.DataFrame(rows)


#: Default smoothing widths of the integer-knob relaxation, as a fraction of the value.
DEFAULT_SMOOTHING = {"chunk_size": 0.125, "batch_cap": 0.125}
#: Smallest smoothing widths (chunk: the prefill table's 16-token grid; cap: 2 requests).
MIN_SMOOTHING = {"chunk_size": 16.0, "batch_cap": 2.0}


#: Default smoothing width of continuous knobs (schedule-aware slopes), fraction of value.
CONTINUOUS_SMOOTHING = 0.05


def smoothing_width(knob: str, value: float, width: float | None = None) -> float:
    """Gaussian smoothing width ``s`` of ``knob`` at ``value`` (absolute units)."""
    if width is not None:
        return float(width)
    if knob in DISCRETE_KNOBS:
        return max(MIN_SMOOTHING[knob], DEFAULT_SMOOTHING[knob] * value)
    require(value != 0, f"{knob}=0: give an absolute smoothing width")
    return CONTINUOUS_SMOOTHING * abs(value)


def smoothed_derivatives(
    case: Case,
    knob: str,
    point: Mapping[str, float],
    width: float | None = None,
    num_nodes: int = 4,
) -> tuple[dict[str, float], dict[str, float], float]:
    """Derivative of the Gaussian-smoothed metrics with respect to ``knob``.

    ``d/dc E[M(round(c + s Z))] = E[Z M(round(c + s Z))] / s`` with ``num_nodes``
    (even) Gauss-Hermite nodes, all simulated in one vmapped call. For an integer knob
    this is its relaxation; for a continuous knob (no rounding) it is the
    *schedule-aware* slope over a width ``s``: it includes the jumps of batch
    composition that the jvp (schedule held fixed) does not see.

    Returns:
        ``(derivative, smoothed_value, s)``: ``{metric: dM_s/dc}``, ``{metric: M_s(c)}``
        and the width used.
    """
    require(knob in DISCRETE_KNOBS or knob in CONTINUOUS_KNOBS, f"unknown knob {knob!r}")
    require(num_nodes >= 2 and num_nodes % 2 == 0, f"num_nodes={num_nodes} must be even and >= 2")
    s = smoothing_width(knob, point[knob], width)
    z, w = np.polynomial.hermite_e.hermegauss(num_nodes)
    w = w / w.sum()
    pts = []
    for zi in z:
        p = dict(point)
        p[knob] = point[knob] + s * zi
        pts.append(p)
    res = evaluate_many(case, pts)
    deriv, smooth = {}, {}
    for k in METRICS:
        v = np.array([r[k] for r in res])
        deriv[k] = float(np.sum(w * z * v) / s)
        smooth[k] = float(np.sum(w * v))
    return deriv, smooth, s


def sensitivities(
    case: Case,
    knobs: Sequence[str] = DEFAULT_KNOBS,
    at: Mapping[str, float] | None = None,
    mode: str = "forward",
    smoothing: Mapping[str, float] | None = None,
    num_nodes: int = 4,
    block: int = 64,
    smooth_continuous: bool = False,
) -> Sensitivity:
    """d(metric)/d(knob) for every metric of :data:`METRICS` and each of ``knobs``.

    Args:
        case: the deployment and workload.
        knobs: names from :data:`CONTINUOUS_KNOBS` (exact derivatives with the schedule
            held fixed) and :data:`DISCRETE_KNOBS` (Gaussian-smoothing relaxation).
        at: knob values to differentiate at (missing = the case's own).
        mode: ``"forward"`` (``jacfwd``: one jvp per continuous knob, through the
            ``while_loop``) or ``"reverse"`` (``jacrev`` through the checkpointed
            :func:`simulate_scan`: one vjp per metric, pays off with many knobs).
        smoothing: ``{knob: width s}`` for integer knobs (default
            :func:`smoothing_width`).
        num_nodes: Gauss-Hermite nodes of the relaxation (even).
        block: steps per checkpointed block in reverse mode.
        smooth_continuous: also compute the schedule-aware smoothed slope of every
            continuous knob (``num_nodes`` extra simulations per knob).

    Returns:
        A :class:`Sensitivity`.
    """
    require(mode in ("forward", "reverse"), f"mode={mode!r}; allowed: forward, reverse")
    unknown = [k for k in knobs if k not in CONTINUOUS_KNOBS and k not in DISCRETE_KNOBS]
    require(
        not unknown,
        f"unknown knobs {unknown}; allowed: {', '.join((*CONTINUOUS_KNOBS, *DISCRETE_KNOBS))}",
    )
    point = case.base_knobs() | dict(at or {})
    for k in DISCRETE_KNOBS:
        point[k] = float(round(point[k]))
    cont = [k for k in knobs if k in CONTINUOUS_KNOBS]
    fixed = {k: v for k, v in _knob_dict(point).items() if k not in cont}
    diff = {k: jnp.float64(point[k]) for k in cont}
    params = _discrete_params(case, [(point["chunk_size"], point["batch_cap"])])
    args = _args(case, jax.tree.map(lambda x: x[0], params))
    method = {}
    if mode == "forward":
        jac, (vals, aux) = _jac_fwd(
            case.static, case.num_valid, case.num_gpus, None, block, *args, diff, fixed
        )
        _check(aux, "forward sensitivities")
        method.update({k: "jvp" for k in cont})
    else:
        vals, aux = _values(
            case.static, case.num_valid, case.num_gpus, None, block, *args, fixed | diff
        )
        _check(aux, "reverse sensitivities")
        steps = int(np.asarray(aux["steps"]))
        steps = block * (-(-steps // block))  # a multiple of the block: fewer recompiles
        jac, (vals, aux) = _jac_rev(
            case.static, case.num_valid, case.num_gpus, steps, block, *args, diff, fixed
        )
        _check(aux, "reverse sensitivities")
        method.update({k: "vjp" for k in cont})
    values = _to_float(vals)
    deriv = {m: {k: float(np.asarray(jac[m][k])) for k in cont} for m in METRICS}
    smoothed: dict[str, dict[str, float]] = {m: {} for m in METRICS}
    widths = {}
    for k in knobs:
        if k in DISCRETE_KNOBS or (smooth_continuous and point[k] != 0):
            d, _, w = smoothed_derivatives(case, k, point, (smoothing or {}).get(k), num_nodes)
            widths[k] = w
            for m in METRICS:
                smoothed[m][k] = d[m]
                if k in DISCRETE_KNOBS:
                    deriv[m][k] = d[m]
            if k in DISCRETE_KNOBS:
                method[k] = f"smoothed(s={w:g})"
    deriv = {m: {k: deriv[m][k] for k in knobs} for m in METRICS}
    return Sensitivity({k: float(point[k]) for k in knobs}, values, deriv, method, smoothed, widths)


def finite_difference(
    case: Case,
    knob: str,
    at: Mapping[str, float] | None = None,
    rel_step: float = 1e-5,
    step: float | None = None,
) -> dict[str, float]:
    """Central finite difference of every metric in ``knob`` (same simulator).

    Args:
        case: the case.
        knob: any knob; integer knobs are rounded, so use steps >= 1 for them.
        at: the point (missing = the case's own).
        rel_step: step as a fraction of the knob's value (used when ``step`` is None;
            absolute ``rel_step`` when the value is 0).
        step: absolute step.

    Returns:
        ``{metric: (M(x + h) - M(x - h)) / 2h}``.
    """
    point = case.base_knobs() | dict(at or {})
    x = point[knob]
    h = step if step is not None else rel_step * (abs(x) if x != 0 else 1.0)
    lo, hi = dict(point), dict(point)
    lo[knob], hi[knob] = x - h, x + h
    if knob in DISCRETE_KNOBS:
        h = (round(x + h) - round(x - h)) / 2.0
    m_lo, m_hi = evaluate_many(case, [lo, hi])
    return {k: (m_hi[k] - m_lo[k]) / (2.0 * h) for k in METRICS}
