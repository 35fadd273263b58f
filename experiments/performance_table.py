"""Render docs/performance.md's table from the benchmark results (experiments/results/).

Usage::

    python experiments/performance_table.py [--doc docs/performance.md]

Reads ``bench_cold_start.json``, ``bench_simulator.json``, ``bench_sweep.json`` and, when
present, ``gpu_check.json``, and replaces the text between the ``<!-- table -->`` and
``<!-- /table -->`` markers of the page. A figure missing from the results is shown as
"not measured".
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
START, END = "<!-- table -->", "<!-- /table -->"


def _load(name: str) -> dict:
    try:
        with open(os.path.join(RESULTS, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _fmt(v, unit: str = "", digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "not measured"
    if isinstance(v, float):
        v = f"{v:,.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v}{unit}"


def rows() -> list[tuple[str, str, str, str]]:
    """``(what, vidur_jax, Vidur / target, source)`` rows."""
    cs, sim, sw, gpu = (
        _load(n)
        for n in (
            "bench_cold_start.json",
            "bench_simulator.json",
            "bench_sweep.json",
            "gpu_check.json",
        )
    )
    out = []
    for case, label, vidur in (
        ("qps2", "QPS 2, 2,000 requests", "12.4 s"),
        ("qps5", "QPS 5, 2,000 requests", "7.6 s"),
        ("v1_sarathi_tp1", "v1_sarathi_tp1, 800 requests", "target 1.5 s"),
    ):
        for cache in ("warm", "empty"):
            out.append(
                (
                    f"one config, whole process (API), cache {cache}: {label}",
                    _fmt(cs.get(f"{case}_api_{cache}_process_wall_s"), " s"),
                    vidur,
                    "bench_cold_start",
                )
            )
    out.append(
        (
            "one config, whole process (CLI, plots on), cache warm: quickstart",
            _fmt(cs.get("quickstart_cli_warm_process_wall_s"), " s"),
            "",
            "bench_cold_start",
        )
    )
    out.append(
        (
            "floor: `python -c 'import jax'` process on the same machine at the time",
            _fmt(cs.get("floor_import_jax_process_wall_s"), " s"),
            "",
            "bench_cold_start",
        )
    )
    for q, vidur in (("2", 220), ("5", 490)):
        out.append(
            (
                f"one config, warm call, QPS {q} (requests/s)",
                _fmt(sim.get(f"single_qps{q}_requests_per_s")),
                f"{vidur} (100x = {100 * vidur:,})",
                "bench_simulator",
            )
        )
        out.append(
            (
                f"one config, QPS {q}: steps per request / iterations per step / us per step / slots",
                " / ".join(
                    _fmt(sim.get(f"single_qps{q}_{k}"))
                    for k in (
                        "steps_per_request",
                        "iterations_per_step",
                        "us_per_step",
                        "num_slots",
                    )
                ),
                "",
                "bench_simulator",
            )
        )
        out.append(
            (
                f"one config, QPS {q}: wall in ~8 host-visible chunks / in one",
                _fmt(sim.get(f"single_qps{q}_chunking_overhead_ratio")),
                "",
                "bench_simulator",
            )
        )
    out.append(
        (
            f"{_fmt(sim.get('num_configs_vmapped'))} configs vmapped (requests/s)",
            _fmt(sim.get("requests_per_s_vmapped")),
            "",
            "bench_simulator",
        )
    )
    out.append(
        (
            f"sweep of {_fmt(sw.get('num_configs'))} configs (requests/s)",
            _fmt(sw.get("requests_per_s")),
            "",
            "bench_sweep",
        )
    )
    out.append(
        (
            "GPU, 65,536 configs (requests/s; docs/gpu.md)",
            "not measured"
            if not gpu or gpu.get("dry_run", True)
            else _fmt(gpu.get("bench_sweep_65536_requests_per_s")),
            "",
            "gpu_check",
        )
    )
    return out


def render() -> str:
    lines = ["| what | vidur_jax | Vidur (quiet machine) / target | from |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | `{d}.json` |" for a, b, c, d in rows()]
    cs, sim = _load("bench_cold_start.json"), _load("bench_simulator.json")
    if cs:
        lines.append("")
        lines.append(
            f"Load average while the cold-start figures were taken: {cs.get('load_average_start', 0):.1f} "
            f"at the start, {cs.get('load_average_end', 0):.1f} at the end, on 2 cores shared by several "
            "sessions; a bare `import jax` process took the floor row's time then. Vidur's figures are "
            "from a quiet machine: compare vidur_jax rows with the floor row, not with Vidur's column."
        )
    if sim.get("load_average_start") is not None:
        lines.append(f"bench_simulator ran at load average {sim['load_average_start']:.1f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", default=os.path.join(os.path.dirname(HERE), "docs", "performance.md"))
    args = ap.parse_args(argv)
    text = open(args.doc).read()
    if START not in text or END not in text:
        print(f"error: {args.doc} lacks the {START} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render()}\n{END}{tail}"
    tmp = args.doc + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, args.doc)
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
