"""Segment codes: residual vector quantization of segment vectors (issue 19, wire v2).

The device turns each aggregated segment vector float32 [D] into M small integers, one
per codebook stage (residual VQ: stage m picks the row of ``codebooks[m]`` nearest to
what stages 0..m-1 left over); the server turns them back into the sum of the chosen
rows. Codebooks are one float32 array [M, K, D] (``.npy``), trained offline on the
aggregator's outputs of the training split (``bench/wire_codes.py``). No mean is stored:
the first stage's rows carry it.

numpy only (the device path imports no torch). ``pack``/``unpack`` write the codes of S
segments as S * M * log2(K) bits, the bytes a wire frame would carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgetok.bundle import Bundle

__all__ = ["SegmentCodes", "bits_of", "code_bits", "pack", "unpack", "values_of"]


def code_bits(size: int) -> int:
    """Bits of one code of a codebook with ``size`` rows (a power of two, 2..65536)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2 or size & (size - 1):
        raise ValueError(f"codebook size must be a power of two >= 2, got {size!r}")
    bits = size.bit_length() - 1
    if bits > 16:
        raise ValueError(f"codebook size must be <= 65536, got {size}")
    return bits


def _nearest(x: np.ndarray, rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Index of the row of ``rows`` [K, D] nearest to each of ``x`` [S, D] (squared
    Euclidean; ``norms`` = |row|^2; ties go to the lower index)."""
    scores = norms[None, :] - 2.0 * (x @ rows.T)
    return np.argmin(scores, axis=1)


@dataclass(frozen=True)
class SegmentCodes:
    """Residual VQ codebooks float32 [M, K, D]: ``encode`` on the device, ``decode`` on
    the server. ``sha256``: of the file they came from (a bundle's ``[segment_codes]``),
    what a device and a server compare."""

    codebooks: np.ndarray
    sha256: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        books = self.codebooks
        if not isinstance(books, np.ndarray) or books.ndim != 3:
            raise ValueError("codebooks must be a numpy array [stages, size, dim]")
        if books.dtype != np.float32:
            raise ValueError(f"codebooks must be float32, got {books.dtype}")
        if books.shape[0] < 1 or books.shape[2] < 1:
            raise ValueError(f"codebooks need >= 1 stage and dim >= 1, got {books.shape}")
        code_bits(int(books.shape[1]))
        if not np.all(np.isfinite(books)):
            raise ValueError("codebooks must be finite")
        books.setflags(write=False)
        norms = np.einsum("mkd,mkd->mk", books, books)
        norms.setflags(write=False)
        object.__setattr__(self, "_norms", norms)

    @classmethod
    def load(cls, path: str | Path, stages: int | None = None) -> SegmentCodes:
        """Codebooks from a ``.npy`` file; ``stages``: keep only the first ones (a residual
        code's prefix is itself a code)."""
        books = np.load(Path(path), allow_pickle=False)
        if not isinstance(books, np.ndarray) or books.ndim != 3:
            raise ValueError(f"{path}: not a codebook array [stages, size, dim]")
        if stages is not None:
            if not 1 <= stages <= books.shape[0]:
                raise ValueError(f"{path}: has {books.shape[0]} stages, asked for {stages}")
            books = books[:stages]
        return cls(np.ascontiguousarray(books, dtype=np.float32))

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> SegmentCodes | None:
        """The codebooks of ``bundle``'s ``[segment_codes]`` (checked by ``load_bundle``),
        or None when it has none."""
        if bundle.segment_codes is None:
            return None
        books = np.load(bundle.segment_codes_path, allow_pickle=False)
        return cls(np.ascontiguousarray(books, np.float32), sha256=bundle.segment_codes.sha256)

    def save(self, path: str | Path) -> None:
        np.save(Path(path), self.codebooks, allow_pickle=False)

    @property
    def stages(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def size(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def dim(self) -> int:
        return int(self.codebooks.shape[2])

    @property
    def bits(self) -> int:
        """Bits of one segment's codes."""
        return self.stages * code_bits(self.size)

    def prefix(self, stages: int) -> SegmentCodes:
        """The code of the first ``stages`` stages."""
        if not 1 <= stages <= self.stages:
            raise ValueError(f"stages must be in 1..{self.stages}, got {stages}")
        return SegmentCodes(np.ascontiguousarray(self.codebooks[:stages]))

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes uint16 [S, M] of ``vectors`` float [S, D], greedily stage by stage."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors must be [S, {self.dim}], got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("vectors must be finite")
        norms = self._norms  # type: ignore[attr-defined]
        codes = np.empty((x.shape[0], self.stages), np.uint16)
        residual = x.copy()
        for m in range(self.stages):
            index = _nearest(residual, self.codebooks[m], norms[m])
            codes[:, m] = index
            residual -= self.codebooks[m][index]
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Vectors float32 [S, D]: the sum of the chosen rows, stage 0 first (float32)."""
        c = np.asarray(codes)
        if c.ndim != 2 or c.shape[1] != self.stages:
            raise ValueError(f"codes must be [S, {self.stages}], got {c.shape}")
        if not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"codes must be integers, got {c.dtype}")
        if c.size and (c.min() < 0 or c.max() >= self.size):
            raise ValueError(f"codes must be in [0, {self.size})")
        out = np.zeros((c.shape[0], self.dim), np.float32)
        for m in range(self.stages):
            out += self.codebooks[m][c[:, m]]
        return out


def bits_of(values: np.ndarray, bits: int) -> np.ndarray:
    """The bits uint8 (0/1) of ``values`` (each < 2^bits), value by value in row-major
    order, each value's low bit first."""
    v = np.asarray(values)
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    if v.size and (v.min() < 0 or int(v.max()) >> bits):
        raise ValueError(f"values must be in [0, 2^{bits})")
    shifts = np.arange(bits, dtype=np.uint32)
    return ((v.astype(np.uint32).reshape(-1)[:, None] >> shifts) & 1).astype(np.uint8).ravel()


def values_of(bit_array: np.ndarray, bits: int) -> np.ndarray:
    """The values uint16 that ``bits_of`` wrote (its length a multiple of ``bits``)."""
    weights = np.uint32(1) << np.arange(bits, dtype=np.uint32)
    return (bit_array.reshape(-1, bits).astype(np.uint32) * weights).sum(axis=1).astype(np.uint16)


def pack(codes: np.ndarray, bits: int) -> bytes:
    """Codes [S, M] (each < 2^bits) as S * M * bits bits, little-endian bit order (code
    by code, row-major; each code's low bit first), zero-padded to whole bytes."""
    return np.packbits(bits_of(codes, bits), bitorder="little").tobytes()


def unpack(data: bytes, count: int, stages: int, bits: int) -> np.ndarray:
    """The codes uint16 [count, stages] that ``pack`` wrote; the length must be exact and
    the padding bits zero."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    n = count * stages * bits
    if len(data) != (n + 7) // 8:
        raise ValueError(
            f"expected {(n + 7) // 8} bytes for {count} x {stages} codes, got {len(data)}"
        )
    bit_array = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    if bit_array[n:].any():
        raise ValueError("padding bits must be zero")
    return values_of(bit_array[:n], bits).reshape(count, stages)
