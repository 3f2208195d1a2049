"""edgetok.pipeline: real VAD and tiny real models on espeak-ng speech, decoded locally,
through a real loopback server, or into a .jsonl file."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgetok.audio import AudioError, FileSource, load_audio
from edgetok.bundle import load_bundle
from edgetok.pipeline import MAX_UTTERANCE_S, Pipeline, Utterance
from edgetok.protocol import decode_frame, encode_frame, wire_identity
from edgetok.server import start_server
from edgetok.sinks import JsonlSink, LocalSink, RemoteSink, frames_bytes
from edgetok.stages import DecoderStage, Transcriber
from edgetok.vad import CHUNK, SileroModel, VadConfig, VoiceDetector

SR = 16000
STAGES = {"vad", "frontend", "tokenizer", "entropy_lm", "segmenter", "aggregator"}


@pytest.fixture(scope="module")
def transcriber(tiny_bundle: Path) -> Transcriber:
    return Transcriber(load_bundle(tiny_bundle))


@pytest.fixture(scope="module")
def vad_model() -> SileroModel:
    return SileroModel()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SR), np.float32)


@pytest.fixture(scope="module")
def two(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 kHz float WAV: silence, "hello world", silence, the fox sentence, silence."""
    hello, fox = (load_audio(speech_dir / name) for name in ("hello.wav", "fox.wav"))
    audio = np.concatenate([silence(0.8), hello, silence(0.8), fox, silence(0.8)])
    path = tmp_path_factory.mktemp("two") / "two.wav"
    sf.write(path, audio, SR, subtype="FLOAT")
    return path


def local(transcriber: Transcriber, vad_model: SileroModel, **options: object) -> Pipeline:
    return Pipeline(
        transcriber, LocalSink(transcriber.pack.decoder), vad_model=vad_model, **options
    )


def test_local_utterances_equal_the_transcriber_on_their_audio(
    transcriber: Transcriber, vad_model: SileroModel, two: Path
) -> None:
    pipeline = local(transcriber, vad_model)
    got = list(pipeline.run(FileSource(two)))
    audio = load_audio(two)
    assert [u.index for u in got] == [0, 1]
    assert got[0].end_s <= got[1].start_s
    for u in got:
        span = audio[round(u.start_s * SR) : round(u.end_s * SR)]
        expected = transcriber(span)
        assert (u.text, u.tokens, u.segments) == (
            expected.text,
            len(expected.tokens),
            len(expected.starts),
        )
        dim = expected.vectors.shape[1]
        assert u.traffic.segments == frames_bytes(u.segments, dim)
        assert u.traffic.dense == frames_bytes(u.tokens, dim)
        assert u.traffic.pcm == 2 * len(span)
        assert set(u.timings) == STAGES | {"decoder"}
        assert 0 <= u.finalize_s <= u.latency_s < 5
    stats = pipeline.stats
    assert (stats.utterances, stats.samples, stats.overruns) == (2, len(audio), 0)


def test_loopback_server_gives_the_same_transcripts(
    transcriber: Transcriber, vad_model: SileroModel, two: Path
) -> None:
    bundle = transcriber.bundle
    expected = [u.text for u in local(transcriber, vad_model).run(FileSource(two))]
    with start_server(DecoderStage(bundle.open("decoder")), wire_identity(bundle), token="t") as s:
        sink = RemoteSink(f"ws://127.0.0.1:{s.port}/", "t", wire_identity(bundle))
        try:
            got = list(Pipeline(transcriber, sink, vad_model=vad_model).run(FileSource(two)))
        finally:
            sink.close()
        assert s.server.stats.finals == 2
    assert [u.text for u in got] == expected
    assert all(set(u.timings) == STAGES | {"remote"} for u in got)
    assert sink.remote.stats.payload_bytes == sum(u.traffic.segments for u in got)


class Held:
    """The real decoder stage, whose decodes wait until ``release`` is set."""

    def __init__(self, stage: DecoderStage) -> None:
        self.stage = stage
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, vectors: np.ndarray) -> str:
        self.started.set()
        self.release.wait(30)
        return self.stage(vectors)


def test_remote_sink_sends_again_what_a_restarted_server_lost(transcriber: Transcriber) -> None:
    bundle = transcriber.bundle
    stage, identity = DecoderStage(bundle.open("decoder")), wire_identity(bundle)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(6, identity.dim)).astype(np.float32)
    starts, lengths = np.arange(0, 12, 2), np.full(6, 2)
    held = Held(stage)
    first = start_server(held, identity, token="t")
    port = first.port
    sink = RemoteSink(f"ws://127.0.0.1:{port}/", "t", identity, backoff_s=0.05)
    try:
        handle = sink.submit(starts, lengths, vectors)
        sink.remote.flush(10)  # applied by the first server
        assert held.started.wait(10)  # and decoding when it goes down
        first.close()
        held.release.set()
        with start_server(stage, identity, token="t", port=port) as second:
            wire = decode_frame(encode_frame(0, 0, starts, lengths, vectors)).vectors
            assert sink.result(handle) == stage(wire)
            assert second.server.stats.finals == 1
        assert sink.resent == 1
    finally:
        held.release.set()
        sink.close()


def test_jsonl_sink_writes_wire_frames(
    transcriber: Transcriber, vad_model: SileroModel, two: Path, tmp_path: Path
) -> None:
    sink = JsonlSink(tmp_path / "segments.jsonl")
    got = list(Pipeline(transcriber, sink, vad_model=vad_model).run(FileSource(two)))
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "segments.jsonl").read_text().splitlines()]
    assert [line["utterance"] for line in lines] == [0, 1]
    for u, line in zip(got, lines, strict=True):
        frames = [decode_frame(base64.b64decode(f)) for f in line["frames"]]
        assert u.text == "" and frames[-1].end
        assert sum(len(f.starts) for f in frames) == u.segments


def test_transcribe_one_whole_utterance(
    transcriber: Transcriber, vad_model: SileroModel, speech_dir: Path
) -> None:
    audio = load_audio(speech_dir / "fox.wav")
    u = local(transcriber, vad_model).transcribe(audio)
    expected = transcriber(audio)
    assert (u.text, u.tokens, u.duration_s) == (
        expected.text,
        len(expected.tokens),
        len(audio) / SR,
    )


class Flood:
    """A live source that delivers 300 chunks at once, faster than any worker."""

    sample_rate = SR
    live = True
    overruns = 7

    def __iter__(self) -> Iterator[np.ndarray]:
        for _ in range(300):
            yield silence(0.032)

    def close(self) -> None:
        pass


def test_live_overruns_are_counted_never_silent(
    transcriber: Transcriber, vad_model: SileroModel
) -> None:
    pipeline = local(transcriber, vad_model, queue_chunks=2)
    assert list(pipeline.run(Flood())) == []
    stats = pipeline.stats
    assert stats.chunks == 300 and stats.dropped_chunks > 0
    assert stats.dropped_samples == stats.dropped_chunks * 512
    assert stats.overruns == stats.dropped_samples + 7
    assert stats.queue_peak <= 2


def test_bad_audio_is_raised_after_the_finished_utterances(
    transcriber: Transcriber, vad_model: SileroModel, two: Path, tmp_path: Path
) -> None:
    audio = load_audio(two)
    audio[-100] = np.nan
    sf.write(tmp_path / "nan.wav", audio, SR, subtype="FLOAT")
    got: list[Utterance] = []
    with pytest.raises(AudioError, match="NaN or infinite sample"):
        for u in local(transcriber, vad_model).run(FileSource(tmp_path / "nan.wav")):
            got.append(u)
    assert len(got) == 2  # the second ended at the end of the good audio


class Broken(LocalSink):
    def result(self, handle: int, timeout: float | None = None) -> str:
        raise RuntimeError("the decoder is on fire")


def test_a_failing_sink_is_raised(
    transcriber: Transcriber, vad_model: SileroModel, two: Path
) -> None:
    pipeline = Pipeline(transcriber, Broken(transcriber.pack.decoder), vad_model=vad_model)
    with pytest.raises(RuntimeError, match="on fire"):
        list(pipeline.run(FileSource(two)))


def test_leaving_early_stops_a_realtime_source(
    transcriber: Transcriber, vad_model: SileroModel, speech_dir: Path, tmp_path: Path
) -> None:
    hello = load_audio(speech_dir / "hello.wav")
    sf.write(tmp_path / "long.wav", np.concatenate([silence(0.3), hello, silence(4.0)]), SR)
    before = threading.active_count()
    start = time.monotonic()
    for _ in local(transcriber, vad_model).run(FileSource(tmp_path / "long.wav", realtime=True)):
        break
    assert time.monotonic() - start < 0.3 + len(hello) / SR + 1.5
    assert threading.active_count() == before


def test_a_source_at_another_rate_is_refused(
    transcriber: Transcriber, vad_model: SileroModel, two: Path
) -> None:
    source = FileSource(two, sample_rate=8000)
    with pytest.raises(ValueError, match="8000 Hz"):
        next(local(transcriber, vad_model).run(source))


def test_long_speech_is_cut_within_the_utterance_limit(
    transcriber: Transcriber, vad_model: SileroModel, speech_dir: Path, tmp_path: Path
) -> None:
    fox = load_audio(speech_dir / "fox.wav")
    sf.write(tmp_path / "long.wav", np.tile(fox, 25), SR)  # 70 s, pauses under 0.3 s
    pipeline = local(transcriber, vad_model)
    assert pipeline.vad.max_speech_s < MAX_UTTERANCE_S
    got = list(pipeline.run(FileSource(tmp_path / "long.wav")))
    assert len(got) >= 3
    assert all(u.duration_s <= MAX_UTTERANCE_S for u in got)
    assert max(u.duration_s for u in got) > MAX_UTTERANCE_S - 1  # cut by the limit


def test_utterances_overshoot_max_speech_by_less_than_the_hangover(
    vad_model: SileroModel, speech_dir: Path
) -> None:
    """The bound the pipeline's cap at ``MAX_UTTERANCE_S`` relies on: a cut that falls in a
    short pause waits for the pause to end."""
    fox = load_audio(speech_dir / "fox.wav")
    audio = np.tile(np.concatenate([fox, silence(0.1)]), 12)
    config = VadConfig(max_speech_s=2.5)
    detector = VoiceDetector(vad_model, config)
    lengths: dict[int, int] = {}
    for offset in range(0, len(audio) + 1, 1600):
        if offset < len(audio):
            detector.accept_waveform(audio[offset : offset + 1600])
        else:
            detector.flush()
        while not detector.empty():
            event = detector.pop()
            lengths[event.utterance] = lengths.get(event.utterance, 0) + len(event.audio)
    longest = max(lengths.values()) / SR
    assert config.max_speech_s + CHUNK / SR < longest  # the pause case happened
    assert longest < config.max_speech_s + config.min_silence_s + CHUNK / SR


def test_kept_token_arrays_are_the_transcriber_s(
    transcriber: Transcriber, vad_model: SileroModel, two: Path
) -> None:
    got = list(local(transcriber, vad_model, keep_tokens=True).run(FileSource(two)))
    audio = load_audio(two)
    assert len(got) == 2
    for u in got:
        expected = transcriber(audio[round(u.start_s * SR) : round(u.end_s * SR)])
        assert u.arrays is not None
        np.testing.assert_array_equal(u.arrays.ids, expected.tokens)
        np.testing.assert_array_equal(u.arrays.entropy, expected.entropy)
        np.testing.assert_array_equal(u.arrays.starts, expected.starts)
    assert all(u.arrays is None for u in local(transcriber, vad_model).run(FileSource(two)))
