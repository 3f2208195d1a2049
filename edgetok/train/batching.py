"""Length-bucketed batches: similar lengths together, a budget of frames per batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def bucketed_batches(
    lengths: np.ndarray,
    *,
    max_frames: int,
    max_items: int = 256,
    seed: int = 0,
    bucket_size: int = 2000,
) -> Iterator[list[int]]:
    """Endless stream of index batches whose padded size stays within ``max_frames``.

    Each epoch shuffles all items, sorts them by length inside buckets of
    ``bucket_size``, cuts batches, and shuffles the batches. Items longer than
    ``max_frames`` form batches of one.
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    while True:
        order = rng.permutation(len(lengths))
        batches: list[list[int]] = []
        for start in range(0, len(order), bucket_size):
            bucket = order[start : start + bucket_size]
            bucket = bucket[np.argsort(lengths[bucket], kind="stable")]
            batch: list[int] = []
            longest = 0
            for i in bucket:
                longest_if_added = max(longest, int(lengths[i]))
                if batch and (
                    longest_if_added * (len(batch) + 1) > max_frames or len(batch) >= max_items
                ):
                    batches.append(batch)
                    batch, longest_if_added = [], int(lengths[i])
                batch.append(int(i))
                longest = longest_if_added
            if batch:
                batches.append(batch)
        for j in rng.permutation(len(batches)):
            yield batches[j]


def pad_stack(arrays: list[np.ndarray], pad_value: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stack arrays of shape [T_i, ...] into [B, max T, ...] plus their lengths."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    out = np.full(
        (len(arrays), int(lengths.max()), *arrays[0].shape[1:]), pad_value, dtype=arrays[0].dtype
    )
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out, lengths
