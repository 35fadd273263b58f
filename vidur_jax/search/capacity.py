"""Capacity search for many deployments at once: the highest QPS meeting a queueing SLO.

Vidur-Search binary-searches, per config and one simulation process per probe, the
highest arrival rate whose scheduling delay P99 stays <= 5 s. Here every config is
searched in lock-step rounds; each round is one batch of probes (config, QPS) run through
the vmapped simulator in fixed-shape chunks (one compile per replica scheduler), and each
config's bracket ``[lo, hi]`` (highest passing / lowest failing QPS) shrinks K-ary:

* round 0 probes every config at a saturating rate (``qps_max_per_replica``); its
  throughput ``T`` centres the next round's K geometric probes on ``[T/2, 2T]``;
* later rounds put up to K probes geometrically inside ``(lo, hi)`` — as many as are
  needed to end with ``hi / lo <= 1 + granularity`` (Vidur: 2.5%), no more;
* a config with no passing probe halves downwards, and stops at ``qps_min``.

Workloads use common random numbers: request lengths are drawn once, arrival times come
from one unit-rate Poisson draw (Vidur's capped gaps) divided by the probed QPS, so all
probes of all configs see the same requests, only compressed in time, and capacities are
comparable across configs and (up to queueing noise) monotone in QPS.

``mode="replica"`` (the default for round-robin routing) simulates one representative
replica: with round robin, replica 0 of an N-replica cluster receives exactly requests
0, N, 2N, ... of the cluster's arrival stream and never interacts with the others, so
its queue is simulated exactly by feeding it that sub-stream (``arrivals[::N]``) at the
cluster's rate; the cluster's capacity is the QPS at which each replica's sub-stream
meets the SLO. This costs N times less than simulating the cluster with the same number
of requests per replica. ``mode="cluster"`` simulates all N replicas (needed for the
``lor`` and ``random`` routers), ``num_requests`` per replica.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from vidur_jax import workload as wl_mod
from vidur_jax.errors import ConfigError, require
from vidur_jax.sim import build
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import ConfigOutput, _config_output, default_predictor_for, devices_for, simulate_stacked
from vidur_jax.sim.types import ERR_SLOTS, ERR_TOKENS, ERR_WINDOW, ERROR_NAMES
from vidur_jax.workload.types import Workload

_GROW = ERR_SLOTS | ERR_WINDOW | ERR_TOKENS


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Knobs of the capacity search.

    Attributes:
        num_requests: requests simulated per replica and probe.
        quantile: scheduling-delay quantile of the criterion (Vidur: 0.99).
        max_delay_s: bound on that quantile, seconds (Vidur: 5).
        granularity: stop when ``hi / lo - 1 <= granularity`` (Vidur: 2.5%).
        branching: K, probes per config per round (2 = bisection-like; larger K means
            fewer rounds and wider vectorized calls).
        max_rounds: round limit (a config still open is reported ``unresolved``).
        qps_min: lowest cluster QPS probed; failing there = capacity 0.
        qps_max_per_replica: saturating probe rate per replica; passing there = capacity
            reported as that rate (``capped``).
        width: configs per compiled call (fixed, so every round reuses one compile);
            chunks are padded with no-op lanes.
        mode: ``replica`` | ``cluster`` | ``auto`` (replica for round robin).
        seed: PRNG seed of lengths and arrivals.
        ttft_p90_max_s: if set, a probe also needs TTFT P90 <= this to pass (capacity
            under the user SLO instead of Vidur's scheduling-delay criterion alone).
        tbt_p99_max_s: likewise for TBT P99.
    """

    num_requests: int = 400
    quantile: float = 0.99
    max_delay_s: float = 5.0
    granularity: float = 0.025
    branching: int = 4
    max_rounds: int = 16
    qps_min: float = 0.01
    qps_max_per_replica: float = 256.0
    width: int = 32
    mode: str = "auto"
    seed: int = 42
    ttft_p90_max_s: float | None = None
    tbt_p99_max_s: float | None = None

    def check(self) -> SearchSettings:
        """Validate (one line per bad value)."""
        require(self.num_requests >= 2, f"search.num_requests={self.num_requests} must be >= 2")
        require(
            0 < self.quantile <= 1, f"search.sched_delay_quantile={self.quantile} must be in (0, 1]"
        )
        require(self.max_delay_s > 0, f"search.sched_delay_max_s={self.max_delay_s} must be > 0")
        require(
            0 < self.granularity < 1, f"search.granularity={self.granularity} must be in (0, 1)"
        )
        require(self.branching >= 1, f"search.branching={self.branching} must be >= 1")
        require(self.max_rounds >= 2, f"search.max_rounds={self.max_rounds} must be >= 2")
        require(self.qps_min > 0, f"search.qps_min={self.qps_min} must be > 0")
        require(
            self.qps_max_per_replica > self.qps_min,
            f"search.qps_max_per_replica={self.qps_max_per_replica} must be > qps_min",
        )
        require(self.width >= 1, f"search.width={self.width} must be >= 1")
        require(
            self.mode in ("auto", "replica", "cluster"),
            f"search.mode={self.mode!r}; allowed: auto, replica, cluster",
        )
        return self


@dataclasses.dataclass
class Probe:
    """One simulated (config, QPS) point.

    Attributes:
        config_index: index into the searched configs.
        qps: cluster arrival rate, requests/s.
        delay_s: the criterion's scheduling-delay quantile, seconds (inf on error).
        passed: ``delay_s <= max_delay_s``.
        summary: the simulator's summary metrics (seconds), empty on error.
        steps: simulator steps the probe took.
        error: simulator error ("" if none).
    """

    config_index: int
    qps: float
    delay_s: float = math.nan
    passed: bool = False
    summary: dict = dataclasses.field(default_factory=dict)
    steps: float = 0.0
    error: str = ""


@dataclasses.dataclass
class CapacityResult:
    """Outcome of the search for one config.

    Attributes:
        capacity_qps: highest passing cluster QPS found (0 = none).
        upper_qps: lowest failing QPS (inf = none); the true capacity lies in between.
        status: ``ok`` | ``capped`` (passes at the saturating rate) | ``below_min``
            (fails at ``qps_min``) | ``unresolved`` (round limit) | ``error: ...``.
        num_probes: simulations spent on this config.
        at_capacity: summary metrics of the probe at ``capacity_qps`` (empty if none).
        probes: every probe, in order.
    """

    capacity_qps: float
    upper_qps: float
    status: str
    num_probes: int
    at_capacity: dict
    probes: list[Probe]


@dataclasses.dataclass
class SearchStats:
    """Cost of a search: rounds, probes, compiled calls, wall time."""

    rounds: int = 0
    probes: int = 0
    calls: int = 0
    lanes: int = 0
    wall_s: float = 0.0
    sim_wall_s: float = 0.0


def resolve_mode(mode: str, cfgs: Sequence[DeploymentConfig]) -> str:
    """``auto`` -> ``replica`` when every config routes round robin, else ``cluster``."""
    if mode != "auto":
        require(
            mode == "cluster" or all(c.global_scheduler == "round_robin" for c in cfgs),
            "search.mode=replica needs global_scheduler=round_robin (replicas must not interact)",
        )
        return mode
    return "replica" if all(c.global_scheduler == "round_robin" for c in cfgs) else "cluster"


@dataclasses.dataclass(frozen=True)
class ProbeWorkloads:
    """Common random numbers of every probe: lengths and unit-rate arrivals.

    Attributes:
        num_prefill: (M,) prompt tokens, M = num_requests * max replicas.
        num_decode: (M,) output tokens.
        unit_arrivals: (M,) arrival times of a rate-1 Poisson stream, seconds.
        num_requests: requests per replica.
        mode: ``replica`` or ``cluster``.
    """

    num_prefill: np.ndarray
    num_decode: np.ndarray
    unit_arrivals: np.ndarray
    num_requests: int
    mode: str

    def for_config(self, cfg: DeploymentConfig, qps: float) -> Workload:
        """The requests a probe of ``cfg`` at cluster rate ``qps`` simulates."""
        n, r = cfg.num_replicas, self.num_requests
        if self.mode == "replica":
            # replica 0's round-robin share: every n-th arrival of the cluster stream,
            # the same request lengths for every config
            t = self.unit_arrivals[: n * r : n]
            return wl_mod.make_workload(t / qps, self.num_prefill[:r], self.num_decode[:r])
        m = n * r
        return wl_mod.make_workload(
            self.unit_arrivals[:m] / qps, self.num_prefill[:m], self.num_decode[:m]
        )


def make_probe_workloads(
    lengths: Callable[[jax.Array, int], tuple[np.ndarray, np.ndarray]],
    num_requests: int,
    max_replicas: int,
    mode: str,
    seed: int,
) -> ProbeWorkloads:
    """Draw the lengths once and one unit-rate Poisson stream (Vidur's 3/qps gap cap).

    Args:
        lengths: ``(key, n) -> (prefill, decode)`` token counts.
        num_requests: requests per replica.
        max_replicas: most replicas of any config.
        mode: ``replica`` or ``cluster``.
        seed: PRNG seed.
    """
    k_len, k_arr = jax.random.split(jax.random.PRNGKey(seed))
    m = num_requests * max_replicas
    n_len = num_requests if mode == "replica" else m
    p, d = lengths(k_len, n_len)
    u = wl_mod.arrivals.poisson(k_arr, m, 1.0)
    return ProbeWorkloads(np.asarray(p), np.asarray(d), np.asarray(u), num_requests, mode)


def passes(delay_s: float, summary: dict, s: SearchSettings) -> bool:
    """The capacity criterion: delay quantile within bound (and the SLO, if set)."""
    ok = delay_s <= s.max_delay_s
    if s.ttft_p90_max_s is not None:
        ok = ok and summary.get("ttft_p90", math.inf) <= s.ttft_p90_max_s
    if s.tbt_p99_max_s is not None:
        ok = ok and summary.get("tbt_p99", math.inf) <= s.tbt_p99_max_s
    return bool(ok)


def sched_delay_quantile(out: ConfigOutput, q: float) -> float:
    """Quantile ``q`` of scheduling delay (first scheduled - arrival) over requests,
    numpy's linear method (as ``summary.csv``); inf if some request was never scheduled."""
    r = out.requests
    valid = np.isfinite(r["arrived_at"])
    delay = (r["scheduled_at"] - r["arrived_at"])[valid]
    if delay.size == 0 or not np.all(np.isfinite(delay)):
        return math.inf
    return float(np.quantile(delay, q))


@dataclasses.dataclass
class _Level:
    """One compiled shape of one policy: static, tables and each config's table row."""

    static: object
    tables: object
    table_index: dict[int, int]


class ProbeRunner:
    """Runs batches of probes ``(config index, cluster QPS)`` through the simulator.

    Configs are grouped by replica scheduler (the policy is static); within a group all
    calls share one :class:`~vidur_jax.sim.types.SimStatic` and one set of timing
    tables covering every config, and have exactly ``width`` lanes (padding lanes have
    no requests and finish at once), so a whole search compiles once per scheduler. A
    probe that overflows a capacity is re-run with that capacity doubled (a second
    shape, kept for later overflows).
    """

    def __init__(
        self,
        cfgs: Sequence[DeploymentConfig],
        workloads: ProbeWorkloads,
        settings: SearchSettings,
        predictor_for: Callable | None = None,
        profiles_dir: str | None = None,
    ):
        self.settings = settings
        self.workloads = workloads
        self.predictor_for = predictor_for or default_predictor_for(profiles_dir)
        sim = (
            [dataclasses.replace(c, num_replicas=1) for c in cfgs]
            if workloads.mode == "replica"
            else list(cfgs)
        )
        self.cfgs = list(cfgs)
        self.sim_cfgs = sim
        self.derived = [build.derive(c) for c in sim]
        self.num_requests = max(workloads.for_config(c, 1.0).num_requests for c in cfgs)
        self.groups: dict[str, list[int]] = {}
        for i, c in enumerate(sim):
            self.groups.setdefault(c.replica_scheduler, []).append(i)
        self.levels: dict[str, list[_Level]] = {}
        self.stats = SearchStats()

    def _level(self, policy: str, k: int) -> _Level:
        levels = self.levels.setdefault(policy, [])
        while len(levels) <= k:
            idx = self.groups[policy]
            cfgs = [self.sim_cfgs[i] for i in idx]
            ders = [self.derived[i] for i in idx]
            grow = 2 ** len(levels)
            slots = max(build.slot_bound(c, d) for c, d in zip(cfgs, ders, strict=True))
            static = build.make_static(cfgs, ders, self.num_requests, num_slots=slots * grow)
            static = dataclasses.replace(static, window=min(32 * grow, static.num_slots))
            spec = build.table_spec_for(cfgs, static.num_slots)
            for _ in range(len(levels)):
                spec = spec.grown()
            tables, rows = build.build_tables(cfgs, spec, self.predictor_for)
            levels.append(_Level(static, tables, dict(zip(idx, rows, strict=True))))
        return levels[k]

    def run(
        self, probes: Sequence[Probe], order_key: Callable[[Probe], float] | None = None
    ) -> None:
        """Simulate ``probes`` in place (fills ``delay_s, passed, summary, steps, error``).

        Args:
            probes: probes to run.
            order_key: probes with close keys share a call (a call lasts as long as its
                slowest lane, so group probes of similar length); default: PP depth.
        """
        t0 = time.perf_counter()
        key = order_key or (lambda p: 0.0)
        for policy, idx in self.groups.items():
            members = set(idx)
            todo = [p for p in probes if p.config_index in members]
            todo.sort(key=lambda p: (self.sim_cfgs[p.config_index].num_pipeline_stages, key(p)))
            level = 0
            while todo:
                todo = self._run_level(policy, level, todo)
                level += 1
                if level > 4 and todo:
                    raise ConfigError("search: simulator capacity kept overflowing; please report")
        self.stats.probes += len(probes)
        self.stats.sim_wall_s += time.perf_counter() - t0

    def _run_level(self, policy: str, k: int, todo: list[Probe]) -> list[Probe]:
        lv = self._level(policy, k)
        w = self.settings.width
        overflow = []
        n_dev = devices_for(w)
        for start in range(0, len(todo), w):
            # lanes sorted by expected length are dealt round-robin to the devices (each
            # device's loop lasts as long as its slowest lane); None = padding lane
            dealt = todo[start : start + w] + [None] * max(0, start + w - len(todo))
            lanes = [dealt[i] for d in range(n_dev) for i in range(d, w, n_dev)]
            wls = [None if p is None else self.workloads.for_config(self.cfgs[p.config_index], p.qps) for p in lanes]
            params = [
                None if p is None else build.build_params(
                    self.sim_cfgs[p.config_index],
                    self.derived[p.config_index],
                    wl,
                    lv.table_index[p.config_index],
                    self.num_requests,
                )
                for p, wl in zip(lanes, wls, strict=True)
            ]
            real = next(x for x in params if x is not None)
            pad = dataclasses.replace(real, num_valid=np.int32(0))
            params = [pad if x is None else x for x in params]
            state = jax.device_get(simulate_stacked(lv.static, lv.tables, build.stack_params(params)))
            errors = np.asarray(state.error)
            steps = np.asarray(state.step)
            self.stats.calls += 1
            self.stats.lanes += w
            for j, (p, wl) in enumerate(zip(lanes, wls, strict=True)):
                if p is None:
                    continue
                if errors[j] & _GROW:
                    overflow.append(p)
                    continue
                p.steps = float(steps[j])
                if errors[j]:
                    p.error = "; ".join(m for b, m in ERROR_NAMES.items() if errors[j] & b)
                    p.delay_s, p.passed = math.inf, False
                    continue
                out = _config_output(self.sim_cfgs[p.config_index], wl, state, j)
                p.summary = out.summary
                p.delay_s = sched_delay_quantile(out, self.settings.quantile)
                p.passed = passes(p.delay_s, p.summary, self.settings)
        return overflow


def _bracket(probes: Sequence[Probe]) -> tuple[float, float, Probe | None]:
    """``(lo, hi, probe at lo)``: lowest failing QPS and highest passing QPS below it."""
    hi = min((p.qps for p in probes if not p.passed), default=math.inf)
    below = [p for p in probes if p.passed and p.qps < hi]
    best = max(below, key=lambda p: p.qps, default=None)
    return (best.qps if best else 0.0), hi, best


def _geometric(lo: float, hi: float, m: int) -> list[float]:
    """``m`` points strictly inside ``(lo, hi)``, geometrically spaced."""
    r = hi / lo
    return [lo * r ** (j / (m + 1)) for j in range(1, m + 1)]


def next_qps(
    probes: Sequence[Probe], s: SearchSettings, num_replicas: int, tput_scale: float = 1.0
) -> tuple[list[float], str]:
    """The next round's QPS values for one config, or ``([], status)`` when it is done.

    Args:
        probes: the config's probes so far (round 0 = one saturating probe).
        s: settings.
        num_replicas: replicas of the config (scales the saturating rate).
        tput_scale: simulated throughput -> cluster throughput (replicas in replica mode).
    """
    qmax = s.qps_max_per_replica * num_replicas
    if any(p.error and "stalled" in p.error for p in probes):
        return [], "error: " + next(p.error for p in probes if p.error)
    lo, hi, _ = _bracket(probes)
    k = s.branching
    if lo >= qmax:
        return [], "capped"
    if len(probes) == 1:  # only the saturating probe: centre K probes on its throughput
        tput = probes[0].summary.get("throughput_rps", math.nan)
        if probes[0].summary and math.isfinite(tput) and tput > 0:
            tput *= tput_scale
            pts = [tput * 0.5 * 4 ** (j / max(k - 1, 1)) for j in range(k)] if k > 1 else [tput]
            pts = [max(q, s.qps_min) for q in pts if q < hi * (1 - 1e-9)]
            if pts:
                return sorted(set(pts)), ""
    if lo <= 0.0:
        if hi <= s.qps_min * (1 + 1e-9):
            return [], "below_min"
        return sorted({max(hi / 2**j, s.qps_min) for j in range(1, k + 1)}), ""
    if hi / lo - 1 <= s.granularity * (1 + 1e-9):
        return [], "ok"
    need = math.ceil(math.log(hi / lo) / math.log1p(s.granularity) - 1e-9) - 1
    return _geometric(lo, hi, max(1, min(k, need))), ""


def _expected_steps(last: Sequence[tuple[float, float]], p: Probe) -> float:
    steps, qps = last[p.config_index]
    return steps * qps / max(p.qps, 1e-12)


def search_capacity(
    runner: ProbeRunner,
    num_replicas: Sequence[int],
    log: Callable[[str], None] | None = None,
) -> tuple[list[CapacityResult], SearchStats]:
    """Find every config's capacity; every round is one batched run of all open probes.

    Args:
        runner: the probe runner over the configs.
        num_replicas: replicas of each config (scales the saturating probe).
        log: optional progress callback (one line per round).

    Returns:
        ``(results, stats)``, one :class:`CapacityResult` per config.
    """
    s = runner.settings
    t0 = time.perf_counter()
    n = len(num_replicas)
    probes: list[list[Probe]] = [[] for _ in range(n)]
    status = [""] * n
    pending = [Probe(i, s.qps_max_per_replica * num_replicas[i]) for i in range(n)]
    rounds = 0
    while pending and rounds < s.max_rounds:
        # a call lasts as long as its slowest lane: group probes by expected length
        # (steps of the config's last probe, more steps at lower load)
        last = [(ps[-1].steps, ps[-1].qps) if ps else (0.0, 1.0) for ps in probes]
        runner.run(pending, order_key=functools.partial(_expected_steps, last))
        rounds += 1
        for p in pending:
            probes[p.config_index].append(p)
        pending = []
        for i in range(n):
            if status[i]:
                continue
            scale = num_replicas[i] if runner.workloads.mode == "replica" else 1.0
            qs, st = next_qps(probes[i], s, num_replicas[i], scale)
            if st:
                status[i] = st
            pending += [Probe(i, q) for q in qs]
        if log is not None:
            done = sum(1 for x in status if x)
            log(
                f"round {rounds}: {sum(len(p) for p in probes)} probes so far, {done}/{n} configs done, "
                f"{len(pending)} probes next"
            )
    results = []
    for i in range(n):
        lo, hi, best = _bracket(probes[i])
        st = status[i] or "unresolved"
        if st == "capped":
            best = max((p for p in probes[i] if p.passed), key=lambda p: p.qps)
            lo = best.qps
        results.append(
            CapacityResult(
                lo, hi, st, len(probes[i]), dict(best.summary) if best else {}, probes[i]
            )
        )
    # a snapshot: later runs on the same runner (e.g. a brute-force check) keep counting
    stats = dataclasses.replace(runner.stats, rounds=rounds, wall_s=time.perf_counter() - t0)
    return results, stats


def brute_force_capacity(runner: ProbeRunner, index: int, qps_values: Sequence[float]) -> float:
    """Reference for tests: scan ``qps_values`` upwards and return the last passing QPS
    before the first failing one (0 if the first fails)."""
    probes = [Probe(index, float(q)) for q in sorted(qps_values)]
    runner.run(probes)
    best = 0.0
    for p in probes:
        if not p.passed:
            break
        best = p.qps
    return best
