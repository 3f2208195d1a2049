"""The key/value-cache decoder (``decoder_step``): the same greedy text as the full decoder,
in torch, in onnxruntime, and from a bundle that ships it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgetok.audio import load_audio  # noqa: E402
from edgetok.bundle import ModelEntry, load_bundle, sha256_file, write_bundle  # noqa: E402
from edgetok.runtime import open_session  # noqa: E402
from edgetok.stages import DecoderStage, Transcriber  # noqa: E402
from edgetok.train.export import export_decoder, export_decoder_step  # noqa: E402
from edgetok.train.models import Decoder, DecoderConfig  # noqa: E402

pytestmark = pytest.mark.torch
D = 8  # the tiny bundle's vector size


def decoder() -> Decoder:
    """A small decoder with large random matrices: peaked logits, varied greedy text."""
    torch.manual_seed(0)
    dec = Decoder(DecoderConfig(prefix_dim=D, dim=32, ff_dim=64, layers=2, heads=2))
    for parameter in dec.parameters():
        if parameter.dim() >= 2:
            parameter.data.normal_(0.0, 0.6)
    return dec.eval()


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


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxscript")
    directory = tmp_path_factory.mktemp("step")
    dec = decoder()
    assert export_decoder(dec, directory / "decoder.onnx") <= 1e-4
    assert export_decoder_step(dec, directory / "decoder_step.onnx") <= 1e-4
    return directory


@pytest.mark.slow
def test_onnx_step_gives_the_full_decoders_text(exported: Path) -> None:
    full = DecoderStage(open_session(exported / "decoder.onnx"))
    cached = DecoderStage(full.session, open_session(exported / "decoder_step.onnx"))
    rng = np.random.default_rng(0)
    texts = []
    for segments in (1, 2, 5, 17, 40):
        vectors = rng.standard_normal((segments, D)).astype(np.float32)
        texts.append(full(vectors))
        assert cached(vectors) == texts[-1]
    assert len(set("".join(texts))) > 3  # not a degenerate decoder


@pytest.mark.slow
def test_a_bundle_with_decoder_step_uses_it(
    exported: Path, tiny_bundle: Path, speech_dir: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, directory)
    base = load_bundle(directory)
    models = dict(base.models)
    for role in ("decoder", "decoder_step"):
        shutil.copy(exported / f"{role}.onnx", directory / f"{role}.onnx")
        session = open_session(directory / f"{role}.onnx")
        models[role] = ModelEntry(
            file=f"{role}.onnx",
            backend="onnxruntime",
            precision="fp32",
            sha256=sha256_file(directory / f"{role}.onnx"),
            inputs=tuple(session.inputs),
            outputs=tuple(session.outputs),
        )
    with_step = replace(base, models=models, root=None)
    without = replace(with_step, models={k: v for k, v in models.items() if k != "decoder_step"})
    write_bundle(without, directory)
    plain = Transcriber(load_bundle(directory))
    write_bundle(with_step, directory)
    cached = Transcriber(load_bundle(directory))
    assert plain.pack.decoder.step is None and cached.pack.decoder.step is not None
    audio = load_audio(speech_dir / "fox.wav")
    assert cached(audio).text == plain(audio).text
