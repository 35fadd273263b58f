"""Run the ready-made studies and refresh the README gallery (``docs/gallery/``).

Usage::

    python experiments/study_gallery.py [--data-dir ../shared/data] [--only chunk_size ...]
        [--out docs/gallery] [--runs outputs/gallery]

Each study runs as ``python -m vidur_jax +experiment=study_<name> data_dir=...
hydra.run.dir=<runs>/<name>`` (a fresh process, so its wall time includes compiling);
then ``<name>.png`` and ``<name>.csv`` are copied to ``--out`` and the wall times are
written to ``<out>/timings.json`` (``{"<name>_wall_s": ...}``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from vidur_jax.metrics import atomic_write_json

STUDIES = ("readme_scenario", "scheduler_comparison", "parallelism", "chunk_size")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("VIDUR_JAX_DATA", "../shared/data"))
    ap.add_argument("--only", nargs="*", choices=STUDIES, default=list(STUDIES))
    ap.add_argument("--out", default="docs/gallery")
    ap.add_argument("--runs", default="outputs/gallery")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every study")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    timings_path = os.path.join(args.out, "timings.json")
    timings = {}
    if os.path.exists(timings_path):
        with open(timings_path) as f:
            timings = json.load(f)
    failed = []
    for name in args.only:
        run_dir = os.path.join(args.runs, name)
        cmd = [
            sys.executable,
            "-m",
            "vidur_jax",
            f"+experiment=study_{name}",
            f"data_dir={os.path.abspath(args.data_dir)}",
            f"hydra.run.dir={run_dir}",
            *args.overrides,
        ]
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        wall = time.perf_counter() - t0
        if rc != 0:
            failed.append(name)
            continue
        timings[f"{name}_wall_s"] = round(wall, 1)
        for ext in (".png", ".csv"):
            shutil.copyfile(os.path.join(run_dir, name + ext), os.path.join(args.out, name + ext))
        print(f"{name}: {wall:.1f} s -> {args.out}/{name}.png", flush=True)
    atomic_write_json(timings, timings_path)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
