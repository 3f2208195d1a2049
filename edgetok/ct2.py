"""Read a CTranslate2 ``model.bin`` (binary version 6) into numpy arrays.

Layout: uint32 version, string name, uint32 revision, uint32 variable count; per
variable a string name, uint8 rank, ``rank`` uint32 dims, uint8 dtype, uint32 byte count
and the raw little-endian data; then a uint32 alias count and (alias, target) string
pairs. A string is a uint16 length that counts a trailing NUL, then the bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CT2Model", "read_ct2"]

#: Supported binary versions of the format.
SUPPORTED_VERSIONS = (6,)
_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: None,  # bf16: widened to float32 on read
}


@dataclass(frozen=True)
class CT2Model:
    """A CTranslate2 model file: its spec name, revision and variables by name."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.variables[name]
        except KeyError:
            raise KeyError(f"CTranslate2 model {self.spec!r} has no variable {name!r}") from None

    def scalar(self, name: str) -> int:
        """An integer scalar variable such as ``encoder/num_heads``."""
        return int(np.asarray(self[name]).reshape(()))


class _Reader:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError(f"{self.path}: truncated at byte {self.pos} (needs {n} more)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = bytes(self.take(length))
        if not raw.endswith(b"\0"):
            raise ValueError(f"{self.path}: string at byte {self.pos - length} is not NUL-ended")
        return raw[:-1].decode("utf-8")


def read_ct2(path: str | Path) -> CT2Model:
    """All variables of the CTranslate2 model file at ``path`` (aliases resolved)."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    r = _Reader(data, path)
    (version,) = r.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported")
    spec = r.string()
    (revision,) = r.unpack("I")
    (count,) = r.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = r.string()
        (rank,) = r.unpack("B")
        dims = r.unpack(f"{rank}I") if rank else ()
        dtype_code, nbytes = r.unpack("BI")
        if dtype_code not in _DTYPES:
            raise ValueError(f"{path}: variable {name!r} has unknown dtype code {dtype_code}")
        raw = r.take(nbytes)
        if dtype_code == 5:
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype_code]).newbyteorder("<"))
        if array.size != int(np.prod(dims, dtype=np.int64)):
            raise ValueError(f"{path}: variable {name!r} holds {array.size} values, dims {dims}")
        variables[name] = array.reshape(dims)
    if r.pos < len(data):
        (aliases,) = r.unpack("I")
        for _ in range(aliases):
            alias, target = r.string(), r.string()
            if target not in variables:
                raise ValueError(f"{path}: alias {alias!r} points to missing {target!r}")
            variables[alias] = variables[target]
    return CT2Model(spec, revision, variables)
