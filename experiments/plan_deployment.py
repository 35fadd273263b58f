"""The "Plan a deployment" answer of docs/search.md, reproduced.

Question: Llama-3-8B on H100, ~5 req/s of 1,000-token prompts and 250-token outputs,
TTFT P90 < 1 s, TBT P99 < 100 ms: which config, how many GPUs, cheapest? Runs

    python -m vidur_jax task=search model=llama3_8b hardware=h100 workload=synthetic_fixed
      workload.lengths.prefill=1000 workload.lengths.decode=250
      search.target_qps=5 search.slo.ttft_p90_s=1 search.slo.tbt_p99_s=0.1

(shipped predictors, ``profiles_dir=null``) and writes the terminal answer
(``answer.txt``), ``best_config.json`` and ``search.csv`` to ``--out`` (default
``experiments/results/plan_llama3_8b_h100``).

    python experiments/plan_deployment.py [--out DIR] [overrides...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

QUESTION = [
    "task=search",
    "model=llama3_8b",
    "hardware=h100",
    "workload=synthetic_fixed",
    "workload.lengths.prefill=1000",
    "workload.lengths.decode=250",
    "search.target_qps=5",
    "search.slo.ttft_p90_s=1",
    "search.slo.tbt_p99_s=0.1",
    "profiles_dir=null",
    "plots=false",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/results/plan_llama3_8b_h100")
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = ap.parse_args(argv)

    from vidur_jax import app
    from vidur_jax.search.task import print_answer, run_search, write_outputs

    cfg = app.to_container(app.compose([*QUESTION, *args.overrides]))
    res = run_search(cfg, log=lambda m: print(m, flush=True))
    os.makedirs(args.out, exist_ok=True)
    write_outputs(res, args.out, plots=False)
    os.remove(os.path.join(args.out, "probes.csv"))  # large and not cited
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_answer(res)
    text = buf.getvalue()
    print(text, end="")
    with open(os.path.join(args.out, "answer.txt"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
