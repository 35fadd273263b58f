"""Reading the composed config tree: composing it, its groups and their allowed keys,
typed values, and one-line messages for Hydra's errors (JAX- and pandas-free)."""

from __future__ import annotations

import copy
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vidur_jax.errors import ConfigError, require

#: Folder holding the Hydra config groups (shipped as package data).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Keys each config group may hold (a typo is an error, not a silently ignored knob).
GROUP_KEYS: dict[str, frozenset[str]] = {
    "model": frozenset({"name", "config", "weight_dtype", "kv_cache_dtype"}),
    "hardware": frozenset({"device", "network_device", "price_per_hour"}),
    "cluster": frozenset(
        {"tp", "pp", "num_replicas", "global_scheduler", "affinity_imbalance", "ep", "attention_dp",
         "prefill_replicas", "decode_replicas", "kv_inter_node_gbps", "kv_transfer_latency_s",
         "prefill_batch_cap", "decode_batch_cap", "prefill_device", "prefill_tp", "decode_device",
         "decode_tp", "prefill_pp", "decode_pp"}
    ),
    "scheduler": frozenset(
        {
            "replica_scheduler",
            "batch_size_cap",
            "block_size",
            "watermark_blocks_fraction",
            "chunk_size",
            "max_tokens_in_batch",
            "max_waiting_iters",
            "memory_margin_fraction",
            "num_blocks",
            "vidur_compat_memory",
            "prefix_caching",
            "batch_timeout_s",
            "batch_max_tokens",
            "s3_predictor",
            "s3_accuracy",
            "s3_error_buckets",
            "s3_num_buckets",
            "s3_admission",
            "s3_lookahead",
        }
    ),
    "speculative": frozenset({"num_tokens", "acceptance", "acceptance_spread", "draft"}),
    "predictor": frozenset(
        {
            "cpu_overhead_ms",
            "cpu_overhead",
            "attn_scale",
            "compute_scale",
            "network_scale",
            "moe_imbalance",
        }
    ),
    "workload": frozenset(
        {
            "name",
            "kind",
            "num_requests",
            "qps",
            "max_tokens",
            "arrival",
            "lengths",
            "path",
            "prefill_scale_factor",
            "decode_scale_factor",
            "time_scale_factor",
            "hash_block_tokens",
            "num_seqs",
            "system_prompt",
            "sessions",
        }
    ),
}


def one_line(err: BaseException) -> str:
    """The message of ``err`` squeezed onto one line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return "; ".join(lines) if lines else type(err).__name__


def to_container(cfg: Any) -> dict[str, Any]:
    """A resolved plain-dict copy of ``cfg`` (DictConfig or mapping), without ``hydra``."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, DictConfig):
        try:
            tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"config: {one_line(err)}") from None
    elif isinstance(cfg, Mapping):
        tree = copy.deepcopy(dict(cfg))
    else:
        raise ConfigError(f"expected a config mapping, got {type(cfg).__name__}")
    tree.pop("hydra", None)
    return tree


def group(tree: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Config group ``name`` of ``tree``, refused when missing or holding unknown keys."""
    g = tree.get(name)
    require(isinstance(g, Mapping), f"config group '{name}' is missing (got {g!r})")
    unknown = sorted(set(g) - GROUP_KEYS[name])
    require(
        not unknown,
        f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
        f"allowed: {', '.join(sorted(GROUP_KEYS[name]))}",
    )
    return dict(g)


def read_int(name: str, value: Any) -> int:
    """``value`` as an int, or a :class:`ConfigError` naming ``name``."""
    require(
        isinstance(value, numbers.Integral) and not _is_bool(value),
        f"{name}={value!r} must be an integer",
    )
    return int(value)


def read_float(name: str, value: Any) -> float:
    """``value`` as a float, or a :class:`ConfigError` naming ``name``."""
    try:
        require(not _is_bool(value), "")
        return float(value)
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(f"{name}={value!r} must be a number") from None


def read_bool(name: str, value: Any) -> bool:
    """``value`` as a bool, or a :class:`ConfigError` naming ``name``."""
    require(_is_bool(value), f"{name}={value!r} must be true or false")
    return bool(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool


def data_root(tree: Mapping[str, Any]) -> str | None:
    """Vidur data root searched for CPU-overhead profiles (profiles_dir, else data_dir)."""
    root = tree.get("profiles_dir") or tree.get("data_dir")
    if not isinstance(root, str) or not root:
        return None
    return os.path.abspath(os.path.expanduser(root))


def group_options(group_name: str) -> list[str]:
    """The options of config group ``group_name`` (``conf/<group>/*.yaml``)."""
    return sorted(p.stem for p in (CONF_DIR / group_name).glob("*.yaml"))


def compose(overrides: Sequence[str] = ()) -> Any:
    """Compose the packaged config with Hydra overrides (e.g. ``+experiment=quickstart``).

    Raises:
        ConfigError: unknown group option, experiment or key (one line).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    require(
        not isinstance(overrides, str),
        "overrides must be a list of strings such as ['+experiment=quickstart']",
    )
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(describe_hydra_error(err)) from None


def describe_hydra_error(err: BaseException) -> str:
    """One line for a Hydra composition error (unknown option lists the allowed ones)."""
    msg = str(err)
    m = re.search(r"Could not find '([^']+)/([^']+)'", msg)
    if m:
        group_name, option = m.group(1).lstrip("/"), m.group(2)
        options = getattr(err, "options", None) or group_options(group_name)
        what = "experiment" if group_name == "experiment" else f"{group_name} option"
        return f"unknown {what} '{option}'; available: {', '.join(options)}"
    return one_line(err)
