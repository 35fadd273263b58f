"""Bad input at the CLI (DESIGN.md section 6): one ``error:`` line, exit 2, no traceback.

Complements tests/test_app.py with the file-borne kinds: a profile CSV with a missing
column or a negative time, a malformed / empty / unsorted trace, a request longer than
the model's context, and a model that does not fit in GPU memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE = ("+experiment=quickstart", "workload.num_requests=20", "plots=false")


def run_cli(*args: str):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "VIDUR_JAX_PROFILES")}
    return subprocess.run([sys.executable, "-m", "vidur_jax", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_one_line(res, needle: str):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in res.stderr + res.stdout


def _trace_dir(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "data" / "processed_traces"
    d.mkdir(parents=True)
    (d / "splitwise_conv.csv").write_text(text)
    return tmp_path / "data"


@pytest.mark.parametrize("text, needle", [
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n", "has no rows"),
    ("arrived_at,prompt\n0.0,12\n", "num_prefill_tokens"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,abc,3\n", "splitwise_conv.csv"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n1.0,10,3\n0.5,10,3\n", "sorted"),
])
def test_bad_trace(tmp_path, text, needle):
    data = _trace_dir(tmp_path, text)
    res = run_cli(*BASE, "workload=chat_replay", "workload.num_requests=2", f"data_dir={data}",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(res, needle)
    assert not (tmp_path / "run" / "summary.csv").exists()


@pytest.mark.parametrize("mutate, needle", [
    (lambda df: df.drop(columns=["time_stats.mlp_up_proj.median"]), "time_stats.mlp_up_proj.median"),
    (lambda df: df.assign(**{"time_stats.add.median": -1.0}), "negative"),
])
def test_bad_profile_csv(tmp_path, profiles_dir, mutate, needle):
    import pandas as pd

    rel = Path("profiling/compute/a100/meta-llama/Llama-2-7b-hf")
    src = Path(profiles_dir) / rel / "mlp.csv"
    dst = tmp_path / "prof" / rel
    dst.mkdir(parents=True)
    mutate(pd.read_csv(src)).to_csv(dst / "mlp.csv", index=False)
    res = run_cli(*BASE, f"profiles_dir={tmp_path / 'prof'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(res, needle)


def test_sessions_with_more_turns_than_rows_say_which_knob(tmp_path):
    """10 sessions of 2-8 turns need ~50 rows of lengths; 20 rows: the line names the fix."""
    res = run_cli(*BASE, "workload=chat_sessions", "workload.sessions.num_sessions=10",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(res, "set workload.num_requests >= ")


def test_request_longer_than_context(tmp_path):
    res = run_cli(*BASE, "workload.max_tokens=100000", f"hydra.run.dir={tmp_path}")
    assert_one_line(res, "max_tokens")


def test_model_does_not_fit_in_memory(tmp_path):
    res = run_cli(*BASE, "model=llama2_70b", f"hydra.run.dir={tmp_path}")
    assert_one_line(res, "does not fit in GPU memory")


# Run the CLI in a fresh interpreter and report, at exit, whether JAX / pandas were loaded.
_PROBE = """
import resource, runpy, sys
sys.argv = ["vidur_jax", *sys.argv[1:]]
try:
    runpy.run_module("vidur_jax", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
ru = resource.getrusage(resource.RUSAGE_SELF)
print(code, "jax" in sys.modules, "pandas" in sys.modules, ru.ru_utime + ru.ru_stime)
"""


@pytest.mark.parametrize("override, needle", [
    ("workload.qps=0", "workload.qps"),
    ("cluster.tp=3", "tp=3"),
    ("model=llama2_70b", "does not fit in GPU memory"),
    ("scheduler.replica_scheduler=foo", "unknown replica_scheduler 'foo'"),
    ("+sweep.scheduler.chunk_size=[512,0]", "chunk_size=0"),
    ("workload=chat", "file not found"),
    ("task=nope", "unknown task 'nope'"),
    ("task=sensitivity cluster.pp=3", "pp=3"),
])
def test_bad_config_refused_before_jax_is_imported(tmp_path, override, needle):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR",)}
    env["VIDUR_JAX_DATA"] = str(tmp_path / "no_data")
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, *BASE, *override.split(), f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    code, jax_loaded, pandas_loaded, cpu_s = res.stdout.split()
    assert (code, jax_loaded, pandas_loaded) == ("2", "False", "False"), res.stdout
    # measured 0.5 s of CPU (user + sys) on the 2-core development machine, where
    # importing JAX alone costs more than 1 s; CPU time, not wall time, because the
    # machine is shared
    assert float(cpu_s) < 1.0, cpu_s
