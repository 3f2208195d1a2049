"""How a token sequence becomes segments: entropy cuts, fixed-rate pooling, or dense.

One ``Compression`` value describes the rule; the device pipeline, training and
evaluation all call ``Compression.starts`` so that they cut identically.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from edgetok.segment import boundaries

Mode = Literal["entropy", "fixed", "dense"]


def fixed_rate_starts(n: int, token_rate_hz: float, rate_hz: float) -> np.ndarray:
    """Starts int64 of near-equal segments at ``rate_hz`` (fractional stride, e.g. 3.33)."""
    if rate_hz <= 0 or rate_hz > token_rate_hz:
        raise ValueError(f"rate_hz must be in (0, {token_rate_hz}], got {rate_hz}")
    count = math.ceil(n * rate_hz / token_rate_hz)
    starts = np.floor(np.arange(count) * (token_rate_hz / rate_hz) + 1e-9).astype(np.int64)
    return np.unique(starts[starts < n])


@dataclass(frozen=True)
class Compression:
    """A segmentation rule and the aggregator's segment width ``max_len``."""

    mode: Mode
    max_len: int
    global_threshold: float | None = None
    relative_threshold: float | None = None
    min_len: int = 1
    rate_hz: float | None = None
    token_rate_hz: float = 50.0
    target_hz: float | None = None
    """The segment rate the entropy threshold was solved for."""

    def __post_init__(self) -> None:
        if self.mode == "dense" and self.max_len != 1:
            raise ValueError("dense mode has segments of one token: max_len must be 1")
        if self.mode == "fixed" and self.rate_hz is None:
            raise ValueError("fixed mode needs rate_hz")
        if self.mode == "fixed":
            longest = math.ceil(self.token_rate_hz / self.rate_hz)
            if longest > self.max_len:
                raise ValueError(f"fixed rate {self.rate_hz} Hz needs max_len >= {longest}")
        if (
            self.mode == "entropy"
            and self.global_threshold is None
            and (self.relative_threshold is None)
        ):
            raise ValueError("entropy mode needs a global or relative threshold")

    def starts(self, tokens: np.ndarray, entropy: np.ndarray | None = None) -> np.ndarray:
        """Segment starts int64 [S] of one sequence (``entropy`` needed in entropy mode)."""
        n = len(tokens)
        if self.mode == "dense":
            return np.arange(n, dtype=np.int64)
        if self.mode == "fixed":
            return fixed_rate_starts(n, self.token_rate_hz, float(self.rate_hz))
        if entropy is None or len(entropy) != n:
            raise ValueError("entropy mode needs one entropy per token")
        return boundaries(
            entropy,
            global_threshold=self.global_threshold,
            relative_threshold=self.relative_threshold,
            min_len=self.min_len,
            max_len=self.max_len,
        )

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> Compression:
        return cls(**data)
