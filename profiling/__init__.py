"""JAX profiling harness: time Vidur's operators on the local device, write Vidur CSVs.

Run ``python -m profiling --out DIR --model meta-llama/Llama-2-7b-hf`` on the target GPU
(``--smoke`` for a seconds-long CPU run on a tiny grid). The tables land under
``DIR/profiling/`` in Vidur's exact format and train predictors unchanged
(``python -m vidur_jax.predictors.build --profiles-dir DIR``). See ``docs/profiling.md``.

Modules: :mod:`.grids` (Vidur's grids), :mod:`.timing` (warm-up, repetitions, sync,
statistics), :mod:`.ops` (per-layer ops and attention in JAX, sharded by TP),
:mod:`.collectives` (all-reduce / send-recv over local devices), :mod:`.harness`
(profiling loops and CSV writers), ``__main__`` (CLI).
"""
