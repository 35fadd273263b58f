#!/usr/bin/env bash
# GPU check of the vectorized simulator, in one call of under 10 minutes (issue #26 item 4).
#
# Usage (from the repository root):
#   experiments/gpu_check.sh [--out FILE.json] [--shared DIR] [--dry-run] [--budget-s S (570; dry run 2400)]
#
# On a machine with an NVIDIA GPU it
#   1. makes JAX see the GPU: keeps an installed CUDA jax if it already does, else installs
#      jax[cuda12] at the version pinned here (pip; from ./.whl when offline wheels were
#      carried, else from the index), and records which jax actually ran and whether it
#      matches the pin;
#   2. runs the tests that matter on a GPU: vmap == loop and the other engine invariants
#      (tests/test_sim_invariants.py), the lane pool (tests/test_sim_sweep.py), the
#      single-config path (tests/test_indexed.py, tests/test_cold_start.py) and two
#      fidelity cases against Vidur (tests/test_fidelity.py, v1 Sarathi, v2 vLLM);
#   3. runs experiments/bench_simulator.py (one config at QPS 2 and 5, 256 vmapped; again
#      for one config on the same machine's CPU) and
#      experiments/bench_sweep.py at 1,024, 8,192 and 65,536 configs, all lanes in one pool
#      (65,536: one call, compile included);
#   4. writes ONE flat JSON (default experiments/results/gpu_check.json, and $OUT/ when set)
#      with every figure, each step's exit status and wall time, and the decisions of
#      docs/gpu.md computed from the figures.
# Every step has its own time limit inside --budget-s; a step that fails or runs out of
# time is recorded (rc, wall) and the script goes on, so the JSON always comes back.
#
# --dry-run: the same steps on the CPU, tiny (32 requests, 8/16/32 configs, the quick
# tests only), no install, 4x the time limits: checks the script on a machine without a GPU.
# --shared DIR: the project's shared folder (data/, reference/, tools/); default ../shared,
# else ./shared (carry a copy there when the repository travels without it).
set -u -o pipefail

OUT_JSON="experiments/results/gpu_check.json"
SHARED=""
DRY=0
BUDGET_S=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_JSON="$2"; shift 2 ;;
    --shared) SHARED="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --budget-s) BUDGET_S="$2"; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# a dry run compiles everything on a (possibly shared) CPU: more time per step
if [ "$DRY" = 1 ]; then SCALE=4; BUDGET_S="${BUDGET_S:-2400}"; else SCALE=1; BUDGET_S="${BUDGET_S:-570}"; fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
if [ -z "$SHARED" ]; then
  if [ -d ../shared/data ]; then SHARED="$(cd ../shared && pwd)"; elif [ -d shared/data ]; then SHARED="$REPO/shared"; fi
fi
WORK="$(mktemp -d)"
STEPS="$WORK/steps.jsonl"
: > "$STEPS"
START=$(date +%s)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export VIDUR_JAX_CACHE="$WORK/cache"   # cold, like a first run on the machine
[ -n "$SHARED" ] && export VIDUR_JAX_PROFILES="$SHARED/data" VIDUR_JAX_DATA="$SHARED/data"
PIN="$(sed -n 's/.*"jax>=[^,]*,<=\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# step NAME LIMIT_S CMD...: run with a time limit (capped by what is left), log to WORK,
# append {"name", "rc", "wall_s"} to STEPS.
step() {
  local name="$1" limit=$(( $2 * SCALE )); shift 2
  local l; l=$(left)
  [ "$limit" -gt "$l" ] && limit=$l
  if [ "$limit" -le 5 ]; then
    echo "{\"name\": \"$name\", \"rc\": -1, \"wall_s\": 0, \"skipped\": \"no time left\"}" >> "$STEPS"
    echo "== $name: skipped (no time left)"; return 0
  fi
  echo "== $name (limit ${limit}s)"
  local t0 t1 rc; t0=$(date +%s.%N)
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1; rc=$?
  t1=$(date +%s.%N)
  tail -n 5 "$WORK/$name.log"
  echo "{\"name\": \"$name\", \"rc\": $rc, \"wall_s\": $(awk "BEGIN {print $t1 - $t0}")}" >> "$STEPS"
}

# ---------------------------------------------------------------- 1. JAX on the GPU
if [ "$DRY" = 1 ]; then
  export JAX_PLATFORMS=cpu
else
  if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > "$WORK/nvidia_smi.txt" 2>&1; then
    echo "error: no NVIDIA GPU visible (nvidia-smi); use --dry-run to check the script on a CPU" >&2
    exit 2
  fi
  gpu_ok() { "$PY" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" > /dev/null 2>&1; }
  if ! gpu_ok; then
    if [ -d .whl ]; then
      "$PY" -m pip install -q --no-index --find-links .whl "jax[cuda12]==$PIN" > "$WORK/install.log" 2>&1 || true
    fi
    gpu_ok || "$PY" -m pip install -q "jax[cuda12]==$PIN" >> "$WORK/install.log" 2>&1 || true
  fi
  gpu_ok || { echo "error: JAX does not see the GPU after installing jax[cuda12]==$PIN (see $WORK/install.log)" >&2; }
  # the pure-Python dependencies a bare CUDA image may lack (hydra for the CLI tests)
  "$PY" -c "import hydra, omegaconf" > /dev/null 2>&1 || {
    if [ -d .whl ]; then "$PY" -m pip install -q --no-index --find-links .whl hydra-core omegaconf > /dev/null 2>&1; fi
    "$PY" -c "import hydra" > /dev/null 2>&1 || "$PY" -m pip install -q hydra-core > /dev/null 2>&1 || true; }
  export JAX_PLATFORMS=cuda
  # XLA:CPU's whole-loop-kernel option means nothing on a GPU (and is not passed to its
  # compiler); one device, no CPU sharding
  export VIDUR_JAX_CPU_DEVICES=1 VIDUR_JAX_WHOLE_LOOP_KERNEL=0
fi
"$PY" - > "$WORK/info.json" 2> "$WORK/info.err" <<EOF
import json, jax, jaxlib
d = jax.devices()
print(json.dumps({"jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__,
                  "jax_pinned": "$PIN", "jax_matches_pin": jax.__version__ == "$PIN",
                  "jax_backend": jax.default_backend(), "device_kind": d[0].device_kind,
                  "num_devices": len(d)}))
EOF

# ---------------------------------------------------------------- 2. tests
if [ "$DRY" = 1 ]; then
  step tests 240 "$PY" -m pytest -x -q -p no:cacheprovider tests/test_cold_start.py -k "bit_identical and sarathi and 7"
else
  step tests 200 "$PY" -m pytest -q -p no:cacheprovider --timeout=150 \
    tests/test_sim_invariants.py tests/test_sim_sweep.py tests/test_indexed.py tests/test_cold_start.py \
    "tests/test_fidelity.py::test_simulation_semantics_match_vidur[v1_sarathi_tp1]" \
    "tests/test_fidelity.py::test_simulation_semantics_match_vidur[v2_vllm_tp1]" \
    -k "not sharded_over_four_cpu and not ctrl_c"
fi

# ---------------------------------------------------------------- 3. benchmarks
if [ "$DRY" = 1 ]; then
  REQ=32; SIZES="8 16 32"; VM=4
else
  REQ=2000; SIZES="1024 8192 65536"; VM=256
fi
step bench_simulator 150 "$PY" experiments/bench_simulator.py --out "$WORK/bench_simulator.json" \
  --configs "$VM" --requests "$REQ" --loads-requests "$REQ"
# the same machine's CPU for one config (the GPU's alternative for small runs)
step bench_simulator_cpu 100 env JAX_PLATFORMS=cpu VIDUR_JAX_WHOLE_LOOP_KERNEL=1 "$PY" experiments/bench_simulator.py \
  --out "$WORK/bench_simulator_cpu.json" --requests "$REQ" --loads-requests "$REQ" --skip-vmapped
for n in $SIZES; do
  warm=""; [ "$n" -ge 65536 ] && warm="--no-warm"
  step "bench_sweep_$n" 170 "$PY" experiments/bench_sweep.py --out "$WORK/bench_sweep_$n.json" \
    --configs "$n" --requests "$REQ" --lanes "$n" --no-curve $warm
done

# ---------------------------------------------------------------- 4. one JSON
mkdir -p "$(dirname "$OUT_JSON")"
"$PY" - "$WORK" "$OUT_JSON" "$DRY" "$SIZES" <<'EOF'
import json, os, sys
work, out, dry, sizes = sys.argv[1], sys.argv[2], sys.argv[3] == "1", [int(x) for x in sys.argv[4].split()]
res = {"dry_run": dry, "measured": True}
try:
    res.update(json.load(open(os.path.join(work, "info.json"))))
except (OSError, ValueError):
    res["info_error"] = open(os.path.join(work, "info.err")).read()[-500:]
smi = os.path.join(work, "nvidia_smi.txt")
if os.path.exists(smi):
    res["nvidia_smi"] = open(smi).read().strip().splitlines()[0] if open(smi).read().strip() else ""
for line in open(os.path.join(work, "steps.jsonl")):
    s = json.loads(line)
    res[f"step_{s['name']}_rc"] = s["rc"]
    res[f"step_{s['name']}_wall_s"] = s["wall_s"]
log = os.path.join(work, "tests.log")
if os.path.exists(log):
    tail = [ln for ln in open(log).read().splitlines() if " passed" in ln or " failed" in ln]
    res["tests_summary"] = tail[-1] if tail else ""
for name in ["bench_simulator", "bench_simulator_cpu"] + [f"bench_sweep_{n}" for n in sizes]:
    p = os.path.join(work, f"{name}.json")
    if os.path.exists(p):
        for k, v in json.load(open(p)).items():
            res[f"{name}_{k}"] = v
# Decisions (docs/gpu.md): computed from the figures, None where a figure is missing.
rps = {n: res.get(f"bench_sweep_{n}_requests_per_s") for n in sizes}
single = res.get("bench_simulator_requests_per_s_single")
if rps.get(sizes[0]) and rps.get(sizes[-1]):
    # throughput growing ~linearly with lanes = each step's kernels are launch-bound (lanes are free)
    res["lanes_scaling_ratio"] = rps[sizes[-1]] / rps[sizes[0]]
    res["lanes_ideal_ratio"] = sizes[-1] / sizes[0]
    res["decision_launch_bound"] = res["lanes_scaling_ratio"] > 0.5 * res["lanes_ideal_ratio"]
best = max((v for v in rps.values() if v), default=None)
if best and single:
    res["best_sweep_vs_single_ratio"] = best / single
single_cpu = res.get("bench_simulator_cpu_requests_per_s_single")
if single and single_cpu:
    # one config on the GPU pays each step's kernel launches and syncs alone
    res["single_gpu_vs_cpu_ratio"] = single / single_cpu
    res["decision_single_config_on_cpu"] = single_cpu > single
res["all_steps_ok"] = all(v == 0 for k, v in res.items() if k.startswith("step_") and k.endswith("_rc"))
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(res, f, indent=1, sort_keys=True)
os.replace(tmp, out)
print(json.dumps({k: res[k] for k in sorted(res) if k.startswith(("decision", "step_", "lanes", "tests", "jax_"))}, indent=1))
EOF
[ -n "${OUT:-}" ] && [ -d "${OUT:-/nonexistent}" ] && cp "$OUT_JSON" "$OUT/gpu_check.json"
for f in "$WORK"/*.log; do [ -n "${OUT:-}" ] && [ -d "${OUT:-/nonexistent}" ] && cp "$f" "$OUT/" 2>/dev/null; done
echo "wrote $OUT_JSON ($(( $(date +%s) - START )) s)"
