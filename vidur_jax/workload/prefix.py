"""Shared prompt prefixes as data: segments, KV-block hashes, system prompts, sessions.

A prompt is a sequence of *segments*, each a run of tokens with a content id: a system
prompt shared by many requests, a user message, an earlier answer of the same
conversation. Two prompts hold the same first ``x`` tokens exactly when their segments
before the one containing token ``x`` are the same ids and lengths and that segment has
the same id. A full KV block (``block_size`` tokens) is identified, as in vLLM's
automatic prefix caching and SGLang's radix cache, by its whole prefix: block ``b`` of a
prompt gets the hash of (segments before it, the segment it ends in, its end offset).
:func:`block_hashes` computes those hashes for every request on the host, once; the
simulator's prefix cache compares them (DESIGN.md section 7). A hash is a non-negative
int64; ``NO_BLOCK`` (-1) marks a block that is not full or beyond ``max_blocks``.

Generators here add prefix structure to request tables:

* :func:`system_prompts` -- a fraction of requests start with one of several shared
  system prompts (chat assistants, agents, RAG templates);
* :func:`sessions` -- multi-turn conversations: turn ``t``'s prompt is the whole
  conversation so far (earlier messages and answers) plus a new user message, and the
  turn is sent a think time after the previous answer completes (closed loop). The
  arrival of a later turn depends on the simulation, so rows carry ``session_prev``
  (the previous turn's row) and ``think_time_s``; their ``arrived_at`` is the earliest
  possible time (previous arrival + think time), a lower bound the simulator replaces;
* :func:`hashes_from_trace_blocks` / :func:`with_trace_blocks` -- traces that publish
  per-request block hash ids (the Mooncake trace format: ``hash_ids`` per
  ``hash_block_tokens``-token block; a replay CSV's ``hash_ids`` column).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from vidur_jax.errors import require
from vidur_jax.workload._common import check_count, check_positive, numpy_rng

NO_BLOCK = -1
_MASK62 = np.uint64((1 << 62) - 1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on uint64 arrays (a bijection with good avalanche)."""
    with np.errstate(over="ignore"):
        x = (x + _GOLDEN).astype(np.uint64)
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)).astype(np.uint64)
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)).astype(np.uint64)
        return x ^ (x >> np.uint64(31))


def mix(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Order-sensitive 64-bit hash of two integers (broadcasting), as uint64."""
    a = np.asarray(a).astype(np.uint64)
    b = np.asarray(b).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix(_splitmix(a) ^ (b * np.uint64(0xD6E8FEB86659FD93)).astype(np.uint64))


@dataclass(frozen=True)
class Segments:
    """Content structure of each request's prompt.

    Attributes:
        ids: (R, S) int64 content id of each segment; -1 pads the unused tail.
        lens: (R, S) int64 tokens of each segment; 0 on padding.
    """

    ids: np.ndarray  # (R, S) i64 content ids, -1 padding
    lens: np.ndarray  # (R, S) i64 tokens, 0 padding

    @property
    def prompt_tokens(self) -> np.ndarray:
        """(R,) i64 prompt length = sum of segment lengths."""
        return self.lens.sum(axis=1)


def block_hashes(segments: Segments, block_size: int, max_blocks: int) -> np.ndarray:
    """Hash of every full KV block of every prompt, identified by its whole prefix.

    Args:
        segments: the prompts' segments (R requests, S segments at most).
        block_size: tokens per KV block (vLLM and Vidur: 16).
        max_blocks: K, how many leading blocks to hash (the cache probes no further).

    Returns:
        (R, K) int64 non-negative hashes; ``NO_BLOCK`` where block ``b`` is not full
        (``(b + 1) * block_size`` > prompt length).
    """
    bs = check_count("block_size", block_size)
    k = check_count("max_blocks", max_blocks)
    ids = np.asarray(segments.ids, np.int64)
    lens = np.asarray(segments.lens, np.int64)
    require(ids.shape == lens.shape and ids.ndim == 2, "segments: ids and lens must be (R, S)")
    r, s = ids.shape
    ends = np.cumsum(lens, axis=1)  # (R, S)
    starts = ends - lens
    # chain[:, j] identifies "segments 0..j-1 complete" (chain[:, 0] = empty prefix)
    chain = np.zeros((r, s + 1), np.uint64)
    for j in range(s):  # an empty segment (absent system prompt, padding) adds nothing
        step = mix(chain[:, j], mix(ids[:, j], lens[:, j]))
        chain[:, j + 1] = np.where(lens[:, j] > 0, step, chain[:, j])
    x = (np.arange(k, dtype=np.int64) + 1) * bs  # (K,) block end positions
    # segment holding token x-1: first j with ends[j] >= x
    seg = (ends[:, :, None] < x[None, None, :]).sum(axis=1)  # (R, K) first j: ends >= x
    seg = np.minimum(seg, max(s - 1, 0))
    rows = np.arange(r)[:, None]
    offset = x[None, :] - starts[rows, seg]
    h = mix(chain[rows, seg], mix(ids[rows, seg], offset)) & _MASK62
    full = x[None, :] <= ends[:, -1:] if s else np.zeros((r, k), bool)
    return np.where(full, h.astype(np.int64), NO_BLOCK)


def _draw_prompt_choice(
    rng: np.random.Generator, num_requests: int, num_prompts: int, popularity: Mapping[str, Any]
) -> np.ndarray:
    kind = popularity.get("kind", "uniform")
    if kind == "uniform":
        return rng.integers(0, num_prompts, size=num_requests)
    require(kind == "zipf", f"system prompt popularity kind={kind!r}; allowed: uniform, zipf")
    theta = check_positive("popularity.theta", popularity.get("theta", 1.0))
    weights = 1.0 / np.arange(1, num_prompts + 1) ** theta
    return rng.choice(num_prompts, size=num_requests, p=weights / weights.sum())


def system_prompts(
    key: jax.Array,
    num_prefill: np.ndarray,
    num_prompts: int,
    prompt_tokens: int,
    fraction: float = 1.0,
    popularity: Mapping[str, Any] | None = None,
) -> Segments:
    """Put a shared system prompt in front of a fraction of the requests.

    Args:
        key: PRNG key of the draws (who gets a system prompt, and which).
        num_prefill: (R,) the requests' own prompt tokens (the user part).
        num_prompts: distinct system prompts (content ids ``0 .. num_prompts - 1``).
        prompt_tokens: tokens of every system prompt.
        fraction: share of requests with a system prompt, in [0, 1].
        popularity: ``{"kind": "uniform"}`` (default) or ``{"kind": "zipf", "theta": t}``
            over the prompts.

    Returns:
        :class:`Segments` with two segments per request: the system prompt (absent:
        id -1, 0 tokens) and the request's own part (id ``2**40 + row``, unique).
    """
    p = np.asarray(num_prefill, np.int64)
    n = p.shape[0]
    m = check_count("num_prompts", num_prompts)
    length = check_count("prompt_tokens", prompt_tokens)
    f = float(fraction)
    require(0.0 <= f <= 1.0, f"system prompt fraction={fraction!r} must be in [0, 1]")
    rng = numpy_rng(key)
    has = rng.random(n) < f
    which = _draw_prompt_choice(rng, n, m, dict(popularity or {}))
    ids = np.stack([np.where(has, which, -1), (1 << 40) + np.arange(n)], axis=1)
    lens = np.stack([np.where(has, length, 0), p], axis=1)
    return Segments(ids.astype(np.int64), lens.astype(np.int64))


@dataclass(frozen=True)
class SessionTable:
    """Requests of multi-turn sessions, one row per turn, sorted by earliest arrival.

    Attributes:
        arrived_at: (R,) f64 s; first turns: the session's start; later turns: the
            earliest possible arrival (previous turn's + its think time).
        num_prefill: (R,) i64 prompt tokens = the whole conversation so far.
        num_decode: (R,) i64 answer tokens.
        session_id: (R,) i64 session of each row.
        turn: (R,) i64 turn index within the session, from 0.
        session_prev: (R,) i64 row of the previous turn, -1 for a first turn.
        think_time_s: (R,) f64 s between the previous answer's completion and this
            turn's arrival (0 for first turns).
        segments: the prompts' segments (system prompt, then user messages and answers).
        answer_id: (R,) i64 content id of each turn's answer (the segment later turns'
            prompts hold after this turn's prompt).
    """

    arrived_at: np.ndarray
    num_prefill: np.ndarray
    num_decode: np.ndarray
    session_id: np.ndarray
    turn: np.ndarray
    session_prev: np.ndarray
    think_time_s: np.ndarray
    segments: Segments
    answer_id: np.ndarray


def _turn_counts(rng: np.random.Generator, n: int, turns: Mapping[str, Any]) -> np.ndarray:
    kind = turns.get("kind", "fixed")
    if kind == "fixed":
        return np.full(n, check_count("turns.n", turns.get("n", 1)), np.int64)
    if kind == "uniform":
        lo, hi = (
            check_count("turns.min", turns.get("min")),
            check_count("turns.max", turns.get("max")),
        )
        require(hi >= lo, f"turns.max={hi} must be >= turns.min={lo}")
        return rng.integers(lo, hi + 1, size=n)
    require(kind == "geometric", f"turns.kind={kind!r}; allowed: fixed, uniform, geometric")
    mean = check_positive("turns.mean", turns.get("mean"))
    require(mean >= 1.0, f"turns.mean={mean} must be >= 1")
    return rng.geometric(1.0 / mean, size=n).astype(np.int64)


def sessions(
    key: jax.Array,
    session_starts: np.ndarray,
    turns: Mapping[str, Any],
    user_tokens: np.ndarray,
    answer_tokens: np.ndarray,
    think_time_s: float,
    max_tokens: int,
    system_prompt_tokens: int = 0,
    num_system_prompts: int = 1,
    system_prompt_fraction: float = 1.0,
) -> SessionTable:
    """Multi-turn conversations as rows of turns (closed loop: see the module doc).

    Args:
        key: PRNG key (turn counts, think times, system prompt choice).
        session_starts: (N,) f64 s, non-decreasing start time of each session.
        turns: turns per session: ``{"kind": "fixed", "n": k}``, ``{"kind": "uniform",
            "min": a, "max": b}`` or ``{"kind": "geometric", "mean": m}``.
        user_tokens: (T,) i64 user-message lengths, used in order (T >= total turns).
        answer_tokens: (T,) i64 answer lengths, used in order.
        think_time_s: mean think time (exponential), seconds; 0 sends the next turn as
            soon as the answer completes.
        max_tokens: context limit: a session ends before the turn whose conversation
            (prompt + answer) would exceed it.
        system_prompt_tokens: tokens of a shared system prompt opening every session
            (0: none).
        num_system_prompts: distinct system prompts, chosen uniformly per session.
        system_prompt_fraction: share of sessions that open with one, in [0, 1].

    Returns:
        :class:`SessionTable` sorted by earliest arrival (ties: session, then turn).
    """
    starts = np.asarray(session_starts, np.float64)
    n = starts.shape[0]
    require(n >= 1, "sessions: needs at least one session")
    limit = check_count("max_tokens", max_tokens)
    think = float(think_time_s)
    require(think >= 0.0 and np.isfinite(think), f"think_time_s={think_time_s!r} must be >= 0")
    sys_len = int(system_prompt_tokens)
    require(sys_len >= 0, f"system_prompt_tokens={system_prompt_tokens!r} must be >= 0")
    rng = numpy_rng(key)
    counts = _turn_counts(rng, n, dict(turns))
    user = np.asarray(user_tokens, np.int64)
    answer = np.asarray(answer_tokens, np.int64)
    require(
        user.shape == answer.shape and user.size >= counts.sum(),
        f"sessions: {n} sessions drew {int(counts.sum())} turns but the workload has "
        f"{user.size} rows of lengths; set workload.num_requests >= {int(counts.sum())} "
        "or lower workload.sessions.num_sessions",
    )
    which_sys = rng.integers(0, check_count("num_system_prompts", num_system_prompts), size=n)
    frac = float(system_prompt_fraction)
    require(0.0 <= frac <= 1.0, f"system prompt fraction={system_prompt_fraction!r} must be in [0, 1]")
    # its own stream, so that fraction 1 draws exactly what it drew without the knob
    has_sys = np.ones(n, bool) if frac >= 1.0 else numpy_rng(jax.random.fold_in(key, 1)).random(n) < frac
    rows: list[tuple] = []
    seg_rows: list[tuple[list[int], list[int]]] = []
    used = 0
    for sid in range(n):
        ids: list[int] = [int(which_sys[sid])] if sys_len and has_sys[sid] else []
        lens: list[int] = [sys_len] if sys_len and has_sys[sid] else []
        t_earliest, prev = starts[sid], -1
        for t in range(int(counts[sid])):
            u, a = int(user[used]), int(answer[used])
            used += 1
            if sum(lens) + u + a > limit:
                break
            gap = 0.0 if t == 0 else (rng.exponential(think) if think > 0 else 0.0)
            t_earliest = t_earliest + gap
            ids.append((1 << 41) + 2 * used)  # the user message: unique content
            lens.append(u)
            rows.append((t_earliest, sum(lens), a, sid, t, prev, gap, (1 << 41) + 2 * used + 1))
            seg_rows.append((list(ids), list(lens)))
            ids.append((1 << 41) + 2 * used + 1)  # the answer joins later prompts
            lens.append(a)
            prev = len(rows) - 1
    require(rows, f"sessions: every first turn exceeds max_tokens={limit}")
    table = np.array(rows, dtype=object)
    order = np.lexsort(
        (table[:, 4].astype(np.int64), table[:, 3].astype(np.int64), table[:, 0].astype(np.float64))
    )
    new_row = np.empty_like(order)
    new_row[order] = np.arange(order.size)
    prev_old = table[order, 5].astype(np.int64)
    session_prev = np.where(prev_old >= 0, new_row[np.maximum(prev_old, 0)], -1)
    width = max(len(s[0]) for s in seg_rows)
    seg_ids = np.full((len(rows), width), -1, np.int64)
    seg_lens = np.zeros((len(rows), width), np.int64)
    for i, old in enumerate(order):
        ids, lens = seg_rows[old]
        seg_ids[i, : len(ids)], seg_lens[i, : len(lens)] = ids, lens
    return SessionTable(
        arrived_at=table[order, 0].astype(np.float64),
        num_prefill=table[order, 1].astype(np.int64),
        num_decode=table[order, 2].astype(np.int64),
        session_id=table[order, 3].astype(np.int64),
        turn=table[order, 4].astype(np.int64),
        session_prev=session_prev.astype(np.int64),
        think_time_s=table[order, 6].astype(np.float64),
        segments=Segments(seg_ids, seg_lens),
        answer_id=table[order, 7].astype(np.int64),
    )


def conversation_hashes(segments: Segments, answer_id: np.ndarray, num_decode: np.ndarray,
                        block_size: int) -> np.ndarray:
    """Block hashes of each request's prompt *and* output (R, K), K covering the longest.

    vLLM caches full blocks of output tokens too; a later turn whose prompt repeats this
    turn's conversation (prompt + answer, segment ``answer_id``) hits them. Blocks past
    the prompt are only published when the request completes (its output's last token
    has no KV: ``(prompt + output - 1) // block_size`` full blocks).
    """
    ids = np.concatenate([segments.ids, np.asarray(answer_id, np.int64)[:, None]], axis=1)
    lens = np.concatenate([segments.lens, np.asarray(num_decode, np.int64)[:, None]], axis=1)
    k = max(int(((lens.sum(axis=1) - 1) // check_count("block_size", block_size)).max(initial=1)), 1)
    return block_hashes(Segments(ids, lens), block_size, k)


def session_workload(table: SessionTable, block_size: int = 16):
    """The :class:`~vidur_jax.workload.Workload` of a :class:`SessionTable`: its turns as
    requests with closed-loop fields (``session_prev``, ``think_time_s``) and the block
    hashes of their conversations (:func:`conversation_hashes`)."""
    import jax.numpy as jnp

    from vidur_jax.workload.build import make_workload

    wl = make_workload(table.arrived_at, table.num_prefill, table.num_decode, source="sessions")
    hashes = conversation_hashes(table.segments, table.answer_id, table.num_decode, block_size)
    return wl.replace(
        prefix_hashes=jnp.asarray(hashes, jnp.int64),
        prefix_block_size=int(block_size),
        session_id=jnp.asarray(table.session_id, jnp.int64),
        session_prev=jnp.asarray(table.session_prev, jnp.int32),
        think_time_s=jnp.asarray(table.think_time_s, jnp.float64),
    )


def sessions_from(workload, key, num_sessions: int, turns: Mapping[str, Any], think_time_s: float,
                  max_tokens: int, block_size: int = 16, system_prompt_tokens: int = 0,
                  num_system_prompts: int = 1, system_prompt_fraction: float = 1.0):
    """Multi-turn sessions drawn from a synthetic or replayed workload's rows.

    The first ``num_sessions`` arrival times start the sessions (so the workload's rate is
    the session start rate); its prompt and output lengths, in row order, are the user
    messages and answers of the turns.

    Args:
        workload: the base requests (at least ``num_sessions`` rows and as many as turns).
        key: PRNG key (turn counts, think times, system prompt choice).
        num_sessions, turns, think_time_s, max_tokens, system_prompt_tokens,
            num_system_prompts, system_prompt_fraction: as :func:`sessions`.
        block_size: tokens per KV block of the hashes.

    Returns:
        The session :class:`~vidur_jax.workload.Workload` (:func:`session_workload`).
    """
    mask = np.asarray(workload.mask)
    n = check_count("sessions.num_sessions", num_sessions)
    require(n <= int(mask.sum()),
            f"sessions.num_sessions={n} exceeds workload.num_requests={int(mask.sum())} (one row per session start)")
    starts = np.asarray(workload.arrived_at, np.float64)[mask][:n]
    user = np.asarray(workload.num_prefill, np.int64)[mask]
    answer = np.asarray(workload.num_decode, np.int64)[mask]
    table = sessions(key, starts, turns, user, answer, think_time_s, max_tokens,
                     system_prompt_tokens, num_system_prompts, system_prompt_fraction)
    return session_workload(table, block_size)


def hashes_from_trace_blocks(
    hash_ids: Sequence[Sequence[int]],
    num_prefill: np.ndarray,
    hash_block_tokens: int,
    block_size: int,
    max_blocks: int,
) -> np.ndarray:
    """KV-block hashes of a trace that publishes per-request block hash ids.

    The Mooncake trace format lists, per request, one id per ``hash_block_tokens``
    tokens of its prompt (the last block may be partial); equal ids mean equal content
    *and* equal prefix. Each trace block becomes a segment; the prompt tokens past the
    listed blocks form a unique segment.

    Args:
        hash_ids: per request, the trace's block ids.
        num_prefill: (R,) prompt tokens.
        hash_block_tokens: tokens per trace block (Mooncake: 512).
        block_size: the simulator's KV block size.
        max_blocks: K as in :func:`block_hashes`.

    Returns:
        (R, K) int64 hashes as :func:`block_hashes`.
    """
    p = np.asarray(num_prefill, np.int64)
    tb = check_count("hash_block_tokens", hash_block_tokens)
    width = max((len(h) for h in hash_ids), default=0) + 1
    ids = np.full((p.size, width), -1, np.int64)
    lens = np.zeros((p.size, width), np.int64)
    for i, hs in enumerate(hash_ids):
        covered = 0
        for j, h in enumerate(hs):
            take = int(min(tb, p[i] - covered))
            if take <= 0:
                break
            ids[i, j], lens[i, j] = int(h), take
            covered += take
        if p[i] > covered:
            ids[i, len(hs)], lens[i, len(hs)] = (1 << 42) + i, p[i] - covered
    return block_hashes(Segments(ids, lens), block_size, max_blocks)


def with_trace_blocks(workload, hash_ids: Sequence[Sequence[int]], hash_block_tokens: int,
                      block_size: int = 16):
    """A replayed workload (no padding) with the prefix hashes of its trace's block ids
    (:func:`hashes_from_trace_blocks`), K covering its longest prompt's full blocks.

    Args:
        workload: the replayed requests.
        hash_ids: per row, the trace's block ids (one list per request).
        hash_block_tokens: tokens per trace block (Mooncake: 512).
        block_size: the simulator's KV block size.
    """
    import jax.numpy as jnp

    prefill = np.asarray(workload.num_prefill, np.int64)
    require(len(hash_ids) == prefill.size, f"trace hash_ids has {len(hash_ids)} rows for {prefill.size} requests")
    k = max(int((prefill // check_count("block_size", block_size)).max(initial=1)), 1)
    hashes = hashes_from_trace_blocks(hash_ids, prefill, hash_block_tokens, block_size, k)
    return workload.replace(prefix_hashes=jnp.asarray(hashes, jnp.int64), prefix_block_size=int(block_size))


def with_system_prompts(
    workload,
    key: jax.Array,
    num_prompts: int,
    tokens: int,
    fraction: float = 1.0,
    popularity: Mapping[str, Any] | None = None,
    block_size: int = 16,
    max_tokens: int | None = None,
):
    """A workload whose requests (a ``fraction`` of them) start with a shared system prompt.

    The drawn system prompt (:func:`system_prompts`) goes in front of each chosen
    request's own prompt, which is shortened where needed so that prompt + output stays
    within ``max_tokens`` (the own part keeps at least one token). ``prefix_hashes``
    covers the system prompt's full blocks (``K = tokens // block_size``, at least 1):
    the block after them holds the request's own (unique) tokens, so no later block can
    be a hit.

    Args:
        workload: :class:`~vidur_jax.workload.Workload` (padding rows untouched).
        key: PRNG key of the draws.
        num_prompts, tokens, fraction, popularity: as :func:`system_prompts`.
        block_size: tokens per KV block of the hashes (the scheduler's ``block_size``).
        max_tokens: per-request limit on prompt + output tokens (None = no limit).

    Returns:
        The workload with ``num_prefill``, ``prefix_hashes`` and ``prefix_block_size`` set.
    """
    import jax.numpy as jnp

    mask = np.asarray(workload.mask)
    own = np.asarray(workload.num_prefill, np.int64)
    seg = system_prompts(key, own, num_prompts, tokens, fraction, popularity)
    lens = seg.lens.copy()
    if max_tokens is not None:
        room = int(max_tokens) - np.asarray(workload.num_decode, np.int64) - lens[:, 0]
        require(bool(np.all(room[mask & (lens[:, 0] > 0)] >= 1)),
                f"system prompt of {tokens} tokens leaves no room for the request within max_tokens={max_tokens}")
        lens[:, 1] = np.where(mask, np.clip(lens[:, 1], 1, np.maximum(room, 1)), lens[:, 1])
    seg = Segments(seg.ids, lens)
    hashes = block_hashes(seg, block_size, max(int(tokens) // int(block_size), 1))
    prefill = np.where(mask, seg.prompt_tokens, 0)
    return workload.replace(
        num_prefill=jnp.asarray(prefill, jnp.int32),
        prefix_hashes=jnp.asarray(np.where(mask[:, None], hashes, NO_BLOCK), jnp.int64),
        prefix_block_size=int(block_size),
    )


def trace_sessions(workload, session_id: np.ndarray, think_time_s: np.ndarray | None = None,
                   block_size: int = 16):
    """A replayed trace whose rows carry session ids, as multi-turn sessions.

    Rows of one session, in row (arrival) order, are its turns; a turn's prompt starts
    with the previous turn's whole conversation (its prompt + answer; where the trace's
    prompt is shorter, as much of it as fits before the turn's last token), followed by
    new tokens. With ``think_time_s`` a later turn arrives that long after the previous
    one completes (closed loop); without it every row keeps its trace arrival time
    (open loop) and only the prefixes are shared.

    Args:
        workload: the replayed requests (no padding).
        session_id: (R,) int session of each row (any integers).
        think_time_s: (R,) f64 s think time of each row (first turns: ignored), or None.
        block_size: tokens per KV block of the hashes.

    Returns:
        The workload with ``prefix_hashes`` and, with think times, the closed-loop fields.
    """
    import jax.numpy as jnp

    sid = np.asarray(session_id, np.int64)
    prefill = np.asarray(workload.num_prefill, np.int64)
    decode = np.asarray(workload.num_decode, np.int64)
    r = prefill.size
    require(sid.shape == (r,), f"trace session_id has {sid.size} values for {r} requests")
    prev = np.full(r, -1, np.int64)
    last: dict[int, int] = {}
    conv: list[tuple[list[int], list[int]]] = []  # each row's conversation (prompt + answer) segments
    ids = np.full((r, 1), -1, np.int64)
    seg_rows = []
    for i in range(r):
        p = last.get(int(sid[i]), -1)
        prev[i] = p
        s_ids, s_lens = ([], []) if p < 0 else (list(conv[p][0]), list(conv[p][1]))
        keep = int(prefill[i]) - 1 if p >= 0 and sum(s_lens) >= prefill[i] else sum(s_lens)
        cut_ids, cut_lens, used = [], [], 0  # the shared part: the parent's conversation, cut to fit
        for c_id, c_len in zip(s_ids, s_lens, strict=True):
            take = min(c_len, keep - used)
            if take <= 0:
                break
            cut_ids.append(c_id)
            cut_lens.append(take)
            used += take
        cut_ids.append((1 << 43) + 2 * i)  # the new user message
        cut_lens.append(int(prefill[i]) - used)
        seg_rows.append((cut_ids, cut_lens))
        conv.append((cut_ids + [(1 << 43) + 2 * i + 1], cut_lens + [int(decode[i])]))
        last[int(sid[i])] = i
    width = max(len(s[0]) for s in seg_rows)
    ids = np.full((r, width), -1, np.int64)
    lens = np.zeros((r, width), np.int64)
    for i, (a, b) in enumerate(seg_rows):
        ids[i, : len(a)], lens[i, : len(b)] = a, b
    answer = (1 << 43) + 2 * np.arange(r) + 1
    hashes = conversation_hashes(Segments(ids, lens), answer, decode, block_size)
    out = workload.replace(prefix_hashes=jnp.asarray(hashes, jnp.int64), prefix_block_size=int(block_size))
    if think_time_s is None:
        return out
    think = np.asarray(think_time_s, np.float64)
    require(think.shape == (r,) and bool(np.all(np.isfinite(think) & (think >= 0))),
            "trace think_time_s must be one finite value >= 0 per row")
    return out.replace(
        session_id=jnp.asarray(sid, jnp.int64),
        session_prev=jnp.asarray(prev, jnp.int32),
        think_time_s=jnp.asarray(np.where(prev >= 0, think, 0.0), jnp.float64),
    )
