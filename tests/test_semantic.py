"""The v2 tokenizer: FSQ bottleneck on frozen Whisper features, and the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgetok.codebook import nearest_centroid  # noqa: E402
from edgetok.train.semantic import FSQ, BottleneckConfig, SemanticBottleneck  # noqa: E402


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (3, 4), (7, 5, 5, 5, 5)])
def test_fsq_ids_are_the_nearest_codebook_rows(levels: tuple[int, ...]) -> None:
    fsq = FSQ(levels)
    bounded = fsq.bound(torch.randn(4000, len(levels)) * 3)
    ids = fsq.ids(bounded)
    codebook = fsq.codebook()
    assert codebook.shape == (int(np.prod(levels)), len(levels)) == (fsq.size, len(levels))
    assert len(np.unique(codebook, axis=0)) == fsq.size
    assert ids.min() >= 0 and ids.max() < fsq.size
    # The device's nearest-centroid lookup gives the same ids as rounding per dim, but for
    # values on a rounding boundary (float error decides; both codes are as near).
    device = nearest_centroid(bounded.numpy(), codebook)
    differ = device != ids.numpy()
    assert differ.mean() < 1e-3
    x = bounded.numpy()[differ]
    gap = ((x - codebook[device[differ]]) ** 2).sum(-1) - ((x - codebook[ids[differ]]) ** 2).sum(-1)
    assert np.all(np.abs(gap) < 1e-4)
    np.testing.assert_allclose(codebook[ids.numpy()], fsq.grid(bounded).numpy(), atol=1e-6)


def test_fsq_grid_passes_gradients_straight_through() -> None:
    fsq = FSQ((8, 5))
    z = torch.randn(10, 2, requires_grad=True)
    fsq.grid(fsq.bound(z)).sum().backward()
    assert z.grad is not None and torch.all(z.grad > 0)


def test_bottleneck_ctc_step_and_masking() -> None:
    model = SemanticBottleneck(BottleneckConfig(post_layers=1))
    x = torch.randn(2, 30, 384)
    lengths = torch.tensor([30, 18])
    targets = torch.randint(4, 31, (2, 6))
    loss, out = model.ctc_loss(x, lengths, targets, torch.tensor([6, 4]))
    loss.backward()
    assert torch.isfinite(loss) and model.down.weight.grad is not None
    assert out["ids"].shape == (2, 30) and out["ctc_logits"].shape == (2, 30, 31)
    model.eval()
    with torch.no_grad():
        alone = model.bounded(x[1:, :18])
        padded = model.bounded(x, (torch.arange(30)[None] < lengths[:, None])[:, None, None])
    torch.testing.assert_close(padded[1, :18], alone[0], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def encoder(model_dir: Path):
    from edgetok.train.whisper import load_whisper

    return load_whisper(model_dir / "model.bin")[0]


def test_encoder_cache_builds_resumes_and_matches(
    encoder, speech_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetok.audio import load_audio
    from edgetok.frontend import log_mel
    from edgetok.train import whisper_features as wf

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    names = sorted(p.name for p in speech_dir.glob("*.wav"))
    rows = [{"id": n, "path": str(speech_dir / n), "text": "x", "duration": 1.0} for n in names]
    (corpus / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(wf, "SHARD", 1)  # several shards from a few files
    out = tmp_path / "cache"
    feats = wf.build_encoder_cache(corpus, "train", out, lambda: encoder)
    assert len(feats) == len(names) and len(list(out.glob("shard*.lengths.npy"))) > 1
    audio = load_audio(speech_dir / names[-1])
    mel = torch.from_numpy(log_mel(audio, wf.WHISPER_FRONTEND))[None]
    with torch.no_grad():
        direct = encoder(wf.WhisperInput()(mel))[0].numpy()
    np.testing.assert_allclose(feats.utterance(len(names) - 1), direct, atol=2e-2, rtol=1e-2)
    # A lost index is rebuilt from the shards without encoding again.
    (out / wf.INDEX_FILE).unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("shard*.npy")}
    again = wf.build_encoder_cache(corpus, "train", out, lambda: encoder)
    assert {p: p.stat().st_mtime_ns for p in out.glob("shard*.npy")} == stamps
    np.testing.assert_array_equal(again.lengths, feats.lengths)


def test_exported_tokenizer_runs_at_any_length_with_fp16_weights(encoder, tmp_path: Path) -> None:
    """The v2 tokenizer graph: dynamic batch and time, weights stored as float16 (half the
    file), the same codes and encoder frames as torch up to that rounding."""
    import onnx

    from edgetok.train.export import export_semantic_tokenizer
    from edgetok.train.fit_semantic import SemanticTokenizerExport

    module = SemanticTokenizerExport(encoder, SemanticBottleneck().eval())
    path = tmp_path / "tokenizer.onnx"
    assert export_semantic_tokenizer(module, path) < 5e-3
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["features", "frames"]
    halves = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) > 20 and path.stat().st_size < 25e6


def test_bypass_starts_on_and_leaves_the_tokens_alone() -> None:
    from edgetok.train.semantic import bypass_schedule

    weights = [bypass_schedule(step, 100) for step in (0, 99, 100, 200, 300, 1000)]
    assert weights == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    model = SemanticBottleneck(BottleneckConfig(post_layers=1)).eval()
    x, lengths = torch.randn(1, 20, 384), torch.tensor([20])
    with torch.no_grad():
        plain = model(x, lengths)
        bypassed = model(x, lengths, 1.0)
        torch.nn.init.normal_(model.bypass.weight)
        moved = model(x, lengths, 0.0)
    assert torch.equal(plain["ids"], bypassed["ids"])
    assert not torch.equal(plain["ctc_logits"], bypassed["ctc_logits"])
    assert torch.equal(plain["ctc_logits"], moved["ctc_logits"])
