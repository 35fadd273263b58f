"""Command line: ``python -m vidur_jax +experiment=NAME [overrides]`` (Hydra).

Composes ``vidur_jax/conf``, converts the config once (:mod:`vidur_jax.app`), simulates
every configuration of the sweep in one vmapped call, and writes ``summary.csv``,
``requests.parquet`` and ``plots/`` into Hydra's run dir (``hydra.run.dir=DIR``).

Bad input prints one line ``error: ...`` on stderr and exits with status 2; set
``HYDRA_FULL_ERROR=1`` for the traceback. The config is checked by JAX-free code
(:func:`vidur_jax.plan.from_config.check_config`) before JAX, pandas or the simulator are
imported, so a bad config is refused in well under a second. In a multirun (``-m``) a failing job reports its
line and the others still run; the exit status is 2 if any job failed.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from vidur_jax.errors import ConfigError
from vidur_jax.plan import tree as config_tree

EXIT_USAGE = 2
_failed_jobs: list[str] = []


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _report(func):
    """Replacement for Hydra's ``run_and_report``: one ``error:`` line, exit status 2."""
    try:
        return func()
    except Exception as err:  # noqa: BLE001 - every composition error becomes one line
        if _full_error():
            raise
        if isinstance(err, ConfigError):
            _fail(str(err))
        else:
            _fail(config_tree.describe_hydra_error(err))
        sys.exit(EXIT_USAGE)


def _install_reporter() -> None:
    # Hydra prints composition errors over several lines and exits 1; route them through
    # _report instead. run_and_report is looked up as a module global by _run_hydra.
    try:
        import hydra._internal.utils as hydra_utils
    except ImportError:  # pragma: no cover - Hydra layout changed; keep its own reporting
        return
    if hasattr(hydra_utils, "run_and_report"):
        hydra_utils.run_and_report = _report


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Run one job: plan, simulate, write the run dir, print the summary."""
    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    task = str(cfg.get("task", "simulate"))
    if bool(cfg.get("skip_existing", False)) and os.path.exists(os.path.join(out_dir, "summary.csv")):
        open(os.path.join(out_dir, ".skipped"), "w").close()
        sys.stderr.write(f"skipped: {out_dir} already has summary.csv\n")
        return
    try:
        if task != "simulate":
            if task == "search" and "VIDUR_JAX_CPU_DEVICES" not in os.environ:
                # probes run one per XLA device (search.runner=single on CPU): one per core
                os.environ["VIDUR_JAX_CPU_DEVICES"] = "auto"
                import vidur_jax

                vidur_jax._use_all_cpu_cores()  # before JAX starts its backend
            from vidur_jax import tasks

            tasks.check(task)
            from vidur_jax.plan.from_config import check_base

            check_base(cfg)  # JAX-free, as for simulate
            from vidur_jax import app

            app.enable_compile_cache()
            tasks.resolve(task)(app.to_container(cfg), out_dir)
            from vidur_jax.metrics.report import write_report

            print(f"wrote {write_report(out_dir)}")
            return
        from vidur_jax.plan.from_config import check_config

        check_config(cfg)  # JAX-free: a bad config never waits for JAX to load
        from vidur_jax import app

        plan = app.plan_from_config(cfg)
        app.enable_compile_cache()
        summary_df, requests_df, outputs = app.run_plan(plan)
        written = app.write_outputs(
            out_dir, summary_df, requests_df, outputs, plots=bool(cfg.get("plots", True))
        )
    except Exception as err:  # noqa: BLE001 - one line per failure, never a traceback wall
        if _full_error():
            raise
        if isinstance(err, ConfigError):
            message = str(err)
        else:  # a bug, not bad input: say so and how to see the traceback
            message = (
                f"internal error: {type(err).__name__}: {config_tree.one_line(err)} "
                "(set HYDRA_FULL_ERROR=1 for the traceback)"
            )
        if hc.mode == RunMode.MULTIRUN:
            _fail(f"job {hc.job.num} ({','.join(hc.overrides.task)}): {message}")
            _failed_jobs.append(message)
            return
        _fail(message)
        sys.exit(EXIT_USAGE)
    app.print_summary(
        summary_df, out_dir, int(cfg.get("print_rows", 20)), app.written_names(out_dir, written)
    )


EXIT_INTERRUPTED = 130


def cli() -> None:
    """Console entry point (``vidur-jax``). Ctrl-C: one line, exit status 130."""
    _install_reporter()
    try:
        main()
    except KeyboardInterrupt:
        # the single-config loop returns to Python every ~0.25 s (sim.run), so this comes
        # within about a second; files already written stay (writes are atomic)
        _fail("interrupted (Ctrl-C); files written before the interruption are kept")
        sys.exit(EXIT_INTERRUPTED)
    if _failed_jobs:
        sys.exit(EXIT_USAGE)
    _exit_without_teardown(0)


def _exit_without_teardown(code: int) -> None:
    """Flush and end the process now, skipping the interpreter's teardown.

    Everything the run writes is written (atomically) and closed by now. Tearing down the
    interpreter after JAX, pandas and matplotlib are loaded runs XLA's C++ static
    destructors and every module's cleanup, about 0.3-0.5 s of a warm run's few seconds
    (``experiments/bench_cold_start.py``, phase ``startup_and_exit``), for nothing.
    """
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
