"""Compiled simulator executables kept on disk, so a new process skips trace, lower
and compile.

JAX's persistent compilation cache only skips the XLA compile: every process still
traces and lowers the event loop (~1-2 s for one config on the 2-core development
machine) before it can look the executable up. Here a compiled executable is
serialized (:mod:`jax.experimental.serialize_executable`) under a key computed from
what fixes it without tracing anything:

* the function's name and its static argument (:class:`~vidur_jax.sim.types.SimStatic`),
* the tree structure, shapes and dtypes of the array arguments,
* jax / jaxlib versions, the backend and its devices, ``XLA_FLAGS`` and ``jax_enable_x64``,
* a fingerprint of the ``vidur_jax`` sources (any code change is a new key).

A later process with the same key deserializes the executable (milliseconds) and calls
it. Files live in ``$VIDUR_JAX_CACHE/executables`` (default
``~/.cache/vidur_jax/executables``), are written atomically, and are ignored (and
replaced) when they cannot be read back. The store is on by default, next to JAX's
persistent cache (which keeps every other executable; :func:`stores_executables`);
``VIDUR_JAX_EXECUTABLE_STORE=0`` turns it off, and ``VIDUR_JAX_COMPILE_CACHE=0`` turns
it off together with JAX's cache (:func:`vidur_jax.app.enable_compile_cache`).

The same module keeps **capacity hints**: the slot/window capacities a (config,
workload) needed last time, so a repeat run starts at them instead of overflowing and
growing (each growth is a re-run and, cold, a compile).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

#: Bump to invalidate every stored executable (layout of the stored payload changed).
STORE_VERSION = 2


def enabled() -> bool:
    """Whether the on-disk store is used (``VIDUR_JAX_COMPILE_CACHE`` not ``0``)."""
    return os.environ.get("VIDUR_JAX_COMPILE_CACHE", "1").strip() != "0"


def stores_executables() -> bool:
    """Whether compiled executables are kept on disk (on unless
    ``VIDUR_JAX_EXECUTABLE_STORE=0`` or ``VIDUR_JAX_COMPILE_CACHE=0``).

    The store works next to JAX's persistent compilation cache, with one rule: an
    executable that JAX *loaded from its cache* is never written to the store (with jax
    0.10.2 on XLA:CPU its serialized form lacks its kernels, and calling it after loading
    fails with ``NOT_FOUND: Function <name> not found``; ``test_cold_start.py``). So what
    goes into the store is compiled with JAX's cache bypassed (:func:`_jax_cache_bypassed`;
    after a code change that is one full compile per shape, after which the store serves
    it), and executables from the store and from JAX's cache run side by side.
    """
    return enabled() and os.environ.get("VIDUR_JAX_EXECUTABLE_STORE", "1").strip() != "0"


#: Persistent-cache hits of JAX in each thread (jax.monitoring event, counted by
#: :func:`_count_jax_cache_hits` once registered).
_HITS = threading.local()
_LISTENING = []
#: Compiles in progress with JAX's persistent cache bypassed (:func:`_jax_cache_bypassed`).
_BYPASS = {"depth": 0, "saved": None}


def _jax_cache_hits() -> int:
    """JAX persistent-cache hits of this thread so far (starts counting at first call)."""
    if not _LISTENING:
        with _LOADED_LOCK:
            if not _LISTENING:
                jax.monitoring.register_event_listener(_count_jax_cache_hits)
                _LISTENING.append(True)
    return getattr(_HITS, "n", 0)


def _count_jax_cache_hits(event: str, **_: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":  # recorded in the compiling thread
        _HITS.n = getattr(_HITS, "n", 0) + 1


@contextlib.contextmanager
def _jax_cache_bypassed():
    """JAX's persistent compilation cache neither read nor written in this block.

    JAX decides once per process whether its cache is used
    (``compilation_cache.is_cache_used``, private); that decision is switched off for the
    block and restored when the last of any overlapping blocks ends (another thread's
    compile meanwhile skips JAX's cache: slower once, never wrong). Without that hook
    (another JAX layout) the block changes nothing and :func:`compiled` simply does not
    store what JAX's cache gave it.
    """
    try:
        from jax._src import compilation_cache as cc
        from jax._src import xla_bridge

        cc.is_cache_used(xla_bridge.get_backend())  # settle the process-wide decision first
        hook = hasattr(cc, "_cache_used")
    except (ImportError, AttributeError, RuntimeError):  # pragma: no cover - JAX layout changed
        hook = False
    if not hook:  # pragma: no cover
        yield
        return
    with _LOADED_LOCK:
        if _BYPASS["depth"] == 0:
            _BYPASS["saved"] = cc._cache_used
            cc._cache_used = False
        _BYPASS["depth"] += 1
    try:
        yield
    finally:
        with _LOADED_LOCK:
            _BYPASS["depth"] -= 1
            if _BYPASS["depth"] == 0:
                cc._cache_used = _BYPASS["saved"]


def cache_root() -> Path:
    """``$VIDUR_JAX_CACHE`` (default ``~/.cache/vidur_jax``)."""
    return Path(
        os.environ.get(
            "VIDUR_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vidur_jax")
        )
    )


#: Package files whose content keys the store: code and shipped data (predictor params).
_FINGERPRINTED = ("*.py", "*.npz", "*.json", "*.yaml", "*.csv")


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """sha256 over the ``vidur_jax`` package's code and shipped data (path + content).

    Any change to the code or to shipped parameters gives new keys, so a stale
    executable or prediction is never used. ~10 ms (~2.5 MB).
    """
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    paths = sorted(
        {
            p
            for pattern in _FINGERPRINTED
            for p in root.rglob(pattern)
            if "__pycache__" not in p.parts
        }
    )
    for path in paths:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _environment() -> tuple:
    import jaxlib

    devices = jax.local_devices()
    return (
        STORE_VERSION,
        jax.__version__,
        jaxlib.__version__,
        jax.default_backend(),
        tuple(d.device_kind for d in devices),
        os.environ.get("XLA_FLAGS", ""),
        bool(jax.config.jax_enable_x64),
        source_fingerprint(),
    )


def _leaf_signature(x: Any) -> tuple:
    if isinstance(x, jax.Array | np.ndarray | np.generic):
        return (tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)))
    return ("py", type(x).__name__, repr(x))


def key_for(name: str, static: Any, args: tuple) -> str:
    """Store key of ``name(static, *args)`` (hex sha256); no tracing involved."""
    leaves, treedef = jax.tree.flatten(args)
    sig = (
        name,
        repr(static),
        str(treedef),
        tuple(_leaf_signature(x) for x in leaves),
        _environment(),
    )
    return hashlib.sha256(repr(sig).encode()).hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: In-process executables by key, least recently used first (a process deserializes or
#: compiles each once while it stays here).
_LOADED: OrderedDict[str, Callable] = OrderedDict()
#: At most this many executables stay loaded. Each XLA:CPU executable of the event loop
#: maps hundreds of memory regions (~750 for a prefix-caching loop, measured with
#: ``/proc/self/maps``), and a process past ``vm.max_map_count`` (65,530 by default)
#: segfaults inside XLA while compiling or serializing; an unbounded table did that
#: to the full test suite after ~80 executables (32 x ~750 stays near 24,000; a
#: search needs ~12: init + advance per shape).
MAX_LOADED = 32
#: Guards ``_LOADED`` (a lookup's move-to-end must not race another thread's eviction).
_LOADED_LOCK = threading.Lock()
#: What the last :func:`compiled` call did, per key: "memory", "disk" or "compiled".
LAST_SOURCE: dict[str, str] = {}


def _load(path: Path) -> Callable | None:
    from jax.experimental import serialize_executable

    try:
        payload, in_tree, out_tree, device_ids = pickle.loads(path.read_bytes())
        by_id = {d.id: d for d in jax.local_devices()}
        # the devices it was compiled for (by default deserialization assumes all local
        # devices, and a one-device program then expects one shard per device)
        devices = [by_id[i] for i in device_ids]
        return serialize_executable.deserialize_and_load(
            payload, in_tree, out_tree, execution_devices=devices
        )
    except Exception:  # noqa: BLE001 - unreadable / from another build: recompile and replace
        return None


def compiled(name: str, jitted: Any, static: Any, *args: Any) -> Callable:
    """The executable of ``jitted(static, *args)``, from memory, disk, or compiled now.

    Args:
        name: a stable name of the function (part of the key).
        jitted: a ``jax.jit`` function whose first argument is static (``static``).
        static: the hashable static argument.
        *args: example array arguments (only their structure, shapes and dtypes matter).

    Returns:
        A callable taking ``*args`` (without ``static``).
    """
    key = key_for(name, static, args)
    with _LOADED_LOCK:  # search worker threads share this table
        exe = _LOADED.get(key)
        if exe is not None:
            _LOADED.move_to_end(key)
    if exe is not None:
        LAST_SOURCE[name] = "memory"
        return exe
    path = cache_root() / "executables" / f"{key}.bin"
    if stores_executables() and path.exists():
        exe = _load(path)
        if exe is not None:
            _keep_loaded(key, exe)
            LAST_SOURCE[name] = "disk"
            return exe
    store = stores_executables()
    hits = _jax_cache_hits()
    with _jax_cache_bypassed() if store else contextlib.nullcontext():
        exe = jitted.lower(static, *args).compile()
    LAST_SOURCE[name] = "compiled"
    if store and _jax_cache_hits() == hits:  # never what JAX's cache gave
        from jax.experimental import serialize_executable

        try:
            device_ids = sorted(
                {d.id for s in jax.tree.leaves(exe.input_shardings) for d in s.device_set}
            )
            _atomic_write_bytes(
                path, pickle.dumps((*serialize_executable.serialize(exe), device_ids))
            )
        except (OSError, pickle.PicklingError, TypeError, ValueError):
            pass  # a read-only or full cache dir costs the next process a compile, nothing else
    _keep_loaded(key, exe)
    return exe


def _keep_loaded(key: str, exe: Callable) -> None:
    """Remember ``exe`` under ``key``, dropping the least recently used past ``MAX_LOADED``."""
    with _LOADED_LOCK:
        _LOADED[key] = exe
        _LOADED.move_to_end(key)
        while len(_LOADED) > MAX_LOADED:
            _LOADED.popitem(last=False)


def clear_loaded() -> None:
    """Drop every in-process executable (with :func:`jax.clear_caches`, frees their memory)."""
    with _LOADED_LOCK:
        _LOADED.clear()


# ------------------------------------------------------------------ capacity hints


def _hint_path(key: str) -> Path:
    return cache_root() / "capacity" / f"{key}.json"


def hint_key(parts: tuple) -> str:
    """Key of a capacity hint: ``parts`` (configs, workload fingerprints, ...) + code."""
    return hashlib.sha256(repr((parts, source_fingerprint())).encode()).hexdigest()


def array_fingerprint(*arrays: Any) -> str:
    """sha256 of arrays' dtypes, shapes and bytes (a workload's identity)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def disk_memo(kind: str, parts: tuple, compute: Callable[[], int]) -> int:
    """``compute()`` (an int), remembered on disk under ``kind`` and ``parts`` + code."""
    key = hint_key((kind, parts))
    path = cache_root() / kind / f"{key}.json"
    if enabled():
        try:
            return int(json.loads(path.read_text())["value"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    value = int(compute())
    if enabled():
        try:
            _atomic_write_bytes(path, json.dumps({"value": value}).encode())
        except OSError:
            pass
    return value


def disk_array(kind: str, key: str, compute: Callable[[], Any]) -> np.ndarray:
    """``np.asarray(compute())``, stored as ``.npy`` under ``kind``/``key`` (exact bits)."""
    path = cache_root() / kind / f"{key}.npy"
    if enabled():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass
    value = np.asarray(compute())
    if enabled():
        import io

        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        try:
            _atomic_write_bytes(path, buf.getvalue())
        except OSError:
            pass
    return value


def disk_json(kind: str, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` (JSON-able), stored as JSON under ``kind``/``key``."""
    path = cache_root() / kind / f"{key}.json"
    if enabled():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    value = compute()
    if enabled():
        try:
            _atomic_write_bytes(path, json.dumps(value, sort_keys=True, default=str).encode())
        except (OSError, TypeError):
            pass
    return json.loads(json.dumps(value, default=str))


def read_hint(key: str) -> dict[str, int] | None:
    """The capacities stored under ``key``, or None."""
    if not enabled():
        return None
    try:
        data = json.loads(_hint_path(key).read_text())
    except (OSError, ValueError):
        return None
    return {k: int(v) for k, v in data.items() if isinstance(v, int)} or None


def write_hint(key: str, capacities: dict[str, int]) -> None:
    """Remember ``capacities`` under ``key`` (best effort)."""
    if not enabled():
        return
    try:
        _atomic_write_bytes(
            _hint_path(key), json.dumps({k: int(v) for k, v in capacities.items()}).encode()
        )
    except OSError:
        pass
