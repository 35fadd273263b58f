"""The per-layer operations Vidur profiles, written in JAX and sharded by TP like Vidur.

Each op is a small jitted function timed on its own (XLA would fuse neighbours in a real
model; timing them separately matches Vidur's per-op tables). Shapes per tensor-parallel
worker follow Vidur's ``mlp_impl.py``: column-parallel QKV and up projections (output
dim / TP), row-parallel output and down projections (input dim / TP), norms and adds on
the full hidden size, the embedding table split over the vocabulary. Query heads per
worker are ``n_head // tp``, KV heads ``ceil(n_kv_head / tp)`` (replicated when TP exceeds
the KV heads, as in the catalog).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from vidur_jax.profiles.loader import COMPUTE_OPS

#: Column order of ``mlp.csv`` (Vidur writes the timers in forward order).
MLP_OPS: tuple[str, ...] = ("emb", *COMPUTE_OPS)  # Vidur profiles the embedding too
NORM_EPS = 1e-5
ROPE_THETA = 10000.0


@dataclass(frozen=True)
class ModelShape:
    """The shape a profile is taken for (Vidur's ``ModelConfig`` subset).

    Attributes:
        name: ``<org>/<model>`` used in the output path.
        n_head, n_kv_head: query / KV heads.
        n_embd: hidden size; n_expanded_embd: MLP inner size.
        vocab_size: vocabulary; use_gated_mlp: SwiGLU (up proj emits 2x inner size).
        post_attn_norm: Llama-style second norm (else phi-2 style parallel block with
            LayerNorm and no ``post_attention_layernorm`` column).
        max_model_len: longest sequence (rope table, attention grid).
    """

    name: str
    n_head: int
    n_kv_head: int
    n_embd: int
    n_expanded_embd: int
    vocab_size: int
    use_gated_mlp: bool
    post_attn_norm: bool = True
    max_model_len: int = 4096

    @property
    def head_dim(self) -> int:
        """Elements per attention head."""
        return self.n_embd // self.n_head

    def q_heads(self, tp: int) -> int:
        """Query heads on one TP worker."""
        return self.n_head // tp

    def kv_heads(self, tp: int) -> int:
        """KV heads on one TP worker (replicated when ``tp > n_kv_head``)."""
        return math.ceil(self.n_kv_head / tp)

    def ops(self) -> tuple[str, ...]:
        """Ops (columns) this model has; no post-attention norm for phi-2-style blocks."""
        return tuple(o for o in MLP_OPS if self.post_attn_norm or o != "post_attention_layernorm")

    def check_tp(self, tp: int) -> None:
        """Raise ValueError unless ``tp`` shards heads, hidden and MLP sizes evenly (Vidur)."""
        for what, size in (
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("n_expanded_embd", self.n_expanded_embd),
        ):
            if size % tp:
                raise ValueError(f"tp={tp} does not divide {what}={size} of {self.name}")


def shape_from_catalog(model: str) -> ModelShape:
    """:class:`ModelShape` of a model in :mod:`vidur_jax.catalog` (name or alias)."""
    from vidur_jax.catalog import get_model

    m = get_model(model)
    return ModelShape(
        m.name,
        m.num_q_heads,
        m.num_kv_heads,
        m.embedding_dim,
        m.mlp_hidden_dim,
        m.vocab_size,
        m.use_gated_mlp,
        m.post_attn_norm,
        m.max_model_len,
    )


#: A tiny Llama-like shape for smoke runs (seconds on a CPU).
SMOKE_SHAPE = ModelShape(
    "smoke/tiny-llama",
    n_head=4,
    n_kv_head=2,
    n_embd=256,
    n_expanded_embd=512,
    vocab_size=1024,
    use_gated_mlp=True,
    post_attn_norm=True,
    max_model_len=256,
)


# ----------------------------------------------------------------------------- kernels


@jax.jit
def embed(table: jax.Array, ids: jax.Array) -> jax.Array:
    """Embedding lookup ``(n,) -> (n, E)`` of the local vocabulary shard."""
    return jnp.take(table, ids, axis=0, mode="clip")


@jax.jit
def rms_norm(x: jax.Array, w: jax.Array) -> jax.Array:
    """RMSNorm over the last axis (float32 accumulation, like vLLM's kernel)."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + NORM_EPS)
    return (y * w.astype(jnp.float32)).astype(x.dtype)


@jax.jit
def layer_norm(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """LayerNorm over the last axis (phi-2)."""
    xf = x.astype(jnp.float32)
    mu = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean((xf - mu) ** 2, axis=-1, keepdims=True)
    y = (xf - mu) * jax.lax.rsqrt(var + NORM_EPS)
    return (y * w.astype(jnp.float32) + b.astype(jnp.float32)).astype(x.dtype)


@jax.jit
def linear(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` (no bias: Llama projections have none)."""
    return jnp.dot(x, w)


@jax.jit
def rope(
    q: jax.Array, k: jax.Array, positions: jax.Array, cos_sin: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """NeoX-style rotary embedding of q ``(n, hq, d)`` and k ``(n, hkv, d)`` in place of Vidur's ``get_rope``."""
    cs = jnp.take(cos_sin, positions, axis=0)  # (n, d): [cos | sin]
    half = q.shape[-1] // 2
    cos, sin = cs[:, None, :half], cs[:, None, half:]

    def rot(x: jax.Array) -> jax.Array:
        x1, x2 = x[..., :half], x[..., half:]
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)

    return rot(q), rot(k)


@jax.jit
def silu_and_mul(x: jax.Array) -> jax.Array:
    """SwiGLU activation ``silu(x[:, :h]) * x[:, h:]`` (Vidur's ``SiluAndMul``)."""
    h = x.shape[-1] // 2
    return (jax.nn.silu(x[:, :h]) * x[:, h:]).astype(x.dtype)


@jax.jit
def gelu(x: jax.Array) -> jax.Array:
    """GELU for non-gated MLPs (phi-2)."""
    return jax.nn.gelu(x).astype(x.dtype)


@jax.jit
def add(a: jax.Array, b: jax.Array) -> jax.Array:
    """Residual add."""
    return a + b


# ----------------------------------------------------------------------------- inputs


def _normal(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: jnp.dtype, scale: float = 0.02
) -> jax.Array:
    """Random device array built on the host (no per-shape compile, unlike ``jax.random``).

    A block of at most 2**20 normal draws is tiled to the shape: values only need to be
    finite and non-degenerate for timing.
    """
    size = int(np.prod(shape))
    base = rng.standard_normal(min(max(size, 1), 1 << 20), dtype=np.float32) * scale
    return jnp.asarray(np.resize(base, shape).astype(jnp.dtype(dtype)))


def rope_table(max_pos: int, head_dim: int) -> np.ndarray:
    """``(max_pos, head_dim)`` table ``[cos | sin]`` of rotary angles (theta 10000)."""
    inv = 1.0 / (ROPE_THETA ** (np.arange(0, head_dim, 2) / head_dim))
    ang = np.arange(max_pos)[:, None] * inv[None, :]
    return np.concatenate([np.cos(ang), np.sin(ang)], axis=1)


def make_weights(
    shape: ModelShape, tp: int, dtype: jnp.dtype, rng: np.random.Generator
) -> dict[str, jax.Array]:
    """Per-worker weights (random, small) for one TP degree."""
    d, e = shape.head_dim, shape.n_embd
    hq, hkv = shape.q_heads(tp), shape.kv_heads(tp)
    inner = shape.n_expanded_embd // tp
    up = (2 if shape.use_gated_mlp else 1) * inner
    return {
        "emb": _normal(rng, (max(shape.vocab_size // tp, 1), e), dtype),
        "norm_w": jnp.ones((e,), dtype),
        "norm_b": jnp.zeros((e,), dtype),
        "w_qkv": _normal(rng, (e, (hq + 2 * hkv) * d), dtype),
        "w_o": _normal(rng, (hq * d, e), dtype),
        "w_up": _normal(rng, (e, up), dtype),
        "w_down": _normal(rng, (inner, e), dtype),
        "cos_sin": jnp.asarray(rope_table(max(shape.max_model_len, 1), d), dtype),
    }


def mlp_calls(
    shape: ModelShape,
    tp: int,
    num_tokens: int,
    weights: dict[str, jax.Array],
    dtype: jnp.dtype,
    rng: np.random.Generator,
) -> dict[str, tuple[Callable, tuple]]:
    """``{op: (jitted fn, args)}`` for every op of ``shape.ops()`` at ``num_tokens``."""
    n, d, e = num_tokens, shape.head_dim, shape.n_embd
    hq, hkv = shape.q_heads(tp), shape.kv_heads(tp)
    inner = shape.n_expanded_embd // tp
    x = _normal(rng, (n, e), dtype, 1.0)
    ids = jnp.asarray(rng.integers(0, max(shape.vocab_size // tp, 1), n, dtype=np.int32))
    positions = jnp.asarray(np.arange(n, dtype=np.int32) % max(shape.max_model_len, 1))
    q = _normal(rng, (n, hq, d), dtype, 1.0)
    k = _normal(rng, (n, hkv, d), dtype, 1.0)
    attn_out = _normal(rng, (n, hq * d), dtype, 1.0)
    up = _normal(rng, (n, (2 if shape.use_gated_mlp else 1) * inner), dtype, 1.0)
    act = _normal(rng, (n, inner), dtype, 1.0)
    w = weights
    if shape.post_attn_norm:
        norm = (rms_norm, (x, w["norm_w"]))
    else:
        norm = (layer_norm, (x, w["norm_w"], w["norm_b"]))
    calls = {
        "emb": (embed, (w["emb"], ids)),
        "input_layernorm": norm,
        "attn_pre_proj": (linear, (x, w["w_qkv"])),
        "attn_rope": (rope, (q, k, positions, w["cos_sin"])),
        "attn_post_proj": (linear, (attn_out, w["w_o"])),
        "post_attention_layernorm": norm,
        "mlp_up_proj": (linear, (x, w["w_up"])),
        "mlp_act": (silu_and_mul if shape.use_gated_mlp else gelu, (up,)),
        "mlp_down_proj": (linear, (act, w["w_down"])),
        "add": (add, (x, x)),
    }
    return {op: calls[op] for op in shape.ops()}


# ----------------------------------------------------------------------------- attention


def _attention(q, k, v, mask, implementation):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def _attention_causal(q, k, v, implementation):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)


attention_masked = jax.jit(_attention, static_argnames=("implementation",))
attention_causal = jax.jit(_attention_causal, static_argnames=("implementation",))
attention_full = jax.jit(
    lambda q, k, v, implementation: jax.nn.dot_product_attention(
        q, k, v, implementation=implementation
    ),
    static_argnames=("implementation",),
)


def chunk_mask(chunk: int, kv: int) -> np.ndarray:
    """``(1, 1, chunk, kv + chunk)`` bool mask: new token ``i`` sees keys ``<= kv + i``.

    ``is_causal`` in ``jax.nn.dot_product_attention`` aligns the diagonal top-left, which
    is only right when there is no KV cache, so chunked prefill passes this mask.
    """
    rows = np.arange(chunk)[:, None] + kv
    cols = np.arange(kv + chunk)[None, :]
    return (cols <= rows)[None, None]


def attention_call(
    shape: ModelShape,
    tp: int,
    point,
    dtype: jnp.dtype,
    rng: np.random.Generator,
    implementation: str | None,
) -> tuple[Callable, tuple]:
    """``(fn, args)`` for one :class:`~profiling.grids.AttentionPoint` (BTNH layout).

    Prefill: one sequence, ``chunk`` queries against ``kv + chunk`` keys. Decode:
    ``batch`` sequences, one query each, against ``kv + 1`` keys (the cache plus the new
    token), no mask. GQA is native (fewer KV heads than query heads).
    """
    d, hq, hkv = shape.head_dim, shape.q_heads(tp), shape.kv_heads(tp)
    if point.is_prefill:
        c, kv = point.prefill_chunk_size, point.kv_cache_size
        q = _normal(rng, (1, c, hq, d), dtype, 1.0)
        k = _normal(rng, (1, kv + c, hkv, d), dtype, 1.0)
        v = _normal(rng, (1, kv + c, hkv, d), dtype, 1.0)
        if kv == 0:
            return partial(attention_causal, implementation=implementation), (q, k, v)
        mask = jnp.asarray(chunk_mask(c, kv))
        return partial(attention_masked, implementation=implementation), (q, k, v, mask)
    b, kv = point.batch_size, point.kv_cache_size
    q = _normal(rng, (b, 1, hq, d), dtype, 1.0)
    k = _normal(rng, (b, kv + 1, hkv, d), dtype, 1.0)
    v = _normal(rng, (b, kv + 1, hkv, d), dtype, 1.0)
    return partial(attention_full, implementation=implementation), (q, k, v)
