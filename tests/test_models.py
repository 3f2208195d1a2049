"""Torch features and models: shapes, budgets, causality, masking, ONNX parity."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from edgetok.train import export  # noqa: E402
from edgetok.train.features import SpecAugment  # noqa: E402
from edgetok.train.models import (  # noqa: E402
    BOS,
    BUDGETS,
    EOS,
    Aggregator,
    Decoder,
    EntropyLM,
    EntropyLMExport,
    TokenizerEncoder,
    TokenizerExport,
    greedy_decode,
    parameter_counts,
)

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


# ------------------------------------------------------------------------------ features


def test_spec_augment() -> None:
    aug = SpecAugment()
    mel = torch.randn(4, 300, 80)
    assert torch.equal(aug.eval()(mel), mel)
    lengths = [300, 300, 200, 100]
    out = aug.train()(mel, torch.tensor(lengths))
    assert out.shape == mel.shape
    changed = out != mel
    assert changed.any() and changed.float().mean().item() < 0.5
    for b, n in enumerate(lengths):
        fill = mel[b, :n].mean()
        torch.testing.assert_close(out[b][changed[b]], fill.expand(int(changed[b].sum())))


# ------------------------------------------------------------------------------- budgets


def test_parameter_budgets() -> None:
    counts = parameter_counts()
    for role, count in counts.items():
        assert count <= BUDGETS[role], f"{role}: {count} > {BUDGETS[role]}"


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_shapes_and_export_wrapper() -> None:
    enc = TokenizerEncoder().eval()
    mel = torch.randn(2, 101, 80)
    out = enc(mel)
    assert len(out["layers"]) == 6
    assert out["features"].shape == (2, 51, 256)
    assert out["ctc_logits"].shape == (2, 51, 31)
    assert out["lengths"].tolist() == [51, 51]
    assert torch.equal(out["features"], out["layers"][3])
    torch.testing.assert_close(TokenizerExport(enc)(mel), out["features"])


def test_tokenizer_padding_matches_single_item() -> None:
    enc = TokenizerEncoder().eval()
    short = torch.randn(1, 57, 80)
    batch = torch.cat([torch.nn.functional.pad(short, (0, 0, 0, 43), value=5.0)] * 2)
    batch[1] = torch.randn(100, 80)
    out = enc(batch, torch.tensor([57, 100]))
    assert out["lengths"].tolist() == [29, 50]
    alone = enc(short)["features"]
    torch.testing.assert_close(out["features"][:1, :29], alone, atol=1e-5, rtol=1e-5)


def test_tokenizer_normalization_and_ctc_loss() -> None:
    enc = TokenizerEncoder()
    enc.set_normalization(torch.full((80,), -5.0), torch.zeros(80))
    assert enc.stem.mel_std.min().item() == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="shape"):
        enc.set_normalization(torch.zeros(79), torch.ones(79))
    enc.set_normalization(torch.zeros(80), torch.ones(80))
    loss = enc.ctc_loss(
        torch.randn(2, 80, 80),
        torch.tensor([80, 60]),
        torch.randint(3, 31, (2, 10)),
        torch.tensor([10, 7]),
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------- entropy LM


def test_entropy_lm_shapes_entropy_and_causality() -> None:
    lm = EntropyLM().eval()
    tokens = torch.randint(0, 512, (2, 20))
    logits = lm(tokens)
    assert logits.shape == (2, 20, 512)
    entropy, logits2 = EntropyLMExport(lm)(tokens)
    assert entropy.shape == (2, 20) and entropy.dtype == torch.float32
    assert torch.equal(logits, logits2)
    assert (entropy >= 0).all() and (entropy <= math.log(512) + 1e-4).all()
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 512
    logits3 = lm(changed)
    torch.testing.assert_close(logits3[:, :8], logits[:, :8], atol=1e-6, rtol=0)
    assert not torch.allclose(logits3[:, 8], logits[:, 8])


def test_entropy_lm_loss_ignores_padding() -> None:
    lm = EntropyLM().eval()
    tokens = torch.randint(0, 512, (2, 12))
    padded = tokens.clone()
    padded[:, 9:] = 0
    lengths = torch.tensor([9, 9])
    torch.testing.assert_close(lm.loss(tokens, lengths), lm.loss(padded, lengths))
    assert lm.loss(tokens).item() == pytest.approx(math.log(512), rel=0.05)


# ---------------------------------------------------------------------------- aggregator


def test_aggregator_masking() -> None:
    agg = Aggregator().eval()
    tokens = torch.randint(0, 512, (4, 6))
    mask = _mask([1, 3, 6, 0], 6)
    out = agg(tokens, mask)
    assert out.shape == (4, 256) and torch.isfinite(out).all()
    noisy = torch.where(mask, tokens, torch.randint(0, 512, tokens.shape))
    torch.testing.assert_close(agg(noisy, mask)[:3], out[:3], atol=1e-6, rtol=0)
    # A row padded to L gives the vector of the same row unpadded.
    torch.testing.assert_close(agg(tokens[1:2, :3], mask[1:2, :3]), out[1:2], atol=1e-6, rtol=0)
    # Dense mode: segments of length 1.
    dense = agg(tokens[:, :1], torch.ones(4, 1, dtype=torch.bool))
    torch.testing.assert_close(dense[:1], out[:1], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------- decoder


def test_decoder_shapes_and_causality() -> None:
    dec = Decoder().eval()
    prefix = torch.randn(2, 7, 256)
    text = torch.randint(0, 31, (2, 10))
    logits = dec(prefix, text)
    assert logits.shape == (2, 10, 31)
    changed = text.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 31
    logits2 = dec(prefix, changed)
    torch.testing.assert_close(logits2[:, :4], logits[:, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(logits2[:, 4], logits[:, 4])


def test_decoder_prefix_padding_matches_single_item() -> None:
    dec = Decoder().eval()
    prefix = torch.randn(2, 9, 256)
    text = torch.randint(3, 31, (2, 6))
    out = dec(prefix, text, torch.tensor([4, 9]))
    torch.testing.assert_close(out[:1], dec(prefix[:1, :4], text[:1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], dec(prefix[1:], text[1:]), atol=1e-5, rtol=1e-5)
    loss = dec.loss(prefix, torch.cat([torch.full((2, 1), BOS), text], 1), torch.tensor([4, 9]))
    assert torch.isfinite(loss)


def test_greedy_decode() -> None:
    dec = Decoder()
    out = greedy_decode(dec, torch.randn(3, 5, 256), torch.tensor([5, 2, 3]), max_len=8)
    assert dec.training
    assert len(out) == 3
    assert all(len(row) <= 8 and all(3 <= i < 31 or i == BOS for i in row) for row in out)
    assert all(EOS not in row for row in out)


# -------------------------------------------------------------------------------- export


@pytest.mark.slow
@pytest.mark.parametrize(
    ("role", "make"),
    [
        ("tokenizer", TokenizerEncoder),
        ("entropy_lm", EntropyLM),
        ("aggregator", Aggregator),
        ("decoder", Decoder),
    ],
)
def test_onnx_export_matches_torch(role: str, make, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    diff = getattr(export, f"export_{role}")(make(), tmp_path / f"{role}.onnx")
    assert diff <= 1e-4
