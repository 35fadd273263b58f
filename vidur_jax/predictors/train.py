"""Fitting the hybrid predictors: polynomial part, then MLP part (L + M search).

Stage 1 -- polynomial. Jobs carry a *physical* monomial basis (tokens; bytes; FLOPs
``c*kv, c^2`` for prefill; KV bytes ``b*kv`` for decode; see ``datasets``). Each candidate
(L = 4 upper-range emphasis powers ``a``) is a non-negative least-squares fit of the
weighted *relative* error ``sum_i s_i^a ((poly(x_i) - y_i) / y_i)^2`` (exact, via NNLS,
since the model is linear in its coefficients; ``s_i`` = size / max size), so every term
is >= 0 and the polynomial is positive and monotone. The candidate is chosen by an
*extrapolation* check: fit on points with every active feature <= half its maximum, score
MAPE on the rest; the winner is refit on all rows. (Jobs without a basis fall back to a
search over total degree 1..3 of all monomials.)

Stage 2 -- MLP (M candidates: hidden widths 8, 16, 32; the polynomial is frozen). The MLP
learns the log-residual ``log y - log poly`` with a mean squared log-ratio loss, trained with
``optax.adam`` (warmup-cosine schedule). Candidates are trained :data:`TRAIN_BATCH` at a
time in one vmapped, ``lax.scan``-ed, jitted call: widths are hidden-unit masks inside one
padded network and rows are padded to a bucketed count with zero weights, so the train
step compiles once per rows bucket. The width is chosen on every 5th row held out; the
winner is retrained on all rows. Jobs of 1-feature ops skip the search (width
``KNOT_MLP_WIDTH``): their residual knots (stage 3) interpolate whatever the smooth MLP
leaves at the profiled points.

Determinism: every fitted parameter is a function of the job (its rows, built from
profiles, model, device, TP and op), the settings (:func:`config_key`) and the base seed
only. The MLP init seed is :func:`job_seed` (a hash of those) and, with the fixed batch
of :data:`TRAIN_BATCH`, a job trains to the same bits whichever jobs share its batch.

Stage 3 -- knots (1-feature ops): the remaining log-residual at every profiled point,
averaged per distinct feature value, interpolated linearly (see ``hybrid``).

Jobs with a residual grid (``FitJob.grid``: attention) skip stage 2: their MLP stays 0 and
the log-residual over the all-rows polynomial is fitted on a tensor grid of two log
coordinates by penalized least squares (:func:`fit_grid`), the smoothing chosen by 5-fold
cross-validation. It has no random initialization, so these jobs do not depend on the
seed at all; on held-out profile rows it interpolates better than the seeded MLP did
(``experiments/predictor_attention_recipe.py``).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sparse
from scipy.optimize import nnls
from scipy.sparse.linalg import spsolve

from vidur_jax.predictors import hybrid

#: Polynomial degree candidates (L).
POLY_DEGREES: tuple[int, ...] = (1, 2, 3)
#: MLP width candidates (M); all padded to ``hybrid.MAX_WIDTH``.
MLP_WIDTHS: tuple[int, ...] = (8, 16, 32)
NUM_STEPS = 1000
#: MLP width of jobs with residual knots (no width search, see ``fit_jobs``).
KNOT_MLP_WIDTH = 8
PEAK_LR = 1e-2
#: Blend length scale in log1p units: the MLP correction falls to exp(-1) at e**0.4 ~ 1.5x
#: beyond the profiled box and to ~5% at 2x.
TAU = 0.4
#: Padded row counts of the MLP training batches (one compile each); larger tables are
#: subsampled with a stride to ``MAX_MLP_ROWS`` for the MLP (the polynomial uses all rows).
ROW_BUCKETS: tuple[int, ...] = (320, 512, 640)
MAX_MLP_ROWS = ROW_BUCKETS[-1]
#: MLPs per compiled training call, fixed. XLA's CPU kernels give every member of a batch
#: of 8 the same bits whatever the other members hold (measured, and tested); batches of
#: 16 or 64 do not (results moved by ~3e-3 in the weights). So a job's parameters do not
#: depend on which jobs are trained beside it: a one-model rebuild equals a full build.
TRAIN_BATCH = 8

#: Smoothing candidates of the residual grid (weight of the squared second differences,
#: see :func:`fit_grid`), half-decades 10^-6.5 .. 10^-1.5, chosen per job by 5-fold
#: cross-validation on its rows (decades only were up to 0.5 points worse on held-out
#: decode rows; one fixed value up to 1.6 points).
GRID_LAMBDAS: tuple[float, ...] = tuple(float(10.0 ** (k / 2)) for k in range(-13, -2))
#: Ridge on every grid value: keeps the system regular where nodes have no rows.
GRID_RIDGE = 1e-10

#: Number of times the vmapped train loop has been traced (tests assert it compiles once).
TRACE_COUNT = {"fit_mlps": 0}


@dataclass(frozen=True)
class FitJob:
    """One predictor to fit.

    Attributes:
      x: ``(N, 3)`` internal features (e.g. tokens, bytes, heads per device).
      y: ``(N,)`` median times in ms (> 0 after clipping).
      feat_scale: ``(3,)`` map from user features to internal ones (see ``hybrid``).
      feat_const: ``(3,)`` constant internal features.
    """

    x: np.ndarray
    y: np.ndarray
    feat_scale: np.ndarray
    feat_const: np.ndarray
    basis: np.ndarray | None = None  # (P, 3) physical monomial exponents; None = degree search
    #: Upper-range emphasis candidates ``a`` for the physical basis; one value = no search.
    emphasis: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    #: Fit residual knots along feature 0 (1-feature ops only, see ``hybrid``).
    knots: bool = False
    #: MLP inputs as combinations of the log features (None = the 3 features themselves):
    #: row i of this ``(3, 3)`` matrix M gives input i = standardized ``M[i] @ log1p(x)``
    #: (a zero row is an unused input). The map is affine in the stored standardized
    #: features, so after training it is folded into the first layer exactly (the params
    #: keep the usual layout). E.g. attention transfer's prefill MLP sees kv, chunk and
    #: log((1 + chunk)(1 + heads)) (~ the thread-block count) instead of heads.
    mlp_inputs: tuple[tuple[float, float, float], ...] | None = None
    #: Residual grid coordinates instead of the MLP (2-feature ops): row i of this
    #: ``(2, 3)`` matrix A gives grid coordinate i = ``log1p(A[i] @ x)`` (see ``hybrid``).
    grid: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    #: Train the MLP correction (False: knots-only 1-feature jobs, no seed enters; an
    #: option, measured in docs/fidelity.md, not the shipped recipe).
    mlp: bool = True
    #: Knots-only jobs: knots with wave-quantization steps where cross-validation on the
    #: job's rows prefers them (:func:`fit_step_knots`; the compute token ops).
    steps: bool = False


def active_dims(x: np.ndarray) -> tuple[int, ...]:
    """Feature dims of ``x`` ``(N, 3)`` that take more than one value."""
    return tuple(j for j in range(x.shape[1]) if np.unique(x[:, j]).size > 1)


def monomials(dims: tuple[int, ...], degree: int) -> np.ndarray:
    """Exponents ``(P, 3)`` of all monomials over ``dims`` with total degree <= ``degree``."""
    rows = []
    for exps in itertools.product(range(degree + 1), repeat=len(dims)):
        if sum(exps) <= degree:
            e = np.zeros(hybrid.NUM_FEATURES, np.float32)
            e[list(dims)] = exps
            rows.append(e)
    rows.sort(key=lambda e: (e.sum(), tuple(-e)))
    return np.stack(rows)


def design(x: np.ndarray, x_max: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    """Monomial design matrix ``(N, P)`` in float64 (numpy twin of ``hybrid.poly_terms``)."""
    s = x.astype(np.float64) / x_max.astype(np.float64)
    return np.prod(s[:, None, :] ** exponents[None, :, :].astype(np.float64), axis=-1)


def fit_nnls_relative(phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimizing ``sum(((phi @ c) - y) / y)^2``."""
    coef, _ = nnls(phi / y[:, None], np.ones_like(y), maxiter=50 * phi.shape[1])
    return coef


#: Upper-range emphasis candidates (L) for physical bases: row weight (size/max)**a.
EMPHASIS_POWERS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)


def fit_physical(
    x: np.ndarray,
    y: np.ndarray,
    x_max: np.ndarray,
    basis: np.ndarray,
    emphasis: tuple[float, ...] = EMPHASIS_POWERS,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Stage 1 for a fixed physical basis: choose the upper-range emphasis by extrapolation.

    Each candidate ``a`` weights the relative residual of row i by ``(prod_j x_ij/x_max_j)**a``
    over the active dims, trading small-size accuracy (fixed by the MLP anyway) for the
    large-size slope that extrapolation relies on.

    Returns:
      ``(exponents (MAX_TERMS, 3), coef (MAX_TERMS,), a)``, zero-padded.
    """
    dims = list(active_dims(x))
    size = np.prod(np.maximum(x[:, dims], 1e-9) / x_max[dims], axis=1) if dims else np.ones(len(y))
    inner = np.all(x[:, dims] <= 0.5 * x_max[dims], axis=1) if dims else np.ones(len(y), bool)
    phi = design(x, x_max, basis)

    def fit(rows: np.ndarray, a: float) -> np.ndarray:
        w = size[rows] ** (a / 2)
        coef, _ = nnls(phi[rows] * (w / y[rows])[:, None], w, maxiter=50 * phi.shape[1])
        return coef

    best = (np.inf, emphasis[0])
    if len(emphasis) > 1 and inner.sum() >= 2 * len(basis) and (~inner).sum() >= 3:
        for a in emphasis:
            pred = phi[~inner] @ fit(inner, a)
            score = float(np.mean(np.abs(pred / y[~inner] - 1.0)))
            if score < best[0]:
                best = (score, a)
    coef = fit(np.arange(len(y)), best[1])
    pad_e = np.zeros((hybrid.MAX_TERMS, 3), np.float32)
    pad_c = np.zeros(hybrid.MAX_TERMS, np.float32)
    pad_e[: len(basis)] = basis
    pad_c[: len(basis)] = coef
    return pad_e, pad_c, best[1]


def fit_poly(x: np.ndarray, y: np.ndarray, x_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Stage 1: choose the degree by extrapolation error and fit the polynomial.

    Args:
      x: ``(N, 3)`` internal features; y: ``(N,)`` ms; x_max: ``(3,)`` normalizers.

    Returns:
      ``(exponents (MAX_TERMS, 3), coef (MAX_TERMS,), degree)``, zero-padded.
    """
    dims = active_dims(x)
    inner = (
        np.all(x[:, list(dims)] <= 0.5 * x_max[list(dims)], axis=1)
        if dims
        else np.ones(len(y), bool)
    )
    best: tuple[float, int] | None = None
    for degree in POLY_DEGREES:
        exps = monomials(dims, degree)
        if len(exps) > hybrid.MAX_TERMS:
            continue
        if inner.sum() < 2 * len(exps) or (~inner).sum() < 3:
            score = np.inf if degree > 1 else 0.0
        else:
            coef = fit_nnls_relative(design(x[inner], x_max, exps), y[inner])
            pred = design(x[~inner], x_max, exps) @ coef
            score = float(np.mean(np.abs(pred / y[~inner] - 1.0)))
        if best is None or score < best[0]:
            best = (score, degree)
    degree = best[1]
    exps = monomials(dims, degree)
    coef = fit_nnls_relative(design(x, x_max, exps), y)
    if not np.any(coef > 0):  # degenerate: fall back to the mean as a constant
        coef = np.zeros(len(exps))
        coef[0] = float(np.mean(y))
    pad_e = np.zeros((hybrid.MAX_TERMS, 3), np.float32)
    pad_c = np.zeros(hybrid.MAX_TERMS, np.float32)
    pad_e[: len(exps)] = exps
    pad_c[: len(exps)] = coef
    return pad_e, pad_c, degree


def width_mask(width: int) -> np.ndarray:
    """``(MAX_WIDTH,)`` 0/1 mask keeping the first ``width`` hidden units."""
    return (np.arange(hybrid.MAX_WIDTH) < width).astype(np.float32)


def _optimizer() -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(
        0.0, PEAK_LR, 50, NUM_STEPS, end_value=PEAK_LR * 0.01
    )
    return optax.adam(sched)


def _loss(
    mlp: hybrid.Params, z: jax.Array, r: jax.Array, wts: jax.Array, mask: jax.Array
) -> jax.Array:
    """Weighted mean squared log-ratio of one MLP: ``(corr - (log y - log poly))^2``."""
    pred = hybrid.MLP.apply({"params": mlp}, z, mask)
    return jnp.sum(wts * (pred - r) ** 2) / jnp.maximum(jnp.sum(wts), 1.0)


@partial(jax.jit, static_argnames=("num_steps",))
def fit_mlps(
    mlp0: hybrid.Params,
    z: jax.Array,
    r: jax.Array,
    wts: jax.Array,
    masks: jax.Array,
    num_steps: int = NUM_STEPS,
) -> tuple[hybrid.Params, jax.Array]:
    """Train K MLPs at once (vmapped Adam, scanned steps).

    Args:
      mlp0: stacked initial params, leading axis K.
      z: ``(K, N, 3)`` standardized log features.
      r: ``(K, N)`` log-residual targets.
      wts: ``(K, N)`` row weights (0 for padding / held-out rows).
      masks: ``(K, MAX_WIDTH)`` hidden-unit masks.

    Returns:
      ``(params, final_loss (K,))``.
    """
    TRACE_COUNT["fit_mlps"] += 1  # runs at trace time only
    opt = _optimizer()
    grad_fn = jax.vmap(jax.value_and_grad(_loss))

    def step(carry, _):
        params, state = carry
        loss, grads = grad_fn(params, z, r, wts, masks)
        updates, state = jax.vmap(opt.update)(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    state0 = jax.vmap(opt.init)(mlp0)
    (params, _), losses = jax.lax.scan(step, (mlp0, state0), None, length=num_steps)
    return params, losses[-1]


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
    pad = [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
    return np.pad(a, pad)


def _row_bucket(n: int) -> int:
    """Smallest row bucket holding ``n`` rows (``n <= MAX_MLP_ROWS``)."""
    return next(b for b in ROW_BUCKETS if n <= b)


@dataclass
class _Prepared:
    base: hybrid.Params  # everything but the MLP and knots
    z: np.ndarray  # (N, 3) MLP inputs (strided to MAX_MLP_ROWS)
    r: np.ndarray  # (N,)
    u0_all: np.ndarray | None = None  # (M,) log1p(x_0) of every row, for knots
    z_all: np.ndarray | None = None  # (M, 3) standardized features (not mapped)
    r_all: np.ndarray | None = None  # (M,)
    #: ``FitJob.mlp_inputs`` as ``inputs = z @ in_a + in_b`` (z: standardized features).
    in_a: np.ndarray | None = None
    in_b: np.ndarray | None = None
    v_all: np.ndarray | None = None  # (M, 2) residual-grid coordinates of every row
    lp_all: np.ndarray | None = None  # (M,) log coef_in polynomial at every row, for knots


def fit_knots(
    u0: np.ndarray, resid: np.ndarray, num: int = hybrid.NUM_KNOTS
) -> tuple[np.ndarray, np.ndarray]:
    """Knots interpolating ``resid`` at ``u0`` (one per distinct value, or per group).

    With more distinct values than knots, the values closest together in ``u0`` share a
    knot (:func:`merge_closest`): points stay exact where the table is sparse in log-size
    (small all-reduce messages, 8 KB apart) and are averaged where it is dense.

    A knot holds the log of the *arithmetic* mean ratio ``mean(exp(resid))`` of its rows,
    not the mean log-ratio: where repeated or neighbouring rows are noisy (small
    all-reduce messages range 0.007-0.064 ms between neighbours) a mean of logs is the
    geometric mean, biased low by the fast outliers, while simulated time adds durations
    and needs their expectation (Vidur's forests, fitted by squared error, predict it too).
    With one row per knot the two agree.

    Returns:
      ``(knot_u (num,), knot_r (num,))``, ``knot_u`` strictly increasing; unused knots
      continue past the last point with its value (the interpolation holds it).
    """
    order = np.argsort(u0, kind="stable")
    ku, kr, _ = _knot_groups(u0[order], resid[order], None, num)
    k = len(ku)
    knot_u = np.concatenate([ku, ku[-1] + 1.0 + np.arange(num - k)])
    knot_r = np.concatenate([kr, np.full(num - k, kr[-1])])
    return knot_u.astype(np.float32), knot_r.astype(np.float32)


#: Wave-quantization steps of the compute token ops (:func:`fit_step_knots`): between
#: two adjacent profiled sizes ``a < b`` whose log-residuals differ by more than
#: ``STEP_THRESHOLD``, the time holds ``a``'s level up to the largest multiple of
#: ``STEP_TILE`` tokens in ``[a, b)`` and ``b``'s level after it (GEMM time is a function of
#: the tokens padded to a tile). Chosen on the held-out splits of the A100 Llama-2-7B
#: token ops (``experiments/predictor_token_recipe.py``: tiles 16-128, the midpoint and
#: thresholds 0.05-0.2 measured); each table keeps it only where 5-fold cross-validation
#: on its own rows prefers it to linear knots.
STEP_TILE = 64
STEP_THRESHOLD = 0.1
#: Candidates of :func:`choose_step_rule`: ``(rule, threshold)``, rule ``None`` = linear.
STEP_CANDIDATES: tuple[tuple[str | int | None, float], ...] = (
    (None, 0.0),
    (STEP_TILE, STEP_THRESHOLD),
)


def _knot_groups(
    u0: np.ndarray, resid: np.ndarray, lp: np.ndarray | None, num: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(ku, kr, klp)`` per knot: rows grouped by size, at most ``num`` groups
    (:func:`merge_closest`); ``ku`` mean size, ``kr`` log of the mean ratio, ``klp`` mean
    of ``lp`` (log poly; ``None`` when ``lp`` is)."""
    uniq, inv = np.unique(u0, return_inverse=True)
    if len(uniq) > num:
        inv = merge_closest(uniq, np.bincount(inv), num)[inv]
    k = int(inv.max()) + 1
    cnt = np.bincount(inv, minlength=k)
    ku = np.bincount(inv, weights=u0, minlength=k) / cnt
    kr = np.log(np.bincount(inv, weights=np.exp(resid), minlength=k) / cnt)
    klp = None if lp is None else np.bincount(inv, weights=lp, minlength=k) / cnt
    return ku, kr, klp


def _jump_at(xa: float, xb: float, rule: str | int) -> float:
    """Largest size still on ``a``'s level (``xa <= s < xb``) under ``rule``."""
    if rule == "next":
        return xa
    if rule == "mid":
        return 0.5 * (xa + xb)
    s = np.ceil(xb / rule - 1.0) * rule  # largest multiple of the tile below xb
    return float(s) if s >= xa else 0.5 * (xa + xb)


def step_knots(
    ku: np.ndarray, kr: np.ndarray, klp: np.ndarray, rule: str | int | None, thr: float
) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(u, r)`` (unpadded) with a jump between adjacent knots whose residuals
    differ by more than ``thr`` (none with ``rule=None``: plain linear knots).

    Between ``a`` and ``b`` the time holds ``a``'s value up to the jump ``s`` and ``b``'s
    from ``s + 1`` (one size unit; relative ``1e-4`` for large byte sizes), so a size
    between two profiled rows on different plateaus of a wave-quantization step gets one
    plateau, not a value in between; the log polynomial at the inserted knots is
    interpolated linearly in ``u`` between ``a`` and ``b``.
    """
    if rule is None or len(ku) < 2:
        return ku, kr
    out_u, out_r = [ku[0]], [kr[0]]
    xs = np.expm1(ku)
    for a in range(len(ku) - 1):
        b = a + 1
        if abs(kr[b] - kr[a]) > thr:
            s = _jump_at(xs[a], xs[b], rule)
            s1 = s + max(1.0, 1e-4 * s)
            for x_new, level in ((s, a), (s1, b)):
                u_new = np.log1p(x_new)
                if ku[a] < u_new < ku[b]:
                    t = (u_new - ku[a]) / (ku[b] - ku[a])
                    lp_new = klp[a] + t * (klp[b] - klp[a])
                    out_u.append(u_new)
                    out_r.append(kr[level] + klp[level] - lp_new)
        out_u.append(ku[b])
        out_r.append(kr[b])
    return np.asarray(out_u), np.asarray(out_r)


def _step_fit(
    u0: np.ndarray, resid: np.ndarray, lp: np.ndarray, num: int, rule: str | int | None, thr: float
) -> tuple[np.ndarray, np.ndarray]:
    """Step knots within ``num`` knots: rows are merged into fewer groups until the knots
    and inserted jump knots fit."""
    groups = num
    while True:
        ku, kr, klp = _knot_groups(u0, resid, lp, groups)
        su, sr = step_knots(ku, kr, klp, rule, thr)
        if len(su) <= num or groups <= 2:
            return su[:num], sr[:num]
        groups -= len(su) - num


def choose_step_rule(
    u0: np.ndarray,
    resid: np.ndarray,
    lp: np.ndarray,
    num: int = hybrid.NUM_KNOTS,
    candidates: tuple[tuple[str | int | None, float], ...] = STEP_CANDIDATES,
) -> tuple[str | int | None, float]:
    """The candidate ``(rule, threshold)`` (see :func:`step_knots`) with the lowest 5-fold
    cross-validated mean absolute relative error of the time (fold = row index mod 5,
    the held-out sizes are not knots); the first candidate unless another is strictly
    better."""
    idx = np.arange(len(u0))
    cands = list(candidates)
    best, best_score = cands[0], np.inf
    for rule, thr in cands:
        errs = []
        for fold in range(5):
            held = idx % 5 == fold
            if held.all() or not held.any():
                continue
            su, sr = _step_fit(u0[~held], resid[~held], lp[~held], num, rule, thr)
            pred = np.interp(u0[held], su, sr)
            errs.append(np.abs(np.expm1(pred - resid[held])))
        score = float(np.mean(np.concatenate(errs))) if errs else 0.0
        if score < best_score - 1e-12:
            best, best_score = (rule, thr), score
    return best


def fit_step_knots(
    u0: np.ndarray,
    resid: np.ndarray,
    lp: np.ndarray,
    num: int = hybrid.NUM_KNOTS,
    candidates: tuple[tuple[str | int | None, float], ...] = STEP_CANDIDATES,
) -> tuple[np.ndarray, np.ndarray, str | int | None, float]:
    """Knots of :func:`fit_knots` with wave-quantization jumps (:func:`step_knots`), the
    rule and threshold chosen by :func:`choose_step_rule` on these rows.

    Args:
      u0: ``(M,)`` ``log1p`` size of every row.
      resid: ``(M,)`` log-residual over the polynomial.
      lp: ``(M,)`` log polynomial at each row (``log y - resid``).
      num: knots to fill.
      candidates: ``(rule, threshold)`` pairs to choose from.

    Returns:
      ``(knot_u (num,), knot_r (num,), rule, threshold)`` as :func:`fit_knots` pads them.
    """
    order = np.argsort(u0, kind="stable")
    rule, thr = choose_step_rule(u0, resid, lp, num, candidates)
    su, sr = _step_fit(u0[order], resid[order], lp[order], num, rule, thr)
    k = len(su)
    knot_u = np.concatenate([su, su[-1] + 1.0 + np.arange(num - k)])
    knot_r = np.concatenate([sr, np.full(num - k, sr[-1])])
    return knot_u.astype(np.float32), knot_r.astype(np.float32), rule, thr


def merge_closest(u: np.ndarray, counts: np.ndarray, num: int) -> np.ndarray:
    """Group sorted distinct values ``u`` ``(M,)`` into ``num`` runs by merging neighbours.

    Repeatedly merges the two adjacent groups whose centres (count-weighted mean ``u``)
    are closest, first pair on ties.

    Returns:
      ``(M,)`` group index (0..num-1, non-decreasing) of each value.
    """
    centre = u.astype(np.float64).copy()
    weight = counts.astype(np.float64).copy()
    start = np.arange(len(u))  # first value of each group
    while len(centre) > num:
        i = int(np.argmin(np.diff(centre)))
        w = weight[i] + weight[i + 1]
        centre[i] = (centre[i] * weight[i] + centre[i + 1] * weight[i + 1]) / w
        weight[i] = w
        centre, weight, start = (np.delete(a, i + 1) for a in (centre, weight, start))
    group = np.zeros(len(u), np.int64)
    group[start[1:]] = 1
    return np.cumsum(group)


def grid_nodes(v: np.ndarray, size: int) -> np.ndarray:
    """Sorted distinct values of ``v`` ``(N,)``, neighbours merged down to ``size`` nodes.

    Returns:
      ``(k,)`` strictly increasing nodes, ``2 <= k <= size`` (the count-weighted mean of
      each merged group, see :func:`merge_closest`).

    Raises:
      ValueError: fewer than 2 distinct values.
    """
    uniq, counts = np.unique(v, return_counts=True)
    if len(uniq) < 2:
        raise ValueError("a residual grid needs >= 2 distinct values per coordinate")
    if len(uniq) <= size:
        return uniq
    group = merge_closest(uniq, counts, size)
    w = np.bincount(group, weights=counts)
    return np.bincount(group, weights=uniq * counts) / w


def _cell_weights(nodes: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of ``hybrid._cell``: left index ``(N,)`` and clipped fraction ``(N,)``."""
    i = np.clip(np.searchsorted(nodes, v) - 1, 0, len(nodes) - 2)
    return i, np.clip((v - nodes[i]) / (nodes[i + 1] - nodes[i]), 0.0, 1.0)


def grid_design(n0: np.ndarray, n1: np.ndarray, v: np.ndarray) -> sparse.csr_matrix:
    """Bilinear interpolation matrix ``(N, k0 * k1)`` from node values (row-major) to ``v`` ``(N, 2)``."""
    i, t = _cell_weights(n0, v[:, 0])
    j, s = _cell_weights(n1, v[:, 1])
    k1 = len(n1)
    cols = np.stack([i * k1 + j, i * k1 + j + 1, (i + 1) * k1 + j, (i + 1) * k1 + j + 1], 1)
    w = np.stack([(1 - t) * (1 - s), (1 - t) * s, t * (1 - s), t * s], 1)
    rows = np.repeat(np.arange(len(v)), 4)
    return sparse.csr_matrix((w.ravel(), (rows, cols.ravel())), shape=(len(v), len(n0) * k1))


def second_differences(nodes: np.ndarray) -> sparse.csr_matrix:
    """``(k - 2, k)`` second derivatives at interior nodes (non-uniform spacing), each row
    scaled by the square root of its mean spacing (a quadrature weight)."""
    k = len(nodes)
    if k < 3:
        return sparse.csr_matrix((0, k))
    h0, h1 = np.diff(nodes)[:-1], np.diff(nodes)[1:]
    coef = np.stack([2 / (h0 * (h0 + h1)), -2 / (h0 * h1), 2 / (h1 * (h0 + h1))], 1)
    coef *= np.sqrt((h0 + h1) / 2)[:, None]
    rows = np.repeat(np.arange(k - 2), 3)
    cols = (np.arange(k - 2)[:, None] + np.arange(3)[None, :]).ravel()
    return sparse.csr_matrix((coef.ravel(), (rows, cols)), shape=(k - 2, k))


def solve_grid(
    n0: np.ndarray, n1: np.ndarray, v: np.ndarray, r: np.ndarray, lam: float
) -> np.ndarray:
    """Grid values ``(k0, k1)`` minimizing ``|B g - r|^2 + lam |D g|^2 + ridge |g|^2``.

    ``B`` is the bilinear interpolation at the rows ``v`` ``(N, 2)`` (:func:`grid_design`),
    ``D`` stacks the second differences along both axes: with nodes at the profiled values
    and a small ``lam`` the grid passes through the rows and fills nodes without rows
    smoothly (like a natural spline).
    """
    b = grid_design(n0, n1, v)
    d0 = sparse.kron(second_differences(n0), sparse.eye(len(n1)))
    d1 = sparse.kron(sparse.eye(len(n0)), second_differences(n1))
    m = b.T @ b + lam * (d0.T @ d0 + d1.T @ d1) + GRID_RIDGE * sparse.eye(b.shape[1])
    return np.asarray(spsolve(m.tocsc(), b.T @ r)).reshape(len(n0), len(n1))


def fit_grid(
    v: np.ndarray,
    r: np.ndarray,
    size: tuple[int, int] = hybrid.GRID_SIZE,
    lambdas: tuple[float, ...] = GRID_LAMBDAS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Residual grid through rows ``v`` ``(N, 2)`` with log-residuals ``r`` ``(N,)``.

    The smoothing ``lam`` is the candidate with the smallest mean absolute relative error
    ``|exp(pred - r) - 1|`` over a 5-fold cross-validation (fold = row index mod 5); the
    winner is refit on every row. Deterministic: a function of the rows only.

    Returns:
      ``(u0 (G0,), u1 (G1,), r (G0, G1), lam)`` float32 padded to ``size``: padding nodes
      continue past the last node in steps of 1 and repeat its values (the edge holds).
    """
    n0, n1 = grid_nodes(v[:, 0], size[0]), grid_nodes(v[:, 1], size[1])
    idx = np.arange(len(r))
    best = (np.inf, lambdas[0])
    if len(lambdas) > 1:
        for lam in lambdas:
            errs = []
            for fold in range(5):
                held = idx % 5 == fold
                g = solve_grid(n0, n1, v[~held], r[~held], lam)
                pred = grid_design(n0, n1, v[held]) @ g.ravel()
                errs.append(np.abs(np.expm1(pred - r[held])))
            score = float(np.mean(np.concatenate(errs)))
            if score < best[0]:
                best = (score, lam)
    g = solve_grid(n0, n1, v, r, best[1])
    pad0, pad1 = size[0] - len(n0), size[1] - len(n1)
    u0 = np.concatenate([n0, n0[-1] + 1.0 + np.arange(pad0)])
    u1 = np.concatenate([n1, n1[-1] + 1.0 + np.arange(pad1)])
    g = np.pad(g, ((0, pad0), (0, pad1)), mode="edge")
    return u0.astype(np.float32), u1.astype(np.float32), g.astype(np.float32), best[1]


def input_map(
    u: np.ndarray, mu: np.ndarray, sd: np.ndarray, m: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``FitJob.mlp_inputs`` as an affine map of the standardized features.

    Args:
      u: ``(N, 3)`` log1p features of the training rows; mu, sd: their standardization.
      m: ``(3, 3)`` input combinations.

    Returns:
      ``(a (3, 3), b (3,))`` with ``z @ a + b`` = the standardized ``u @ m.T`` for
      ``z = (u - mu) / sd`` (an input with no spread is centred, not scaled).
    """
    v = u @ m.T
    v_mu, v_sd = v.mean(axis=0), v.std(axis=0)
    v_sd = np.where(v_sd > 1e-6, v_sd, 1.0)
    return sd[:, None] * m.T / v_sd[None, :], (mu @ m.T - v_mu) / v_sd


def fold_input_map(mlp: hybrid.Params, a: np.ndarray, b: np.ndarray) -> hybrid.Params:
    """MLP params on standardized features equal to ``mlp`` on inputs ``z @ a + b``."""
    out = dict(mlp)
    k = np.asarray(mlp["Dense_0"]["kernel"], np.float64)
    out["Dense_0"] = {
        "kernel": (a @ k).astype(np.float32),
        "bias": (np.asarray(mlp["Dense_0"]["bias"], np.float64) + b @ k).astype(np.float32),
    }
    return out


def _prepare(job: FitJob) -> _Prepared:
    """Stage 1 plus the MLP inputs/targets for one job."""
    x = job.x.astype(np.float64)
    y = np.maximum(job.y.astype(np.float64), 0.5 * max(job.y[job.y > 0].min(), 1e-4))
    x_max = np.maximum(x.max(axis=0), 1e-9)
    if job.basis is not None:
        basis = np.asarray(job.basis, np.float32)
        exps, coef, _ = fit_physical(x, y, x_max, basis, job.emphasis)
        _, coef_in, _ = fit_physical(x, y, x_max, basis, (0.0,))
    else:
        exps, coef, _ = fit_poly(x, y, x_max)
        coef_in = coef
    u = np.log1p(np.maximum(x, 0.0))
    mu = u.mean(axis=0)
    sd = u.std(axis=0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    poly = design(x, x_max, exps) @ coef_in.astype(np.float64)
    r_full = np.log(y) - np.log(np.maximum(poly, hybrid.POLY_FLOOR))
    stride = -(-len(r_full) // MAX_MLP_ROWS)
    u_mlp, r = u[::stride], r_full[::stride]
    base = {
        "feat_scale": job.feat_scale.astype(np.float32),
        "feat_const": job.feat_const.astype(np.float32),
        "x_max": x_max.astype(np.float32),
        "exponents": exps,
        "coef": coef,
        "coef_in": coef_in.astype(np.float32),
        "z_mu": mu.astype(np.float32),
        "z_sd": sd.astype(np.float32),
        "lo": u.min(axis=0).astype(np.float32),
        "hi": u.max(axis=0).astype(np.float32),
        "tau": np.array(TAU, np.float32),
        "out_scale": np.array(1.0, np.float32),
    }
    zero = hybrid.zero_params()
    for key in ("knot_u", "knot_r", "grid_a", "grid_u0", "grid_u1", "grid_r"):
        base[key] = zero[key]
    z = (u_mlp - mu) / sd
    in_a = in_b = None
    if job.mlp_inputs is not None:
        in_a, in_b = input_map(u, mu, sd, np.asarray(job.mlp_inputs, np.float64))
        z = z @ in_a + in_b
    prep = _Prepared(base, z.astype(np.float32), r.astype(np.float32), in_a=in_a, in_b=in_b)
    if job.grid is not None:
        prep.v_all = np.log1p(np.maximum(x @ np.asarray(job.grid, np.float64).T, 0.0))
        prep.r_all = r_full
    if job.knots:
        prep.u0_all = u[:, 0]
        prep.z_all = ((u - mu) / sd).astype(np.float32)
        prep.r_all = r_full.astype(np.float32)
        prep.lp_all = np.log(np.maximum(poly, hybrid.POLY_FLOOR))
    return prep


def job_seed(job: FitJob, seed: int = 0) -> int:
    """PRNG seed of one job: a hash of its data, its settings and ``seed`` only.

    The job's arrays are built from (profiles, model, device, TP, op), so the seed -- and
    with :data:`TRAIN_BATCH` every fitted parameter -- is a function of those and the
    training settings, never of which other jobs are fitted in the same call or in which
    order.
    """
    h = hashlib.sha256(f"{_mlp_key()}|seed={seed}|knots={job.knots}".encode())
    h.update(repr((job.emphasis, job.mlp_inputs)).encode())
    for a in (job.x, job.y, job.feat_scale, job.feat_const, job.basis):
        if a is not None:
            arr = np.ascontiguousarray(a, np.float64)
            h.update(repr(arr.shape).encode())
            h.update(arr.tobytes())
    return int.from_bytes(h.digest()[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class _Slot:
    """One MLP to train: a job's inputs, a width, the rows it sees and its init seed."""

    prep: _Prepared
    width: int
    rows: np.ndarray  # indices into prep.r with weight 1
    seed: int


def _train_slots(slots: list[_Slot]) -> list[hybrid.Params]:
    """Train every slot; each slot's result is independent of the others.

    Slots are grouped by row bucket and trained :data:`TRAIN_BATCH` at a time in one
    compiled program per bucket (padding slots have zero weight). A slot's init key is
    ``PRNGKey(slot.seed)`` folded with its width.
    """
    out: list[hybrid.Params | None] = [None] * len(slots)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(slots):
        groups.setdefault(_row_bucket(len(s.prep.r)), []).append(i)
    for n, idx in sorted(groups.items()):
        for start in range(0, len(idx), TRAIN_BATCH):
            chunk = idx[start : start + TRAIN_BATCH]
            z = np.zeros((TRAIN_BATCH, n, 3), np.float32)
            r = np.zeros((TRAIN_BATCH, n), np.float32)
            wts = np.zeros((TRAIN_BATCH, n), np.float32)
            masks = np.zeros((TRAIN_BATCH, hybrid.MAX_WIDTH), np.float32)
            keys = [jax.random.PRNGKey(0)] * TRAIN_BATCH
            for j, i in enumerate(chunk):
                s = slots[i]
                z[j] = _pad_rows(s.prep.z, n)
                r[j] = _pad_rows(s.prep.r, n)
                wts[j, s.rows] = 1.0
                masks[j] = width_mask(s.width)
                keys[j] = jax.random.fold_in(jax.random.PRNGKey(s.seed), s.width)
            mlp0 = jax.vmap(hybrid.init_mlp)(jnp.stack(keys))
            params, _ = fit_mlps(
                mlp0, jnp.asarray(z), jnp.asarray(r), jnp.asarray(wts), jnp.asarray(masks)
            )
            params = jax.tree_util.tree_map(np.asarray, params)
            for j, i in enumerate(chunk):
                out[i] = hybrid.zero_masked_units(
                    jax.tree_util.tree_map(lambda a, j=j: a[j], params), masks[j]
                )
    return out


def _mlp_msle(mlp: hybrid.Params, prep: _Prepared, rows: np.ndarray) -> float:
    pred = hybrid.MLP.apply({"params": mlp}, jnp.asarray(prep.z[rows]), jnp.ones(hybrid.MAX_WIDTH))
    return float(np.mean((np.asarray(pred) - prep.r[rows]) ** 2))


def fit_jobs(
    jobs: list[FitJob], seed: int = 0, widths: tuple[int, ...] = MLP_WIDTHS
) -> list[hybrid.Params]:
    """Fit every job: polynomial search (L), then a vmapped MLP width search (M).

    Args:
      jobs: predictors to fit.
      seed: base PRNG seed; each job's MLP seed is :func:`job_seed` of the job and this.
      widths: MLP width candidates.

    Returns:
      One params pytree (numpy leaves, the layout of ``hybrid.zero_params()``) per job.
    """
    if not jobs:
        return []
    # The simulator turns on jax_enable_x64 process-wide, which changes the training
    # arithmetic (promoted scalars in the optimizer): train in float32 mode always, so a
    # fit made beside a simulation equals one made by the build command.
    with jax.enable_x64(False):
        return _fit_jobs(jobs, seed, widths)


def _fit_jobs(jobs: list[FitJob], seed: int, widths: tuple[int, ...]) -> list[hybrid.Params]:
    out: list[hybrid.Params | None] = [None] * len(jobs)
    mlp_jobs = []
    for i, job in enumerate(jobs):
        if job.grid is not None:
            out[i] = _fit_grid_job(job)
        elif job.knots and not job.mlp:
            out[i] = _fit_knots_only_job(job)
        else:
            mlp_jobs.append(i)
    fitted = _fit_mlp_jobs([jobs[i] for i in mlp_jobs], seed, widths)
    for i, params in zip(mlp_jobs, fitted, strict=True):
        out[i] = params
    return out


def _fit_grid_job(job: FitJob) -> hybrid.Params:
    """Polynomial + residual grid (zero MLP): no seed enters."""
    prep = _prepare(job)
    params = dict(prep.base)
    params["mlp"] = hybrid.zero_params()["mlp"]
    params["grid_a"] = np.asarray(job.grid, np.float32)
    params["grid_u0"], params["grid_u1"], params["grid_r"], _ = fit_grid(prep.v_all, prep.r_all)
    return params


def _fit_knots_only_job(job: FitJob) -> hybrid.Params:
    """Polynomial + knots on the full log-residual (zero MLP): no seed enters."""
    prep = _prepare(job)
    params = dict(prep.base)
    params["mlp"] = hybrid.zero_params()["mlp"]
    if job.steps:
        params["knot_u"], params["knot_r"], _, _ = fit_step_knots(
            prep.u0_all.astype(np.float64), prep.r_all.astype(np.float64), prep.lp_all
        )
    else:
        params["knot_u"], params["knot_r"] = fit_knots(prep.u0_all, prep.r_all.astype(np.float64))
    return params


def _fit_mlp_jobs(jobs: list[FitJob], seed: int, widths: tuple[int, ...]) -> list[hybrid.Params]:
    if not jobs:
        return []
    preps = [_prepare(j) for j in jobs]
    seeds = [job_seed(j, seed) for j in jobs]
    # Jobs with knots get a fixed small width: the knots interpolate what the MLP leaves,
    # so the width barely matters there (and the search would double their cost).
    chosen = [KNOT_MLP_WIDTH if job.knots else widths[-1] for job in jobs]
    search = [i for i, job in enumerate(jobs) if not job.knots]
    if len(widths) > 1 and search:
        # Width search: every (job, width) trained with every 5th row (offset 2) held out;
        # the width with the best held-out loss wins.
        entries = [(i, w) for i in search for w in widths]
        slots = []
        for i, w in entries:
            idx = np.arange(len(preps[i].r))
            slots.append(_Slot(preps[i], w, idx[idx % 5 != 2], seeds[i]))
        best: dict[int, tuple[float, int]] = {}
        for (i, w), mlp in zip(entries, _train_slots(slots), strict=True):
            idx = np.arange(len(preps[i].r))
            loss = _mlp_msle(mlp, preps[i], idx[idx % 5 == 2])
            if i not in best or loss < best[i][0] - 1e-9:
                best[i] = (loss, w)
        for i in search:
            chosen[i] = best[i][1]
    # Refit the chosen width of every job on all of its rows.
    mlps = _train_slots(
        [_Slot(p, w, np.arange(len(p.r)), s) for p, w, s in zip(preps, chosen, seeds, strict=True)]
    )
    out = []
    for prep, mlp in zip(preps, mlps, strict=False):
        params = dict(prep.base)
        params["mlp"] = mlp if prep.in_a is None else fold_input_map(mlp, prep.in_a, prep.in_b)
        if prep.u0_all is not None:
            smooth = hybrid.MLP.apply(
                {"params": mlp}, jnp.asarray(prep.z_all), jnp.ones(hybrid.MAX_WIDTH, jnp.float32)
            )
            params["knot_u"], params["knot_r"] = fit_knots(
                prep.u0_all, prep.r_all - np.asarray(smooth, np.float64)
            )
        out.append(params)
    return out


def _mlp_key() -> str:
    """Settings that change fitted MLPs (and, through :func:`job_seed`, their seeds)."""
    return (
        f"steps={NUM_STEPS}|widths={MLP_WIDTHS}|knot_width={KNOT_MLP_WIDTH}"
        f"|knots={hybrid.NUM_KNOTS},arith,merge|lr={PEAK_LR}|tau={TAU}|rows={ROW_BUCKETS}"
        f"|batch={TRAIN_BATCH}"
    )


def config_key() -> str:
    """Training settings that change fitted params (part of the training cache key).

    The residual-grid settings are not part of the MLP jobs' seeds (:func:`job_seed`
    hashes :func:`_mlp_key`): changing the grid leaves every MLP job's fit unchanged.
    """
    return (
        f"{_mlp_key()}|grid={hybrid.GRID_SIZE},{GRID_LAMBDAS},{GRID_RIDGE}|steps={STEP_CANDIDATES}"
    )


def widths_of(params: hybrid.Params) -> int:
    """Number of live hidden units in the first layer (for metadata)."""
    k = np.asarray(params["mlp"]["Dense_0"]["kernel"])
    return int(np.sum(np.any(k != 0, axis=0)))
