"""Start-up cost of a process: import time of the heavy dependencies, and of exiting.

Usage::

    python experiments/bench_import.py --out experiments/results/bench_import.json
        [--repeats 5] [--ml-dtypes-versions 0.6.0 0.7.0]

Each figure is the minimum over ``--repeats`` fresh interpreters (the machine may be
shared; the minimum is the least disturbed):

* ``import_<module>_s`` -- cumulative ``python -X importtime`` time of ``ml_dtypes``,
  ``jax``, ``pandas``, ``flax`` and the simulator's modules (``vidur_jax.sim.run`` and
  what it imports), each imported alone;
* ``exit_teardown_s`` -- wall of a process that imports JAX, pandas and the simulator and
  runs one op, ending normally, minus the same process ending with ``os._exit`` (what the
  CLI does once its files are written: :func:`vidur_jax.__main__._exit_without_teardown`);
* with ``--ml-dtypes-versions``, ``import_jax_with_ml_dtypes_<v>_s`` for each version,
  installed with ``pip install --target`` into a temporary folder put first on the path
  (needs the package registry).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = ("ml_dtypes", "jax", "pandas", "flax", "vidur_jax.sim.run")

_PROCESS = """
import os, sys
import jax, jax.numpy as jnp, pandas
from vidur_jax.sim import run
(jnp.zeros(3) + 1).block_until_ready()
if sys.argv[1] == "os_exit":
    sys.stdout.flush()
    os._exit(0)
"""


def import_seconds(module: str, env: dict[str, str]) -> float:
    """Cumulative import time (s) of ``module`` in a fresh interpreter (``-X importtime``)."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True, text=True, env=env, check=True, cwd=REPO,
    )
    pattern = re.compile(r"import time:\s*\d+ \|\s*(\d+) \|\s*" + re.escape(module) + r"\s*$")
    for line in res.stderr.splitlines():
        m = pattern.match(line)
        if m:
            return int(m.group(1)) * 1e-6
    raise RuntimeError(f"no importtime line for {module}")


def process_wall(ending: str, env: dict[str, str]) -> float:
    """Wall seconds of the ``_PROCESS`` script ending normally or with ``os._exit``."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", _PROCESS, ending], env=env, check=True, cwd=REPO)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "experiments/results/bench_import.json"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ml-dtypes-versions", nargs="*", default=[])
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res: dict = {"load_average_start": os.getloadavg()[0], "repeats": args.repeats}
    res.update({f"version_{p}": version(p) for p in ("jax", "jaxlib", "ml_dtypes", "numpy")})
    for module in MODULES:
        res[f"import_{module}_s"] = min(import_seconds(module, env) for _ in range(args.repeats))
    walls = {"normal": [], "os_exit": []}
    for _ in range(args.repeats):  # alternate, so both endings see the same load
        for ending in walls:
            walls[ending].append(process_wall(ending, env))
    res["process_wall_normal_exit_s"] = min(walls["normal"])
    res["process_wall_os_exit_s"] = min(walls["os_exit"])
    res["exit_teardown_s"] = res["process_wall_normal_exit_s"] - res["process_wall_os_exit_s"]
    with tempfile.TemporaryDirectory(prefix="bench_import_") as tmp:
        for v in args.ml_dtypes_versions:
            target = Path(tmp) / v
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                 str(target), f"ml_dtypes=={v}"],
                check=True,
            )
            env_v = dict(env, PYTHONPATH=f"{target}{os.pathsep}{REPO}")
            res[f"import_jax_with_ml_dtypes_{v}_s"] = min(
                import_seconds("jax", env_v) for _ in range(args.repeats)
            )
    res["load_average_end"] = os.getloadavg()[0]
    for k, v in res.items():
        print(f"{k:45s} {v:.3f}" if isinstance(v, float) else f"{k:45s} {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
