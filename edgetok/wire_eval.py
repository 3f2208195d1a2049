"""``edgetok eval --wire``: what each way of sending speech costs on the wire, and its WER,
on the same clips in one run (issue 19).

Rows (``evaluate_wire``):

- ``float segments``: today's protocol 1 frames, fp16 vectors, decoded by the bundle's
  server decoder as the server receives them;
- ``codes MxK``: protocol 2 codes frames of the bundle's segment codes (its first M
  stages), decoded from the dequantized vectors;
- ``tokens (protocol 2)``: tokens frames (docs/protocol.md): the segment
  lengths and every token id in ceil(log2 V) bits, what a device sends with ``--wire
  tokens``;
- ``entropy-coded tokens``: the token ids arithmetic-coded with the entropy LM's own
  next-token probabilities (``edgetok.arithmetic_code``; each code decoded again and
  checked), after a codes frame's header with the count of ids; the segment boundaries
  cost nothing, since a server with the same LM recomputes them. An eval row, not a
  protocol dtype: a server would rebuild each position's frequencies from the ids it
  has decoded (the LM is causal), and the floor of a probability may flip between two
  runtimes' floats, so both sides would need one bit-exact LM. Scored when the bundle
  has a ``token_reader`` (``TokenReaderStage``): the server rebuilds encoder frames from
  the ids, and its aggregator and decoder read them; the code is lossless, so the text
  is that of the ids themselves;
- ``opus N kbit/s``: the audio through libopus (``opuslib``; 16 kHz mono, 20 ms frames,
  VoIP mode), decoded, then transcribed by the original Whisper tiny.en, as ``edgetok
  eval``'s ceiling row; ``whisper (original audio)`` is that ceiling itself;
- ``raw PCM``: 16-bit samples, bytes only.

Bytes are what the device sends: each utterance's payload in one binary websocket
message (2-byte Opus packet lengths; the codes and float frames as docs/protocol.md
lays them out) with its websocket header (masked: 6 bytes and more), plus the hello:
once per session over all the clips (``bytes_per_s``) and, worst case, once per
utterance (``bytes_per_s_hello_each``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from edgetok import arithmetic_code
from edgetok.audio import load_audio
from edgetok.evaluate import Score, normalize
from edgetok.manifest import Utterance
from edgetok.protocol import (
    Hello,
    decode_frame,
    encode_tokens_frame,
    wire_identity,
    ws_message_bytes,
)
from edgetok.segment import segment_lengths
from edgetok.segment_codes import SegmentCodes
from edgetok.sinks import utterance_frames
from edgetok.stages import TokenReaderStage, Transcriber
from edgetok.token_wire import TokenWire

__all__ = [
    "OPUS_KBPS",
    "OpusCodec",
    "WireRow",
    "evaluate_wire",
    "format_wire",
    "plot_wire",
    "token_bits",
    "token_code",
    "token_frequencies",
]

PACKED_TOKENS_ROW = "tokens (protocol 2)"
TOKENS_ROW = "entropy-coded tokens"
#: The Opus bit rates of the comparison rows, kbit/s.
OPUS_KBPS = (6, 12)
_OPUS_FRAME_S = 0.02
PCM_BYTES = 2


@dataclass
class WireRow:
    """One way of sending speech: bytes summed over the clips, and a WER when scored."""

    name: str
    hello_bytes: int = 0
    """One hello on the wire (0 where there is none)."""
    bytes: int = 0
    """Payload messages on the wire, every clip."""
    score: Score | None = None
    note: str = ""

    def add(self, sent: int, scored: tuple[str, str, float] | None = None) -> None:
        """``sent`` bytes on the wire; ``scored``: (reference, hypothesis, seconds)."""
        self.bytes += sent
        if scored is not None:
            assert self.score is not None, f"{self.name} is not scored"
            reference, hypothesis, seconds = scored
            self.score.add(reference, normalize(hypothesis), seconds, 0.0)

    def summary(self, utterances: int, audio_s: float) -> dict[str, Any]:
        per_s = (lambda n: n / audio_s) if audio_s else (lambda n: 0.0)
        score = self.score
        return {
            "name": self.name,
            "bytes": self.bytes,
            "bytes_per_s": per_s(self.bytes + self.hello_bytes),
            "bytes_per_s_hello_each": per_s(self.bytes + utterances * self.hello_bytes),
            "wer": score.wer if score is not None else None,
            "cer": score.cer if score is not None else None,
            "note": self.note,
        }


class OpusCodec:
    """libopus through ``opuslib``: float32 16 kHz mono -> packets -> float32 again."""

    def __init__(self, kbps: int, sample_rate: int = 16_000) -> None:
        try:
            import opuslib
        except Exception as exc:  # ImportError, or libopus missing (opuslib raises on import)
            raise RuntimeError(
                f"the Opus rows need opuslib and libopus ({exc}): pip install "
                "'edgetok[eval]' and apt-get install libopus0"
            ) from None
        self.sample_rate = sample_rate
        self.frame = round(_OPUS_FRAME_S * sample_rate)
        self._encoder = opuslib.Encoder(sample_rate, 1, opuslib.APPLICATION_VOIP)
        self._encoder.bitrate = kbps * 1000
        self._decoder = opuslib.Decoder(sample_rate, 1)

    def round_trip(self, audio: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """(the decoded audio, each packet's size in bytes)."""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
        pad = -len(pcm) % self.frame
        pcm = np.concatenate([pcm, np.zeros(pad, "<i2")])
        out, sizes = [], []
        for begin in range(0, len(pcm), self.frame):
            packet = self._encoder.encode(pcm[begin : begin + self.frame].tobytes(), self.frame)
            sizes.append(len(packet))
            out.append(np.frombuffer(self._decoder.decode(packet, self.frame), "<i2"))
        decoded = np.concatenate(out)[: len(audio)] if out else np.zeros(0, "<i2")
        return decoded.astype(np.float32) / 32768.0, sizes


def _varint_bytes(value: int) -> int:
    """Bytes of ``value`` as an unsigned LEB128 varint."""
    return max(1, (value.bit_length() + 6) // 7)


def token_frequencies(transcriber: Transcriber, tokens: np.ndarray) -> np.ndarray:
    """The arithmetic coder's integer frequencies int64 [T, V] of ``tokens`` [T]: the
    entropy LM's own p(token t | tokens before t) (its logits at t; BOS prepended inside
    the model)."""
    vocab = transcriber.bundle.tokens.vocab_size
    if len(tokens) == 0:
        return np.ones((0, vocab), np.int64)
    session = transcriber.entropy.session
    return arithmetic_code.frequencies(
        session.run({"tokens": tokens[None].astype(np.int64)})["logits"][0]
    )


def token_bits(transcriber: Transcriber, tokens: np.ndarray) -> float:
    """The ideal code length in bits of ``tokens`` under the entropy LM's probabilities."""
    return arithmetic_code.ideal_bits(tokens, token_frequencies(transcriber, tokens))


def token_code(transcriber: Transcriber, tokens: np.ndarray) -> tuple[bytes, float]:
    """(the arithmetic code of ``tokens`` under the entropy LM's probabilities, its ideal
    length in bits). The code is decoded again and checked: ``RuntimeError`` if it does
    not give back ``tokens``."""
    freqs = token_frequencies(transcriber, tokens)
    code = arithmetic_code.encode(tokens, freqs)
    if not np.array_equal(arithmetic_code.decode(code, freqs), tokens):
        raise RuntimeError(f"the arithmetic code of {len(tokens)} token ids did not decode")
    return code, arithmetic_code.ideal_bits(tokens, freqs)


@dataclass
class _Rows:
    rows: dict[str, WireRow] = field(default_factory=dict)

    def add(self, name: str, **kwargs: Any) -> WireRow:
        return self.rows.setdefault(name, WireRow(name, **kwargs))


def evaluate_wire(
    utterances: Sequence[Utterance],
    transcriber: Transcriber,
    *,
    code_stages: Sequence[int] | None = None,
    opus_kbps: Sequence[int] = OPUS_KBPS,
    whisper: Callable[[np.ndarray], str] | None = None,
    reader: TokenReaderStage | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Every row's bytes/s and WER on ``utterances`` (see the module docstring).

    ``reader``: the bundle's token reader, which scores the token row (default: the
    bundle's, opened with default session options, when it has one).

    ``code_stages``: the prefixes of the bundle's segment codes to score (default: all
    its stages); ``whisper`` (audio -> normalised text): the server-side recognizer of
    the Opus rows; without it they are left out. Returns ``{"utterances", "audio_s",
    "segments_per_s", "tokens_per_s", "rows": [WireRow.summary, ...]}``.
    """
    bundle = transcriber.bundle
    decoder = transcriber.pack.decoder
    identity = wire_identity(bundle)
    full = SegmentCodes.of_bundle(bundle)
    stages = list(code_stages or ([full.stages] if full is not None else []))
    if stages and full is None:
        raise ValueError(f"bundle {bundle.meta.name!r} has no segment codes")
    codes = {m: full.prefix(m) for m in stages} if full is not None else {}

    def hello(version: int, dtype: str, sha256: str = "") -> int:
        message = Hello(
            version=version,
            session="x" * 32,
            seq=0,
            dtype=dtype,
            codes_sha256=sha256 if dtype == "codes" else "",
            reader_sha256=sha256 if dtype == "tokens" else "",
            **vars(identity),
        )
        return ws_message_bytes(len(message.to_json()))

    table = _Rows()
    table.add("float segments (fp16, protocol 1)", hello_bytes=hello(1, "fp16"), score=Score())
    for m, code in codes.items():
        name = f"codes {code.size}x{m} (protocol 2)"
        table.add(name, hello_bytes=hello(2, "codes", full.sha256), score=Score())
    reader = reader or TokenReaderStage.from_bundle(bundle)
    token_wire = TokenWire.of_bundle(bundle)
    token_hello = hello(2, "tokens", token_wire.sha256 if token_wire else "0" * 64)
    for name in (PACKED_TOKENS_ROW, TOKENS_ROW):
        table.add(
            name,
            hello_bytes=token_hello,
            score=Score() if reader is not None else None,
            note="" if reader is not None else "bytes only: this bundle has no token_reader",
        )
    opus = {kbps: OpusCodec(kbps, transcriber.sample_rate) for kbps in opus_kbps} if whisper else {}
    for kbps in opus:
        table.add(f"opus {kbps} kbit/s + whisper tiny.en", score=Score())
    if whisper is not None:
        table.add("whisper tiny.en (original audio)", note="bytes: as raw PCM", score=Score())
    table.add("raw PCM (16-bit)", note="bytes only")
    rows = table.rows

    audio_s, segments, tokens = 0.0, 0, 0
    seq, coded_bits, ideal_bits_sum = 0, 0, 0.0
    for index, utt in enumerate(tqdm(utterances, desc="eval --wire", disable=not progress)):
        audio = load_audio(utt.path, transcriber.sample_rate)
        reference = normalize(utt.text)
        duration = len(audio) / transcriber.sample_rate
        audio_s += duration
        encoded = transcriber.encode(audio)
        starts, vectors = transcriber.pack.segments(
            encoded.tokens, encoded.entropy, {}, encoded.frames
        )
        lengths = segment_lengths(starts, len(encoded.tokens))
        segments += len(starts)
        tokens += len(encoded.tokens)

        def sent(frames: list[bytes]) -> int:
            return sum(ws_message_bytes(len(f)) for f in frames)

        floats = utterance_frames(starts, lengths, vectors, seq=seq, utterance=index)
        received = np.concatenate([decode_frame(f).vectors for f in floats])
        text = decoder(received)
        rows["float segments (fp16, protocol 1)"].add(sent(floats), (reference, text, duration))
        for m, code in codes.items():
            frames = utterance_frames(
                starts, lengths, vectors, "codes", code, seq=seq, utterance=index
            )
            received = np.concatenate(
                [decode_frame(f, dtype="codes", codes=code).vectors for f in frames]
            )
            text = decoder(received)
            name = f"codes {code.size}x{m} (protocol 2)"
            rows[name].add(sent(frames), (reference, text, duration))
        seq += len(floats)
        # The token stream: a codes frame's header (tag, flags, seq, utterance, and the
        # count of token ids), then their arithmetic code.
        code, ideal = token_code(transcriber, encoded.tokens)
        coded_bits += 8 * len(code)
        ideal_bits_sum += ideal
        header = 2 + _varint_bytes(seq) + _varint_bytes(index) + _varint_bytes(len(encoded.tokens))
        scored = None
        if reader is not None:  # both token rows carry the ids exactly: one text
            pack = transcriber.pack
            rebuilt = reader.vectors(
                encoded.tokens, starts, pack.aggregator, pack.compression.max_len
            )
            scored = (reference, decoder(rebuilt), duration)
        packed = encode_tokens_frame(
            seq, index, starts, lengths, encoded.tokens, bundle.tokens.vocab_size, end=True
        )
        rows[PACKED_TOKENS_ROW].add(ws_message_bytes(len(packed)), scored)
        rows[TOKENS_ROW].add(ws_message_bytes(header + len(code)), scored)
        pcm = ws_message_bytes(len(audio) * PCM_BYTES)
        rows["raw PCM (16-bit)"].add(pcm)
        if whisper is None:
            continue
        for kbps, codec in opus.items():
            decoded, packets = codec.round_trip(audio)
            rows[f"opus {kbps} kbit/s + whisper tiny.en"].add(
                ws_message_bytes(sum(packets) + 2 * len(packets)),
                (reference, whisper(decoded), duration),
            )
        rows["whisper tiny.en (original audio)"].add(pcm, (reference, whisper(audio), duration))
    count = len(utterances)
    if tokens:
        rows[TOKENS_ROW].note = (
            f"{coded_bits / tokens:.2f} bits a token; ideal code {ideal_bits_sum / tokens:.2f}"
            + (f"; {rows[TOKENS_ROW].note}" if rows[TOKENS_ROW].note else "")
        )
    return {
        "utterances": count,
        "audio_s": audio_s,
        "segments_per_s": segments / audio_s if audio_s else 0.0,
        "tokens_per_s": tokens / audio_s if audio_s else 0.0,
        "rows": [row.summary(count, audio_s) for row in rows.values()],
    }


def format_wire(result: dict[str, Any]) -> str:
    """The rows as a text table."""
    lines = [
        f"{result['utterances']} utterances, {result['audio_s']:.1f} s of audio, "
        f"{result['segments_per_s']:.2f} segments/s, {result['tokens_per_s']:.2f} tokens/s",
        f"{'row':<44} {'B/s':>10} {'B/s, hello each':>16} {'WER':>7} {'CER':>7}",
    ]
    for row in result["rows"]:
        wer = f"{100 * row['wer']:6.2f}%" if row["wer"] is not None else "      -"
        cer = f"{100 * row['cer']:6.2f}%" if row["cer"] is not None else "      -"
        lines.append(
            f"{row['name']:<44} {row['bytes_per_s']:>10.1f} "
            f"{row['bytes_per_s_hello_each']:>16.1f} {wer:>7} {cer:>7}"
            + (f"  ({row['note']})" if row["note"] else "")
        )
    return "\n".join(lines)


def plot_wire(result: dict[str, Any], path: str, title: str) -> None:
    """Bytes/s (log scale) against WER, one point per scored row; bytes-only rows as
    vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    labelled: list[float] = []  # WERs labelled so far: a row at one of them labels below
    for row in result["rows"]:
        if row["wer"] is None:
            ax.axvline(row["bytes_per_s"], color="0.6", linestyle=":", linewidth=1)
            ax.annotate(
                row["name"],
                (row["bytes_per_s"], 0.02),
                rotation=90,
                fontsize=7,
                color="0.4",
                xycoords=("data", "axes fraction"),
            )
            continue
        wer = 100 * row["wer"]
        below = any(abs(wer - seen) < 1.0 for seen in labelled)
        labelled.append(wer)
        ax.scatter(row["bytes_per_s"], wer, s=30)
        ax.annotate(
            row["name"],
            (row["bytes_per_s"], wer),
            fontsize=7,
            xytext=(4, -10 if below else 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("bytes/s on the wire (hello once per session)")
    ax.set_ylabel("WER %")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
