"""Parameter counts and KV-cache size of every catalog model, for docs/models.md.

    python experiments/model_catalog.py [--out experiments/results/model_catalog.csv]

Counts come from :func:`vidur_jax.catalog.parameter_count` (every weight, embeddings
included); ``kv_kib_per_token`` is the fp16 KV cache one token needs over all layers
(MLA: the latent plus the RoPE key). ``simulated`` says whether the simulator runs the
model today (gpt-oss is read but refused: MXFP4 experts, sliding-window layers).
"""

from __future__ import annotations

import argparse
import csv
import os

from vidur_jax import catalog
from vidur_jax.errors import ConfigError


def rows() -> list[dict]:
    names = list(catalog.list_models()) + sorted(
        {os.path.basename(p)[:-5] for p in catalog.shipped_hf_configs().values()}
    )
    out = []
    for name in names:
        m = catalog.get_model(name)
        count = catalog.parameter_count(m)
        per_layer = (
            m.mla.kv_cache_elements_per_layer if m.mla else 2 * m.num_kv_heads * m.head_dim
        )
        try:
            catalog.validate_simulable(m)
            simulated = "yes"
        except ConfigError:
            simulated = "no"
        out.append(
            {
                "model": m.name,
                "family": m.family,
                "total_params_b": round(count.total / 1e9, 2),
                "active_params_b": round(count.active / 1e9, 2),
                "layers": m.num_layers,
                "experts": f"{m.moe.experts_per_token}/{m.moe.num_experts}" if m.moe else "",
                "attention": "MLA" if m.mla else f"{m.num_q_heads}q/{m.num_kv_heads}kv",
                "kv_kib_per_token": round(2 * per_layer * m.num_layers / 1024, 1),
                "simulated": simulated,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/results/model_catalog.csv")
    args = parser.parse_args()
    table = rows()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    for r in table:
        print(" | ".join(str(v) for v in r.values()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
