"""v2 decoder: feature aggregator + pretrained Whisper decoder over segment vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from edgetok.compress import Compression  # noqa: E402
from edgetok.train.loop import LoopConfig, TrainingRun  # noqa: E402
from edgetok.train.tokenset import TokenSet  # noqa: E402
from edgetok.train.whisper_features import EncoderFeatures  # noqa: E402


@pytest.fixture(scope="module")
def data(model_dir: Path):
    from edgetok.train.fit_whisper_decoder import BpeText, SegmentedFeatures

    rng = np.random.default_rng(0)
    lengths = np.array([40, 25, 60])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    texts = ["hello world", "press one", "the quick brown fox"]
    tokens = TokenSet(
        tokens=rng.integers(0, 1000, lengths.sum()).astype(np.int16),
        offsets=offsets,
        lengths=lengths,
        texts=texts,
        voices=["a", "b", "a"],
        entropy=None,
    )
    frames = rng.standard_normal((lengths.sum(), 384)).astype(np.float16)
    features = EncoderFeatures([frames], np.zeros(3, np.int64), offsets, lengths, [{}] * 3)
    bpe = BpeText(model_dir)
    fixed = Compression(mode="fixed", max_len=4, rate_hz=15.0)
    return SegmentedFeatures.build(features, tokens, fixed, bpe.target), bpe


def test_targets_are_prompt_bpe_and_end(data) -> None:
    segmented, bpe = data
    target = segmented.targets[0]
    assert target[:2].tolist() == bpe.prompt and target[-1] == bpe.eot
    assert bpe.decode(target[2:].tolist()) == "hello world"


def test_segments_hold_the_frames_they_span(data) -> None:
    segmented, _ = data
    frames, mask = segmented.segments(1)
    source = segmented.features.utterance(1)
    starts = segmented.starts[1]
    assert mask.sum() == len(source) and frames.shape == (len(starts), 4, 384)
    for row, start in enumerate(starts):
        n = int(mask[row].sum())
        np.testing.assert_array_equal(frames[row, :n], source[start : start + n])
        assert not frames[row, n:].any()


def test_a_fresh_aggregator_gives_each_segments_mean_frame(data) -> None:
    """The correction starts at zero: the decoder first reads pooled encoder output."""
    from edgetok.train.fit_whisper_decoder import new_model

    segmented, _ = data
    model = new_model(max_len=4).eval()
    frames, mask = segmented.segments(0)
    with torch.no_grad():
        vectors = model.aggregator(torch.from_numpy(frames), torch.from_numpy(mask))
    means = frames.sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(vectors.numpy(), means, atol=1e-5)


def test_features_of_another_split_are_refused(data) -> None:
    from edgetok.train.fit_whisper_decoder import SegmentedFeatures

    segmented, bpe = data
    tokens = TokenSet(np.zeros(10, np.int16), np.array([0]), np.array([10]), ["a"], ["v"], None)
    with pytest.raises(ValueError, match="same split"):
        SegmentedFeatures.build(
            segmented.features, tokens, Compression(mode="dense", max_len=1), bpe.target
        )


def test_a_training_step_moves_only_what_should(data, tmp_path: Path) -> None:
    from edgetok.train.fit_whisper_decoder import DECODER_LR_SCALE, new_model

    segmented, bpe = data
    model = new_model(max_len=4)
    embedding = model.decoder.token_embedding.weight.detach().clone()
    run = TrainingRun(tmp_path / "run", model, LoopConfig(steps=2, lr=1e-3, warmup=1))
    rates = [group["lr"] for group in run.optimizer.param_groups]
    assert rates[1] == pytest.approx(rates[0] * DECODER_LR_SCALE)

    def loss(idx: list[int]):
        batch = [segmented.segments(i) for i in idx]
        text_loss, _ = model.loss(batch, [segmented.targets[i] for i in idx])
        return text_loss, {}

    run.train(iter([[0, 1, 2], [0, 2]]), loss)
    assert run.step == 2 and (tmp_path / "run" / "last.pt").exists()
    assert torch.equal(model.decoder.token_embedding.weight, embedding)
    assert model.aggregator.correction.weight.abs().sum() > 0
    context, counts, _ = model.context([segmented.segments(i) for i in (0, 2)])
    assert context.shape == (2, int(counts.max()), 384)
    model.eval()
    out = model.greedy([segmented.segments(i) for i in (0, 1)], bpe.prompt, bpe.eot, 5)
    assert len(out) == 2 and all(len(ids) <= 5 and bpe.eot not in ids for ids in out)


def test_a_padded_batch_equals_each_item_alone(data) -> None:
    from edgetok.train.fit_whisper_decoder import new_model

    segmented, _ = data
    model = new_model(max_len=4).eval()
    with torch.no_grad():
        both, counts, _ = model.context([segmented.segments(i) for i in (1, 2)])
        text = torch.tensor([segmented.targets[1][:4].tolist()] * 2)
        batched = model.decoder(text, both, counts)
        alone, _, _ = model.context([segmented.segments(1)])
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

    model = new_model(max_len=8).eval()
    diff = export_whisper_decoder(model, tmp_path / "context.onnx", tmp_path / "step.onnx")
    assert diff < 1e-3


def test_step_graph_holds_the_table_once_and_broadcasts_cross_inputs(tmp_path: Path) -> None:
    """The tied token table is gathered in float16 and projected untransposed (one float32
    copy in a session); one utterance's cross inputs, given once, score every hypothesis
    exactly as copies per hypothesis do."""
    import onnx

    from edgetok.runtime import open_session
    from edgetok.train.export import export_whisper_decoder
    from edgetok.train.fit_whisper_decoder import new_model
    from edgetok.whisper_decoding import CROSS_BATCH

    model = new_model(max_len=8).eval()
    export_whisper_decoder(model, tmp_path / "context.onnx", tmp_path / "step.onnx")
    graph = onnx.load(str(tmp_path / "step.onnx")).graph
    readers = [n.op_type for n in graph.node if "decoder.token_embedding.weight" in n.input]
    assert readers == ["Gemm"]
    gather = next(n for n in graph.node if n.name == "node_embedding")
    assert gather.input[0] == "decoder.token_embedding.weight__fp16"
    step = open_session(tmp_path / "step.onnx")
    cross = next(spec for spec in step.inputs if spec.name == "cross_keys")
    assert cross.shape[1] == CROSS_BATCH
    rng = np.random.default_rng(0)
    beams, segments, past = 4, 11, 5
    one = {k: rng.standard_normal((4, 1, 6, segments, 64), dtype=np.float32) for k in "kv"}
    feeds = {
        "text": rng.integers(0, 50000, (beams, 1)),
        "past_keys": rng.standard_normal((4, beams, 6, past, 64), dtype=np.float32),
        "past_values": rng.standard_normal((4, beams, 6, past, 64), dtype=np.float32),
    }
    shared = step.run({**feeds, "cross_keys": one["k"], "cross_values": one["v"]})
    tiled = step.run(
        {
            **feeds,
            "cross_keys": np.repeat(one["k"], beams, axis=1),
            "cross_values": np.repeat(one["v"], beams, axis=1),
        }
    )
    for name in ("logits", "keys", "values"):
        np.testing.assert_array_equal(shared[name], tiled[name])


def test_server_stage_decodes_like_torch(model_dir: Path, tmp_path: Path) -> None:
    """Greedy decoding through the exported graphs gives torch's greedy tokens (special
    tokens but the end suppressed on both sides); a beam of 4 runs too."""
    from edgetok.bpe import BpeVocabulary
    from edgetok.runtime import open_session
    from edgetok.train.export import export_whisper_decoder
    from edgetok.train.fit_whisper_decoder import new_model
    from edgetok.whisper_decoding import TINY_EN_PROMPT, WhisperDecoderStage

    model = new_model(max_len=8).eval()
    export_whisper_decoder(model, tmp_path / "context.onnx", tmp_path / "step.onnx")
    vocab = BpeVocabulary.from_file(model_dir / "vocabulary.txt")
    sessions = open_session(tmp_path / "context.onnx"), open_session(tmp_path / "step.onnx")
    gen = torch.Generator().manual_seed(3)
    vectors = torch.randn(12, 384, generator=gen)
    with torch.no_grad():
        context = vectors[None]
        ids = list(TINY_EN_PROMPT)
        for _ in range(20):
            logits = model.decoder(torch.tensor([ids]), context)[0, -1, : vocab.eot + 1]
            if int(logits.argmax()) == vocab.eot:
                break
            ids.append(int(logits.argmax()))
    want = vocab.decode(ids[2:])
    greedy = WhisperDecoderStage(*sessions, vocab, beam=1, max_tokens=20)
    assert greedy(vectors.numpy()) == want
    beam = WhisperDecoderStage(*sessions, vocab, beam=4, max_tokens=20)
    assert beam.broadcasts
    text = beam(vectors.numpy())
    beam.broadcasts = False  # every hypothesis gets its own copy of the cross inputs
    assert beam(vectors.numpy()) == text
    assert greedy(np.zeros((0, 384), np.float32)) == ""
    with pytest.raises(ValueError, match=r"\[S, D\]"):
        greedy(vectors.numpy()[None])


def test_greedy_stops_at_the_last_position(data) -> None:
    """A decoder that never ends its text stops at Whisper's 448 positions, not past them."""
    from edgetok.train.fit_whisper_decoder import new_model

    segmented, bpe = data
    model = new_model(max_len=4).eval()
    out = model.greedy([segmented.segments(0)], bpe.prompt, eot=-1, max_tokens=10_000)
    assert len(out[0]) == 448 - len(bpe.prompt)


def test_the_learned_codes_are_the_wires_codes() -> None:
    """Forward: exactly what SegmentCodes dequantizes; backward: straight through to the
    vectors, and the VQ loss reaches the codebooks."""
    from edgetok.segment_codes import SegmentCodes
    from edgetok.train.fit_whisper_decoder import ResidualQuantizer

    rng = np.random.default_rng(0)
    books = rng.normal(size=(3, 16, 8)).astype(np.float32)
    vectors = rng.normal(size=(20, 8)).astype(np.float32)
    quantizer = ResidualQuantizer(books)
    x = torch.from_numpy(vectors).requires_grad_(True)
    quantized, vq_loss = quantizer(x)
    wire = SegmentCodes(books)
    np.testing.assert_allclose(
        quantized.detach().numpy(), wire.decode(wire.encode(vectors)), atol=1e-5
    )
    (quantized.sum() + vq_loss).backward()
    assert x.grad is not None and float(x.grad.abs().min()) > 0
    assert quantizer.codebooks.grad is not None and float(quantizer.codebooks.grad.abs().sum()) > 0
