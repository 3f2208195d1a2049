"""The token wire (issue 19) end to end with the shipped bundle: a device sends its
segments' token ids over a real server on loopback, the server's token reader and the
bundle's aggregator rebuild the vectors, and the decoder writes what the same models
write locally. Float (v1) clients keep working on the same server."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest

from edgetok.audio import load_audio
from edgetok.bundle import default_bundle_path, load_bundle
from edgetok.client import Client, RemoteError
from edgetok.protocol import decode_tokens_frame, wire_identity
from edgetok.segment import segment_lengths
from edgetok.server import serve
from edgetok.sinks import JsonlSink, wire_format
from edgetok.stages import Transcriber
from edgetok.token_wire import TokenVectors, TokenWire, segment_tokens

TOKEN = "token-wire"


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber(load_bundle(default_bundle_path()), beam=1)


@pytest.fixture(scope="module")
def utterance(transcriber: Transcriber) -> tuple[np.ndarray, ...]:
    """The sample's tokens, segment starts and lengths, and its float vectors."""
    bundle = transcriber.bundle
    assert bundle.root is not None
    audio = load_audio(bundle.root / "sample.wav", transcriber.sample_rate)
    encoded = transcriber.encode(audio)
    starts, vectors = transcriber.pack.segments(encoded.tokens, encoded.entropy, {}, encoded.frames)
    return encoded.tokens, starts, segment_lengths(starts, len(encoded.tokens)), vectors


def _run(main) -> None:
    asyncio.run(asyncio.wait_for(main(), 120))


def test_the_shipped_bundle_has_a_token_reader(transcriber: Transcriber) -> None:
    wire = TokenWire.of_bundle(transcriber.bundle)
    assert wire is not None and wire.vocab_size == transcriber.bundle.tokens.vocab_size
    assert wire_format(transcriber.bundle, "tokens")["tokens"] == wire


def test_a_server_decodes_token_ids_and_floats(transcriber: Transcriber, utterance) -> None:
    tokens, starts, lengths, vectors = utterance
    bundle = transcriber.bundle
    decoder, identity = transcriber.pack.decoder, wire_identity(bundle)
    rebuild = TokenVectors.of_bundle(bundle)
    assert rebuild is not None
    expected = decoder(rebuild(tokens, starts))
    assert expected.strip()
    half = len(starts) // 2  # two frames: the server must join their ids

    async def main() -> None:
        async with serve(decoder, identity, token=TOKEN, tokens=rebuild) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with Client(url, TOKEN, identity, dtype="tokens", tokens=rebuild.wire) as ids:
                assert ids.version == 2
                for part, end in ((slice(0, half), False), (slice(half, None), True)):
                    own = segment_tokens(tokens, starts[part], lengths[part])
                    await ids.send(7, starts[part], lengths[part], vectors, tokens=own, end=end)
                assert await ids.result(7) == expected
            async with Client(url, TOKEN, identity, dtype="fp16") as floats:
                assert floats.version == 1
                await floats.send(1, starts, lengths, vectors, end=True)
                text = await floats.result(1)
                assert text == decoder(vectors.astype(np.float16).astype(np.float32))
            # About 10 bits a token and a few a segment, against 768 bytes a vector.
            assert ids.stats.payload_bytes < len(tokens) * 10 / 8 + len(starts) + 16
            assert ids.stats.payload_bytes * 100 < floats.stats.payload_bytes

    _run(main)


@pytest.mark.parametrize("other_sha", [None, "ef" * 32])
def test_token_ids_for_another_reader_are_refused(
    transcriber: Transcriber, other_sha: str | None
) -> None:
    bundle = transcriber.bundle
    rebuild = TokenVectors.of_bundle(bundle)
    assert rebuild is not None
    identity = wire_identity(bundle)
    served = None
    if other_sha is not None:
        served = TokenVectors(
            TokenWire(other_sha, rebuild.wire.vocab_size),
            rebuild.reader,
            rebuild.aggregator,
            rebuild.max_len,
            rebuild.max_tokens,
        )
    expected = "has no token reader" if other_sha is None else "token reader is"

    async def main() -> None:
        async with serve(transcriber.pack.decoder, identity, token=TOKEN, tokens=served) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            client = Client(url, TOKEN, identity, dtype="tokens", tokens=rebuild.wire)
            with pytest.raises(RemoteError, match=expected) as error:
                await client.start()
            assert error.value.code == "identity"
            await client.close(flush=False)

    _run(main)


def test_a_jsonl_sink_writes_the_token_frames(
    transcriber: Transcriber, utterance, tmp_path: Path
) -> None:
    tokens, starts, lengths, vectors = utterance
    path = tmp_path / "wire.jsonl"
    sink = JsonlSink(path, **wire_format(transcriber.bundle, "tokens"))
    sink.submit(starts, lengths, vectors, segment_tokens(tokens, starts, lengths))
    sink.close()
    line = json.loads(path.read_text())
    assert line["dtype"] == "tokens"
    vocab = transcriber.bundle.tokens.vocab_size
    frames = [decode_tokens_frame(base64.b64decode(f), vocab) for f in line["frames"]]
    np.testing.assert_array_equal(np.concatenate([f.tokens for f in frames]), tokens)
    np.testing.assert_array_equal(np.concatenate([f.starts for f in frames]), starts)
    assert frames[-1].end


def test_an_utterance_keeps_its_wire_across_a_resume(transcriber: Transcriber, utterance) -> None:
    """A session resumed on the token wire cannot continue an utterance begun with vectors."""
    from websockets.asyncio.client import connect

    from edgetok.protocol import (
        Error,
        Hello,
        Ready,
        encode_frame,
        encode_tokens_frame,
        parse_message,
    )

    tokens, starts, lengths, vectors = utterance
    bundle = transcriber.bundle
    rebuild = TokenVectors.of_bundle(bundle)
    assert rebuild is not None
    identity = wire_identity(bundle)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def main() -> None:
        async with serve(transcriber.pack.decoder, identity, token=TOKEN, tokens=rebuild) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            first = Hello(version=1, session="s1", dtype="fp16", seq=0, **vars(identity))
            async with connect(url, additional_headers=headers) as ws:
                await ws.send(first.to_json())
                ready = parse_message(await ws.recv())
                assert isinstance(ready, Ready)
                await ws.send(encode_frame(0, 5, starts[:2], lengths[:2], vectors[:2]))
                await ws.recv()  # the ack
            second = Hello(
                session="s1",
                dtype="tokens",
                seq=1,
                resume_key=ready.resume_key,
                reader_sha256=rebuild.wire.sha256,
                **vars(identity),
            )
            async with connect(url, additional_headers=headers) as ws:
                await ws.send(second.to_json())
                assert parse_message(await ws.recv()).resumed
                ids = segment_tokens(tokens, starts[2:4], lengths[2:4])
                frame = encode_tokens_frame(
                    1, 5, starts[2:4], lengths[2:4], ids, rebuild.wire.vocab_size, end=True
                )
                await ws.send(frame)
                error = parse_message(await ws.recv())
                assert isinstance(error, Error) and error.code == "bad_frame"
                assert "began with vectors" in error.message

    _run(main)


@pytest.mark.parametrize(
    ("segments", "length", "first", "code", "message"),
    [
        (1, 9, 0, "bad_frame", "a segment of 9 tokens; this bundle's are at most 8"),
        (190, 8, 0, "limit_exceeded", "longer than 1501 tokens"),
        (2, 4, 5, "sequence", "token ids must go on at token 0, not 5"),
    ],
)
def test_token_frames_beyond_the_models_are_refused(
    transcriber: Transcriber, segments: int, length: int, first: int, code: str, message: str
) -> None:
    """Segments longer than the aggregator's, more ids than 30 s of speech (the reader
    attends over all of an utterance's ids at once), or ids with a gap before them close
    the connection cleanly."""
    from websockets.asyncio.client import connect

    from edgetok.protocol import Error, Hello, encode_tokens_frame, parse_message

    bundle = transcriber.bundle
    rebuild = TokenVectors.of_bundle(bundle)
    assert rebuild is not None and rebuild.max_tokens == 1501
    identity = wire_identity(bundle)
    lengths = np.full(segments, length)
    starts = first + np.arange(segments) * length
    ids = np.zeros(segments * length, np.int64)

    async def main() -> None:
        async with serve(transcriber.pack.decoder, identity, token=TOKEN, tokens=rebuild) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            hello = Hello(
                session="big",
                dtype="tokens",
                seq=0,
                reader_sha256=rebuild.wire.sha256,
                **vars(identity),
            )
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with connect(url, additional_headers=headers) as ws:
                await ws.send(hello.to_json())
                await ws.recv()  # ready
                vocab = rebuild.wire.vocab_size
                await ws.send(encode_tokens_frame(0, 1, starts, lengths, ids, vocab, end=True))
                error = parse_message(await ws.recv())
                assert isinstance(error, Error) and error.code == code
                assert message in error.message
            assert server.stats.errors == 1 and server.held_bytes < 1 << 16

    _run(main)
