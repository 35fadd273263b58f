"""vidur_jax: a vectorized, differentiable JAX re-design of Microsoft's Vidur simulator.

``vidur_jax.simulate(overrides_or_cfg) -> (summary_df, requests_df)`` runs a config
from the packaged Hydra tree (see ``vidur_jax/conf``); subpackages are imported lazily so
``import vidur_jax`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["simulate"]


def simulate(cfg_or_overrides: Any = ()) -> Any:
    """Simulate a configuration; see :func:`vidur_jax.app.simulate`.

    Args:
        cfg_or_overrides: Hydra override strings (e.g. ``["+experiment=quickstart",
            "scheduler=vllm"]``) or a composed ``DictConfig``.

    Returns:
        ``(summary_df, requests_df)`` pandas DataFrames.
    """
    from vidur_jax.app import simulate as _simulate

    return _simulate(cfg_or_overrides)
