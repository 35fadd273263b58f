"""A sweep point's workload: its spec read and checked with JAX-free code (files exist,
counts and rates positive), then built into a :class:`~vidur_jax.workload.Workload`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from vidur_jax.errors import require
from vidur_jax.plan.tree import group, read_float, read_int
from vidur_jax.sim.conf_defaults import value as _conf  # JAX-free: plain YAML

WORKLOAD_KINDS = ("synthetic", "replay")
RATE_ARRIVALS = ("poisson", "gamma")


def _path(value: Any, what: str) -> str:
    require(isinstance(value, str) and value, f"{what} must be a file path, got {value!r}")
    path = os.path.abspath(os.path.expanduser(value))
    require(
        os.path.isfile(path),
        f"{what}: file not found: {path} (set data_dir= or VIDUR_JAX_DATA to the Vidur data root)",
    )
    return path


def workload_spec(tree: Mapping[str, Any], check_files: bool = True) -> dict[str, Any]:
    """Checked, self-contained workload spec (absolute paths, qps injected, seed)."""
    path = _path if check_files else (lambda value, what: value)
    wl = group(tree, "workload")
    kind = wl.get("kind", "synthetic")
    require(kind in WORKLOAD_KINDS, f"workload.kind={kind!r}; allowed: {', '.join(WORKLOAD_KINDS)}")
    spec: dict[str, Any] = {
        "kind": kind,
        "name": str(wl.get("name", kind)),
        "num_requests": read_int("workload.num_requests", wl.get("num_requests")),
        "max_tokens": read_int("workload.max_tokens", wl.get("max_tokens")),
        "seed": read_int("seed", tree.get("seed", _conf("", "seed"))),
        # parallel sampling / beam width per request: int or {kind: fixed|choice, ...}
        "num_seqs": wl.get("num_seqs"),
    }
    require(spec["num_requests"] >= 1, f"workload.num_requests={spec['num_requests']} must be >= 1")
    spec["system_prompt"] = _system_prompt_spec(tree, wl.get("system_prompt"))
    spec["sessions"] = _sessions_spec(tree, wl.get("sessions"))
    qps = wl.get("qps")
    if qps is not None:
        qps = read_float("workload.qps", qps)
        require(qps > 0 and qps < float("inf"), f"workload.qps={qps} must be > 0")
    spec["qps"] = qps
    if kind == "replay":
        spec["path"] = path(wl.get("path"), "workload.path")
        sched = tree.get("scheduler") if isinstance(tree.get("scheduler"), Mapping) else {}
        spec["block_size"] = read_int("scheduler.block_size", sched.get("block_size", _conf("scheduler", "block_size")))
        for k in ("prefill_scale_factor", "decode_scale_factor", "time_scale_factor"):
            spec[k] = read_float(f"workload.{k}", wl.get(k, 1.0))
            require(spec[k] > 0, f"workload.{k}={spec[k]} must be > 0")
        spec["hash_block_tokens"] = read_int("workload.hash_block_tokens", wl.get("hash_block_tokens", 512))
        require(spec["hash_block_tokens"] >= 1, f"workload.hash_block_tokens={spec['hash_block_tokens']} must be >= 1")
        return spec
    arrival = dict(wl.get("arrival") or {})
    lengths = dict(wl.get("lengths") or {})
    require("kind" in arrival, "workload.arrival.kind is missing (poisson, gamma, static, trace)")
    require("kind" in lengths, "workload.lengths.kind is missing (fixed, uniform, zipf, trace)")
    if arrival["kind"] in RATE_ARRIVALS:
        require(qps is not None, f"workload.qps is needed by {arrival['kind']} arrivals")
        arrival.setdefault("qps", qps)
    for part, what in ((arrival, "arrival"), (lengths, "lengths")):
        if part.get("kind") == "trace":
            part["path"] = path(part.get("path"), f"workload.{what}.path")
    spec["arrival"], spec["lengths"] = arrival, lengths
    return spec


def _system_prompt_spec(tree: Mapping[str, Any], sp: Any) -> dict[str, Any] | None:
    """Checked ``workload.system_prompt``: ``{num_prompts, tokens, fraction, popularity}``
    (None = no shared prefixes). The block size of the hashes is the scheduler's."""
    if sp is None:
        return None
    require(isinstance(sp, Mapping), f"workload.system_prompt must be a mapping, got {sp!r}")
    unknown = set(sp) - {"num_prompts", "tokens", "fraction", "popularity"}
    require(not unknown, f"workload.system_prompt: unknown keys {sorted(unknown)}; "
            "allowed: num_prompts, tokens, fraction, popularity")
    out = {
        "num_prompts": read_int("workload.system_prompt.num_prompts", sp.get("num_prompts", 1)),
        "tokens": read_int("workload.system_prompt.tokens", sp.get("tokens")),
        "fraction": read_float("workload.system_prompt.fraction", sp.get("fraction", 1.0)),
        "popularity": dict(sp.get("popularity") or {"kind": "uniform"}),
    }
    require(out["num_prompts"] >= 1, f"workload.system_prompt.num_prompts={out['num_prompts']} must be >= 1")
    require(out["tokens"] >= 1, f"workload.system_prompt.tokens={out['tokens']} must be >= 1")
    require(0.0 <= out["fraction"] <= 1.0, f"workload.system_prompt.fraction={out['fraction']} must be in [0, 1]")
    require(out["popularity"].get("kind", "uniform") in ("uniform", "zipf"),
            f"workload.system_prompt.popularity.kind={out['popularity'].get('kind')!r}; allowed: uniform, zipf")
    sched = tree.get("scheduler") if isinstance(tree.get("scheduler"), Mapping) else {}
    out["block_size"] = read_int("scheduler.block_size", sched.get("block_size", _conf("scheduler", "block_size")))
    return out


def _sessions_spec(tree: Mapping[str, Any], ss: Any) -> dict[str, Any] | None:
    """Checked ``workload.sessions``: ``{num_sessions, turns, think_time_s}`` (None = none);
    a ``workload.system_prompt`` then opens a ``fraction`` of the sessions."""
    if ss is None:
        return None
    require(isinstance(ss, Mapping), f"workload.sessions must be a mapping, got {ss!r}")
    unknown = set(ss) - {"num_sessions", "turns", "think_time_s"}
    require(not unknown, f"workload.sessions: unknown keys {sorted(unknown)}; allowed: num_sessions, turns, think_time_s")
    out = {
        "num_sessions": read_int("workload.sessions.num_sessions", ss.get("num_sessions")),
        "turns": dict(ss.get("turns") or {"kind": "fixed", "n": 1}),
        "think_time_s": read_float("workload.sessions.think_time_s", ss.get("think_time_s", 0.0)),
    }
    require(out["num_sessions"] >= 1, f"workload.sessions.num_sessions={out['num_sessions']} must be >= 1")
    require(out["think_time_s"] >= 0, f"workload.sessions.think_time_s={out['think_time_s']} must be >= 0")
    sched = tree.get("scheduler") if isinstance(tree.get("scheduler"), Mapping) else {}
    out["block_size"] = read_int("scheduler.block_size", sched.get("block_size", _conf("scheduler", "block_size")))
    return out


def build_workload(spec: Mapping[str, Any]):
    """The :class:`~vidur_jax.workload.Workload` of a :func:`workload_spec` (imports JAX)."""
    import jax

    from vidur_jax import workload

    wl = _build_requests(spec)
    if spec.get("num_seqs") is not None:
        key = jax.random.fold_in(jax.random.PRNGKey(spec["seed"]), 7)
        wl = workload.with_num_seqs(wl, spec["num_seqs"], key)
    if spec.get("sessions") is not None:
        return _build_sessions(spec, wl)
    if spec["kind"] == "replay":
        wl = _trace_block_ids(spec, _trace_sessions(spec, wl))
        require(wl.prefix_hashes is None or spec.get("system_prompt") is None,
                "workload.system_prompt cannot be added to a trace with session_id or hash_ids "
                "(its prompts hold their own prefixes)")
    if spec.get("system_prompt") is not None:
        key = jax.random.fold_in(jax.random.PRNGKey(spec["seed"]), 11)
        wl = workload.with_system_prompts(wl, key, max_tokens=spec["max_tokens"], **spec["system_prompt"])
    return wl


def _build_sessions(spec: Mapping[str, Any], base):
    """Multi-turn sessions over ``base``'s rows (starts, then message lengths)."""
    import jax

    from vidur_jax.workload import prefix

    sp = spec.get("system_prompt") or {}
    return prefix.sessions_from(
        base, jax.random.fold_in(jax.random.PRNGKey(spec["seed"]), 13), max_tokens=spec["max_tokens"],
        system_prompt_tokens=sp.get("tokens", 0), num_system_prompts=sp.get("num_prompts", 1),
        system_prompt_fraction=sp.get("fraction", 1.0), **spec["sessions"])


#: Optional replay-trace columns: a session id per row (its turns share their
#: conversation's prefix) and the think time before a later turn (then closed loop).
SESSION_COLUMNS = ("session_id", "think_time_s")


def _trace_sessions(spec: Mapping[str, Any], wl):
    """The replayed workload with the trace's sessions, when it has a ``session_id`` column."""
    import pandas as pd

    from vidur_jax.workload import prefix
    from vidur_jax.workload._common import read_trace_csv

    cols = [c for c in SESSION_COLUMNS if c in pd.read_csv(spec["path"], nrows=0).columns]
    if "session_id" not in cols:
        return wl
    df = read_trace_csv(spec["path"], cols).iloc[: wl.num_requests]
    think = df["think_time_s"].to_numpy() if "think_time_s" in cols else None
    return prefix.trace_sessions(wl, df["session_id"].to_numpy().astype("int64"), think, spec["block_size"])


#: Optional replay-trace column (the Mooncake trace format): per row, the ids of its
#: prompt's ``workload.hash_block_tokens``-token blocks, e.g. ``"[12, 13, 40]"``.
HASH_IDS_COLUMN = "hash_ids"


def parse_hash_ids(cells, path: str) -> list[list[int]]:
    """Block ids of each ``hash_ids`` cell: the integers it lists, in order (``"[1, 2]"``,
    ``"1 2"``; an empty cell lists none). A cell with anything else is refused."""
    import re

    out = []
    for i, cell in enumerate(cells):
        text = "" if cell is None or (isinstance(cell, float) and cell != cell) else str(cell)
        require(re.fullmatch(r"[\s\[\],0-9]*", text) is not None,
                f"trace file {path!r} data row {i}: hash_ids={text!r} must list integers >= 0, e.g. [1, 2, 3]")
        out.append([int(x) for x in re.findall(r"[0-9]+", text)])
    return out


def _trace_block_ids(spec: Mapping[str, Any], wl):
    """The replayed workload with block hashes from the trace's ``hash_ids`` column, when it
    has one (they replace the hashes a ``session_id`` column gives; its closed loop stays)."""
    import pandas as pd

    from vidur_jax.workload import prefix

    if HASH_IDS_COLUMN not in pd.read_csv(spec["path"], nrows=0).columns:
        return wl
    cells = pd.read_csv(spec["path"], usecols=[HASH_IDS_COLUMN], dtype=str)[HASH_IDS_COLUMN]
    ids = parse_hash_ids(cells.iloc[: wl.num_requests].tolist(), spec["path"])
    return prefix.with_trace_blocks(wl, ids, spec["hash_block_tokens"], spec["block_size"])


def _build_requests(spec: Mapping[str, Any]):
    import jax

    from vidur_jax import workload

    if spec["kind"] == "replay":
        return workload.load_trace(
            spec["path"],
            max_tokens=spec["max_tokens"],
            prefill_scale_factor=spec["prefill_scale_factor"],
            decode_scale_factor=spec["decode_scale_factor"],
            time_scale_factor=spec["time_scale_factor"],
            num_requests=spec["num_requests"],
        )
    return workload.synthetic(
        jax.random.PRNGKey(spec["seed"]),
        spec["num_requests"],
        spec["arrival"],
        spec["lengths"],
        spec["max_tokens"],
    )
