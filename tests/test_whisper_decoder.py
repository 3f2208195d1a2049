"""v2 decoder: aggregator + pretrained Whisper decoder over segment vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from edgetok.compress import Compression  # noqa: E402
from edgetok.train.fit_decoder import SegmentedSet  # noqa: E402
from edgetok.train.loop import LoopConfig, TrainingRun  # noqa: E402
from edgetok.train.tokenset import TokenSet  # noqa: E402


@pytest.fixture(scope="module")
def data(model_dir: Path):
    from edgetok.train.fit_whisper_decoder import BpeText

    rng = np.random.default_rng(0)
    lengths = np.array([40, 25, 60])
    tokens = TokenSet(
        tokens=rng.integers(0, 1000, lengths.sum()).astype(np.int16),
        offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        lengths=lengths,
        texts=["hello world", "press one", "the quick brown fox"],
        voices=["a", "b", "a"],
        entropy=None,
    )
    bpe = BpeText(model_dir)
    fixed = Compression(mode="fixed", max_len=4, rate_hz=15.0)
    return SegmentedSet.build(tokens, fixed, encode=bpe.target), bpe


def test_targets_are_prompt_bpe_and_end(data) -> None:
    segmented, bpe = data
    target = segmented.targets[0]
    assert target[:2].tolist() == bpe.prompt and target[-1] == bpe.eot
    assert bpe.decode(target[2:].tolist()) == "hello world"


def test_a_training_step_moves_only_what_should(data, tmp_path: Path) -> None:
    from edgetok.train.fit_whisper_decoder import DECODER_LR_SCALE, new_model

    segmented, bpe = data
    model = new_model(vocab_size=1000, max_len=4)
    embedding = model.decoder.token_embedding.weight.detach().clone()
    run = TrainingRun(tmp_path / "run", model, LoopConfig(steps=2, lr=1e-3, warmup=1))
    rates = [group["lr"] for group in run.optimizer.param_groups]
    assert rates[1] == pytest.approx(rates[0] * DECODER_LR_SCALE)
    batches = iter([[0, 1, 2], [0, 2]])
    run.train(batches, lambda idx: (model.loss(segmented, idx), {}))
    assert run.step == 2 and (tmp_path / "run" / "last.pt").exists()
    assert torch.equal(model.decoder.token_embedding.weight, embedding)
    context, counts = model.context(segmented, [0, 2])
    assert context.shape == (2, int(counts.max()), 384)
    model.eval()
    out = model.greedy(segmented, [0, 1], bpe.prompt, bpe.eot, max_tokens=5)
    assert len(out) == 2 and all(len(ids) <= 5 and bpe.eot not in ids for ids in out)


def test_a_padded_batch_equals_each_item_alone(data) -> None:
    from edgetok.train.fit_whisper_decoder import new_model

    segmented, _ = data
    model = new_model(vocab_size=1000, max_len=4).eval()
    with torch.no_grad():
        both, counts = model.context(segmented, [1, 2])
        text = torch.tensor([segmented.targets[1][:4].tolist()] * 2)
        batched = model.decoder(text, both, counts)
        alone, _ = model.context(segmented, [1])
        single = model.decoder(text[:1], alone)
    torch.testing.assert_close(batched[0], single[0], atol=1e-4, rtol=1e-4)


def test_cached_steps_equal_the_full_decoder(model_dir: Path) -> None:
    from edgetok.train.whisper import load_whisper

    _, decoder = load_whisper(model_dir / "model.bin")
    context = torch.randn(2, 17, 384)
    tokens = torch.randint(0, 50000, (2, 9))
    with torch.no_grad():
        full = decoder(tokens, context)
        cross_k, cross_v = decoder.cross_kv(context)
        empty = torch.zeros(4, 2, 6, 0, 64)
        logits, k, v = decoder.step(tokens[:, :5], cross_k, cross_v, empty, empty)
        steps = [logits]
        for i in range(5, 9):
            logits, k, v = decoder.step(tokens[:, i : i + 1], cross_k, cross_v, k, v)
            steps.append(logits)
    assert k.shape == (4, 2, 6, 9, 64)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-4, rtol=1e-4)


def test_server_graphs_export_with_dynamic_axes(tmp_path: Path) -> None:
    from edgetok.train.export import export_whisper_decoder
    from edgetok.train.fit_whisper_decoder import new_model

    model = new_model(vocab_size=1000, max_len=8).eval()
    diff = export_whisper_decoder(model, tmp_path / "context.onnx", tmp_path / "step.onnx")
    assert diff < 1e-3


def test_server_stage_decodes_like_torch(model_dir: Path, tmp_path: Path) -> None:
    """Greedy decoding through the exported graphs gives torch's greedy tokens (special
    tokens but the end suppressed on both sides); a beam of 4 runs too."""
    from edgetok.bpe import BpeVocabulary
    from edgetok.runtime import open_session
    from edgetok.train.export import export_whisper_decoder
    from edgetok.train.fit_whisper_decoder import new_model
    from edgetok.whisper_decoding import TINY_EN_PROMPT, WhisperDecoderStage

    model = new_model(vocab_size=1000, max_len=8).eval()
    export_whisper_decoder(model, tmp_path / "context.onnx", tmp_path / "step.onnx")
    vocab = BpeVocabulary.from_file(model_dir / "vocabulary.txt")
    sessions = open_session(tmp_path / "context.onnx"), open_session(tmp_path / "step.onnx")
    gen = torch.Generator().manual_seed(3)
    vectors = torch.randn(12, 384, generator=gen)
    starts = torch.arange(12) * 3
    with torch.no_grad():
        context = model.context_norm(vectors + model.positions[starts])[None]
        ids = list(TINY_EN_PROMPT)
        for _ in range(20):
            logits = model.decoder(torch.tensor([ids]), context)[0, -1, : vocab.eot + 1]
            if int(logits.argmax()) == vocab.eot:
                break
            ids.append(int(logits.argmax()))
    want = vocab.decode(ids[2:])
    greedy = WhisperDecoderStage(*sessions, vocab, beam=1, max_tokens=20)
    assert greedy(vectors.numpy(), starts.numpy()) == want
    beam = WhisperDecoderStage(*sessions, vocab, beam=4, max_tokens=20)
    assert isinstance(beam(vectors.numpy(), starts.numpy()), str)
    assert greedy(np.zeros((0, 384), np.float32), np.zeros(0, np.int64)) == ""
    with pytest.raises(ValueError, match="starts"):
        greedy(vectors.numpy(), starts.numpy()[:3])


def test_greedy_stops_at_the_last_position(data) -> None:
    """A decoder that never ends its text stops at Whisper's 448 positions, not past them."""
    from edgetok.train.fit_whisper_decoder import new_model

    segmented, bpe = data
    model = new_model(vocab_size=1000, max_len=4).eval()
    out = model.greedy(segmented, [0], bpe.prompt, eot=-1, max_tokens=10_000)
    assert len(out[0]) == 448 - len(bpe.prompt)
