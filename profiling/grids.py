"""Vidur's profiling grids (token counts, attention inputs, collective sizes).

The grids reproduce the point sets of Vidur's ``vidur/profiling/utils`` so tables
written by this harness line up with Vidur's own (same ``num_tokens`` values, same
``(batch_size, kv_cache_size, prefill_chunk_size)`` combinations, same message sizes).
All functions are plain Python and return sorted lists of ints or small tuples.
"""

from __future__ import annotations

from dataclasses import dataclass


def _segments(*parts: tuple[int, int, int]) -> list[int]:
    out: list[int] = []
    for start, stop, step in parts:
        out.extend(range(start, stop, step))
    return out


def num_tokens_grid(max_tokens: int) -> list[int]:
    """Token counts profiled for ``mlp.csv``, ascending, all ``<= max_tokens``.

    1, 2, 4; 8..1016 step 8; 1024..2048 step 16; 2048..4096 step 32; then steps of
    64/128/256/512/1024 up to 8k/16k/32k/64k/128k (Vidur's ``NUM_TOKENS_SPACE``; the
    repeated boundary values are kept once).
    """
    space = [1, 2, 4] + _segments(
        (8, 1024, 8),
        (1024, 2 * 1024 + 1, 16),
        (2 * 1024, 4 * 1024 + 1, 32),
        (4 * 1024, 8 * 1024 + 1, 64),
        (8 * 1024, 16 * 1024 + 1, 128),
        (16 * 1024, 32 * 1024 + 1, 256),
        (32 * 1024, 64 * 1024 + 1, 512),
        (64 * 1024, 128 * 1024 + 1, 1024),
    )
    return sorted({n for n in space if n <= max_tokens})


def decode_batch_sizes(min_batch: int, max_batch: int) -> list[int]:
    """Decode batch sizes: 1..128 step 1, then 128..1024 step 8 (Vidur), within bounds."""
    space = _segments((1, 129, 1), (128, 1025, 8))
    return sorted({b for b in space if min_batch <= b <= max_batch})


def prefill_chunk_sizes(max_seq_len: int) -> list[int]:
    """Prefill chunk sizes: 64..128 step 16, ..1024 step 32, ..4096 step 64, ... (Vidur)."""
    space = _segments(
        (64, 129, 16),
        (128, 1025, 32),
        (1024, 4 * 1024 + 1, 64),
        (4 * 1024, 16 * 1024 + 1, 128),
        (16 * 1024, 64 * 1024 + 1, 256),
    )
    return sorted({c for c in space if c <= max_seq_len})


def seq_lengths(max_seq_len: int) -> list[int]:
    """KV / full-prefill lengths: 0..1024 step 32, ..4096 step 64, ..64k step 256 (< max)."""
    space = _segments((0, 1025, 32), (1024, 4 * 1024 + 1, 64), (4 * 1024, 64 * 1024 + 1, 256))
    return sorted({s for s in space if s < max_seq_len})


@dataclass(frozen=True, order=True)
class AttentionPoint:
    """One attention measurement (Vidur's ``AttentionInput``).

    Attributes:
        is_prefill: prefill (one sequence, ``prefill_chunk_size`` new tokens) or decode.
        batch_size: sequences in the batch (1 for prefill).
        kv_cache_size: tokens already in the KV cache of each sequence.
        prefill_chunk_size: new tokens of the prefill chunk (0 for decode).
    """

    is_prefill: bool
    batch_size: int
    kv_cache_size: int
    prefill_chunk_size: int

    def valid(self, max_seq_len: int) -> bool:
        """Vidur's ``AttentionInput.is_valid``."""
        if self.is_prefill:
            return (
                self.batch_size == 1
                and self.prefill_chunk_size > 0
                and self.prefill_chunk_size + self.kv_cache_size <= max_seq_len
            )
        return self.prefill_chunk_size == 0 and 0 < self.kv_cache_size <= max_seq_len

    @property
    def kv_tokens(self) -> int:
        """KV-cache tokens held by the whole batch (Vidur's memory filter)."""
        return self.batch_size * (self.kv_cache_size + self.prefill_chunk_size)


def attention_points(
    max_seq_len: int,
    min_batch: int = 1,
    max_batch: int = 128,
    max_kv_tokens: int | None = None,
    prefill: bool = True,
    decode: bool = True,
) -> list[AttentionPoint]:
    """Vidur's attention input combinations (chunked prefills, full prefills, decodes).

    Args:
        max_seq_len: longest sequence (chunk + KV) profiled.
        min_batch, max_batch: decode batch-size bounds.
        max_kv_tokens: drop points whose batch holds more KV tokens (memory limit).
        prefill, decode: which kinds to include.

    Returns:
        Unique valid points, decode first then prefill, each sorted.
    """
    pts: set[AttentionPoint] = set()
    if prefill:
        for chunk in prefill_chunk_sizes(max_seq_len):
            for part in range(max_seq_len // chunk):
                pts.add(AttentionPoint(True, 1, part * chunk, chunk))
        for length in seq_lengths(max_seq_len):
            pts.add(AttentionPoint(True, 1, 0, length))
    if decode:
        for kv in seq_lengths(max_seq_len):
            for b in decode_batch_sizes(min_batch, max_batch):
                pts.add(AttentionPoint(False, b, kv, 0))
    keep = [p for p in pts if p.valid(max_seq_len)]
    if max_kv_tokens is not None:
        keep = [p for p in keep if p.kv_tokens <= max_kv_tokens]
    return sorted(keep)


def collective_sizes(max_size: int) -> list[int]:
    """Collective message sizes in fp16 *elements* (Vidur; bytes are 2x), ``<= max_size``."""
    space = _segments(
        (1024, 512 * 1024 + 1, 4 * 1024),
        (512 * 1024, 8 * 1024 * 1024 + 1, 16 * 1024),
        (8 * 1024 * 1024, 64 * 1024 * 1024 + 1, 64 * 1024),
    )
    return sorted({s for s in space if s <= max_size})


def thin(values: list, stride: int) -> list:
    """Every ``stride``-th value, always keeping the last one (for quicker, coarser runs)."""
    if stride <= 1 or len(values) <= 2:
        return list(values)
    out = list(values[::stride])
    if out[-1] != values[-1]:
        out.append(values[-1])
    return out
