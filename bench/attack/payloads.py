"""What the attacks send: segment vectors of a bundle's size, and random fuzz frames."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetok.bundle import load_bundle
from edgetok.protocol import (
    MAX_SEGMENTS,
    Hello,
    Identity,
    encode_frame,
    frame_bytes,
    max_utterance_segments,
    wire_identity,
)

__all__ = ["Frame", "Payloads", "random_binary", "random_json"]

MAX_FRAME_BYTES = 256 * 1024
"""``edgetok serve``'s default ``--max-frame-bytes``."""

Frame = tuple[np.ndarray, np.ndarray, np.ndarray]
"""starts, lengths, float32 vectors [S, D]: the arguments of ``Client.send``."""


@dataclass(frozen=True)
class Payloads:
    """The identity a server for ``bundle`` accepts, and utterances of its vector size."""

    identity: Identity
    max_segments: int
    """Segments per utterance the server allows (``max_utterance_segments``)."""
    min_len: int

    @classmethod
    def for_bundle(cls, bundle: Path) -> Payloads:
        loaded = load_bundle(bundle)
        return cls(wire_identity(loaded), max_utterance_segments(loaded), loaded.segmenter.min_len)

    @property
    def dim(self) -> int:
        return self.identity.dim

    def hello(self, session: str, dtype: str = "fp16", **changes: Any) -> Hello:
        return Hello(**(vars(self.identity) | dict(session=session, dtype=dtype, seq=0) | changes))

    def per_frame(self, dtype: str) -> int:
        """The most segments a frame of the default size limit holds."""
        per_segment = frame_bytes(1, self.dim, dtype) - frame_bytes(0, self.dim, dtype)
        return min(MAX_SEGMENTS, (MAX_FRAME_BYTES - frame_bytes(0, self.dim, dtype)) // per_segment)

    def utterance(self, seed: int, segments: int, dtype: str = "fp16") -> list[Frame]:
        """``segments`` random segments of ``min_len`` tokens, in frames of the most a
        frame holds."""
        rng = np.random.default_rng(seed)
        vectors = rng.normal(size=(segments, self.dim)).astype(np.float32)
        lengths = np.full(segments, self.min_len)
        starts = np.arange(segments) * self.min_len
        step = self.per_frame(dtype)
        return [
            (starts[i : i + step], lengths[i : i + step], vectors[i : i + step])
            for i in range(0, segments, step)
        ]

    def wire(self, seq: int, uid: int, frame: Frame, dtype: str, end: bool = False) -> bytes:
        return encode_frame(seq, uid, *frame, dtype=dtype, end=end)


# Fuzzing

_KNOWN = ("hello", "ready", "ack", "partial", "final", "error")
_FIELDS = ("version", "session", "bundle", "aggregator_sha256", "dim", "dtype", "seq")
_FIELDS += ("pending", "resume_key", "text", "utterance", "code", "message", "type")


def _value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: scalars of awkward sizes, nested lists and objects."""
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**32, 2**64, -(2**63), 10**400])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, 5e-324, 3.14])
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randrange(12)))
    if kind == 5:
        return rng.choice(["", "x" * 70_000, "fp16", "int8", "a" * 64, "0" * 64])
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = rng.sample(_FIELDS, rng.randrange(4))
    return {key: _value(rng, depth + 1) for key in keys}


def random_json(rng: random.Random, valid: Hello) -> str:
    """A random JSON text: any value, a known type with random fields, the ``valid``
    hello with one field replaced, or such a text cut, nested deep or numerically huge."""
    kind = rng.randrange(6)
    if kind == 0:
        return json.dumps(_value(rng))
    if kind == 1:
        fields = {key: _value(rng, 1) for key in rng.sample(_FIELDS, rng.randrange(6))}
        return json.dumps({**fields, "type": rng.choice(_KNOWN + ("x",))})
    data = {"type": "hello", **vars(valid), "pending": list(valid.pending)}
    data[rng.choice(list(data))] = _value(rng, 1)
    text = json.dumps(data)
    if kind == 3:
        return text[: rng.randrange(len(text))]
    if kind == 4:
        depth = rng.choice([50, 1000, 100_000])
        return "[" * depth + "]" * depth
    if kind == 5:
        return text.replace('"seq": 0', '"seq": 1' + "0" * 400 + ".5")
    return text


def random_binary(rng: random.Random, payloads: Payloads, seq: int) -> bytes:
    """A random binary frame: random bytes, or a valid fp16 frame (``seq``) flipped, cut,
    extended, with a random header, or padded beyond the size limit."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(600))
    count = rng.randrange(1, 8)
    frame = payloads.utterance(rng.randrange(1 << 30), count)[0]
    data = bytearray(payloads.wire(seq, rng.randrange(4), frame, "fp16", rng.random() < 0.3))
    if kind == 1:
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 2:
        del data[rng.randrange(len(data)) :]
    elif kind == 3:
        data += rng.randbytes(rng.randrange(1, 64))
    elif kind == 4:
        data[:20] = rng.randbytes(20)
    else:
        data += bytes(rng.randrange(MAX_FRAME_BYTES, 2 * MAX_FRAME_BYTES) - len(data) + 1)
    return bytes(data)


def fuzz_frames(seed: int, count: int) -> Iterator[tuple[str, random.Random]]:
    """``count`` (kind, rng) pairs: kinds ``json-first`` (the first message),
    ``json-after`` (after a valid hello) and ``binary`` in equal shares."""
    rng = random.Random(seed)
    for _ in range(count):
        yield rng.choice(["json-first", "json-after", "binary"]), random.Random(rng.random())
