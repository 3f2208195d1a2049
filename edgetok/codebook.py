"""Nearest-centroid lookup: encoder features -> semantic token ids (numpy, float32).

Training tokenizes its corpus with this same function, so device tokens and training
tokens come from one recipe.
"""

from __future__ import annotations

import numpy as np


def nearest_centroid(features: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """features [..., D], codebook [K, D] -> int64 ids [...] of the closest centroid (L2)."""
    if features.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"feature dim {features.shape[-1]} does not match codebook dim {codebook.shape[-1]}"
        )
    flat = features.reshape(-1, features.shape[-1]).astype(np.float32, copy=False)
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every c.
    scores = flat @ codebook.T.astype(np.float32, copy=False)
    scores = 0.5 * np.einsum("kd,kd->k", codebook, codebook) - scores
    return np.argmin(scores, axis=-1).astype(np.int64).reshape(features.shape[:-1])
