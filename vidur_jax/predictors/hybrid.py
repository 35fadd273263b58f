"""The hybrid MLP + polynomial execution-time model (pure JAX).

Every operation predictor has the same parameter pytree, so predictors for different
(model, device, TP) can be stacked along a leading axis and vmapped. Inputs are
always three *internal* features ``x = feats * feat_scale + feat_const`` (shape
``(..., 3)``): user features occupy the first dims, the remaining dims are constants
stored in the params (e.g. attention heads per device), so one tree fits every op.

The prediction in milliseconds is::

    x         = max(x, expm1(lo)) on user dims  # held at the profiled lower edge
    poly_c(x) = sum_k c[k] * prod_j (x_j / x_max_j) ** exponents[k, j]   (c >= 0)
    u         = log1p(x);   z = (u - z_mu) / z_sd
    w(x)      = exp(-dist(u, [lo, hi])**2 / tau**2)    # 1 inside the profiled box
    knots(u)  = piecewise-linear interpolation of knot_r at knot_u, in u_0 = log1p(x_0)
    grid(x)   = bilinear interpolation of grid_r at (grid_u0 x grid_u1), in v = log1p(grid_a @ x)
    far(x)    = s(x) * log poly_coef(x) + (1 - s(x)) * log poly_coef_in(x)   # s: share above
    log y     = w(x) * (log poly_coef_in(x) + mlp(z) + knots(u) + grid(x)) + (1 - w(x)) * far(x)
    y         = out_scale * exp(log y)

Two non-negative polynomials share one physical basis (tokens, FLOPs, bytes): ``coef_in``
is fitted on every row with equal relative weight and is the base the MLP corrects
inside the profiled box (interpolation); ``coef`` is fitted with emphasis on the largest
sizes and takes over beyond the box (extrapolation), where the blend weight ``w`` fades
the interpolating part out smoothly (``w`` is C1: squared hinge). Below the box the user
features are clamped to its lower edge (launch-bound: the time of the smallest profiled
size, derivative 0); only constant dims (a transfer model's heads) can lie below it, and
there ``coef_in`` extrapolates. The MLP learns the smooth part of the log-residual; for
1-feature ops the knots then carry what is left at the profiled points (GEMM wave
quantization steps, L2-spill kinks), which a smooth network cannot follow: inside the
range this is linear interpolation between profiled points, like the neighbour
averaging of Vidur's forests (attention and shape-transfer jobs keep zero knots), except
where the compute token ops' knots carry a step (extra knot pairs one token apart, see
``train.fit_step_knots``: a size between two rows on different wave-quantization
plateaus gets one plateau). The profiled token and network ops ship without the MLP
(``datasets.TOKEN_MLP`` / ``NETWORK_MLP`` False: its params are zero), so their knots
interpolate the residual over ``coef_in`` directly and no seed enters their fit.
2-feature ops (attention) use the residual *grid* instead of the MLP: the log-residual
over ``coef_in`` on a tensor grid of two log coordinates ``v = log1p(grid_a @ x)`` (prefill:
``kv + chunk`` and ``chunk``; decode: ``batch`` and ``kv``), nodes at the profiled values,
fitted by penalized least squares (see ``train.fit_grid``): exact at the profiled points
up to a smoothing chosen by cross-validation, no random initialization, so the fit is a
function of the profile rows alone. The grid holds its edge values beyond its nodes, and
``w`` fades it out beyond the profiled box as it does the MLP. The composite is
continuous everywhere and differentiable except at knots, grid lines and the lower edge.
``out_scale`` carries device transfer factors (and is 0 for
ops that a model does not have). Predictions are raw kernel times: Vidur's GQA attention
batching overhead is applied by the simulator, not here.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

#: Number of internal features.
NUM_FEATURES = 3
#: Hidden width every MLP is padded to (zero units are exact no-ops).
MAX_WIDTH = 32
#: MLP depth (hidden layers); fixed so that trees match.
DEPTH = 2
#: Polynomial terms every predictor is padded to (zero coefficients).
MAX_TERMS = 20
#: Largest monomial exponent.
MAX_EXPONENT = 3

#: Residual knots per predictor (1-feature ops; the profiles have <= ~260 points).
NUM_KNOTS = 256

#: Residual-grid nodes per axis (2-feature ops; the A100 attention profiles have <= 187
#: distinct ``kv + chunk`` and 37 chunk sizes, 128 batch sizes and 21 KV sizes).
GRID_SIZE = (192, 48)

#: Smallest polynomial value (ms) before taking logs (keeps zero polynomials finite).
POLY_FLOOR = 1e-9

Params = dict[str, Any]


class MaskedMLP(nn.Module):
    """Tanh MLP ``R^3 -> R`` whose hidden units can be switched off by a 0/1 mask.

    The mask lets candidates of different widths share one compiled training step;
    after training, masked units are zeroed so the plain (all-ones mask) network is
    exactly the narrow one.
    """

    width: int = MAX_WIDTH
    depth: int = DEPTH

    @nn.compact
    def __call__(self, z: jax.Array, mask: jax.Array) -> jax.Array:
        """Args: z ``(..., 3)`` standardized log features; mask ``(width,)``. Returns ``(...)``."""
        h = z
        mask = mask.astype(z.dtype)  # a float64 mask (jax_enable_x64) must not promote h
        for _ in range(self.depth):
            h = jnp.tanh(nn.Dense(self.width)(h)) * mask
        return nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[..., 0]


MLP = MaskedMLP()


def init_mlp(key: jax.Array) -> Params:
    """Fresh MLP parameters (output layer zero, so the initial correction is 0)."""
    return MLP.init(key, jnp.zeros((1, NUM_FEATURES)), jnp.ones((MAX_WIDTH,)))["params"]


def zero_masked_units(mlp: Params, mask: np.ndarray) -> Params:
    """Zero every weight touching a masked hidden unit (exact for the tanh MLP).

    Args:
      mlp: flax params of :class:`MaskedMLP` (numpy or jax arrays).
      mask: ``(MAX_WIDTH,)`` 0/1.
    """
    m = np.asarray(mask, dtype=np.float32)
    out = jax.tree_util.tree_map(lambda a: np.array(a, dtype=np.float32), mlp)
    for i in range(DEPTH):
        layer = out[f"Dense_{i}"]
        layer["kernel"] = layer["kernel"] * m[None, :]
        layer["bias"] = layer["bias"] * m
        if i > 0:
            layer["kernel"] = layer["kernel"] * m[:, None]
    last = out[f"Dense_{DEPTH}"]
    last["kernel"] = last["kernel"] * m[:, None]
    return out


def powers(s: jax.Array) -> jax.Array:
    """``[1, s, s^2, s^3]`` stacked on a new last axis, without ``pow`` (safe grads at 0)."""
    s2 = s * s
    return jnp.stack([jnp.ones_like(s), s, s2, s2 * s], axis=-1)


def poly_terms(x: jax.Array, x_max: jax.Array, exponents: jax.Array) -> jax.Array:
    """Monomial features.

    Args:
      x: ``(N, 3)`` internal features.
      x_max: ``(3,)`` normalizers.
      exponents: ``(P, 3)`` integer-valued exponents in ``[0, MAX_EXPONENT]``.

    Returns:
      ``(N, P)`` values of ``prod_j (x_j / x_max_j) ** exponents[p, j]``.
    """
    pw = powers(x / x_max)  # (N, 3, E)
    onehot = (exponents[..., None] == jnp.arange(MAX_EXPONENT + 1)).astype(x.dtype)  # (P, 3, E)
    per_dim = jnp.einsum("nje,pje->npj", pw, onehot)
    return jnp.prod(per_dim, axis=-1)


def box_weight(
    u: jax.Array, lo: jax.Array, hi: jax.Array, tau: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Blend weights for points ``u`` ``(N, 3)`` (log1p space) and the box ``[lo, hi]``.

    Returns:
      ``(w, s)``, each ``(N,)``: ``w`` is 1 inside the box with a Gaussian decay outside;
      ``s`` in [0, 1] is the share of the squared distance lying *above* the box (1 when
      every out-of-box dim is too large, 0 when every one is too small).
    """
    over = jnp.maximum(u - hi, 0.0)
    under = jnp.maximum(lo - u, 0.0)
    d2_over = jnp.sum(over * over, axis=-1)
    d2 = d2_over + jnp.sum(under * under, axis=-1)
    return jnp.exp(-d2 / (tau * tau)), d2_over / jnp.maximum(d2, 1e-12)


def internal_features(params: Params, feats: jax.Array) -> jax.Array:
    """Map user features ``(N, 3)`` (unused dims 0) to internal features ``(N, 3)``."""
    return feats * params["feat_scale"] + params["feat_const"]


def apply(params: Params, feats: jax.Array) -> jax.Array:
    """Predicted time in ms, ``(N,)``, for user features ``feats`` ``(N, 3)``.

    Pure and differentiable; usable inside ``jit``/``vmap``/``grad``.
    """
    x = internal_features(params, feats)
    # Below the profiled box (e.g. 1 token when the table starts at 2) every op is
    # launch-bound: user features are held at the box's lower edge, so the prediction is
    # the profiled value there (a forest does the same). Constant dims (e.g. the heads of
    # a transfer model) are not clamped: they extrapolate through the polynomials.
    x = jnp.where(params["feat_scale"] != 0, jnp.maximum(x, jnp.expm1(params["lo"])), x)
    terms = poly_terms(x, params["x_max"], params["exponents"])
    log_out = jnp.log(jnp.maximum(terms @ params["coef"], POLY_FLOOR))
    log_in = jnp.log(jnp.maximum(terms @ params["coef_in"], POLY_FLOOR))
    u = jnp.log1p(jnp.maximum(x, 0.0))
    z = (u - params["z_mu"]) / params["z_sd"]
    corr = MLP.apply({"params": params["mlp"]}, z, jnp.ones((MAX_WIDTH,), x.dtype))
    corr = corr + jnp.interp(u[..., 0], params["knot_u"], params["knot_r"])
    corr = corr + grid_residual(params, x)
    w, s = box_weight(u, params["lo"], params["hi"], params["tau"])
    # Above the range the large-size polynomial extrapolates; below it (only constant dims
    # can be) the all-rows one does, since its constant term is the launch floor.
    log_far = s * log_out + (1.0 - s) * log_in
    return params["out_scale"] * jnp.exp(w * (log_in + corr) + (1.0 - w) * log_far)


def _cell(nodes: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Left node index and clipped fraction of ``v`` ``(N,)`` between ``nodes`` ``(G,)``."""
    i = jnp.clip(jnp.searchsorted(nodes, v) - 1, 0, nodes.shape[0] - 2)
    t = jnp.clip((v - nodes[i]) / (nodes[i + 1] - nodes[i]), 0.0, 1.0)
    return i, t


def grid_residual(params: Params, x: jax.Array) -> jax.Array:
    """Bilinear residual-grid correction ``(N,)`` (log units) at internal features ``x`` ``(N, 3)``.

    Coordinates are ``v = log1p(x @ grid_a.T)`` ``(N, 2)``; outside the nodes the edge value
    holds. A zero ``grid_r`` (every op but fitted attention) contributes exactly 0.
    """
    v = jnp.log1p(jnp.maximum(x @ params["grid_a"].T, 0.0))
    i, t = _cell(params["grid_u0"], v[..., 0])
    j, s = _cell(params["grid_u1"], v[..., 1])
    g = params["grid_r"]
    return (1.0 - t) * ((1.0 - s) * g[i, j] + s * g[i, j + 1]) + t * (
        (1.0 - s) * g[i + 1, j] + s * g[i + 1, j + 1]
    )


def zero_params() -> Params:
    """A predictor that always returns 0 ms (ops a model or a TP degree does not have)."""
    mlp = jax.tree_util.tree_map(
        # shapes only (eval_shape): running flax's init costs ~1 s of eager dispatch
        lambda a: np.zeros(a.shape, np.float32),
        jax.eval_shape(init_mlp, jax.random.PRNGKey(0)),
    )
    return {
        "feat_scale": np.array([1.0, 1.0, 1.0], np.float32),
        "feat_const": np.zeros(3, np.float32),
        "x_max": np.ones(3, np.float32),
        "exponents": np.zeros((MAX_TERMS, 3), np.float32),
        "coef": np.zeros(MAX_TERMS, np.float32),
        "coef_in": np.zeros(MAX_TERMS, np.float32),
        "z_mu": np.zeros(3, np.float32),
        "z_sd": np.ones(3, np.float32),
        "lo": np.zeros(3, np.float32),
        "hi": np.zeros(3, np.float32),
        "tau": np.array(1.0, np.float32),
        "mlp": mlp,
        "out_scale": np.array(0.0, np.float32),
        "knot_u": np.arange(NUM_KNOTS, dtype=np.float32),
        "knot_r": np.zeros(NUM_KNOTS, np.float32),
        "grid_a": np.zeros((2, NUM_FEATURES), np.float32),
        "grid_u0": np.arange(GRID_SIZE[0], dtype=np.float32),
        "grid_u1": np.arange(GRID_SIZE[1], dtype=np.float32),
        "grid_r": np.zeros(GRID_SIZE, np.float32),
    }
