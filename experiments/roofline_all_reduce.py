"""Error of the roofline's all-reduce by topology (issue #30, trust bug (a)).

The roofline times an all-reduce over the slowest hop of the group's ring
(:func:`vidur_jax.predictors.roofline.ring_bandwidth`: NVLink on NVSwitch boards and
within an NVLink pair, the host PCIe link where a ring crosses it) with a calibration
fitted per hop class and group size. This script measures it on every profiled
all-reduce table (Vidur's DGX = NVSwitch and pairwise-NVLink nodes, A100 and H100):

* ``tables.csv``: MAPE and bias per table and group size, with the shipped calibration
  (A100 + H100) and calibrated on the other GPU alone (leave-one-GPU-out);
* ``published.csv``: bus bandwidth (``size x 2 (p-1)/p / time``) the roofline predicts
  for 8-GPU groups, against NCCL-tests figures (source in the file).

Usage::

    python experiments/roofline_all_reduce.py --profiles-dir ../shared/data \
        [--out experiments/results/roofline_all_reduce]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd

from vidur_jax.predictors import roofline
from vidur_jax.profiles import loader

#: a model shape whose ``num_tokens`` is fp16 elements (the network features are bytes / 2)
UNIT = {
    "num_q_heads": 8,
    "num_kv_heads": 8,
    "embedding_dim": 1,
    "mlp_hidden_dim": 8,
    "use_gated_mlp": False,
}
PUBLISHED_SOURCE = (
    "https://docs.alayanew.com/en/docs/tech-blog/2026-05-06-nccl-tests "
    "(NCCL-tests all_reduce_perf, busbw at large sizes, single node)"
)
#: (GPU, node whose topology applies, group size, published busbw range GB/s, setup)
PUBLISHED = (
    ("h100", "h100_dgx", 8, (460.0, 480.0), "8x H100 SXM5, NVSwitch"),
    ("a100", "a100_dgx", 8, (230.0, 250.0), "8x A100 SXM4, NVSwitch"),
    ("h100_pcie", None, 8, (35.0, 45.0), "8x H100 PCIe, no NVSwitch (PCIe 5.0)"),
)
#: H100 PCIe card (datasheet: 756 TFLOP/s BF16 dense, 2,000 GB/s HBM, PCIe 5.0 x16)
H100_PCIE = {
    "name": "h100_pcie",
    "fp16_tflops": 756.0,
    "hbm_gbps": 2000.0,
    "link_gbps": 64.0,
    "pcie_gbps": 64.0,
    "fabric": "pcie",
}
DEVICES = ("a100", "h100")


def _predict(
    calibration: dict, device: str, tp: int, network: str | None, n: np.ndarray
) -> np.ndarray:
    pred = roofline.RooflinePredictor(UNIT, device, tp, calibration, network_device=network)
    return pred.predict("all_reduce", num_tokens=n)


def table_errors(profiles_dir: str) -> pd.DataFrame:
    """MAPE / bias (%) per profiled table, shipped and leave-one-GPU-out calibrations."""
    shipped = roofline.load_calibration()
    held = {d: roofline.calibrate(profiles_dir, [o for o in DEVICES if o != d]) for d in DEVICES}
    rows = []
    for device in DEVICES:
        for kind in ("dgx", "pairwise_nvlink"):
            net = f"{device}_{kind}"
            for tp in (2, 4, 8):
                try:
                    ar = loader.load_all_reduce(profiles_dir, net, tp)
                except Exception:  # noqa: BLE001 -- group size not in this table
                    continue
                n = ar["size"].to_numpy(float) / roofline.BYTES_PER_ELEMENT
                y = ar["all_reduce"].to_numpy(float)
                pred = roofline.RooflinePredictor(UNIT, device, tp, shipped, network_device=net)
                row = {
                    "table": net,
                    "tp": tp,
                    "topology": pred.topology,
                    "ring_gbps": pred.meta["all_reduce_gbps"],
                    "rows": len(y),
                }
                for name, cal in (("shipped", shipped), ("other_gpu", held[device])):
                    rel = _predict(cal, device, tp, net, n) / y - 1.0
                    row[f"mape_pct_{name}"] = round(100.0 * float(np.abs(rel).mean()), 1)
                    row[f"bias_pct_{name}"] = round(100.0 * float(rel.mean()), 1)
                rows.append(row)
    return pd.DataFrame(rows)


def published_busbw() -> pd.DataFrame:
    """Predicted 8-GPU bus bandwidth at 64 MiB (largest profiled size) and 4 GiB."""
    shipped = roofline.load_calibration()
    rows = []
    for device, net, tp, (lo, hi), setup in PUBLISHED:
        device = H100_PCIE if device == "h100_pcie" else device
        for size in (64 * 2**20, 4 * 2**30):
            t_ms = float(_predict(shipped, device, tp, net, np.array([size / 2.0]))[0])
            bus = size * 2.0 * (tp - 1) / tp / (t_ms * 1e-3) / 1e9
            rows.append(
                {
                    "setup": setup,
                    "device": device if isinstance(device, str) else device["name"],
                    "tp": tp,
                    "size_bytes": size,
                    "predicted_busbw_gbps": round(bus, 1),
                    "published_busbw_gbps": f"{lo:g}-{hi:g}",
                    "error_pct_vs_mid": round(100.0 * (bus / ((lo + hi) / 2) - 1.0), 1),
                    "source": PUBLISHED_SOURCE,
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles-dir", default=os.environ.get("VIDUR_JAX_PROFILES", "../shared/data"))
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "roofline_all_reduce")
    )
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    tables, pub = table_errors(args.profiles_dir), published_busbw()
    tables.to_csv(os.path.join(args.out, "tables.csv"), index=False)
    pub.to_csv(os.path.join(args.out, "published.csv"), index=False)
    print(tables.to_string(index=False))
    print(pub.drop(columns="source").to_string(index=False))
    print(f"wrote {args.out}/tables.csv, published.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
