"""Rebuild the shipped predictor parameters from Vidur profiles.

Usage::

    python -m vidur_jax.predictors.build --profiles-dir ../shared/data [--devices a100 h100]

Writes ``vidur_jax/predictors/params/<device>/<org>__<model>/tp<k>.npz`` + ``.json`` for
every model with an ``mlp.csv`` and every TP degree it has rows for, plus
``params/<device>/_transfer/shared.npz`` (shape-transfer models used by
``predictors.transfer`` for models without profiles).
"""

from __future__ import annotations

import argparse
import sys
import time

from vidur_jax.errors import ConfigError
from vidur_jax.predictors import api, io
from vidur_jax.profiles import loader


def build(
    profiles_dir: str,
    devices: list[str],
    out_root: str = api.PARAMS_DIR,
    models: list[str] | None = None,
) -> list[str]:
    """Train and write every supported (device, model, TP) predictor.

    Returns:
      The written base paths (no extension).
    """
    written = []
    for device in devices:
        names = [
            m
            for m in loader.list_compute_models(profiles_dir, device)
            if models is None or m in models
        ]
        if not names:
            raise ConfigError(f"no compute profiles for device '{device}' under {profiles_dir}")
        t0 = time.time()
        preds = api.train_predictors(profiles_dir, [(device, m) for m in names])
        for (dev, model, tp), pred in sorted(preds.items()):
            base = api.shipped_base(dev, model, tp, out_root)
            api.save_predictor(pred, base)
            written.append(base)
        shared, meta = api.train_transfer_models(profiles_dir, device)
        base = api.transfer_base(device, out_root)
        io.save(base, api._trim(shared), meta)
        written.append(base)
        print(
            f"{device}: {len(preds)} predictors + transfer models in {time.time() - t0:.1f} s",
            flush=True,
        )
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles-dir", required=True, help="Vidur data root (holds profiling/)")
    parser.add_argument("--devices", nargs="+", default=["a100", "h100"])
    parser.add_argument("--out", default=api.PARAMS_DIR, help="output params root")
    args = parser.parse_args(argv)
    try:
        paths = build(args.profiles_dir, args.devices, args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} parameter sets under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
