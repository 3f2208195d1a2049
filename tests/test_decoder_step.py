"""The decoder with a key/value cache (one ONNX graph for prefill and steps): the same greedy
text as the full-recompute decoder, in torch, in onnxruntime, and through bundles."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fixtures import build_fixtures

torch = pytest.importorskip("torch")

from edgetok.audio import load_audio  # noqa: E402
from edgetok.bundle import ModelEntry, load_bundle, sha256_file, write_bundle  # noqa: E402
from edgetok.runtime import Session, open_session  # noqa: E402
from edgetok.stages import DecoderPack, DecoderStage, Transcriber  # noqa: E402
from edgetok.train.export import export_decoder, export_onnx, max_abs_diff  # noqa: E402
from edgetok.train.models import Decoder, DecoderConfig, greedy_decode  # noqa: E402
from edgetok.vocab import decode_ids  # noqa: E402

pytestmark = pytest.mark.torch
exported_bundle = build_fixtures.exported_bundle
D = 8  # the tiny bundle's vector size


def decoder() -> Decoder:
    """A small decoder with large random matrices: peaked logits, varied greedy text."""
    torch.manual_seed(0)
    dec = Decoder(DecoderConfig(prefix_dim=D, dim=32, ff_dim=64, layers=2, heads=2))
    for parameter in dec.parameters():
        if parameter.dim() >= 2:
            parameter.data.normal_(0.0, 0.6)
    return dec.eval()


class CountingSession:
    """A session that records the input shapes of every run."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.inputs, self.outputs = session.inputs, session.outputs
        self.runs: list[dict[str, tuple[int, ...]]] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs.append({k: v.shape for k, v in inputs.items()})
        return self.session.run(inputs)


def test_torch_step_matches_forward() -> None:
    dec = decoder()
    prefix, text = torch.randn(1, 6, D), torch.randint(0, 31, (1, 7))
    with torch.no_grad():
        full = dec(prefix, text)
        logits, keys, values = dec.step(prefix, text[:, :2], *dec.empty_cache())
        parts = [logits]
        for u in range(2, 7):
            logits, keys, values = dec.step(prefix[:, :0], text[:, u : u + 1], keys, values)
            parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert keys.shape == (2, 1, 2, 13, 16)


def export_decoder_full(dec, path: Path) -> float:
    """The decoder without a cache, as older bundles and fixed-window builds have it:
    ``prefix`` [B, S, D], ``text`` [B, U] -> ``logits``; returns the ORT max abs diff."""
    gen = torch.Generator().manual_seed(0)

    def make(b: int, s: int, u: int) -> tuple:
        prefix = torch.randn(b, s, dec.cfg.prefix_dim, generator=gen)
        return prefix, torch.randint(0, dec.cfg.vocab_size, (b, u), generator=gen)

    axes = {"prefix": {0: "B", 1: "S"}, "text": {0: "B", 1: "U"}}
    export_onnx(dec, make(2, 12, 9), path, ["prefix", "text"], ["logits"], axes)
    return max_abs_diff(dec, path, [make(1, 5, 1), make(3, 40, 23)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``decoder.onnx`` (the cached graph) and ``decoder_full.onnx`` of one decoder."""
    pytest.importorskip("onnxscript")
    directory = tmp_path_factory.mktemp("cached")
    dec = decoder()
    # ORT vs torch: prefill (P = 0), steps (S = 0, P up to 150), batch 3, and P = 0 logits
    # against the full-sequence Decoder.forward. This decoder's logits reach the hundreds.
    assert export_decoder(dec, directory / "decoder.onnx") <= 1e-3
    assert export_decoder_full(dec, directory / "decoder_full.onnx") <= 1e-3
    return directory


@pytest.mark.slow
def test_one_graph_holds_the_cache_and_one_copy_of_the_weights(exported: Path) -> None:
    stage = DecoderStage(open_session(exported / "decoder.onnx"))
    assert stage.cached and stage.use_cache
    names = [spec.name for spec in stage.session.inputs]
    assert names == ["prefix", "text", "past_keys", "past_values"]
    assert [spec.name for spec in stage.session.outputs] == ["logits", "keys", "values"]
    full = (exported / "decoder_full.onnx").stat().st_size
    assert (exported / "decoder.onnx").stat().st_size < 1.1 * full
    assert not DecoderStage(open_session(exported / "decoder_full.onnx")).cached


@pytest.mark.slow
def test_cached_onnx_gives_the_full_decoders_text(exported: Path) -> None:
    dec = decoder()
    cached = DecoderStage(open_session(exported / "decoder.onnx"), beam=1)
    rerun = DecoderStage(cached.session, use_cache=False, beam=1)
    full = DecoderStage(open_session(exported / "decoder_full.onnx"), beam=1)
    beams = [
        DecoderStage(cached.session, beam=4),
        DecoderStage(cached.session, use_cache=False, beam=4),
        DecoderStage(full.session, beam=4),
    ]
    rng = np.random.default_rng(0)
    texts = []
    for segments in (1, 2, 5, 17, 40):
        vectors = rng.standard_normal((segments, D)).astype(np.float32)
        texts.append(full(vectors))
        assert cached(vectors) == rerun(vectors) == texts[-1]
        assert len({stage(vectors) for stage in beams}) == 1  # cache, batch: the same search
        limit = min(3 * segments + 20, 400)
        (ids,) = greedy_decode(dec, torch.from_numpy(vectors[None]), max_len=limit)
        assert decode_ids(ids) == texts[-1]  # torch's full-recompute greedy decode
    assert len(set("".join(texts))) > 3  # not a degenerate decoder


@pytest.mark.slow
def test_cached_decoder_runs_once_per_character(exported: Path) -> None:
    session = CountingSession(open_session(exported / "decoder.onnx"))
    stage = DecoderStage(session, beam=1)
    vectors = np.random.default_rng(1).standard_normal((6, D)).astype(np.float32)
    text = stage(vectors)
    runs = session.runs
    assert len(runs) in (len(text) + 1, len(text))  # + 1 for EOS unless cut at max_chars
    assert runs[0]["prefix"] == (1, 6, D) and runs[0]["past_keys"][3] == 0
    for u, run in enumerate(runs[1:], 1):
        assert run["prefix"] == (1, 0, D) and run["text"] == (1, 1)
        assert run["past_keys"][3] == 6 + u  # prefix + BOS + u - 1 characters
    logits = stage.logits(vectors[None], np.array([[1, 5, 6]], np.int64))
    assert logits.shape == (1, 3, 31)


def _with_decoder(bundle: Path, onnx_file: Path, directory: Path) -> Path:
    """A copy of ``bundle`` in ``directory`` whose decoder is ``onnx_file``."""
    shutil.copytree(bundle, directory)
    base = load_bundle(directory)
    shutil.copy(onnx_file, directory / "decoder.onnx")
    session = open_session(directory / "decoder.onnx")
    entry = ModelEntry(
        file="decoder.onnx",
        backend="onnxruntime",
        precision="fp32",
        sha256=sha256_file(directory / "decoder.onnx"),
        inputs=tuple(session.inputs),
        outputs=tuple(session.outputs),
    )
    write_bundle(replace(base, models={**base.models, "decoder": entry}, root=None), directory)
    return directory


@pytest.mark.slow
def test_tiny_bundle_speech_same_text_cached_and_full(
    exported: Path, tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    cached = Transcriber(
        load_bundle(_with_decoder(tiny_bundle, exported / "decoder.onnx", tmp_path / "c"))
    )
    full = Transcriber(
        load_bundle(_with_decoder(tiny_bundle, exported / "decoder_full.onnx", tmp_path / "f"))
    )
    assert cached.pack.decoder.cached and not full.pack.decoder.cached
    for wav in sorted(speech_dir.glob("*.wav")):
        audio = load_audio(wav)
        got = cached(audio)
        assert got.text and got.text == full(audio).text
        pack = replace(cached.pack, decoder=DecoderStage(cached.pack.decoder.session, False))
        assert cached.decode(cached.encode(audio), pack).text == got.text


@pytest.mark.slow
def test_exported_bundle_speech_same_text_cached_and_rerun(
    exported_bundle: Path, speech_dir: Path
) -> None:
    bundle = load_bundle(exported_bundle)
    cached = Transcriber(bundle)
    assert cached.pack.decoder.cached
    rerun = DecoderPack(
        cached.pack.compression,
        cached.pack.aggregator,
        DecoderStage(bundle.open("decoder"), use_cache=False),
    )
    for wav in sorted(speech_dir.glob("*.wav")):
        encoded = cached.encode(load_audio(wav))
        assert cached.decode(encoded).text == cached.decode(encoded, rerun).text
