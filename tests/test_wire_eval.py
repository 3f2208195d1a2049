"""edgetok eval --wire (issue 19): real frames, real libopus, the real tiny bundle with
segment codes added, espeak-ng speech."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetok.audio import load_audio
from edgetok.bundle import SegmentCodesSection, load_bundle, sha256_file, write_bundle
from edgetok.cli import main
from edgetok.protocol import encode_frame, encode_tokens_frame, ws_message_bytes
from edgetok.segment_codes import SegmentCodes
from edgetok.stages import Transcriber
from edgetok.wire_eval import OpusCodec, token_bits, token_code

pytest.importorskip("jiwer")


@pytest.fixture(scope="module")
def coded_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with 2 x 256 segment codes of its vector size."""
    out = tmp_path_factory.mktemp("coded") / "bundle"
    shutil.copytree(tiny_bundle, out)
    bundle = load_bundle(out)
    dim = next(s for s in bundle.models["aggregator"].outputs if s.name == "vectors").shape[-1]
    books = np.random.default_rng(0).normal(size=(2, 256, dim)).astype(np.float32)
    np.save(out / "segment_codes.npy", books)
    section = SegmentCodesSection(
        file="segment_codes.npy",
        sha256=sha256_file(out / "segment_codes.npy"),
        stages=2,
        size=256,
    )
    write_bundle(dataclasses.replace(bundle, segment_codes=section), out)
    return out


@pytest.fixture(scope="module")
def manifest(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "clips.jsonl"
    rows = [
        {"path": str(speech_dir / "hello.wav"), "text": "hello world"},
        {"path": str(speech_dir / "fox.wav"), "text": "the quick brown fox"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_wire_counts_the_real_frames(coded_bundle: Path, manifest: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["eval", str(manifest), "--wire", "--no-whisper", "--json", "--bundle", str(coded_bundle)],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {row["name"]: row for row in out["rows"]}
    assert list(rows) == [
        "float segments (fp16, protocol 1)",
        "codes 256x2 (protocol 2)",
        "tokens (protocol 2)",
        "entropy-coded tokens",
        "raw PCM (16-bit)",
    ]
    # Recount the codes row from the clips: one frame each, its websocket header.
    bundle = load_bundle(coded_bundle)
    codes = SegmentCodes.of_bundle(bundle)
    transcriber = Transcriber(bundle, beam=1)
    sent = samples = token_sent = coded_sent = 0
    ideal = 0.0
    for index, line in enumerate(manifest.read_text().splitlines()):
        audio = load_audio(json.loads(line)["path"], 16000)
        samples += len(audio)
        clip = transcriber(audio)
        lengths = np.diff(np.append(clip.starts, len(clip.tokens)))
        frame = encode_frame(
            index, index, clip.starts, lengths, clip.vectors, dtype="codes", codes=codes, end=True
        )
        sent += ws_message_bytes(len(frame))
        token_frame = encode_tokens_frame(
            index, index, clip.starts, lengths, clip.tokens, bundle.tokens.vocab_size, end=True
        )
        token_sent += ws_message_bytes(len(token_frame))
        # The arithmetic code: header (tag, flags, seq, utterance, id count), then the code.
        code, bits = token_code(transcriber, clip.tokens)
        assert bits == pytest.approx(token_bits(transcriber, clip.tokens))
        ideal += bits
        coded_sent += ws_message_bytes(
            2 + 1 + 1 + (len(clip.tokens).bit_length() + 6) // 7 + len(code)
        )
    assert rows["codes 256x2 (protocol 2)"]["bytes"] == sent
    assert rows["raw PCM (16-bit)"]["bytes"] == sum(
        ws_message_bytes(2 * len(load_audio(json.loads(line)["path"], 16000)))
        for line in manifest.read_text().splitlines()
    )
    assert rows["raw PCM (16-bit)"]["bytes"] > 2 * samples
    floats = rows["float segments (fp16, protocol 1)"]
    assert rows["codes 256x2 (protocol 2)"]["bytes_per_s"] < floats["bytes_per_s"]
    for name in ("float segments (fp16, protocol 1)", "codes 256x2 (protocol 2)"):
        assert rows[name]["wer"] is not None and rows[name]["wer"] >= 0
    # A bundle without a token_reader: the token rows count bytes only.
    assert rows["entropy-coded tokens"]["wer"] is None
    assert rows["tokens (protocol 2)"]["wer"] is None
    assert rows["tokens (protocol 2)"]["bytes"] == token_sent
    coded = rows["entropy-coded tokens"]
    assert coded["bytes"] == coded_sent  # (the tiny bundle's LM is no better than 10 bits)
    assert "bits a token; ideal code" in coded["note"]
    # Real codes: within a few bytes a clip of the LM's ideal code length.
    assert ideal / 8 < coded_sent - 2 * 12 <= ideal / 8 + 2 * 2
    # The hello is paid once a session, or once an utterance at worst.
    codes_row = rows["codes 256x2 (protocol 2)"]
    assert codes_row["bytes_per_s_hello_each"] > codes_row["bytes_per_s"]


def test_opus_at_its_bit_rate(speech_dir: Path) -> None:
    audio = load_audio(speech_dir / "fox.wav", 16000)
    seconds = len(audio) / 16000
    rates = {}
    for kbps in (6, 12):
        decoded, packets = OpusCodec(kbps).round_trip(audio)
        assert decoded.shape == audio.shape and len(packets) == int(np.ceil(seconds / 0.02))
        rates[kbps] = sum(packets) / seconds
        assert rates[kbps] < kbps * 1000 / 8 * 1.2  # within 20 % of the asked rate
        # Speech in, speech out: the loudness survives the codec.
        assert 0.5 < np.sqrt(np.mean(decoded**2)) / np.sqrt(np.mean(audio**2)) < 2.0
    assert rates[12] > 1.5 * rates[6]


def test_the_opus_rows_go_through_whisper(
    coded_bundle: Path, manifest: Path, model_dir: Path
) -> None:
    pytest.importorskip("faster_whisper")
    from edgetok.evaluate import WhisperReference
    from edgetok.manifest import read_manifest
    from edgetok.wire_eval import evaluate_wire

    transcriber = Transcriber(load_bundle(coded_bundle), beam=1)
    result = evaluate_wire(
        read_manifest(manifest, 1), transcriber, whisper=WhisperReference(threads=1)
    )
    rows = {row["name"]: row for row in result["rows"]}
    assert rows["whisper tiny.en (original audio)"]["wer"] == 0.0  # "hello world"
    for kbps in (6, 12):
        row = rows[f"opus {kbps} kbit/s + whisper tiny.en"]
        assert row["wer"] is not None and 0 < row["bytes_per_s"] < kbps * 1000 / 8 * 1.5
