"""CLI: ``python -m profiling --out DIR [--smoke] [--model NAME] [--tp 1 2 4 8] ...``.

Profiles, on the device JAX runs on, the per-layer ops (``mlp.csv``), attention
(``attention.csv``) and, with two or more local devices, all-reduce / send-recv
(``all_reduce.csv``, ``send_recv.csv``), and writes them in Vidur's format under
``OUT/profiling/``. Exits non-zero with one line on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp

from profiling import collectives, grids, harness, ops
from profiling.timing import TimingConfig

WHAT = ("mlp", "attention", "network")
SMOKE_ATTENTION = (
    grids.AttentionPoint(False, 1, 32, 0),
    grids.AttentionPoint(False, 4, 96, 0),
    grids.AttentionPoint(True, 1, 0, 64),
    grids.AttentionPoint(True, 1, 64, 64),
)
DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m profiling", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="data root; tables go under OUT/profiling/")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model and grid, few repetitions (seconds on a CPU)",
    )
    p.add_argument(
        "--model", help="catalog model name or alias (default: Llama-2-7B; smoke: a tiny model)"
    )
    p.add_argument(
        "--shape",
        help="JSON ModelShape fields for a model not in the catalog, e.g. "
        '\'{"name": "org/m", "n_head": 32, "n_kv_head": 8, "n_embd": 4096, '
        '"n_expanded_embd": 14336, "vocab_size": 128256, "use_gated_mlp": true}\'',
    )
    p.add_argument("--device-name", help="device folder name (default: from jax, e.g. h100; cpu)")
    p.add_argument(
        "--node-name",
        help="network folder name (default: <device>_pairwise_nvlink, the "
        "name the predictors look up first)",
    )
    p.add_argument("--what", nargs="+", choices=WHAT, default=list(WHAT))
    p.add_argument("--tp", type=int, nargs="+", help="TP degrees (default 1 2 4 8; smoke 1 2)")
    p.add_argument("--max-tokens", type=int, help="largest num_tokens for mlp.csv (default 4096)")
    p.add_argument("--token-stride", type=int, default=1, help="keep every k-th num_tokens value")
    p.add_argument(
        "--max-seq-len", type=int, help="longest chunk + KV for attention (default 4096)"
    )
    p.add_argument("--max-batch", type=int, help="largest decode batch (default 128)")
    p.add_argument("--attn-stride", type=int, default=1, help="keep every k-th attention point")
    p.add_argument(
        "--max-kv-tokens",
        type=int,
        default=524288,
        help="skip attention points holding more KV tokens (batch x (kv + chunk))",
    )
    p.add_argument(
        "--attn-impl",
        choices=["xla", "cudnn"],
        default="xla",
        help="jax.nn.dot_product_attention implementation (cudnn falls back to xla per point)",
    )
    p.add_argument(
        "--max-collective-size",
        type=int,
        default=64 * 1024 * 1024,
        help="largest collective message, elements per device",
    )
    p.add_argument("--collective-stride", type=int, default=1, help="keep every k-th message size")
    p.add_argument("--dtype", choices=list(DTYPES), help="default float16 (float32 on CPU)")
    p.add_argument("--warmup", type=int, help="discarded calls per point (default 2; smoke 1)")
    p.add_argument("--reps", type=int, help="measured samples per point (default 20; smoke 3)")
    p.add_argument("--inner", type=int, default=1, help="back-to-back calls per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p


def _shape(args: argparse.Namespace) -> ops.ModelShape:
    if args.shape:
        fields = json.loads(args.shape)
        if args.model and "name" not in fields:
            fields["name"] = args.model
        return ops.ModelShape(**fields)
    if args.model:
        return ops.shape_from_catalog(args.model)
    return ops.SMOKE_SHAPE if args.smoke else ops.shape_from_catalog("meta-llama/Llama-2-7b-hf")


def run(args: argparse.Namespace) -> dict:
    """Profile as asked by ``args``; returns ``{"written": [paths], "notes": [str]}``."""
    smoke = args.smoke
    shape = _shape(args)
    device = args.device_name or harness.device_name()
    node = args.node_name or f"{device}_pairwise_nvlink"
    dtype = DTYPES[args.dtype] if args.dtype else harness.default_dtype()
    cfg = TimingConfig(
        warmup=args.warmup if args.warmup is not None else (1 if smoke else 2),
        reps=args.reps if args.reps is not None else (3 if smoke else 20),
        inner=args.inner,
    )
    tps = args.tp or ([1, 2] if smoke else [1, 2, 4, 8])
    if shape.name.startswith("microsoft/phi-2") and any(t > 1 for t in tps):
        tps = [1]  # Vidur profiles phi-2 at TP 1 only
    progress = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    written, notes = [], []
    t0 = time.time()
    if "mlp" in args.what:
        max_tokens = args.max_tokens or (64 if smoke else 4096)
        tokens = grids.thin(grids.num_tokens_grid(max_tokens), args.token_stride)
        if smoke:
            tokens = [1, 16, 64]
        df = harness.profile_mlp(shape, tps, tokens, cfg, dtype, args.seed, progress)
        written.append(
            harness.write_csv(df, f"{harness.compute_dir(args.out, device, shape.name)}/mlp.csv")
        )
    if "attention" in args.what:
        max_seq = args.max_seq_len or (128 if smoke else min(shape.max_model_len, 4096))
        max_batch = args.max_batch or (4 if smoke else 128)
        pts = grids.attention_points(max_seq, 1, max_batch, args.max_kv_tokens)
        pts = grids.thin([p for p in pts if not p.is_prefill], args.attn_stride) + grids.thin(
            [p for p in pts if p.is_prefill], args.attn_stride
        )
        if smoke:
            pts = [p for p in pts if p in SMOKE_ATTENTION] or pts[:4]
        df = harness.profile_attention(
            shape, tps, pts, cfg, dtype, args.attn_impl, seed=args.seed, progress=progress
        )
        written.append(
            harness.write_csv(
                df, f"{harness.compute_dir(args.out, device, shape.name)}/attention.csv"
            )
        )
    if "network" in args.what:
        devices = jax.local_devices()
        if len(devices) < 2:
            notes.append(
                f"network skipped: {len(devices)} local device ({devices[0].platform}); "
                "all_reduce/send_recv need >= 2 (use a multi-GPU host)"
            )
        else:
            max_size = (
                min(args.max_collective_size, 64 * 1024) if smoke else args.max_collective_size
            )
            sizes = grids.thin(
                grids.collective_sizes(max_size), max(args.collective_stride, 8 if smoke else 1)
            )
            for coll in collectives.COLLECTIVES:
                df = harness.profile_network(coll, sizes, cfg, dtype, devices, progress)
                written.append(
                    harness.write_csv(
                        df, f"{harness.network_dir(args.out, node)}/{coll}.csv", index=True
                    )
                )
    notes.append(
        f"device={device} ({jax.devices()[0].device_kind}), dtype={jnp.dtype(dtype).name}, "
        f"model={shape.name}, tp={tps}, {time.time() - t0:.1f} s"
    )
    return {"written": written, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    except Exception as err:  # catalog ConfigError and friends: one line, no traceback wall
        if type(err).__name__ != "ConfigError":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in result["written"]:
        print(f"wrote {path}")
    for note in result["notes"]:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
