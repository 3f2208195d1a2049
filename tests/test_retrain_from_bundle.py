"""Retraining the later stages from a v1 bundle (scripts/retrain-decoder): tokens and
entropies from its ONNX models on a tiny real corpus, a short decoder run, and a bundle that
reuses the base's front models. The base is the tiny v1 bundle (the shipped default is v2,
whose decoder reads encoder frames: scripts/train-v2 retrains it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from edgetok.bundle import load_bundle  # noqa: E402
from edgetok.stages import EntropyStage, TokenizerStage, Transcriber  # noqa: E402
from edgetok.train import corpus as C  # noqa: E402
from edgetok.train.fit_decoder import train_decoder  # noqa: E402
from edgetok.train.fit_lm import bundle_entropy, score_corpus  # noqa: E402
from edgetok.train.fit_tokenizer import bundle_tokenizer, tokenize_corpus  # noqa: E402
from edgetok.train.loop import LoopConfig  # noqa: E402
from edgetok.train.make_bundle import make_bundle  # noqa: E402
from edgetok.train.tokenset import load_tokens, tokens_path  # noqa: E402

pytestmark = pytest.mark.torch

SAMPLE = Path(__file__).resolve().parents[1] / "edgetok" / "models" / "default" / "sample.wav"
TINY = {
    "hours": 0.01,
    "dev_hours": 0.004,
    "test_hours": 0.01,
    "test_voices": ("espeak_en-us+f4", "flite_rms"),
}


@pytest.fixture(scope="module")
def scored(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny corpus, tokenized and scored by the tiny v1 bundle, in its own cache."""
    if not (shutil.which("espeak-ng") and shutil.which("flite")):
        pytest.skip("espeak-ng and flite are needed (apt install espeak-ng flite)")
    root = tmp_path_factory.mktemp("retrain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETOK_CACHE", str(root / "cache"))
        corpus = root / "corpus"
        C.build_corpus(corpus, seed=0, jobs=2, progress=False, **TINY)
        tokenize_corpus(corpus, bundle_tokenizer(tiny_bundle), tiny_bundle)
        score_corpus(corpus, bundle_entropy(tiny_bundle))
    return corpus


def _cache(corpus: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("EDGETOK_CACHE", str(corpus.parent / "cache"))


def test_tokens_and_entropies_are_the_bundles(
    scored: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cache(scored, monkeypatch)
    bundle = load_bundle(tiny_bundle)
    tokenizer = TokenizerStage.from_bundle(bundle)
    entropy = EntropyStage(bundle.open("entropy_lm"))
    tokens = load_tokens(scored, "test")
    rows = [json.loads(line) for line in (scored / "test.jsonl").read_text().splitlines()]
    assert len(tokens) == len(rows) > 0
    agree = total = 0
    for i, row in enumerate(rows):
        audio, _ = sf.read(scored / row["path"], dtype="float32")
        device = tokenizer(audio)
        cached = tokens.utterance(i)
        assert tokens.texts[i] == row["text"]
        assert abs(len(cached) - len(device)) <= 1
        n = min(len(cached), len(device))
        agree += int((cached[:n] == device[:n]).sum())
        total += n
        # The entropies are the bundle LM's on the cached tokens.
        np.testing.assert_allclose(tokens.utterance_entropy(i), entropy(cached), atol=1e-4)
    # The cache holds float16 log-mel; the device computes float32: nearly all tokens agree.
    assert agree / total > 0.95
    source = json.loads(tokens_path(scored, "test").with_suffix(".json").read_text())
    assert source == {"codebook_run": str(tiny_bundle)}


def test_bundle_on_a_base_replaces_only_the_decoder(
    scored: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cache(scored, monkeypatch)
    run = tmp_path / "decoder_entropy"
    loop = LoopConfig(steps=2, warmup=1, eval_every=0, threads=2)
    # The run's default-size aggregator (the tiny codebook cannot seed its embeddings).
    train_decoder(scored, run, loop, mode="entropy", min_len=2)
    base = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, base)
    before = load_bundle(base)
    # The base is also the output: it is read before being replaced.
    built = make_bundle(
        base, decoder_run=run, corpus_dir=scored, base=base, description="retrained decoder"
    )
    for role in ("tokenizer", "entropy_lm"):
        assert built.models[role].sha256 == before.models[role].sha256
        assert built.training.get(role) == before.training.get(role)
    assert built.tokens.codebook_sha256 == before.tokens.codebook_sha256
    assert built.models["decoder"].sha256 != before.models["decoder"].sha256
    assert built.training["decoder"]["steps"] == 2
    assert built.segmenter.min_len == 2
    assert built.meta.description == "retrained decoder"
    assert not any(p.name.endswith(".building") for p in tmp_path.iterdir())
    audio, _ = sf.read(SAMPLE, dtype="float32")
    transcript = Transcriber(built, beam=1)(audio)
    assert transcript.segments_per_s > 0


def test_bundle_needs_runs_or_a_base(scored: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="base bundle"):
        make_bundle(tmp_path / "b", decoder_run=tmp_path / "run", corpus_dir=scored)
