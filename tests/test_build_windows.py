"""edgetok.windows: picking, padding and cropping fixed windows (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetok.windows import (
    SCHEMES,
    crop_outputs,
    pad_inputs,
    parse_signature,
    pick_window,
    signature_name,
)


def test_signature_names_round_trip() -> None:
    for role, scheme in SCHEMES.items():
        for window in scheme.windows():
            assert parse_signature(signature_name(role, window)) == (role, window)
    assert signature_name("decoder", {"S": 64, "U": 160}) == "decoder_S64_U160"


@pytest.mark.parametrize("name", ["serving_default", "tokenizer", "nomodel_T5", "tokenizer_t5"])
def test_other_names_are_not_signatures(name: str) -> None:
    with pytest.raises(ValueError, match="not a fixed-window signature name"):
        parse_signature(name)


def test_smallest_window_that_holds_the_input() -> None:
    scheme = SCHEMES["decoder"]
    inputs = {"prefix": np.zeros((1, 70, 4), np.float32), "text": np.zeros((1, 5), np.int64)}
    window, lengths = pick_window(scheme, inputs, scheme.windows())
    assert window == {"S": 320, "U": 64}
    assert lengths == {"S": 70, "U": 5}


def test_too_long_for_every_window() -> None:
    scheme = SCHEMES["entropy_lm"]
    with pytest.raises(ValueError, match=r"exceed the largest fixed window \{'T': 1536\}"):
        pick_window(scheme, {"tokens": np.zeros((1, 1537), np.int64)}, scheme.windows())


def test_batch_must_be_one() -> None:
    scheme = SCHEMES["tokenizer"]
    with pytest.raises(ValueError, match="must have size 1 on axis 0"):
        pick_window(scheme, {"mel": np.zeros((2, 10, 80), np.float32)}, scheme.windows())


def test_pad_then_crop() -> None:
    scheme = SCHEMES["tokenizer"]
    mel = np.ones((1, 7, 80), np.float32)
    feeds = pad_inputs(scheme, {"mel": mel}, {"T": 512}, {"T": 7})
    assert feeds["mel"].shape == (1, 512, 80)
    assert feeds["mel"][0, 7:].sum() == 0 and feeds["mel"][0, :7].sum() == 7 * 80
    assert feeds["T_valid"].tolist() == [7] and feeds["T_valid"].dtype == np.int32
    out = crop_outputs(scheme, {"features": np.zeros((1, 256, 3), np.float32)}, {"T": 7})
    assert out["features"].shape == (1, 4, 3)  # ceil(7 / 2)


def test_aggregator_pads_rows_with_empty_masks() -> None:
    scheme = SCHEMES["aggregator"]
    inputs = {"tokens": np.ones((3, 8), np.int64), "mask": np.ones((3, 8), bool)}
    feeds = pad_inputs(scheme, inputs, {"N": 64}, {"N": 3})
    assert feeds["mask"].shape == (64, 8) and feeds["mask"][3:].sum() == 0
    assert set(feeds) == {"tokens", "mask"}


def test_v2_aggregator_pads_frames_and_masks() -> None:
    """One scheme for both generations: v2's aggregator reads ``frames`` [N, L, F]."""
    scheme = SCHEMES["aggregator"]
    inputs = {"frames": np.ones((3, 8, 384), np.float32), "mask": np.ones((3, 8), bool)}
    window, lengths = pick_window(scheme, inputs, scheme.windows())
    assert window == {"N": 64} and lengths == {"N": 3}
    feeds = pad_inputs(scheme, inputs, window, lengths)
    assert feeds["frames"].shape == (64, 8, 384) and feeds["frames"][3:].sum() == 0
    assert feeds["mask"].shape == (64, 8) and feeds["mask"][3:].sum() == 0


def test_v2_tokenizer_crops_features_and_frames() -> None:
    scheme = SCHEMES["tokenizer"]
    window = {"T": 1024}
    outputs = {
        "features": np.zeros((1, 512, 4), np.float32),
        "frames": np.zeros((1, 512, 384), np.float32),
    }
    cropped = crop_outputs(scheme, outputs, {"T": 601})
    assert cropped["features"].shape == (1, 301, 4) and cropped["frames"].shape == (1, 301, 384)
    assert signature_name("tokenizer", window) == "tokenizer_T1024"


def test_windows_hold_the_longest_utterance() -> None:
    """An utterance of ``protocol.MAX_UTTERANCE_S`` (the VAD cuts speech there) fits the
    largest window of every device model of the shipped bundle: no split, no error."""
    from edgetok.bundle import default_bundle_path, load_bundle
    from edgetok.frontend import n_frames
    from edgetok.protocol import MAX_UTTERANCE_S, max_utterance_segments
    from edgetok.stages import frontend_config

    bundle = load_bundle(default_bundle_path())
    mel = n_frames(int(MAX_UTTERANCE_S * bundle.audio.sample_rate), frontend_config(bundle))
    tokens = -(-mel // 2)
    segments = max_utterance_segments(bundle)
    feeds = {
        "tokenizer": {"mel": np.zeros((1, mel, 80), np.float32)},
        "entropy_lm": {"tokens": np.zeros((1, tokens), np.int64)},
        "aggregator": {
            "frames": np.zeros((segments, bundle.segmenter.max_len, 384), np.float32),
            "mask": np.zeros((segments, bundle.segmenter.max_len), bool),
        },
    }
    for role, inputs in feeds.items():
        scheme = SCHEMES[role]
        window, _ = pick_window(scheme, inputs, scheme.windows())
        assert window == {axis: max(sizes) for axis, sizes in scheme.sizes.items()}, role
    # Whisper's encoder has 1500 positions: the tokenizer's largest window is all of them.
    assert max(SCHEMES["tokenizer"].sizes["T"]) == 3000 and mel <= 3000
