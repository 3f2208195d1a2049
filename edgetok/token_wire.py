"""The token wire (protocol 2, dtype ``tokens``; issue 19): a device sends its segments'
token ids, the server rebuilds the segment vectors.

``TokenWire`` is what both sides must agree on (the bundle's ``token_reader`` by sha256,
and the token vocabulary that sizes each id on the wire); a device needs only the
manifest for it, not the reader. ``TokenVectors`` is the server's half: the reader
(token ids -> estimated encoder frames) and the bundle's aggregator, which makes the
vectors its decoder reads. numpy and the runtime only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetok.bundle import Bundle
from edgetok.protocol import Frame, ProtocolError, max_utterance_tokens
from edgetok.runtime import SessionOptions
from edgetok.stages import AggregatorStage, TokenReaderStage, bundle_compression

__all__ = ["TokenVectors", "TokenWire", "segment_tokens"]


@dataclass(frozen=True)
class TokenWire:
    """The hello's ``reader_sha256`` and the ids' vocabulary (``[tokens] vocab_size``)."""

    sha256: str
    vocab_size: int

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> TokenWire | None:
        """The bundle's token wire, or None when it has no ``token_reader``."""
        entry = bundle.models.get("token_reader")
        if entry is None:
            return None
        return cls(sha256=entry.source_sha256 or entry.sha256, vocab_size=bundle.tokens.vocab_size)


def segment_tokens(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The token ids [sum(lengths)] of contiguous segments (``starts``, ``lengths``) of an
    utterance's ``tokens`` [T]."""
    if not len(starts):
        return np.zeros(0, np.int64)
    first, end = int(starts[0]), int(starts[-1] + lengths[-1])
    if end > len(tokens):
        raise ValueError(f"segments end at token {end}, beyond the utterance's {len(tokens)}")
    return np.asarray(tokens[first:end], dtype=np.int64)


class TokenVectors:
    """Server side: an utterance's token ids [T] and segment starts [S] (positions in
    those ids) -> the segment vectors float32 [S, D] its decoder reads."""

    def __init__(
        self,
        wire: TokenWire,
        reader: TokenReaderStage,
        aggregator: AggregatorStage,
        max_len: int,
        max_tokens: int,
    ) -> None:
        self.wire, self.reader, self.aggregator = wire, reader, aggregator
        self.max_len = max_len
        """The longest segment, in tokens (the aggregator's)."""
        self.max_tokens = max_tokens
        """The most tokens of one utterance (``protocol.max_utterance_tokens``): the
        reader attends over all of them at once."""

    def check(self, frame: Frame, received: int) -> None:
        """Refuse a tokens frame whose segments the aggregator cannot take, or that would
        give its utterance (``received`` ids so far) more ids than one utterance has."""
        if len(frame.lengths) and int(frame.lengths.max()) > self.max_len:
            raise ProtocolError(
                "bad_frame",
                f"a segment of {int(frame.lengths.max())} tokens; this bundle's are at most "
                f"{self.max_len}",
            )
        if frame.tokens is not None and received + len(frame.tokens) > self.max_tokens:
            raise ProtocolError(
                "limit_exceeded",
                f"utterance {frame.utterance} longer than {self.max_tokens} tokens",
            )

    @classmethod
    def of_bundle(
        cls, bundle: Bundle, options: SessionOptions | None = None
    ) -> TokenVectors | None:
        """The bundle's reader and aggregator, or None when it has no ``token_reader``."""
        wire = TokenWire.of_bundle(bundle)
        reader = TokenReaderStage.from_bundle(bundle, options)
        if wire is None or reader is None:
            return None
        aggregator = AggregatorStage(bundle.open("aggregator", options=options))
        max_len = bundle_compression(bundle).max_len
        return cls(wire, reader, aggregator, max_len, max_utterance_tokens(bundle))

    def __call__(self, tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return self.reader.vectors(tokens, starts, self.aggregator, self.max_len)
