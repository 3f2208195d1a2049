"""edgetok.stages on the tiny real bundle, checked against numpy versions of its models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.make_tiny_bundle import D, K, codebook, make_decoder_pack, weights

from edgetok.audio import load_audio
from edgetok.bundle import Bundle, load_bundle
from edgetok.codebook import nearest_centroid
from edgetok.compress import fixed_rate_starts
from edgetok.frontend import log_mel
from edgetok.runtime import Session
from edgetok.segment import boundaries
from edgetok.stages import (
    MAX_CHARS,
    AggregatorStage,
    DecoderPack,
    DecoderStage,
    EntropyStage,
    TokenizerStage,
    Transcriber,
)
from edgetok.vocab import BOS, EOS, decode_ids

W = weights()
STAGES = {"tokenizer", "entropy_lm", "segmenter", "aggregator", "decoder"}


class CountingSession:
    """A session that records the shapes of every run."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.inputs, self.outputs = session.inputs, session.outputs
        self.runs: list[dict[str, tuple[int, ...]]] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs.append({name: value.shape for name, value in inputs.items()})
        return self.session.run(inputs)


def greedy_reference(prefix_sum: np.ndarray, limit: int) -> tuple[list[int], bool]:
    """The tiny decoder's greedy ids in numpy, and whether it stopped at EOS."""
    ids = [BOS]
    for _ in range(limit):
        next_id = int(np.argmax(W["Tx"][ids[-1]] + prefix_sum @ W["P"]))
        if next_id == EOS:
            return ids[1:], True
        ids.append(next_id)
    return ids[1:], False


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Bundle:
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def transcriber(bundle: Bundle) -> Transcriber:
    return Transcriber(bundle)


@pytest.fixture(scope="module")
def audio(speech_dir: Path) -> np.ndarray:
    return load_audio(speech_dir / "fox.wav")


@pytest.fixture(scope="module")
def tokens(bundle: Bundle, audio: np.ndarray) -> np.ndarray:
    return TokenizerStage.from_bundle(bundle)(audio)


def test_tokenizer(audio: np.ndarray, tokens: np.ndarray) -> None:
    mel = log_mel(audio)
    assert tokens.dtype == np.int64 and tokens.shape == ((len(mel) + 1) // 2,)
    expected = nearest_centroid(mel[::2] @ W["W"], codebook())
    assert np.mean(tokens == expected) > 0.99  # float32 MatMul rounding may flip a near tie
    assert len(np.unique(tokens)) > 1


def test_tokenizer_too_short_for_a_frame(transcriber: Transcriber) -> None:
    tokens = transcriber.tokenizer(np.zeros(399, np.float32))
    assert tokens.dtype == np.int64 and tokens.shape == (0,)


def test_entropy(bundle: Bundle, tokens: np.ndarray) -> None:
    stage = EntropyStage(bundle.open("entropy_lm"))
    entropy = stage(tokens)
    assert entropy.dtype == np.float32 and entropy.shape == tokens.shape
    logits = W["E"][np.concatenate([[K], tokens[:-1]])]
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(entropy, -(np.exp(logp) * logp).sum(axis=1), rtol=1e-5)
    assert entropy[0] == pytest.approx(np.log(K))  # after BOS: uniform
    assert stage(np.zeros(0, np.int64)).shape == (0,)


def test_aggregator_one_run_for_all_segments(bundle: Bundle, tokens: np.ndarray) -> None:
    session = CountingSession(bundle.open("aggregator"))
    stage = AggregatorStage(session)
    starts = np.arange(0, len(tokens), 5)
    vectors = stage(tokens, starts, 8)
    assert vectors.dtype == np.float32 and vectors.shape == (len(starts), D)
    means = [W["A"][part].mean(axis=0) for part in np.split(tokens, starts[1:])]
    np.testing.assert_allclose(vectors, np.stack(means), rtol=1e-6)
    assert session.runs == [{"tokens": (len(starts), 8), "mask": (len(starts), 8)}]
    assert stage(np.zeros(0, np.int64), np.zeros(0, np.int64), 8).shape == (0, D)


def test_v1_stages_read_tokens_not_frames(transcriber: Transcriber, audio: np.ndarray) -> None:
    tokens, frames = transcriber.tokenizer.encode(audio)
    assert frames is None and not transcriber.tokenizer.gives_frames
    assert transcriber.pack.aggregator.source(tokens, frames) is tokens


def test_aggregator_rejects_a_segment_longer_than_max_len(bundle: Bundle) -> None:
    with pytest.raises(ValueError, match="has 5 tokens > max_len=4"):
        AggregatorStage(bundle.open("aggregator"))(np.zeros(5, np.int64), np.array([0]), 4)


def unit_prefix(count: int, axis: int, total: float) -> np.ndarray:
    """``count`` equal vectors summing to ``total`` times unit vector ``axis``."""
    vectors = np.zeros((count, D), np.float32)
    vectors[:, axis] = total / count
    return vectors


def test_decoder_stops_at_eos(bundle: Bundle) -> None:
    session = CountingSession(bundle.open("decoder"))
    vectors = unit_prefix(3, 0, 3.0)
    ids, stopped = greedy_reference(vectors.sum(axis=0), 100)
    assert stopped and ids == [8, 11]
    assert DecoderStage(session, beam=1)(vectors) == decode_ids(ids) == "dg"
    assert [run["text"] for run in session.runs] == [(1, 1), (1, 2), (1, 3)]
    assert {run["prefix"] for run in session.runs} == {(1, 3, D)}


@pytest.mark.parametrize(("count", "limit"), [(2, 3 * 2 + 20), (200, MAX_CHARS)])
def test_decoder_default_limit(bundle: Bundle, count: int, limit: int) -> None:
    session = CountingSession(bundle.open("decoder"))
    vectors = unit_prefix(count, 0, -3.0)
    ids, stopped = greedy_reference(vectors.sum(axis=0), limit)
    assert not stopped and len(ids) == limit
    assert DecoderStage(session, beam=1)(vectors) == decode_ids(ids)
    assert len(session.runs) == limit


def test_decoder_max_chars(bundle: Bundle) -> None:
    vectors = unit_prefix(1, 1, 3.0)
    ids, stopped = greedy_reference(vectors.sum(axis=0), 7)
    assert not stopped
    assert DecoderStage(bundle.open("decoder"), beam=1)(vectors, max_chars=7) == decode_ids(ids)


def test_decoder_without_vectors_writes_nothing(bundle: Bundle) -> None:
    assert DecoderStage(bundle.open("decoder"))(np.zeros((0, D), np.float32)) == ""


def test_decoder_needs_the_character_vocabulary(bundle: Bundle) -> None:
    with pytest.raises(ValueError, match="writes 16 symbols, the character vocabulary has 31"):
        DecoderStage(bundle.open("entropy_lm"))


def test_transcriber_wires_the_stages(transcriber: Transcriber, audio: np.ndarray) -> None:
    out = transcriber(audio)
    assert out.duration_s == len(audio) / 16000
    np.testing.assert_array_equal(out.tokens, transcriber.tokenizer(audio))
    np.testing.assert_array_equal(out.entropy, transcriber.entropy(out.tokens))
    np.testing.assert_array_equal(out.starts, boundaries(out.entropy, 2.5, None, 1, 16))
    assert 1 < len(out.starts) < len(out.tokens)
    assert out.vectors.shape == (len(out.starts), D)
    assert out.text == transcriber.pack.decoder(out.vectors)
    assert set(out.timings) == STAGES and min(out.timings.values()) >= 0
    assert out.tokens_per_s == len(out.tokens) / out.duration_s
    assert out.segments_per_s == len(out.starts) / out.duration_s
    assert out.rtf == pytest.approx(sum(out.timings.values()) / out.duration_s)


def test_bundle_pack_uses_the_segmenter_section(transcriber: Transcriber) -> None:
    rule = transcriber.pack.compression
    assert (rule.mode, rule.global_threshold, rule.relative_threshold) == ("entropy", 2.5, None)
    assert (rule.min_len, rule.max_len, rule.token_rate_hz, rule.target_hz) == (1, 16, 50.0, 15.0)


def test_silence_too_short_for_a_token(transcriber: Transcriber) -> None:
    out = transcriber(np.zeros(300, np.float32))
    assert (out.text, len(out.tokens), len(out.starts)) == ("", 0, 0)
    assert out.vectors.shape == (0, D) and out.segments_per_s == 0.0


def test_pack_from_dir_shares_tokens(
    tiny_bundle: Path, transcriber: Transcriber, audio: np.ndarray, tmp_path: Path
) -> None:
    rule = {"mode": "fixed", "max_len": 4, "rate_hz": 15.0, "token_rate_hz": 50.0}
    pack = DecoderPack.from_dir(make_decoder_pack(tiny_bundle, tmp_path / "fixed", rule))
    encoded = transcriber.encode(audio)
    assert set(encoded.timings) == {"tokenizer", "entropy_lm"}
    out = transcriber.decode(encoded, pack)
    assert out.tokens is encoded.tokens
    np.testing.assert_array_equal(out.starts, fixed_rate_starts(len(out.tokens), 50.0, 15.0))
    assert out.vectors.shape == (len(out.starts), D)
    assert out.timings["tokenizer"] == encoded.timings["tokenizer"]
    assert set(out.timings) == STAGES


def test_transcriber_with_a_pack(tiny_bundle: Path, bundle: Bundle, tmp_path: Path) -> None:
    pack = DecoderPack.from_dir(
        make_decoder_pack(tiny_bundle, tmp_path / "dense", {"mode": "dense", "max_len": 1})
    )
    out = Transcriber(bundle, pack=pack)(np.zeros(16000, np.float32))
    np.testing.assert_array_equal(out.starts, np.arange(len(out.tokens)))


def test_pack_errors_name_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a decoder pack: .*compression.json"):
        DecoderPack.from_dir(tmp_path)
    pack = make_decoder_pack(tiny_bundle, tmp_path / "bad", {"mode": "fixed", "max_len": 4})
    with pytest.raises(ValueError, match=r"compression.json: not a valid compression rule"):
        DecoderPack.from_dir(pack)
