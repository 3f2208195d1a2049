"""Whisper BPE decoding in plain Python, against the tokenizers library."""

from __future__ import annotations

import pytest

from edgetok.bpe import BpeVocabulary

tokenizers = pytest.importorskip("tokenizers")


@pytest.mark.parametrize(
    "text",
    [
        " Press 1 to mute, or # to exit.",
        " It's 5% café-time: naïve “quotes” — and 日本語.",
        " the quick brown fox",
    ],
)
def test_decode_equals_the_tokenizers_library(model_dir, text: str) -> None:
    reference = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab = BpeVocabulary.from_file(model_dir / "vocabulary.txt")
    ids = reference.encode(text, add_special_tokens=False).ids
    assert len(vocab) == 51864 and vocab.eot == 50256
    assert vocab.decode(ids) == reference.decode(ids).strip() == text.strip()
    assert vocab.decode([vocab.eot + 1, *ids, vocab.eot, 99999]) == text.strip()


def test_empty_vocabulary_is_refused(tmp_path) -> None:
    (tmp_path / "v.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        BpeVocabulary.from_file(tmp_path / "v.txt")
