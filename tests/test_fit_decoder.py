"""Decoder training helpers: the codebook start of the aggregator's token embeddings."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgetok.train.fit_decoder import SpeechToText, embed_codebook  # noqa: E402

pytestmark = pytest.mark.torch


def test_embed_codebook_keeps_the_codebook_geometry() -> None:
    model = SpeechToText()
    k, d = model.aggregator.embed.weight.shape
    codebook = np.random.default_rng(0).normal(3.0, 2.0, size=(k, d)).astype(np.float32)
    embed_codebook(model.aggregator, codebook, std=0.1)
    weight = model.aggregator.embed.weight.detach().numpy()
    np.testing.assert_allclose(weight.std(axis=0), 0.1, rtol=1e-3)
    np.testing.assert_allclose(weight.mean(axis=0), 0.0, atol=1e-5)
    # Per-dimension affine map: every token's nearest other token is unchanged.
    standardised = (codebook - codebook.mean(0)) / codebook.std(0)
    dist_cb = ((standardised[:, None] - standardised[None]) ** 2).sum(-1)
    dist_w = ((weight[:, None] - weight[None]) ** 2).sum(-1)
    np.fill_diagonal(dist_cb, np.inf)
    np.fill_diagonal(dist_w, np.inf)
    assert (dist_cb.argmin(1) == dist_w.argmin(1)).all()


def test_embed_codebook_rejects_a_codebook_of_another_shape() -> None:
    model = SpeechToText()
    with pytest.raises(ValueError, match="does not fit"):
        embed_codebook(model.aggregator, np.zeros((7, 3), dtype=np.float32))
