"""Save and load predictor parameters as ``.npz`` (arrays) + ``.json`` (metadata).

No pickle: the npz holds one float32 vector ``data`` (loaded with ``allow_pickle=False``);
the json's ``_arrays`` lists ``[name, shape, offset]`` for every leaf, named by its path
``"<op>/<path>/<leaf>"`` (e.g. ``"attn_decode/mlp/Dense_0/kernel"``). One array instead of
hundreds of zip members keeps each file small.
Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from vidur_jax.errors import ConfigError


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> ``{"a/b/c": array}``."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = np.asarray(value, dtype=np.float32)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _atomic_write(path: str, write) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(base: str, params: dict[str, Any], meta: dict) -> None:
    """Write ``base.npz`` and ``base.json`` atomically.

    Args:
      base: path without extension.
      params: ``{op: params pytree}``.
      meta: JSON-serializable metadata.
    """
    flat = flatten(params)
    index, chunks, offset = [], [], 0
    for name in sorted(flat):
        a = flat[name]
        index.append([name, list(a.shape), offset])
        chunks.append(a.reshape(-1))
        offset += a.size
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, data=data)
        os.chmod(tmp, 0o644)

    def write_json(tmp: str) -> None:
        # Readable metadata; the array index compact, one leaf per line (small files).
        text = json.dumps(
            {k: v for k, v in meta.items() if k != "_arrays"}, indent=1, sort_keys=True
        )
        rows = ",\n  ".join(json.dumps(row, separators=(",", ":")) for row in index)
        text = text[: text.rstrip().rfind("}")].rstrip()
        text += (",\n" if text != "{" else "\n") + f' "_arrays": [\n  {rows}\n ]\n}}\n'
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)

    _atomic_write(base + ".npz", write_npz)
    _atomic_write(base + ".json", write_json)


def load(base: str) -> tuple[dict[str, Any], dict]:
    """Read ``base.npz`` + ``base.json``; ConfigError (one line) if missing or unreadable."""
    if not (os.path.isfile(base + ".npz") and os.path.isfile(base + ".json")):
        raise ConfigError(f"predictor parameters not found: {base}.npz/.json")
    try:
        with open(base + ".json") as f:
            meta = json.load(f)
        with np.load(base + ".npz", allow_pickle=False) as npz:
            data = np.asarray(npz["data"], np.float32)
        flat = {}
        for name, shape, offset in meta.pop("_arrays"):
            size = int(np.prod(shape)) if shape else 1
            if offset + size > data.size:
                raise ValueError(f"array '{name}' runs past the end of the data")
            flat[name] = data[offset : offset + size].reshape(shape)
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as err:
        # Stale layouts (older format versions), truncated or hand-edited files.
        raise ConfigError(
            f"unreadable predictor parameters {base}.npz/.json: {type(err).__name__}: {err}"
        ) from err
    return unflatten(flat), meta


def files_hash(paths: list[str], extra: str = "") -> str:
    """Short content hash of files (missing files hash by name) plus ``extra``."""
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        h.update(p.encode())
        if os.path.isfile(p):
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


def cache_dir() -> str:
    """Cache folder for trained params: ``$VIDUR_JAX_CACHE`` or ``~/.cache/vidur_jax``."""
    return os.environ.get(
        "VIDUR_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vidur_jax")
    )
