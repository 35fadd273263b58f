"""Capacity search for many deployments at once: the highest QPS meeting a criterion.

A config's *capacity* is the highest arrival rate (QPS) at which a probe passes:

* ``criterion="slo"`` (default): TTFT P90 and TBT P99 within the user SLO;
* ``criterion="vidur"``: Vidur-Search's scheduling-delay P99 <= 5 s.

Every config is searched in lock-step rounds; each round is one batch of probes
(config, QPS) run through the vectorized simulator on a pool of lanes (one compile per
replica scheduler), and each config's bracket ``[lo, hi]`` (highest passing / lowest
failing QPS) shrinks K-ary until ``hi / lo <= 1 + granularity`` (Vidur: 2.5%):

* round 0 puts K probes geometrically on ``[E/1.44, 1.44 E]`` around an analytic
  estimate ``E`` (:func:`estimate_capacity`: completion rate of a saturated replica),
  one at ``E`` when K = 1 (K shrinks to 1 when the open configs alone fill the pool);
* a config with no failing probe steps upwards by 1.2, 1.44, then 2 (``capped`` at
  ``qps_max_per_replica``), one with no passing probe downwards alike (``below_min`` at
  ``qps_min``);
* later rounds put up to K probes geometrically inside ``(lo, hi)``; with K = 1, once
  two probes passed, one where the line through their latency/bound ratios reaches 1
  (:func:`secant_target`, safeguarded inside the bracket).

A probe stops as soon as its verdict is certain (:mod:`vidur_jax.search.probe_loop` on
the single runner: checked inside the event loop every 16 steps; the lane pool checks
between step budgets): a failure once enough requests have a latency lower bound over
the limit (a request not yet scheduled has waited at least ``clock - arrival``) that
the criterion's quantile is over it whatever happens next; with Vidur's criterion also
once every request is scheduled (each scheduling delay is then final). The verdict is
exactly the full run's (the host recomputes it); a passing probe stopped early is run to
its end only if it ends as its config's capacity (its summary is reported).

Never a silent wrong answer: a config whose capacity is not bracketed by this request
count (``capped``: passes at the saturating rate; ``filling``: at its capacity the
arrivals span less than the criterion's bound, so the run ends before a queue could
show) is re-searched with twice the requests, up to ``max_requests``; what remains
unmeasured (and ``unresolved`` / ``error`` configs) is flagged, never chosen as best.

Workloads use common random numbers: request lengths are drawn once, arrival times come
from one unit-rate Poisson draw (Vidur's capped gaps) divided by the probed QPS, so all
probes of all configs see the same requests, only compressed in time, and capacities are
comparable across configs and (up to queueing noise) monotone in QPS, as long as the
arrivals span well over the criterion's bound: a capacity whose arrivals span less than
``span_factor`` (2) x the bound is re-searched with twice the requests (with fewer, the
delay quantile flattens out near the bound and verdicts flip with QPS).

``mode="replica"`` (the default for round-robin routing) simulates one representative
replica: with round robin, replica 0 of an N-replica cluster receives exactly requests
0, N, 2N, ... of the cluster's arrival stream and never interacts with the others, so
its queue is simulated exactly by feeding it that sub-stream (``arrivals[::N]``) at the
cluster's rate. ``mode="cluster"`` simulates all N replicas (needed for the ``lor`` and
``random`` routers), ``num_requests`` per replica.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
import time
import types
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vidur_jax import workload as wl_mod
from vidur_jax.errors import ConfigError, require
from vidur_jax.search import probe_loop
from vidur_jax.sim import build, executables, policies, timing
from vidur_jax.sim import run as run_mod
from vidur_jax.sim.build import DeploymentConfig
from vidur_jax.sim.run import _config_output, default_predictor_for
from vidur_jax.sim.types import ERR_SLOTS, ERR_STEPS, ERR_TOKENS, ERR_WINDOW, ERROR_NAMES
from vidur_jax.workload.types import Workload

_GROW = ERR_SLOTS | ERR_WINDOW | ERR_TOKENS

#: Statuses of a measured capacity (the others are flagged and never chosen as best).
MEASURED = ("ok", "below_min")


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Knobs of the capacity search.

    Attributes:
        num_requests: requests simulated per replica and probe (first pass).
        criterion: ``slo`` (TTFT P90 and TBT P99 bounds) or ``vidur`` (sched-delay
            quantile bound).
        quantile: scheduling-delay quantile of the ``vidur`` criterion (Vidur: 0.99).
        max_delay_s: bound on that quantile, seconds (Vidur: 5).
        ttft_p90_max_s: TTFT P90 bound of the ``slo`` criterion, seconds.
        tbt_p99_max_s: TBT P99 bound of the ``slo`` criterion, seconds.
        granularity: stop when ``hi / lo - 1 <= granularity`` (Vidur: 2.5%).
        branching: K, most probes per config per round (fewer when the open configs
            alone fill the pool: K = lanes // open configs, at least 1).
        max_rounds: round limit (a config still open is reported ``unresolved``).
        qps_min: lowest cluster QPS probed; failing there = capacity 0 (``below_min``).
        qps_max_per_replica: highest rate probed per replica; passing there = ``capped``.
        max_requests: most requests per replica an unmeasured config is re-searched with
            (doubling from ``num_requests``).
        span_factor: at its capacity a probe's arrivals must span at least this many
            times the criterion's bound (else ``filling``: re-searched with twice the
            requests; with ``request_ladder``, the request count of every probe).
        early_stop: stop a probe once its failure is certain.
        request_ladder: choose each probe's request count from its QPS
            (:meth:`ProbeRunner.workloads_for`) instead of per config and pass: one
            pass, but a capacity can settle at the QPS where the count doubles (on
            Vidur's grid 54 configs did), so off by default.
        secant: with Vidur's criterion and one probe per config per round, place it
            where the line through the two highest passing probes' delay / bound ratios
            crosses 1 (:func:`secant_target`) instead of the bracket's geometric middle.
        width: lanes of the probe pool (fixed per compile), sharded over local devices.
        runner: ``lanes`` (the vmapped probe pool), ``single`` (each probe on the
            unbatched, scatter-free event loop, one probe per local device at a time) or
            ``auto`` (``single`` on CPU, where one config's loop compiles to one kernel
            and a probe runs faster than as a lane of the pool; ``lanes`` on
            accelerators).
        mode: ``replica`` | ``cluster`` | ``auto`` (replica for round robin).
        seed: PRNG seed of lengths and arrivals.
    """

    num_requests: int = 300
    criterion: str = "slo"
    quantile: float = 0.99
    max_delay_s: float = 5.0
    ttft_p90_max_s: float = 2.0
    tbt_p99_max_s: float = 0.2
    granularity: float = 0.025
    branching: int = 4
    max_rounds: int = 24
    qps_min: float = 0.01
    qps_max_per_replica: float = 256.0
    max_requests: int = 3200
    span_factor: float = 2.0
    early_stop: bool = True
    secant: bool = True
    request_ladder: bool = False
    width: int = 32
    runner: str = "auto"
    mode: str = "auto"
    seed: int = 42

    def check(self) -> SearchSettings:
        """Validate (one line per bad value)."""
        require(self.num_requests >= 2, f"search.num_requests={self.num_requests} must be >= 2")
        require(
            self.criterion in ("slo", "vidur"),
            f"search.criterion={self.criterion!r}; allowed: slo, vidur",
        )
        require(
            0 < self.quantile <= 1, f"search.sched_delay_quantile={self.quantile} must be in (0, 1]"
        )
        require(self.max_delay_s > 0, f"search.sched_delay_max_s={self.max_delay_s} must be > 0")
        require(
            self.ttft_p90_max_s > 0 and self.tbt_p99_max_s > 0,
            f"search.slo bounds must be > 0 (ttft_p90_s={self.ttft_p90_max_s}, "
            f"tbt_p99_s={self.tbt_p99_max_s})",
        )
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
        require(
            self.max_requests >= self.num_requests,
            f"search.max_requests={self.max_requests} must be >= num_requests "
            f"({self.num_requests})",
        )
        require(self.span_factor >= 0, f"search.span_factor={self.span_factor} must be >= 0")
        require(self.width >= 1, f"search.width={self.width} must be >= 1")
        require(
            self.runner in ("auto", "lanes", "single"),
            f"search.runner={self.runner!r}; allowed: auto, lanes, single",
        )
        require(
            self.mode in ("auto", "replica", "cluster"),
            f"search.mode={self.mode!r}; allowed: auto, replica, cluster",
        )
        return self

    @property
    def bound_s(self) -> float:
        """The criterion's latency bound, seconds (sched delay, or TTFT for ``slo``)."""
        return self.max_delay_s if self.criterion == "vidur" else self.ttft_p90_max_s

    @property
    def min_requests(self) -> int:
        """Fewest requests whose criterion quantile has at least one request beyond it
        (P99: 100, P90: 10)."""
        q = self.quantile if self.criterion == "vidur" else 0.9
        return max(2, math.ceil(1.0 / (1.0 - q) - 1e-9)) if q < 1 else 2


@dataclasses.dataclass
class Probe:
    """One simulated (config, QPS) point.

    Attributes:
        config_index: index into the searched configs.
        qps: cluster arrival rate, requests/s.
        delay_s: scheduling-delay quantile, seconds (a lower bound if stopped early;
            inf on error).
        passed: the criterion holds.
        summary: the simulator's summary metrics (seconds); empty on error or early stop.
        steps: simulator steps the probe took.
        error: simulator error ("" if none).
        stopped_early: its verdict was certain before its run ended (a failure, or with
            Vidur's criterion every request scheduled) and the run was not finished;
            ``summary`` is then empty.
        span_s: arrival span of the simulated requests, seconds.
        resume: ``(level, group, lane, params, state)`` of a passing probe stopped early
            (single runner), so it can be finished if its summary is needed.
        num_requests: requests per replica it simulated (:meth:`ProbeRunner.requests_for`).
    """

    config_index: int
    qps: float
    delay_s: float = math.nan
    passed: bool = False
    summary: dict = dataclasses.field(default_factory=dict)
    steps: float = 0.0
    error: str = ""
    stopped_early: bool = False
    span_s: float = math.nan
    resume: object = dataclasses.field(default=None, repr=False, compare=False)
    num_requests: int = 0


@dataclasses.dataclass
class CapacityResult:
    """Outcome of the search for one config.

    Attributes:
        capacity_qps: highest passing cluster QPS found (0 = none).
        upper_qps: lowest failing QPS (inf = none); the true capacity lies in between.
        status: ``ok`` | ``below_min`` (fails at ``qps_min``: capacity 0) | ``capped``
            (passes at the highest rate probed) | ``filling`` (too few requests to show
            a queue at capacity) | ``unresolved`` (round limit) | ``error: ...``.
        num_probes: simulations spent on this config (all passes).
        at_capacity: summary metrics of the probe at ``capacity_qps`` (empty if none).
        probes: every probe of the last pass, in order.
        num_requests: requests per replica of the probe at capacity (else of the last
            pass's first probes).
        estimate_qps: the analytic estimate the search started from.
    """

    capacity_qps: float
    upper_qps: float
    status: str
    num_probes: int
    at_capacity: dict
    probes: list[Probe]
    num_requests: int = 0
    estimate_qps: float = math.nan

    @property
    def measured(self) -> bool:
        """True when the capacity is bracketed (``ok``) or known to be 0."""
        return self.status in MEASURED


@dataclasses.dataclass
class SearchStats:
    """Cost of a search: rounds, probes, compiled calls, simulated steps, wall time.

    ``steps``: simulator steps of every finished probe; ``advance_s``: seconds spent in
    the compiled event loop's calls (compile of a call's first use included), summed
    over the threads that drive devices; ``probes_stopped_early``: probes whose verdict
    was certain before their end (not counting ``probes_finished_later``: passing
    probes stopped early, then run to their end as their config's capacity).
    """

    rounds: int = 0
    probes: int = 0
    probes_stopped_early: int = 0
    calls: int = 0
    lanes: int = 0
    requests_simulated: int = 0
    steps: int = 0
    passes: int = 0
    wall_s: float = 0.0
    sim_wall_s: float = 0.0
    advance_s: float = 0.0
    probes_finished_later: int = 0


def resolve_mode(mode: str, cfgs: Sequence[DeploymentConfig]) -> str:
    """``auto`` -> ``replica`` when every config routes round robin and none is split
    into prefill/decode pools (their replicas interact), else ``cluster``."""
    independent = all(c.global_scheduler == "round_robin" and c.prefill_replicas == 0 for c in cfgs)
    if mode != "auto":
        require(
            mode == "cluster" or independent,
            "search.mode=replica needs global_scheduler=round_robin and no prefill/decode pools "
            "(replicas must not interact)",
        )
        return mode
    return "replica" if independent else "cluster"


def slot_bucket(slots: int) -> int:
    """The slot count a config holding at most ``slots`` requests is compiled with on
    the single runner: the next power of two, at least 8."""
    return max(8, 1 << max(0, math.ceil(math.log2(max(1, slots)))))


def single_workers() -> int:
    """Threads running probes on the ``single`` runner: on the CPU backend one per core
    this process may use, elsewhere one."""
    if jax.default_backend() != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


@functools.cache
def _compiler():
    """Threads compiling the single runner's executables (one per core)."""
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(single_workers(), "search-compile")


def resolve_runner(runner: str) -> str:
    """``auto`` -> ``single`` on the CPU backend, ``lanes`` elsewhere."""
    if runner != "auto":
        return runner
    return "single" if jax.default_backend() == "cpu" else "lanes"


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

    def span_s(self, cfg: DeploymentConfig, qps: float) -> float:
        """Seconds between the first and last arrival of :meth:`for_config`'s requests."""
        n, r = cfg.num_replicas, self.num_requests
        last = (r - 1) * n if self.mode == "replica" else n * r - 1
        return float(self.unit_arrivals[last] - self.unit_arrivals[0]) / qps

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
    """The capacity criterion of ``s`` on a finished probe."""
    if s.criterion == "vidur":
        return bool(delay_s <= s.max_delay_s)
    return bool(
        summary.get("ttft_p90", math.inf) <= s.ttft_p90_max_s
        and summary.get("tbt_p99", math.inf) <= s.tbt_p99_max_s
    )


def sched_delay_quantile(out, q: float) -> float:
    """Quantile ``q`` of scheduling delay (first scheduled - arrival) over requests,
    numpy's linear method (as ``summary.csv``); inf if some request was never scheduled."""
    r = out.requests
    valid = np.isfinite(r["arrived_at"])
    delay = (r["scheduled_at"] - r["arrived_at"])[valid]
    if delay.size == 0 or not np.all(np.isfinite(delay)):
        return math.inf
    return float(np.quantile(delay, q))


def latency_lower_bound(arrived: np.ndarray, event_at: np.ndarray, clock: float) -> np.ndarray:
    """(R,) lower bounds of each request's ``event_at - arrived`` at simulated time
    ``clock``: exact once the event happened, else the wait so far (0 if not arrived).

    Args:
        arrived: (R,) arrival times, seconds (valid requests only).
        event_at: (R,) time of the event (first scheduling / first token), NaN or inf
            if it has not happened yet.
        clock: the simulation's current time, seconds.
    """
    happened = np.isfinite(event_at)
    return np.where(happened, event_at - arrived, np.maximum(clock - arrived, 0.0))


def certain_failure(
    arrived: np.ndarray,
    scheduled_at: np.ndarray,
    first_token_at: np.ndarray,
    clock: float,
    s: SearchSettings,
) -> float:
    """A lower bound of the criterion's latency quantile that already exceeds its limit
    (the probe will fail whatever happens next), else NaN.

    Quantiles (numpy's linear method) are monotone in every element, so the quantile of
    per-request lower bounds is a lower bound of the final quantile.

    Args:
        arrived: (R,) arrival times of the valid requests, seconds.
        scheduled_at: (R,) first scheduling times so far (NaN = not yet).
        first_token_at: (R,) first-token times so far (NaN = not yet).
        clock: the simulation's current time, seconds.
        s: settings (criterion and bounds).

    Returns:
        The violating lower bound, seconds, or NaN when the verdict is still open.
    """
    if s.criterion == "vidur":
        lb = float(np.quantile(latency_lower_bound(arrived, scheduled_at, clock), s.quantile))
        return lb if lb > s.max_delay_s else math.nan
    lb = float(np.quantile(latency_lower_bound(arrived, first_token_at, clock), 0.9))
    return lb if lb > s.ttft_p90_max_s else math.nan


@dataclasses.dataclass
class _Level:
    """One compiled shape of one policy: static, tables and each config's table row."""

    static: object
    tables: object
    table_index: dict[int, int]
    single: object = None  # Future of (tables on the device, init, advance): single runner


@dataclasses.dataclass
class _Lane:
    """A probe occupying a pool lane, with its requests, params and step budget."""

    probe: Probe
    workload: Workload
    params: object
    full_steps: int
    budget: int


#: First step budget of a probe, as a multiple of its requests (a probe takes ~1.5 steps
#: per request); each extension doubles it.
_BUDGET_PER_REQUEST = 0.5


class ProbeRunner:
    """Runs batches of probes ``(config index, cluster QPS)`` through the simulator.

    Configs are grouped by replica scheduler (the policy is static); within a group all
    calls share one :class:`~vidur_jax.sim.types.SimStatic` and one set of timing
    tables covering every config. Probes run on a pool of ``width`` lanes: a lane whose
    probe finished (or failed for certain, with ``early_stop``) takes the next probe, so
    lanes do not idle behind one long probe. A probe that overflows a capacity is re-run
    with that capacity doubled (a second shape, kept for later overflows).
    """

    def __init__(
        self,
        cfgs: Sequence[DeploymentConfig],
        workloads: ProbeWorkloads,
        settings: SearchSettings,
        predictor_for: Callable | None = None,
        profiles_dir: str | None = None,
        capacity: int = 0,
        shape_cfgs: Sequence[DeploymentConfig] | None = None,
        more_requests: Callable[[int], ProbeWorkloads] | None = None,
    ):
        """
        Args:
            cfgs: the configs searched.
            workloads: their common requests.
            settings: search settings.
            predictor_for: config -> predictor (default: shipped / ``profiles_dir``).
            profiles_dir: Vidur profiles root for the default predictors.
            capacity: request rows allocated per lane (at least the probes' requests);
                one capacity serves every later request count up to it (one compile).
            shape_cfgs: configs (a superset of ``cfgs``) whose slot counts, stages and
                timing tables each group is compiled for (default ``cfgs``): a later
                pass over a subset then reuses the first pass's executables.
            more_requests: ``n -> ProbeWorkloads`` with ``n`` requests per replica (as
                ``workloads`` draws them), for probes whose arrivals span too little
                time (:meth:`workloads_for`); None: every probe uses ``workloads``.
        """
        self.settings = settings
        self.workloads = workloads
        self._more = more_requests
        self._ladder = {workloads.num_requests: workloads}
        self.predictor_for = predictor_for or default_predictor_for(profiles_dir)
        sim = (
            [dataclasses.replace(c, num_replicas=1) for c in cfgs]
            if workloads.mode == "replica"
            else list(cfgs)
        )
        self.cfgs = list(cfgs)
        self.sim_cfgs = sim
        self.derived = [build.derive(c) for c in sim]
        shape = (
            sim
            if shape_cfgs is None
            else [
                dataclasses.replace(c, num_replicas=1) if workloads.mode == "replica" else c
                for c in shape_cfgs
            ]
        )
        self._shape_cfgs = list(shape)
        self._shape_derived = [build.derive(c) for c in shape]
        self.num_requests = max(
            capacity, max(workloads.for_config(c, 1.0).num_requests for c in cfgs)
        )
        self.single = resolve_runner(settings.runner) == "single"
        # configs of one group share a compiled shape: (policy, slot bucket); the
        # single runner buckets slot counts by powers of two (a step costs O(slots), a
        # bucket one compile), the lane pool keeps one group per policy (bucket 0)
        self.groups: dict[tuple[str, int], list[int]] = {}
        for i, c in enumerate(sim):
            self.groups.setdefault(self._group_of(c, self.derived[i]), []).append(i)
        self.levels: dict[tuple[str, int], list[_Level]] = {}
        self.stats = SearchStats()
        self._host_lock = threading.Lock()
        # one pool width per runner (a new width is a new compile): enough lanes for a
        # round of every config, at most settings.width, a multiple of the devices
        n_dev = jax.local_device_count()
        if self.single:  # one probe per worker at a time: K = 1 (bisection) once many are open
            self.width = single_workers()
        else:
            want = 1 << max(0, math.ceil(math.log2(max(1, len(cfgs) * settings.branching))))
            self.width = -(-min(settings.width, want) // n_dev) * n_dev

    def workloads_for(self, p: Probe) -> ProbeWorkloads:
        """The requests of probe ``p``: the runner's ``workloads``, doubled (twice,
        four times the requests, ...) while their arrivals at ``p.qps`` span less than
        ``span_factor`` x the criterion's bound, as long as they fit the rows allocated
        (``max_requests`` per replica) and ``more_requests`` is given.

        Why: with a fixed request count, a high rate compresses the arrivals into a few
        seconds, the queue has no time to build and the delay quantile flattens out near
        the bound, so verdicts flip back and forth with QPS (on Vidur's grid one config's
        300-request capacity was 1.76x its 600-request one). The request count being a
        function of the QPS alone, every search (and a brute-force scan) sees the same
        verdict at the same QPS.
        """
        s, cfg = self.settings, self.cfgs[p.config_index]
        pw = self.workloads
        if self._more is None:
            return pw
        want = s.span_factor * s.bound_s
        while pw.span_s(cfg, p.qps) < want:
            n = 2 * pw.num_requests
            rows = n if pw.mode == "replica" else n * cfg.num_replicas
            if n > s.max_requests or rows > self.num_requests:
                break
            if n not in self._ladder:
                self._ladder[n] = self._more(n)
            pw = self._ladder[n]
        return pw

    def _group_of(self, c: DeploymentConfig, d) -> tuple[str, int]:
        """``(policy, slot bucket)`` of a simulated config (bucket 0: the lane pool)."""
        return c.replica_scheduler, slot_bucket(build.slot_bound(c, d)) if self.single else 0

    def _level(self, group: tuple[str, int], k: int) -> _Level:
        levels = self.levels.setdefault(group, [])
        while len(levels) <= k:
            idx = self.groups[group]
            # the shape covers every config of the group in shape_cfgs (and idx's)
            pairs = [
                (c, d)
                for c, d in zip(self._shape_cfgs, self._shape_derived, strict=True)
                if self._group_of(c, d) == group
            ]
            cfgs = [c for c, _ in pairs]
            for i in idx:
                if self.sim_cfgs[i] not in cfgs:
                    pairs.append((self.sim_cfgs[i], self.derived[i]))
                    cfgs.append(self.sim_cfgs[i])
            ders = [d for _, d in pairs]
            grow = 2 ** len(levels)
            slots = group[1] or max(build.slot_bound(c, d) for c, d in pairs)
            static = build.make_static(cfgs, ders, self.num_requests, num_slots=slots * grow)
            static = dataclasses.replace(static, window=min(32 * grow, static.num_slots))
            spec = build.table_spec_for(cfgs, static.num_slots)
            for _ in range(len(levels)):
                spec = spec.grown()
            tables, rows = build.build_tables(cfgs, spec, self.predictor_for)
            index = {i: rows[cfgs.index(self.sim_cfgs[i])] for i in idx}
            levels.append(_Level(static, tables, index))
        return levels[k]

    def run(
        self, probes: Sequence[Probe], order_key: Callable[[Probe], float] | None = None
    ) -> None:
        """Simulate ``probes`` in place (fills ``delay_s, passed, summary, steps, error``).

        Args:
            probes: probes to run.
            order_key: longest first (a higher key starts earlier), so the pool drains
                on short probes; default: PP depth only.
        """
        t0 = time.perf_counter()
        key = order_key or (lambda p: 0.0)
        if self.single:  # compile every shape this batch needs, ahead of its probes
            for group, idx in self.groups.items():
                members = set(idx)
                if any(p.config_index in members for p in probes):
                    self._compile_ahead(self._level(group, 0), group)
        for policy, idx in self.groups.items():
            members = set(idx)
            todo = [p for p in probes if p.config_index in members]
            todo.sort(
                key=lambda p: (self.sim_cfgs[p.config_index].num_pipeline_stages, key(p)),
                reverse=True,
            )
            level = 0
            while todo:
                run_level = self._run_single if self.single else self._run_pool
                todo = run_level(policy, level, todo)
                level += 1
                if level > 4 and todo:
                    raise ConfigError("search: simulator capacity kept overflowing; please report")
        self.stats.probes += len(probes)
        self.stats.sim_wall_s += time.perf_counter() - t0

    def _lane(self, lv: _Level, p: Probe) -> _Lane:
        pw = self.workloads_for(p)
        p.num_requests = pw.num_requests
        wl = pw.for_config(self.cfgs[p.config_index], p.qps)
        params = build.build_params(
            self.sim_cfgs[p.config_index],
            self.derived[p.config_index],
            wl,
            lv.table_index[p.config_index],
            self.num_requests,
        )
        full = int(params.max_steps)
        budget = full
        if self.settings.early_stop:
            budget = min(full, max(64, int(_BUDGET_PER_REQUEST * wl.num_requests)))
        arr = np.asarray(wl.arrived_at)[np.asarray(wl.mask)]
        p.span_s = float(arr.max() - arr.min()) if arr.size else 0.0
        params = dataclasses.replace(params, max_steps=np.int64(budget))
        return _Lane(p, wl, params, full, budget)

    def _finish(self, lane: _Lane, host, j: int) -> None:
        p, s = lane.probe, self.settings
        err = int(np.asarray(host.error)[j])
        p.steps = float(np.asarray(host.step)[j])
        self.stats.requests_simulated += int(lane.workload.num_requests)
        self.stats.steps += int(p.steps)
        if err:
            p.error = "; ".join(m for b, m in ERROR_NAMES.items() if err & b)
            p.delay_s, p.passed = math.inf, False
            return
        out = _config_output(self.sim_cfgs[p.config_index], lane.workload, host, j)
        p.summary = out.summary
        p.delay_s = sched_delay_quantile(out, s.quantile)
        p.passed = passes(p.delay_s, p.summary, s)

    def _verdict_so_far(self, lane: _Lane, host, j: int) -> float:
        """Lower bound violating the criterion (certain failure) or NaN."""
        wl = lane.workload
        n = wl.num_requests
        mask = np.asarray(wl.mask)
        arrived = np.asarray(wl.arrived_at, np.float64)[mask]
        return certain_failure(
            arrived,
            np.asarray(host.scheduled_at)[j, :n][mask],
            np.asarray(host.first_token_at)[j, :n][mask],
            float(np.asarray(host.clock)[j]),
            self.settings,
        )

    def _settle(self, lane: _Lane, host, j: int) -> str:
        """What to do with the finished lane ``j`` of ``host``: ``"overflow"`` (re-run
        at the next capacity level), ``"extend"`` (step budget spent, verdict still
        open: ``lane`` now has twice the budget) or ``"done"`` (probe filled in)."""
        err = int(np.asarray(host.error)[j])
        if err & _GROW:
            return "overflow"
        if err == ERR_STEPS and lane.budget < lane.full_steps:
            bound = self._verdict_so_far(lane, host, j)
            if math.isnan(bound):  # verdict still open: a longer budget
                lane.budget = min(lane.full_steps, 2 * lane.budget)
                lane.params = dataclasses.replace(lane.params, max_steps=np.int64(lane.budget))
                return "extend"
            p = lane.probe
            p.steps = float(np.asarray(host.step)[j])
            p.delay_s, p.passed, p.stopped_early = bound, False, True
            self.stats.probes_stopped_early += 1
            self.stats.requests_simulated += int(lane.workload.num_requests)
            self.stats.steps += int(p.steps)
            return "done"
        self._finish(lane, host, j)
        return "done"

    def _compile_ahead(self, lv: _Level, group: tuple[str, int]) -> None:
        """Start compiling level ``lv``'s single-runner executables on a background
        thread (one per core), unless started: the compiles of later groups overlap the
        probes of earlier ones."""
        with self._host_lock:
            if lv.single is None:
                lv.single = _compiler().submit(self._compile_single, lv, group)

    def _compile_single(self, lv: _Level, group: tuple[str, int]) -> tuple:
        """``(tables, init, advance)`` of level ``lv`` on the first local device,
        compiled once (or loaded: :func:`vidur_jax.sim.executables.compiled`) and shared
        by every worker thread: XLA:CPU runs an executable on
        the calling thread, so threads calling one executable on one device run in
        parallel (a device per worker would compile each shape once per device)."""
        device = jax.local_devices()[0]
        i = self.groups[group][0]
        wl = self.workloads.for_config(self.cfgs[i], 1.0)
        one = build.build_params(
            self.sim_cfgs[i], self.derived[i], wl, lv.table_index[i], self.num_requests
        )
        one = dataclasses.replace(one, max_steps=np.int64(one.max_steps))  # as _lane's
        params = jax.device_put(build.stack_params([one]), device)
        tables = jax.device_put(lv.tables, device)
        # from the executable store (in-process table, and on disk unless
        # VIDUR_JAX_EXECUTABLE_STORE=0): a later runner or process with these shapes
        # skips trace, lower and compile
        init = executables.compiled("single_init", run_mod._single_init, lv.static, params)
        state = init(params)
        args = (tables, params, state, np.int64(0), *probe_loop.RUN_TO_END.args())
        advance = executables.compiled(
            "search_probe_advance", probe_loop.probe_advance, lv.static, *args
        )
        return tables, init, advance

    def _single_executables(self, lv: _Level, group: tuple[str, int]) -> tuple:
        """The compiled ``(tables, init, advance)`` of ``lv`` (waits for its compile)."""
        self._compile_ahead(lv, group)
        return lv.single.result()

    def stop_rule(self, num_valid: int) -> probe_loop.StopRule:
        """When the single runner's loop may stop a probe of ``num_valid`` requests early
        (:mod:`vidur_jax.search.probe_loop`): never without ``early_stop``; with
        Vidur's criterion once the sched-delay P``q`` is certainly above its bound or
        every request is scheduled; with the SLO criterion once TTFT P90 is certainly
        above its bound."""
        s = self.settings
        if not s.early_stop:
            return probe_loop.RUN_TO_END
        if s.criterion == "vidur":
            return probe_loop.StopRule(
                "scheduled", s.max_delay_s, probe_loop.certain_count(num_valid, s.quantile), True
            )
        return probe_loop.StopRule(
            "first_token", s.ttft_p90_max_s, probe_loop.certain_count(num_valid, 0.9), False
        )

    def _stopped_verdict(self, lane: _Lane, state) -> tuple[str, float]:
        """Exact verdict of a probe its loop stopped by a rule: ``("pass" | "fail",
        quantile or its violating lower bound)``, or ``("open", nan)`` if the host cannot
        confirm the stop (then the probe runs on to its end)."""
        seen = jax.device_get((state.scheduled_at, state.first_token_at, state.clock))
        mask = np.asarray(lane.workload.mask)
        n = lane.workload.num_requests
        if self.settings.criterion == "vidur" and np.all(np.isfinite(seen[0][:n][mask])):
            # every request scheduled: each delay, hence the quantile, is final
            arrived = np.asarray(lane.workload.arrived_at, np.float64)[mask]
            delay = float(np.quantile(seen[0][:n][mask] - arrived, self.settings.quantile))
            return ("pass" if delay <= self.settings.max_delay_s else "fail"), delay
        partial = types.SimpleNamespace(
            scheduled_at=seen[0][None],
            first_token_at=seen[1][None],
            clock=np.asarray(seen[2])[None],
        )
        bound = self._verdict_so_far(lane, partial, 0)
        return ("open", bound) if math.isnan(bound) else ("fail", bound)

    def _probe_on_device(
        self,
        lv: _Level,
        group: tuple[str, int],
        p: Probe,
        rule: probe_loop.StopRule | None = None,
    ) -> bool:
        """Run probe ``p`` alone (unbatched event loop) on the first local device; True
        if a capacity of level ``lv`` overflowed (the probe is then left unfilled).

        The loop (:func:`vidur_jax.search.probe_loop.probe_advance`) stops by itself once
        the verdict is certain (:meth:`stop_rule`); the host confirms it exactly. A
        passing probe stopped early keeps its state in ``p.resume``
        (:meth:`finish_stopped` completes it); a stop the host cannot confirm runs on
        to the end. ``rule`` overrides :meth:`stop_rule`.
        """
        device = jax.local_devices()[0]
        tables, init, advance = self._single_executables(lv, group)
        with self._host_lock:  # host-side bookkeeping; the simulation runs unlocked
            lane = self._lane(lv, p)
            full = dataclasses.replace(lane.params, max_steps=np.int64(lane.full_steps))
            params = jax.device_put(build.stack_params([full]), device)
        total = int(lane.params.num_valid)
        rule = rule or self.stop_rule(total)
        state = init(params)
        while True:
            t_call = time.perf_counter()
            state = advance(tables, params, state, np.int64(lane.full_steps), *rule.args())
            err, step, completed = (
                int(x) for x in jax.device_get((state.error, state.step, state.num_completed))
            )
            with self._host_lock:
                self.stats.advance_s += time.perf_counter() - t_call
                self.stats.calls += 1
                self.stats.lanes += 1
            if err or completed >= total or step >= lane.full_steps:
                break
            verdict, value = self._stopped_verdict(lane, state)
            if verdict == "open":  # cannot happen if the rule is sound: run to the end
                rule = probe_loop.RUN_TO_END
                continue
            with self._host_lock:
                p.steps = float(step)
                p.delay_s, p.passed, p.stopped_early = value, verdict == "pass", True
                if p.passed:
                    p.resume = (lv, group, lane, params, state)
                self.stats.probes_stopped_early += 1
                self.stats.requests_simulated += int(lane.workload.num_requests)
                self.stats.steps += int(p.steps)
            return False
        host = jax.tree.map(lambda x: np.asarray(x)[None], jax.device_get(state))
        with self._host_lock:
            return self._settle(lane, host, 0) == "overflow"

    def _finish_one(self, p: Probe) -> None:
        """Run the passing probe ``p``, stopped early, to its end (fills its summary); a
        capacity that overflows in the rest of the run re-runs it whole at the next
        level, as :meth:`run` does."""
        lv, group, lane, params, state = p.resume
        tables, _, advance = self._single_executables(lv, group)
        t_call = time.perf_counter()
        left = np.int64(lane.full_steps - int(state.step))
        state = advance(tables, params, state, left, *probe_loop.RUN_TO_END.args())
        host = jax.tree.map(lambda x: np.asarray(x)[None], jax.device_get(state))
        passed, delay = p.passed, p.delay_s
        with self._host_lock:
            self.stats.advance_s += time.perf_counter() - t_call
            self.stats.calls += 1
            # _finish / _probe_on_device count the whole run again
            self.stats.steps -= int(p.steps)
            self.stats.requests_simulated -= int(lane.workload.num_requests)
            self.stats.probes_stopped_early -= 1
            self.stats.probes_finished_later += 1
            p.resume, p.stopped_early = None, False
            overflow = bool(int(np.asarray(host.error)[0]) & _GROW)
            if not overflow:
                self._finish(lane, host, 0)
        k = self.levels[group].index(lv)
        while overflow:
            k += 1
            if k > 4:
                raise ConfigError("search: simulator capacity kept overflowing; please report")
            with self._host_lock:
                nxt = self._level(group, k)
            overflow = self._probe_on_device(nxt, group, p, probe_loop.RUN_TO_END)
        if p.passed != passed or p.delay_s != delay:  # the stop rule broke its contract
            raise RuntimeError(
                f"search: early verdict {passed} ({delay} s) of config {p.config_index} at "
                f"{p.qps} QPS differs from the full run's {p.passed} ({p.delay_s} s); "
                "please report"
            )

    def finish_stopped(self, probes: Sequence[Probe]) -> None:
        """Run every passing probe of ``probes`` that stopped early to its end, one per
        worker thread, so its summary is complete (same state as an unstopped run)."""
        todo = [p for p in probes if p.resume is not None]
        self._in_workers(todo, self._finish_one)

    @staticmethod
    def _in_workers(todo: Sequence, fn: Callable) -> None:
        """``fn(x)`` for every ``x`` of ``todo`` on :func:`single_workers` threads."""
        queue = list(reversed(todo))
        workers = max(1, min(len(todo), single_workers()))

        def worker() -> None:
            while True:
                try:
                    x = queue.pop()
                except IndexError:
                    return
                fn(x)

        if workers == 1:
            worker()
            return
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(worker) for _ in range(workers)]:
                f.result()

    def _run_single(self, policy: str, k: int, todo: list[Probe]) -> list[Probe]:
        """Run ``todo`` one probe at a time per worker thread (:func:`single_workers`)
        on the unbatched, scatter-free event loop
        (:func:`vidur_jax.sim.run._single_advance`; one compile per shape); returns the
        probes that overflowed level ``k``. A probe's result equals its lane's in the
        pool (same loop body; tested)."""
        lv = self._level(policy, k)
        overflowed: set[int] = set()

        def one(p: Probe) -> None:
            if self._probe_on_device(lv, policy, p):
                overflowed.add(id(p))

        self._in_workers(todo, one)
        return [p for p in todo if id(p) in overflowed]

    def _run_pool(self, policy: str, k: int, todo: list[Probe]) -> list[Probe]:
        """Run ``todo`` (longest first) on the lane pool; returns the probes that
        overflowed a capacity of level ``k``."""
        lv = self._level(policy, k)
        width = self.width
        n_dev = min(jax.local_device_count(), width)
        init, advance, reset, lane_done = run_mod._pool_runner(lv.static, n_dev)
        pending = list(reversed(todo))  # pop() takes the next (longest) probe
        lanes: list[_Lane | None] = [None] * width
        for j in range(width):
            if pending:
                lanes[j] = self._lane(lv, pending.pop())
        idle = dataclasses.replace(
            next(x for x in lanes if x is not None).params, num_valid=np.int32(0)
        )

        def stacked_params():
            return build.stack_params([idle if x is None else x.params for x in lanes])

        params = stacked_params()
        state = init(params)
        overflow: list[Probe] = []
        refill = max(1, width // 8)
        while any(x is not None for x in lanes):
            busy = sum(x is not None for x in lanes)
            stop_at = width - busy + min(refill, busy)
            state = advance(
                lv.tables,
                params,
                state,
                jnp.asarray(np.int32(stop_at)),
                jnp.asarray(np.iinfo(np.int32).max),
            )
            self.stats.calls += 1
            self.stats.lanes += width
            done = np.asarray(lane_done(params, state))
            host = jax.device_get(state)
            errors = np.asarray(host.error).copy()
            fresh = np.zeros(width, bool)
            cleared = False
            for j, lane in enumerate(lanes):
                if lane is None or not done[j]:
                    continue
                verdict = self._settle(lane, host, j)
                if verdict == "extend":
                    errors[j] = 0
                    cleared = True
                    continue
                if verdict == "overflow":
                    overflow.append(lane.probe)
                lanes[j] = None
                if pending:
                    lanes[j] = self._lane(lv, pending.pop())
                    fresh[j] = True
            params = stacked_params()
            if cleared:
                state = state.replace(error=jnp.asarray(errors))
            if fresh.any():
                state = reset(params, state, jnp.asarray(fresh))
        return overflow


def saturated_rates(runner: ProbeRunner) -> list[float]:
    """Analytic completion rate of one saturated replica of every config, requests/s.

    ``P``, ``D``: mean prompt and output tokens of the probe workload. A replica of
    ``PP`` stages keeps ``PP`` micro-batches of ``b`` requests in flight: ``b = B //
    PP`` with ``B`` the batch cap or the requests whose average KV cache (``P + D / 2``
    tokens) fills the KV blocks, whichever is fewer (Vidur's micro-batch cap; the blocks
    hold all micro-batches). Each stage serves one micro-batch iteration per stage time
    ``t(.)`` (the timing tables give one stage), so the replica advances ``b`` requests
    by one iteration every ``t``, whatever ``PP``:

    * a policy that chunks prefills (``Policy.prefill_chunk`` = ``C``, Sarathi) runs
      ``n`` decodes plus the prompt tokens of ``n / D`` new requests per iteration
      (``n (1 + P / D) <= C``, ``n < b``), so it completes ``n / D`` requests per
      ``t(n decodes + n P / D prompt tokens)``;
    * other schedulers alternate a prefill of one prompt with decode iterations of
      ``b``: one request per ``t(prefill of P) + D t(b decodes) / b``.

    Returns:
        One rate per config (NaN when the tables do not cover the batch).
    """
    wl = runner.workloads
    p_mean = float(np.mean(wl.num_prefill))
    d_mean = float(np.mean(wl.num_decode))
    out = [math.nan] * len(runner.cfgs)
    for policy, idx in runner.groups.items():
        lv = runner._level(policy, 0)
        b, n_mix, piece = [], [], []
        for i in idx:
            c, d = runner.sim_cfgs[i], runner.derived[i]
            fits = d.num_blocks * c.block_size / max(1.0, p_mean + d_mean / 2)
            bi = max(1, int(min(c.batch_size_cap, fits)) // c.num_pipeline_stages)
            chunk = policies.get(c.replica_scheduler).prefill_chunk(c) or 0
            n = max(1.0, min(bi - 1.0, chunk / (1.0 + p_mean / d_mean))) if chunk else 0.0
            b.append(bi)
            n_mix.append(int(round(n)))
            piece.append(max(1, int(round(min(chunk - n, n * p_mean / d_mean)))) if chunk else 0)
        b = np.array(b, np.int32)
        n_mix = np.array(n_mix, np.int32)
        piece = np.array(piece, np.int32)
        kv = np.full(len(idx), int(p_mean + d_mean / 2), np.int32)
        dummy = runner.workloads.for_config(runner.cfgs[idx[0]], 1.0)
        params = build.stack_params(
            [
                build.build_params(
                    runner.sim_cfgs[i],
                    runner.derived[i],
                    dummy,
                    lv.table_index[i],
                    runner.num_requests,
                )
                for i in idx
            ]
        )
        p_tok = np.full(len(idx), max(1, int(round(p_mean))), np.int32)
        t_mixed, t_decode, t_prefill, over = _iteration_times(
            lv.tables, params, n_mix, piece, b, kv, p_tok
        )
        for k, i in enumerate(idx):
            if over[k]:
                continue
            if piece[k] > 0:  # chunked prefills ride along the decodes
                out[i] = float(n_mix[k] / d_mean / float(t_mixed[k]))
            else:
                out[i] = float(1.0 / (float(t_prefill[k]) + d_mean * float(t_decode[k]) / b[k]))
    return out


def estimate_capacity(runner: ProbeRunner) -> list[float]:
    """Analytic capacity estimate of every config (cluster QPS): the saturated rate of
    one replica (:func:`saturated_rates`) times the replicas. Only a starting point:
    the search brackets the capacity whatever the error (on Vidur's Llama-2-7B grid:
    ``experiments/bench_search.py``'s breakdown, ``estimate_abs_log_error``).

    Returns:
        One estimate per config, requests/s (NaN when the tables do not cover the
        batch).
    """
    return [mu * c.num_replicas for mu, c in zip(saturated_rates(runner), runner.cfgs, strict=True)]


@functools.partial(jax.jit)
def _iteration_times(tables, params, n_mix, piece, b, kv, p_tok):
    """(C,) seconds of a mixed iteration (``n_mix`` decodes + a ``piece``-token prompt
    chunk), a ``b``-decode iteration and a one-prompt (``p_tok`` tokens) prefill
    iteration, and (C,) table overflow, for stacked ``params``; decodes hold ``kv``
    tokens of KV cache each."""

    def one(prm, n_mix, piece, b, kv, p_tok):
        def t(n_dec, chunks, pre_kv):
            sec, _, over = timing.run_times(
                tables,
                prm,
                n_dec[None],
                (n_dec * kv)[None],
                chunks[None],
                pre_kv[None],
                (n_dec + (chunks > 0))[None],
            )
            return sec[0], over[0]

        mixed, o1 = t(n_mix, piece, p_tok // 2)
        dec, o2 = t(b, jnp.int32(0), jnp.int32(0))
        pre, o3 = t(jnp.int32(0), p_tok, jnp.int32(0))
        mixed = jnp.where(piece > 0, mixed, dec)
        return mixed, dec, pre, o1 & (piece > 0) | o2 | o3

    return jax.vmap(one)(params, n_mix, piece, b, kv, p_tok)


def _bracket(probes: Sequence[Probe]) -> tuple[float, float, Probe | None]:
    """``(lo, hi, probe at lo)``: lowest failing QPS and highest passing QPS below it."""
    hi = min((p.qps for p in probes if not p.passed), default=math.inf)
    below = [p for p in probes if p.passed and p.qps < hi]
    best = max(below, key=lambda p: p.qps, default=None)
    return (best.qps if best else 0.0), hi, best


def _release_superseded(probes: Sequence[Probe]) -> None:
    """Drop the resumable state of every probe of one config but the best passing one
    (the only one whose full run may still be needed)."""
    best = _bracket(probes)[2]
    for p in probes:
        if p is not best:
            p.resume = None


def _geometric(lo: float, hi: float, m: int) -> list[float]:
    """``m`` points strictly inside ``(lo, hi)``, geometrically spaced."""
    r = hi / lo
    return [lo * r ** (j / (m + 1)) for j in range(1, m + 1)]


#: First step of a one-sided bracket from the analytic estimate (x or / 1.2, then
#: 1.44, 2.07 -> 2): the estimate's median error on Vidur's Llama-2-7B grid is ~20%
#: (``experiments/bench_search.py`` breakdown).
GALLOP = 1.2


def criterion_ratio(p: Probe, s: SearchSettings) -> float:
    """How close a passing probe is to the criterion's bound (1 = on it): the delay
    quantile over its bound (Vidur's criterion), else the larger of TTFT P90 and TBT P99
    over theirs; NaN when the probe has no exact value (failed, or no summary)."""
    if not p.passed:
        return math.nan
    if s.criterion == "vidur":
        return p.delay_s / s.max_delay_s
    if not p.summary:
        return math.nan
    return max(
        p.summary.get("ttft_p90", math.nan) / s.ttft_p90_max_s,
        p.summary.get("tbt_p99", math.nan) / s.tbt_p99_max_s,
    )


#: Probes of a config after which its bracket is bisected, secant or not.
SECANT_PROBES = 8

#: Smallest criterion ratio of a passing probe the secant uses (below it the queue has
#: not formed and the ratio says little about where the bound is crossed).
SECANT_MIN_RATIO = 0.1


def secant_target(probes: Sequence[Probe], s: SearchSettings) -> float:
    """QPS where the criterion's ratio (:func:`criterion_ratio`) reaches 1, on the line
    through the two highest passing probes below every failing one, in (log QPS,
    ratio); NaN when they are not two, lie within 1.5 granularities of each other, or
    their ratio does not rise with QPS.

    Failing probes only give a lower bound of their ratio (they stop early), so the
    line uses passes only; it extrapolates upwards from the higher one."""
    hi = min((p.qps for p in probes if not p.passed), default=math.inf)
    below = sorted((p for p in probes if p.passed and p.qps < hi), key=lambda p: p.qps)
    if len(below) < 2:
        return math.nan
    a, b = below[-2], below[-1]
    if b.qps < a.qps * (1.0 + 1.5 * s.granularity):  # too close to give a slope
        return math.nan
    ra, rb = criterion_ratio(a, s), criterion_ratio(b, s)
    if not (ra >= SECANT_MIN_RATIO and rb > ra and rb < 1.0):
        return math.nan
    slope = (rb - ra) / math.log(b.qps / a.qps)
    return b.qps * math.exp((1.0 - rb) / slope)


def _guided(lo: float, hi: float, target: float, s: SearchSettings) -> float:
    """One probe inside ``(lo, hi)`` near ``target``: at ``lo (1 + g)`` when the target is
    closer to ``lo`` (a failure there closes the bracket), else the target, kept within
    [25%, 75%] of the bracket in log QPS (it shrinks to at most 3/4 whatever the
    outcome)."""
    g = 1.0 + s.granularity
    if target <= lo * g:
        return lo * g
    r = math.log(hi / lo) if math.isfinite(hi) else math.inf
    t = math.log(target / lo)
    if math.isfinite(r):
        t = min(max(t, 0.25 * r), 0.75 * r)
    return lo * math.exp(t)


def next_qps(
    probes: Sequence[Probe],
    s: SearchSettings,
    num_replicas: int,
    estimate: float = math.nan,
    branching: int | None = None,
) -> tuple[list[float], str]:
    """The next round's QPS values for one config, or ``([], status)`` when it is done.

    Args:
        probes: the config's probes so far (none before round 0).
        s: settings.
        num_replicas: replicas of the config (scales the highest rate probed).
        estimate: analytic capacity estimate, cluster QPS (round 0 centres on it).
        branching: probes this round (default ``s.branching``).
    """
    qmax = s.qps_max_per_replica * num_replicas
    k = branching or s.branching
    if any(p.error and "stalled" in p.error for p in probes):
        return [], "error: " + next(p.error for p in probes if p.error)
    if not probes:
        e = estimate if math.isfinite(estimate) and estimate > 0 else num_replicas
        if k > 1:  # K points on [E / G^2, E G^2]
            pts = [e * GALLOP ** (4 * j / (k - 1) - 2) for j in range(k)]
        else:
            pts = [e]
        return sorted({min(max(q, s.qps_min), qmax) for q in pts}), ""
    lo, hi, _ = _bracket(probes)
    # one side only so far: step away from the probes by a factor that squares with
    # every probe (G, G^2, G^4, ... at most 2): small steps while near the estimate
    step = min(2.0, GALLOP ** (2 ** min(len(probes) - 1, 8)))
    # the secant while it pays (a config it has not placed within SECANT_PROBES probes
    # is bisected: a slow secant never costs more than a few probes); Vidur's criterion
    # only: the delay quantile grows smoothly with QPS, while TTFT P90 jumps once a
    # queue forms (on the SLO search of docs/search.md the secant saved no probes)
    guided = k == 1 and s.secant and s.criterion == "vidur" and len(probes) < SECANT_PROBES
    target = secant_target(probes, s) if guided else math.nan
    if math.isinf(hi):  # everything passed so far: upwards, up to qmax
        if lo >= qmax * (1 - 1e-9):
            return [], "capped"
        if math.isfinite(target):  # no further than the gallop's step
            return [min(_guided(lo, math.inf, target, s), lo * step, qmax)], ""
        return sorted({min(lo * step**j, qmax) for j in range(1, k + 1)}), ""
    if lo <= 0.0:
        if hi <= s.qps_min * (1 + 1e-9):
            return [], "below_min"
        return sorted({max(hi / step**j, s.qps_min) for j in range(1, k + 1)}), ""
    if hi / lo - 1 <= s.granularity * (1 + 1e-9):
        return [], "ok"
    if math.isfinite(target):
        return [_guided(lo, hi, target, s)], ""
    need = math.ceil(math.log(hi / lo) / math.log1p(s.granularity) - 1e-9) - 1
    return _geometric(lo, hi, max(1, min(k, need))), ""


def _expected_steps(last: Sequence[tuple[float, float]], p: Probe) -> float:
    steps, qps = last[p.config_index]
    return steps * qps / max(p.qps, 1e-12)


def search_capacity(
    runner: ProbeRunner,
    num_replicas: Sequence[int],
    log: Callable[[str], None] | None = None,
    estimates: Sequence[float] | None = None,
) -> tuple[list[CapacityResult], SearchStats]:
    """Find every config's capacity with one request count; rounds of batched probes.

    Args:
        runner: the probe runner over the configs.
        num_replicas: replicas of each config (scales the highest rate probed).
        log: optional progress callback (one line per round).
        estimates: starting capacity estimates (cluster QPS); default
            :func:`estimate_capacity`.

    Returns:
        ``(results, stats)``, one :class:`CapacityResult` per config; ``filling`` marks
        an ``ok`` bracket whose capacity probe's arrivals span less than
        ``span_factor`` x the criterion's bound.
    """
    s = runner.settings
    t0 = time.perf_counter()
    n = len(num_replicas)
    est = list(estimates) if estimates is not None else estimate_capacity(runner)
    probes: list[list[Probe]] = [[] for _ in range(n)]
    status = [""] * n

    def branching(num_open: int) -> int:
        # K probes per open config, as many as fill the pool's lanes (>= 1, <= K max):
        # fewer probes per config in all when many configs are open, fewer rounds when few
        return max(1, min(s.branching, runner.width // max(1, num_open)))

    k0 = branching(n)
    pending = [
        Probe(i, q) for i in range(n) for q in next_qps([], s, num_replicas[i], est[i], k0)[0]
    ]
    rounds = 0
    while pending and rounds < s.max_rounds:
        # a lane runs as long as its probe: start the longest (lowest-QPS) probes first
        last = [(ps[-1].steps, ps[-1].qps) if ps else (1.0, 1.0) for ps in probes]
        runner.run(pending, order_key=functools.partial(_expected_steps, last))
        rounds += 1
        for p in pending:
            probes[p.config_index].append(p)
        for p in pending:  # keep the resumable state of each config's best pass only
            _release_superseded(probes[p.config_index])
        pending = []
        k = branching(sum(1 for x in status if not x))
        for i in range(n):
            if status[i]:
                continue
            qs, st = next_qps(probes[i], s, num_replicas[i], est[i], k)
            if st:
                status[i] = st
            pending += [Probe(i, q) for q in qs]
        if log is not None:
            done = sum(1 for x in status if x)
            log(
                f"round {rounds}: {sum(len(p) for p in probes)} probes so far, {done}/{n} "
                f"configs done, {len(pending)} probes next"
            )
    # the probe at each capacity may have stopped early (its verdict certain): run it
    # to its end so the summary at capacity is complete
    runner.finish_stopped([b for b in (_bracket(ps)[2] for ps in probes) if b is not None])
    results = []
    for i in range(n):
        for p in probes[i]:
            p.resume = None
        lo, hi, best = _bracket(probes[i])
        st = status[i] or "unresolved"
        if st == "capped":
            best = max((p for p in probes[i] if p.passed), key=lambda p: p.qps)
            lo = best.qps
        if st == "ok" and best is not None and best.span_s < s.span_factor * s.bound_s:
            st = "filling"
        results.append(
            CapacityResult(
                lo,
                hi,
                st,
                len(probes[i]),
                dict(best.summary) if best else {},
                probes[i],
                best.num_requests if best and best.num_requests else runner.workloads.num_requests,
                est[i],
            )
        )
    # a snapshot: later runs on the same runner (e.g. a brute-force check) keep counting
    stats = dataclasses.replace(runner.stats, rounds=rounds, wall_s=time.perf_counter() - t0)
    return results, stats


#: Statuses re-searched with more requests (the request count, not the search, fell short).
RETRY_WITH_MORE_REQUESTS = ("capped", "filling")


def measure_capacities(
    cfgs: Sequence[DeploymentConfig],
    lengths: Callable[[jax.Array, int], tuple[np.ndarray, np.ndarray]],
    settings: SearchSettings,
    profiles_dir: str | None = None,
    predictor_for: Callable | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[CapacityResult], SearchStats, list[ProbeRunner]]:
    """Capacity of every config, re-searching unmeasured ones with more requests.

    Pass 1 uses ``settings.num_requests`` (raised to :attr:`SearchSettings.min_requests`
    when the criterion's quantile needs more); configs ``capped`` or ``filling`` are
    searched again with twice the requests, up to ``max_requests``.

    Returns:
        ``(results, stats, runners)``: one result per config (the last pass that
        searched it), the summed cost, and the runner of every pass.
    """
    log = log or (lambda m: None)
    n_req = settings.num_requests
    if n_req < settings.min_requests:
        log(
            f"search: num_requests={n_req} is too few to measure the criterion's quantile; "
            f"using {settings.min_requests}"
        )
        n_req = settings.min_requests
    todo = list(range(len(cfgs)))
    results: list[CapacityResult | None] = [None] * len(cfgs)
    spent = [0] * len(cfgs)
    total = SearchStats()
    runners = []
    t0 = time.perf_counter()
    while todo:
        sub = [cfgs[i] for i in todo]
        pw = make_probe_workloads(
            lengths, n_req, max(c.num_replicas for c in sub), settings.mode, settings.seed
        )
        s = dataclasses.replace(settings, num_requests=n_req)
        # one request-row count for every pass, so one compile per policy serves them
        # all: max_requests rows (replica mode: the rows a step touches do not grow with
        # it); cluster mode sizes the first pass exactly (its rows scale with replicas)
        rows = (
            settings.max_requests
            if settings.mode == "replica"
            else 0
            if not runners
            else settings.max_requests * max(c.num_replicas for c in sub)
        )
        runner = ProbeRunner(
            sub,
            pw,
            s,
            predictor_for=predictor_for,
            profiles_dir=profiles_dir,
            capacity=rows,
            shape_cfgs=cfgs,
            more_requests=functools.partial(
                make_probe_workloads,
                lengths,
                max_replicas=max(c.num_replicas for c in sub),
                mode=settings.mode,
                seed=settings.seed,
            )
            if settings.request_ladder
            else None,
        )
        runners.append(runner)
        # later passes start from the capacity the fewer requests gave (an upper guess)
        est = None if len(runners) == 1 else [results[i].capacity_qps for i in todo]
        res, st = search_capacity(runner, [c.num_replicas for c in sub], log=log, estimates=est)
        for f in dataclasses.fields(SearchStats):
            if f.name != "wall_s":
                setattr(total, f.name, getattr(total, f.name) + getattr(st, f.name))
        total.passes += 1
        for i, r in zip(todo, res, strict=True):
            spent[i] += r.num_probes
            r.num_probes = spent[i]
            results[i] = r
        retry = [i for i in todo if results[i].status in RETRY_WITH_MORE_REQUESTS]
        if not retry or 2 * n_req > settings.max_requests:
            break
        causes = sorted({results[i].status for i in retry})
        log(
            f"search: {len(retry)} config(s) not measured with {n_req} requests per replica "
            f"({', '.join(causes)}); re-searching them with {2 * n_req}"
        )
        n_req *= 2
        todo = retry
    total.wall_s = time.perf_counter() - t0
    return results, total, runners  # type: ignore[return-value]


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
