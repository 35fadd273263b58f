"""Speculative decoding: a draft proposes ``k`` tokens, the target verifies them in one step.

Model (docs/speculative.md). Every decode iteration of a request is one *verify step*:

* the draft runs ``k`` autoregressive steps, one token per decoding sequence each (a
  separate draft model with its own weights and KV cache, or an ``"eagle"`` draft of one
  target decoder layer), each ending in the draft's LM head (timed as its up-projection
  GEMM scaled by vocabulary / up-projection width), and the draft also prefills every
  prompt chunk the target does;
* the target runs one forward pass in which every decoding sequence carries ``k + 1``
  query tokens (the dense ops see ``k + 1`` tokens per decode; decode attention is the
  profiled one-query time x a calibrated roofline ratio for ``k + 1`` queries,
  :mod:`vidur_jax.sim.precision`);
* the step emits ``N`` tokens, ``N = min(G, k + 1)`` with ``G`` geometric: each draft
  token is accepted with probability ``alpha`` given the previous ones were, so
  ``P(N = j) = alpha^(j-1) (1 - alpha)`` for ``j <= k`` and ``P(N = k + 1) = alpha^k``,
  ``E[N] = (1 - alpha^(k+1)) / (1 - alpha)``. ``alpha`` is one value, or drawn per
  request from a Beta distribution (``acceptance_spread``).

The accepted counts are drawn on the host (seeded, :func:`sample_steps`): a request with
``D`` output tokens (the first comes from its prefill) needs ``I`` verify steps to emit
the other ``D - 1``. The engine simulates those ``I`` steps as its decode iterations
(``SimParams.num_decode = I + 1``), and this module maps the engine's per-iteration
progress back to tokens where tokens matter: the KV length the attention reads and the
KV blocks a decode holds are ``prompt + 1 + g (iterations done)`` tokens, ``g = (D - 1)
/ I`` the request's realized tokens per step (exact at its last step). Request metrics
(TTFT, e2e, throughput) use the true ``D``; a TBT sample is the gap between two verify
steps (one emission of ``N`` tokens).

Off (``SimStatic.speculative`` False, every config ``k = 0``) nothing here is traced and
the simulation is today's, bit for bit. Fused runs of iterations are disabled while it
is on (one step per verify step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from vidur_jax.catalog.memory import EAGLE_DRAFT
from vidur_jax.errors import require
from vidur_jax.sim import timing
from vidur_jax.sim.types import SimParams, SimStatic, TimingTables

if TYPE_CHECKING:
    from vidur_jax.sim.build import DeploymentConfig
    from vidur_jax.sim.engine import _Row


def on(static: SimStatic) -> bool:
    """Speculative decoding is compiled in (some config of the call has ``k > 0``)."""
    return static.speculative


def expected_tokens_per_step(alpha: float | np.ndarray, k: int) -> np.ndarray:
    """Closed form ``(1 - alpha^(k+1)) / (1 - alpha)`` (``k + 1`` at ``alpha = 1``)."""
    a = np.asarray(alpha, np.float64)
    safe = np.where(a < 1.0, a, 0.0)
    return np.where(a < 1.0, (1.0 - safe ** (k + 1)) / (1.0 - safe), k + 1.0)


def validate(cfg: DeploymentConfig) -> None:
    """Refuse a speculative config the model cannot simulate (one line each; the checks
    of :func:`vidur_jax.plan.deployment.check_speculative`)."""
    import dataclasses

    from vidur_jax.plan.deployment import check_speculative

    k = cfg.spec_tokens
    require(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool),
        f"speculative.num_tokens={k!r} must be an integer >= 0",
    )
    check_speculative(dataclasses.asdict(cfg))


def draft_config(cfg: DeploymentConfig) -> DeploymentConfig:
    """The config whose timing bundle times the draft: the draft model (or, for an
    ``"eagle"`` draft, the target) at the target's precision, one query per sequence."""
    import dataclasses

    model = cfg.model if cfg.spec_draft == EAGLE_DRAFT else cfg.spec_draft
    return dataclasses.replace(cfg, model=model, spec_tokens=0)


def draft_predictor(predictor_for):
    """``predictor_for`` for draft bundles: a draft model without profiles (or shipped
    predictors) is timed by the calibrated roofline, with its warning."""

    def lookup(cfg: DeploymentConfig):
        from vidur_jax.errors import ConfigError

        try:
            return predictor_for(cfg)
        except ConfigError:
            from vidur_jax.predictors import roofline

            return _roofline(roofline, cfg.model, cfg.device, cfg.tensor_parallel_size)

    return lookup


_ROOFLINES: dict[tuple, object] = {}


def _roofline(roofline, model: str, device: str, tp: int):
    """One roofline predictor per (model, device, TP), so its tables are tabulated once."""
    key = (model, device, tp)
    if key not in _ROOFLINES:
        _ROOFLINES[key] = roofline.load_roofline(model, device, tp)
    return _ROOFLINES[key]


def draft_layers(cfg: DeploymentConfig) -> int:
    """Decoder layers one draft step runs (1 for ``"eagle"``)."""
    if cfg.spec_draft == EAGLE_DRAFT:
        return 1
    from vidur_jax import catalog

    return catalog.get_model(cfg.spec_draft).num_layers


def lm_head_scale(cfg: DeploymentConfig) -> float:
    """Time of the draft's LM head (hidden x vocab GEMM) over its ``mlp_up_proj`` (hidden x
    up-projection width) at the same token count: the ratio of their output widths, so
    the LM head is timed from the profiled (or roofline) up-projection of the same shape.
    Every draft step runs it once per sequence to propose its token (an ``"eagle"`` head
    uses the target's)."""
    from vidur_jax import catalog

    m = catalog.get_model(draft_config(cfg).model)
    up = (2 if m.use_gated_mlp else 1) * m.mlp_hidden_dim
    return m.vocab_size / up


def request_alphas(cfg: DeploymentConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) acceptance rate of each request: ``alpha``, or Beta(mean alpha, std spread)."""
    a, s = float(cfg.spec_acceptance), float(cfg.spec_acceptance_spread)
    if s == 0.0:
        return np.full(n, a)
    total = a * (1.0 - a) / (s * s) - 1.0
    return np.minimum(rng.beta(a * total, (1.0 - a) * total, size=n), 1.0 - 1e-9)


def draw_accepted(alpha: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Tokens one verify step emits for each alpha: ``min(Geometric(1 - alpha), k + 1)``."""
    a = np.asarray(alpha, np.float64)
    return np.minimum(rng.geometric(1.0 - a), k + 1).astype(np.int64)


def sample_steps(
    num_decode: np.ndarray, alpha: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Verify steps each request needs to emit its ``num_decode - 1`` tokens after the first.

    Args:
        num_decode: (R,) output tokens per request (>= 1; the first comes from the prefill).
        alpha: (R,) acceptance rate per request.
        k: draft tokens per step.
        rng: the config's generator (seeded).

    Returns:
        (R,) int64 steps (0 for a request with one output token).
    """
    left = np.maximum(np.asarray(num_decode, np.int64) - 1, 0)
    steps = np.zeros_like(left)
    active = left > 0
    while active.any():
        left[active] -= draw_accepted(alpha[active], k, rng)
        steps[active] += 1
        active = left > 0
    return steps


def params_fields(
    cfg: DeploymentConfig, decode: np.ndarray, mask: np.ndarray
) -> dict[str, np.ndarray]:
    """Host arrays of one config: the engine's decode iterations and tokens per step.

    Args:
        cfg: the config (``spec_tokens = 0``: decode unchanged, one token per step).
        decode: (n,) i32 output tokens per request (0 on padding).
        mask: (n,) bool real requests.

    Returns:
        ``{"num_decode": (n,) i32 iterations + 1, "spec_gain": (n,) f32 tokens per step}``.
    """
    if cfg.spec_tokens == 0:
        return {"num_decode": decode, "spec_gain": np.ones(decode.shape, np.float32)}
    rng = np.random.default_rng([int(cfg.seed), 0x5EC])
    alpha = request_alphas(cfg, decode.shape[0], rng)
    steps = sample_steps(np.maximum(decode, 1), alpha, int(cfg.spec_tokens), rng)
    gain = np.where(steps > 0, (np.maximum(decode, 1) - 1) / np.maximum(steps, 1), 1.0)
    return {
        "num_decode": np.where(mask, steps + 1, decode).astype(np.int32),
        "spec_gain": np.where(mask, gain, 1.0).astype(np.float32),
    }


# ----------------------------------------------------------------------------- in the engine


def tokens_held(
    params: SimParams, req: jax.Array, prefill: jax.Array, processed: jax.Array
) -> jax.Array:
    """(S,) KV tokens of each slot: ``processed`` in the prefill phase, and ``prompt + 1
    + g x (verify steps done)`` once decoding (``g`` the request's tokens per step).

    Args:
        req: (S,) i32 request ids (-1 = free).
        prefill, processed: (S,) i32 the engine's per-slot progress (iterations).
    """
    safe = jnp.clip(req, 0, params.num_prefill.shape[0] - 1)
    prompt = params.num_prefill[safe]
    done = jnp.maximum(processed - prompt - 1, 0).astype(jnp.float32)
    tokens = prompt + 1 + jnp.round(params.spec_gain[safe] * done).astype(jnp.int32)
    return jnp.where((req >= 0) & (processed > prefill), tokens, processed).astype(jnp.int32)


def view_fields(static: SimStatic, params: SimParams, row: _Row) -> dict:
    """Policy view under speculation: decodes hold their KV in tokens (blocks follow)."""
    return {"processed": tokens_held(params, row.req, row.prefill, row.processed)}


def batch_stage_time(
    tables: TimingTables,
    params: SimParams,
    row: _Row,
    active: jax.Array,
    num_tokens: jax.Array,
    is_prefill: jax.Array,
    num_seqs: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`timing.batch_stage_time` of a verify step plus its draft steps.

    Target: each decode carries ``k + 1`` tokens (``params.table_index`` is the bundle
    whose decode attention is scaled to ``k + 1`` queries). Draft (``params.spec_k = 0``:
    none): ``k`` steps of one token per decoding sequence plus the prefill chunks, on the
    draft bundle (``draft_table_index``) over ``draft_layers`` layers, without CPU
    overhead (counted once, with the target). Arguments as the engine's call.
    """
    kv = tokens_held(params, row.req, row.prefill, row.processed)
    k = params.spec_k
    verify = jnp.where(is_prefill, num_tokens, num_tokens * (k + 1))
    stage_s, last_s, flops, over = timing.batch_stage_time(
        tables, params, active, verify, kv, is_prefill, num_seqs
    )
    draft = params.replace(
        table_index=params.draft_table_index,
        layers_per_stage=params.draft_layers,
        cpu_overhead_ms=jnp.zeros_like(params.cpu_overhead_ms),
        cpu_overhead_on=jnp.zeros_like(params.cpu_overhead_on),
        flops_per_token=params.draft_flops_per_token,
    )
    on_k = (k > 0).astype(jnp.float32)
    dec_s, _, dec_flops, dec_over = timing.batch_stage_time(
        tables, draft, active & ~is_prefill, jnp.ones_like(num_tokens), kv, is_prefill, num_seqs
    )
    pre_s, _, pre_flops, pre_over = timing.batch_stage_time(
        tables, draft, active & is_prefill, num_tokens, kv, is_prefill, num_seqs
    )
    # each draft step ends in the LM head that proposes the token (one row per sequence)
    n_dec = jnp.where(active & ~is_prefill, num_seqs, 0).sum()
    n_pre = jnp.where(active & is_prefill, 1, 0).sum()
    dec_s = dec_s + _lm_head_s(tables, draft, n_dec)
    pre_s = pre_s + _lm_head_s(tables, draft, n_pre)
    draft_s = on_k * (k * dec_s + pre_s)
    draft_flops = on_k * (k * dec_flops + pre_flops)
    return (
        stage_s + draft_s,
        last_s + draft_s,
        flops + draft_flops,
        over | ((k > 0) & (dec_over | pre_over)),
    )


def _lm_head_s(tables: TimingTables, draft: SimParams, n: jax.Array) -> jax.Array:
    """() s of the draft's LM head over ``n`` rows: its ``mlp_up_proj`` time at ``n``
    tokens (rounded up to the table's token step) x ``draft_lm_head_scale``."""
    from vidur_jax.sim.types import OP_INDEX

    up = OP_INDEX["mlp_up_proj"]
    g = tables.token_ops.shape[1]
    idx = jnp.clip((n + tables.token_step - 1) // tables.token_step, 0, g - 1)
    ms = tables.token_ops[draft.table_index, idx, up] * draft.op_scale[up]
    return jnp.where(n > 0, ms * draft.draft_lm_head_scale, 0.0) * 1e-3


def summary(
    cfg: DeploymentConfig,
    num_decode: np.ndarray,
    completed: np.ndarray,
    fields: dict[str, np.ndarray],
) -> dict[str, float]:
    """Summary columns of a speculative config (none when off).

    Args:
        cfg: the config.
        num_decode: (n,) output tokens per request; completed: (n,) bool.
        fields: :func:`params_fields` of the config (its verify steps).

    Returns:
        ``spec_tokens_per_step`` (output tokens after the first over verify steps, of the
        completed requests) and ``spec_expected_tokens_per_step`` (the closed form at
        the config's alpha and k).
    """
    if cfg.spec_tokens == 0:
        return {}
    done = completed & (num_decode > 1)
    steps = float(np.sum(fields["num_decode"][done].astype(np.int64) - 1))
    return {
        "spec_tokens_per_step": float(np.sum(num_decode[done] - 1)) / steps
        if steps > 0
        else float("nan"),
        "spec_expected_tokens_per_step": float(
            expected_tokens_per_step(cfg.spec_acceptance, cfg.spec_tokens)
        ),
    }
