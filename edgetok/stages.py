"""Pipeline stages over runtime ``Session``s; each takes arrays and returns arrays.

``TokenizerStage`` audio -> tokens, ``EntropyStage`` tokens -> entropy, then a
``DecoderPack`` (compression rule -> starts, ``AggregatorStage`` -> one vector per segment,
``DecoderStage`` -> text). ``Transcriber`` wires one utterance through them; the pack is
the bundle's own or a baseline's (dense or fixed-rate) exported pack directory.

The segmenter's modules (Numba) are imported where they are used, so a server that only
decodes (``server_decoder``) does not hold them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edgetok.beam import DEFAULT_BEAM, DEFAULT_LENGTH_PENALTY, beam_search, log_softmax
from edgetok.bundle import Bundle
from edgetok.codebook import nearest_centroid
from edgetok.frontend import FrontendConfig, log_mel
from edgetok.runtime import Session, SessionOptions, open_session
from edgetok.vocab import BOS, EOS, VOCAB, decode_ids

if TYPE_CHECKING:
    from edgetok.compress import Compression

__all__ = [
    "COMPRESSION_FILE",
    "MAX_CHARS",
    "SERVER_DECODER_ROLES",
    "SERVER_ROLES",
    "AggregatorStage",
    "DecoderPack",
    "DecoderStage",
    "Encoded",
    "EntropyStage",
    "TokenReaderStage",
    "TokenizerStage",
    "Transcriber",
    "Transcript",
    "bundle_compression",
    "device_roles",
    "frontend_config",
    "server_decoder",
]

#: The compression rule of a decoder pack (as ``edgetok.train.make_bundle`` writes it).
COMPRESSION_FILE = "compression.json"
#: The most characters ``DecoderStage`` writes for one utterance by default.
MAX_CHARS = 400
#: A v2 bundle's server decoder graphs (``server_decoder``).
SERVER_DECODER_ROLES = ("decoder_context", "decoder_step")
#: What only a server runs: v2's decoder graphs and the token wire's optional reader
#: (``TokenReaderStage``); never the device.
SERVER_ROLES = (*SERVER_DECODER_ROLES, "token_reader")

_T = TypeVar("_T")


def _fixed_last_dim(session: Session, output: str) -> int:
    """The fixed last dimension of ``output`` (a ValueError when it is dynamic or absent)."""
    for spec in session.outputs:
        if spec.name == output and spec.shape and isinstance(spec.shape[-1], int):
            return spec.shape[-1]
    raise ValueError(f"model output {output!r} with a fixed last dimension not found")


def frontend_config(bundle: Bundle) -> FrontendConfig:
    """The log-mel recipe a bundle's tokenizer was trained on."""
    return FrontendConfig(sample_rate=bundle.audio.sample_rate, **bundle.frontend.to_dict())


def device_roles(bundle: Bundle) -> tuple[str, ...]:
    """The bundle's models a device runs, in pipeline order: tokenizer, entropy LM,
    aggregator, and a v1 bundle's character decoder (``--local`` decoding); not v2's
    ``SERVER_ROLES``."""
    return tuple(role for role in bundle.models if role not in SERVER_ROLES)


def bundle_compression(bundle: Bundle) -> Compression:
    """The bundle's entropy segmentation rule."""
    from edgetok.compress import Compression

    seg = bundle.segmenter
    return Compression(
        mode="entropy",
        max_len=seg.max_len,
        global_threshold=seg.global_threshold,
        relative_threshold=seg.relative_threshold,
        min_len=seg.min_len,
        token_rate_hz=bundle.tokens.rate_hz,
        target_hz=seg.target_hz,
    )


class TokenizerStage:
    """Audio float32 [n] -> token ids int64 [T] (log-mel, encoder, nearest centroid).

    A v2 tokenizer also gives the encoder's frames float32 [T, D] (output ``frames``):
    the tokens decide where segments are cut, the frames are what the aggregator reads.
    """

    def __init__(self, session: Session, codebook: np.ndarray, frontend: FrontendConfig) -> None:
        self.session = session
        self.codebook = codebook
        self.frontend = frontend
        self.gives_frames = any(spec.name == "frames" for spec in session.outputs)
        self._no_frames = (
            np.zeros((0, _fixed_last_dim(session, "frames")), np.float32)
            if self.gives_frames
            else None
        )

    @classmethod
    def from_bundle(cls, bundle: Bundle, options: SessionOptions | None = None) -> TokenizerStage:
        codebook = np.load(bundle.codebook_path, allow_pickle=False)
        return cls(bundle.open("tokenizer", options=options), codebook, frontend_config(bundle))

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return self.from_mel(log_mel(audio, self.frontend))

    def from_mel(self, mel: np.ndarray) -> np.ndarray:
        """Token ids int64 [T] of log-mel frames float32 [F, n_mels] (a ``LogMelStream``'s)."""
        return self.encode_mel(mel)[0]

    def encode(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Token ids [T] of ``audio``, and its encoder frames [T, D] (None from v1)."""
        return self.encode_mel(log_mel(audio, self.frontend))

    def encode_mel(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Token ids [T] of log-mel frames [F, n_mels], and the encoder frames [T, D]
        when this tokenizer gives them (else None)."""
        if mel.shape[0] == 0:
            return np.zeros(0, np.int64), self._no_frames
        out = self.session.run({"mel": mel[None]})
        tokens = nearest_centroid(out["features"][0], self.codebook)
        return tokens, out["frames"][0] if self.gives_frames else None


class EntropyStage:
    """Tokens int64 [T] -> entropy float32 [T] (nats) of the causal entropy LM."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        if tokens.shape[0] == 0:
            return np.zeros(0, np.float32)
        return self.session.run({"tokens": tokens[None].astype(np.int64)})["entropy"][0]


class AggregatorStage:
    """One segment's tokens (v1) or encoder frames (v2) -> one vector, float32 [S, D].

    The model's input names which it reads: ``tokens`` [N, L] or ``frames`` [N, L, F],
    with ``mask`` [N, L]. All segments of an utterance go through the model in one run,
    padded to ``max_len``.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dim = _fixed_last_dim(session, "vectors")
        self.reads_frames = any(spec.name == "frames" for spec in session.inputs)

    def source(self, tokens: np.ndarray, frames: np.ndarray | None) -> np.ndarray:
        """What this aggregator reads of an utterance: its tokens or its frames."""
        if not self.reads_frames:
            return tokens
        if frames is None:
            raise ValueError(
                "this aggregator reads encoder frames, which the tokenizer does not give "
                "(a v1 tokenizer with a v2 aggregator?)"
            )
        return frames

    def __call__(self, source: np.ndarray, starts: np.ndarray, max_len: int) -> np.ndarray:
        """Vectors [S, D] of ``source`` (``self.source``: tokens [T] or frames [T, F])
        cut at ``starts`` [S]."""
        if starts.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.session.run(self.feeds(source, starts, max_len))["vectors"]

    def feeds(self, source: np.ndarray, starts: np.ndarray, max_len: int) -> dict[str, np.ndarray]:
        """The model's inputs: ``source`` cut at ``starts`` [S >= 1], padded to ``max_len``,
        and the mask."""
        from edgetok.segment import frames_to_padded, segments_to_padded

        if self.reads_frames:
            padded, mask = frames_to_padded(source, starts, max_len)
            return {"frames": padded, "mask": mask}
        padded, mask = segments_to_padded(source, starts, max_len)
        return {"tokens": padded, "mask": mask}


class TokenReaderStage:
    """Server side of the token wire: token ids int64 [T] -> estimated encoder frames
    float32 [T, F] (``edgetok.train.token_reader``), which the bundle's v2 aggregator then
    reads as it reads the device's real frames."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dim = _fixed_last_dim(session, "frames")

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, options: SessionOptions | None = None
    ) -> TokenReaderStage | None:
        """The bundle's token reader, or None when it has none."""
        if "token_reader" not in bundle.models:
            return None
        return cls(bundle.open("token_reader", options=options))

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        if tokens.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.session.run({"tokens": tokens[None].astype(np.int64)})["frames"][0]

    def vectors(
        self, tokens: np.ndarray, starts: np.ndarray, aggregator: AggregatorStage, max_len: int
    ) -> np.ndarray:
        """Segment vectors [S, D] of an utterance's tokens [T] cut at ``starts`` [S]."""
        return aggregator(self(tokens), starts, max_len)


class DecoderStage:
    """Segment vectors float32 [S, D] -> text, by beam search over characters.

    Hypotheses start from BOS and end at EOS or ``max_chars`` characters (default
    ``min(3 S + 20, MAX_CHARS)``); ``edgetok.beam`` keeps the ``beam`` best and ranks the
    finished ones by log-probability / length ** ``length_penalty``; ``beam=1`` is
    greedy decoding. A decoder with a key/value cache (inputs ``past_keys``/
    ``past_values``, outputs ``keys``/``values``: what ``edgetok train bundle`` exports)
    runs the prefix and BOS once on an empty cache, then one character per hypothesis, the
    hypotheses in one batch; a decoder without one (``prefix``, ``text`` -> ``logits``:
    older bundles, fixed-window LiteRT models) reruns the whole prefix and text for every
    character of every hypothesis. ``use_cache=False`` makes a cached decoder rerun
    everything too (the same text; for comparisons).
    """

    def __init__(
        self,
        session: Session,
        use_cache: bool = True,
        *,
        beam: int = DEFAULT_BEAM,
        length_penalty: float = DEFAULT_LENGTH_PENALTY,
    ) -> None:
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        vocab = _fixed_last_dim(session, "logits")
        if vocab != len(VOCAB):
            raise ValueError(
                f"the decoder writes {vocab} symbols, the character vocabulary has {len(VOCAB)}"
            )
        self.session = session
        self._empty: np.ndarray | None = None
        past = next((spec for spec in session.inputs if spec.name == "past_keys"), None)
        if past is not None:
            layers, _, heads, _, head_dim = past.shape
            if not all(isinstance(n, int) for n in (layers, heads, head_dim)):
                raise ValueError(f"decoder input past_keys {past.shape}: no fixed layers/heads")
            self._empty = np.zeros((layers, 1, heads, 0, head_dim), np.float32)
        self.use_cache = use_cache and self.cached
        self.beam = beam
        self.length_penalty = length_penalty

    @property
    def cached(self) -> bool:
        """Whether the model takes a key/value cache."""
        return self._empty is not None

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, options: SessionOptions | None = None, *, beam: int = DEFAULT_BEAM
    ) -> DecoderStage:
        return cls(bundle.open("decoder", options=options), beam=beam)

    def feeds(self, prefix: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
        """The model's inputs for prefix [1, S, D] and text [1, U] from the start (an empty
        cache when it takes one)."""
        feeds = {"prefix": prefix, "text": text}
        if self._empty is not None:
            feeds["past_keys"] = feeds["past_values"] = self._empty
        return feeds

    def logits(self, prefix: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Teacher-forced logits float32 [1, U, V] of text [1, U] after prefix [1, S, D]."""
        return self.session.run(self.feeds(prefix, text))["logits"]

    def __call__(self, vectors: np.ndarray, max_chars: int | None = None) -> str:
        if vectors.shape[0] == 0:
            return ""
        if max_chars is None:
            max_chars = min(3 * vectors.shape[0] + 20, MAX_CHARS)
        prefix = np.ascontiguousarray(vectors[None], dtype=np.float32)
        scorer = _CachedScorer(self, prefix) if self.use_cache else _RerunScorer(self, prefix)
        ids = beam_search(
            scorer,
            eos=EOS,
            beam=self.beam,
            max_chars=max_chars,
            length_penalty=self.length_penalty,
        )
        return decode_ids(ids)


class _RerunScorer:
    """Next-character log-probabilities by rerunning prefix and text, one hypothesis a
    run (fixed-shape models take a batch of one)."""

    def __init__(self, stage: DecoderStage, prefix: np.ndarray) -> None:
        self.stage = stage
        self.prefix = prefix
        self.texts: list[list[int]] = [[BOS]]

    def _next(self) -> np.ndarray:
        rows = [
            self.stage.logits(self.prefix, np.array([text], dtype=np.int64))[0, -1]
            for text in self.texts
        ]
        return log_softmax(np.stack(rows))

    def start(self) -> np.ndarray:
        return self._next()

    def extend(self, parents: np.ndarray, ids: np.ndarray) -> np.ndarray:
        self.texts = [[*self.texts[p], int(i)] for p, i in zip(parents, ids, strict=True)]
        return self._next()


class _CachedScorer:
    """The same log-probabilities with the key/value cache: prefix and BOS once, then one
    character per hypothesis, all hypotheses in one batch."""

    def __init__(self, stage: DecoderStage, prefix: np.ndarray) -> None:
        self.stage = stage
        self.prefix = prefix
        self.keys = self.values = np.zeros(0, np.float32)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.stage.session.run(feeds)
        self.keys, self.values = out["keys"], out["values"]
        return log_softmax(out["logits"][:, -1])

    def start(self) -> np.ndarray:
        return self._run(self.stage.feeds(self.prefix, np.array([[BOS]], dtype=np.int64)))

    def extend(self, parents: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self._run(
            {
                "prefix": np.zeros((len(ids), 0, self.prefix.shape[2]), np.float32),
                "text": ids[:, None].astype(np.int64),
                "past_keys": np.ascontiguousarray(self.keys[:, parents]),
                "past_values": np.ascontiguousarray(self.values[:, parents]),
            }
        )


SegmentDecoder = Callable[[np.ndarray], str]
"""Segment vectors float32 [S, D] -> text: ``DecoderStage`` or a v2 ``WhisperDecoderStage``."""


def server_decoder(
    bundle: Bundle, options: SessionOptions | None = None, *, beam: int = DEFAULT_BEAM
) -> SegmentDecoder:
    """The bundle's decoder: the v1 character decoder, or v2's Whisper decoder graphs."""
    if "decoder_step" in bundle.models:
        from edgetok.whisper_decoding import WhisperDecoderStage

        return WhisperDecoderStage.from_bundle(bundle, options, beam=beam)
    return DecoderStage.from_bundle(bundle, options, beam=beam)


def _timed(timings: dict[str, float], stage: str, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, recording its wall time in seconds as ``timings[stage]``."""
    start = time.perf_counter()
    result = fn(*args)
    timings[stage] = time.perf_counter() - start
    return result


class RemoteOnly:
    """The decoder of a pack whose segments are decoded by a server: it has none (a
    device install need not hold, or rebuild, the server's decoder)."""

    def __call__(self, vectors: np.ndarray) -> str:
        raise RuntimeError("this pipeline sends its segments to a server: it has no decoder")


@dataclass(frozen=True)
class DecoderPack:
    """The segment half of the pipeline: compression rule, aggregator and decoder."""

    compression: Compression
    aggregator: AggregatorStage
    decoder: SegmentDecoder | RemoteOnly

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        options: SessionOptions | None = None,
        *,
        beam: int = DEFAULT_BEAM,
        local: bool = True,
    ) -> DecoderPack:
        """The bundle's entropy segmenter settings with its aggregator and decoder
        (beam width ``beam``); ``local=False``: no decoder (a server decodes)."""
        return cls(
            bundle_compression(bundle),
            AggregatorStage(bundle.open("aggregator", options=options)),
            server_decoder(bundle, options, beam=beam) if local else RemoteOnly(),
        )

    @classmethod
    def from_dir(
        cls,
        directory: str | Path,
        options: SessionOptions | None = None,
        *,
        beam: int = DEFAULT_BEAM,
    ) -> DecoderPack:
        """A pack directory: ``aggregator.onnx``, ``decoder.onnx``, ``compression.json``;
        a v2 pack has ``decoder_context.onnx``, ``decoder_step.onnx`` and
        ``vocabulary.txt`` instead of ``decoder.onnx``."""
        from edgetok.compress import Compression

        directory = Path(directory)
        rule = directory / COMPRESSION_FILE
        if not rule.is_file():
            raise FileNotFoundError(f"{directory} is not a decoder pack: {rule} not found")
        try:
            compression = Compression.from_dict(json.loads(rule.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{rule}: not a valid compression rule ({exc})") from None
        decoder: SegmentDecoder
        if (directory / "decoder_step.onnx").is_file():
            from edgetok.bpe import BpeVocabulary
            from edgetok.whisper_decoding import WhisperDecoderStage

            decoder = WhisperDecoderStage(
                open_session(directory / "decoder_context.onnx", options=options),
                open_session(directory / "decoder_step.onnx", options=options),
                BpeVocabulary.from_file(directory / "vocabulary.txt"),
                beam=beam,
            )
        else:
            session = open_session(directory / "decoder.onnx", options=options)
            decoder = DecoderStage(session, beam=beam)
        return cls(
            compression,
            AggregatorStage(open_session(directory / "aggregator.onnx", options=options)),
            decoder,
        )

    def run(
        self,
        tokens: np.ndarray,
        entropy: np.ndarray,
        timings: dict[str, float],
        frames: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """(starts [S], vectors [S, D], text) of one utterance (``frames``: the encoder
        frames, for a v2 aggregator); records the seconds of ``segmenter``,
        ``aggregator`` and ``decoder`` in ``timings``."""
        starts, vectors = self.segments(tokens, entropy, timings, frames)
        text = _timed(timings, "decoder", self.decoder, vectors)
        return starts, vectors, text

    def segments(
        self,
        tokens: np.ndarray,
        entropy: np.ndarray,
        timings: dict[str, float],
        frames: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(starts [S], vectors [S, D]): ``run`` without the decoder."""
        starts = _timed(timings, "segmenter", self.compression.starts, tokens, entropy)
        source = self.aggregator.source(tokens, frames)
        vectors = _timed(
            timings, "aggregator", self.aggregator, source, starts, self.compression.max_len
        )
        return starts, vectors


@dataclass(frozen=True)
class Encoded:
    """Tokens and entropies of one utterance: what every decoder pack starts from."""

    tokens: np.ndarray
    entropy: np.ndarray
    duration_s: float
    timings: dict[str, float]
    """Seconds spent in ``tokenizer`` (log-mel included) and ``entropy_lm``."""
    frames: np.ndarray | None = None
    """The encoder frames [T, D] of a v2 tokenizer, which its aggregator reads."""


@dataclass(frozen=True)
class Transcript:
    """Everything the pipeline made of one utterance, with per-stage wall times."""

    text: str
    tokens: np.ndarray
    entropy: np.ndarray
    starts: np.ndarray
    vectors: np.ndarray
    timings: dict[str, float]
    """Stage -> seconds: tokenizer, entropy_lm, segmenter, aggregator, decoder."""
    duration_s: float

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.duration_s if self.duration_s else 0.0

    @property
    def segments_per_s(self) -> float:
        return len(self.starts) / self.duration_s if self.duration_s else 0.0

    @property
    def processing_s(self) -> float:
        """Seconds spent in all stages together."""
        return sum(self.timings.values())

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time / audio time."""
        return self.processing_s / self.duration_s if self.duration_s else 0.0


class Transcriber:
    """Speech to text for one utterance: tokenizer and entropy LM, then a decoder pack.

    ``pack`` replaces the bundle's own aggregator, decoder and entropy rule (e.g. a
    baseline's ``DecoderPack.from_dir``); ``decode`` can also take a pack per call, so
    several packs share one tokenization. ``local=False``: a server decodes, the bundle's
    decoder is not opened.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        options: SessionOptions | None = None,
        pack: DecoderPack | None = None,
        beam: int = DEFAULT_BEAM,
        local: bool = True,
    ) -> None:
        self.bundle = bundle
        self.sample_rate = bundle.audio.sample_rate
        self.tokenizer = TokenizerStage.from_bundle(bundle, options)
        self.entropy = EntropyStage(bundle.open("entropy_lm", options=options))
        self.pack = pack or DecoderPack.from_bundle(bundle, options, beam=beam, local=local)
        from edgetok.segment import warmup

        warmup()  # the segmenter's one-time Numba load, kept off the first utterance

    def encode(self, audio: np.ndarray) -> Encoded:
        """Tokens and entropies of float32 mono ``audio`` at ``sample_rate``."""
        timings: dict[str, float] = {}
        tokens, frames = _timed(timings, "tokenizer", self.tokenizer.encode, audio)
        entropy = _timed(timings, "entropy_lm", self.entropy, tokens)
        return Encoded(tokens, entropy, len(audio) / self.sample_rate, timings, frames)

    def decode(self, encoded: Encoded, pack: DecoderPack | None = None) -> Transcript:
        """The transcript of ``encoded`` through ``pack`` (default: this one's)."""
        timings = dict(encoded.timings)
        starts, vectors, text = (pack or self.pack).run(
            encoded.tokens, encoded.entropy, timings, encoded.frames
        )
        return Transcript(
            text, encoded.tokens, encoded.entropy, starts, vectors, timings, encoded.duration_s
        )

    def __call__(self, audio: np.ndarray) -> Transcript:
        return self.decode(self.encode(audio))
