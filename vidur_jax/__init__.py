"""vidur_jax: a vectorized, differentiable JAX re-design of Microsoft's Vidur simulator.

``vidur_jax.simulate(overrides_or_cfg) -> (summary_df, requests_df)`` runs a config
from the packaged Hydra tree (see ``vidur_jax/conf``); subpackages are imported lazily so
``import vidur_jax`` stays cheap.
"""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"
__all__ = ["simulate"]

_CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def _use_all_cpu_cores() -> None:
    """Expose several XLA CPU devices when asked (``VIDUR_JAX_CPU_DEVICES=auto|N``).

    XLA runs one device's while loop on one thread, so a vectorized sweep on a CPU-only
    machine leaves all but one core idle; with a device per core the driver shards the
    config axis over them (:func:`vidur_jax.sim.run.simulate_configs`; 1.4-2x on 2
    cores). Opt-in (the benchmarks in ``experiments/`` turn it on): in one long test
    process with many compiles, XLA CPU once crashed compiling the sharded program.
    Takes effect only if set before JAX initializes its backends (importing
    ``vidur_jax`` first does) and if ``XLA_FLAGS`` does not already set the count.
    Accelerator backends are unaffected.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    requested = os.environ.get("VIDUR_JAX_CPU_DEVICES", "1").strip().lower()
    if _CPU_DEVICES_FLAG in flags or requested in ("", "1"):
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    count = cores if requested == "auto" else int(requested) if requested.isdigit() else 1
    if count > 1:
        os.environ["XLA_FLAGS"] = f"{flags} {_CPU_DEVICES_FLAG}={count}".strip()


_SMALL_LOOP_OPTION = "xla_cpu_small_while_loop_byte_threshold"


def _compile_small_loops_whole() -> None:
    """Let XLA:CPU compile a scatter-free event loop into one kernel.

    XLA:CPU's small-while-loop pass emits a while loop as a single kernel when it holds
    no scatter, dot, convolution or custom call and accesses fewer bytes than
    ``xla_cpu_small_while_loop_byte_threshold`` (1 kB by default); otherwise every
    fusion of the loop body is dispatched on its own (~100-250 ns each, ~400 per
    simulated event). One config runs scatter-free (``engine.simulate_single``), so the
    threshold is raised to admit its loop: 105 -> 15 us per event on the development
    machine. Vectorized runs scatter, so their loops are unaffected. Takes effect only
    if set before JAX compiles anything and if ``XLA_FLAGS`` does not already set
    ``xla_backend_extra_options``; ``VIDUR_JAX_WHOLE_LOOP_KERNEL=0`` turns it off.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_extra_options" in flags or os.environ.get("VIDUR_JAX_WHOLE_LOOP_KERNEL", "1").strip() == "0":
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_extra_options={_SMALL_LOOP_OPTION}=1000000000".strip()


_use_all_cpu_cores()
_compile_small_loops_whole()


def simulate(cfg_or_overrides: Any = (), /, **knobs: Any) -> Any:
    """Simulate a configuration; see :func:`vidur_jax.app.simulate`.

    Args:
        cfg_or_overrides: an experiment name (``"quickstart"``), Hydra override strings
            (e.g. ``["+experiment=quickstart", "scheduler=vllm"]``) or a composed
            ``DictConfig``.
        **knobs: group options and knob values, lists as sweep axes
            (``simulate("quickstart", scheduler="vllm", qps=[1, 2])``).

    Returns:
        ``(summary_df, requests_df)`` pandas DataFrames.
    """
    from vidur_jax.app import simulate as _simulate

    return _simulate(cfg_or_overrides, **knobs)
