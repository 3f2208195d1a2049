"""Character vocabulary, text normalisation and the packaged sentence sources."""

from __future__ import annotations

import pytest

from edgetok.train import text as T


def test_vocab_layout() -> None:
    assert T.VOCAB[: T.EOS + 1] == ("<pad>", "<bos>", "<eos>")
    assert (T.PAD, T.BOS, T.EOS) == (0, 1, 2)
    assert T.VOCAB[3:5] == (" ", "'") and "".join(T.VOCAB[5:]) == "abcdefghijklmnopqrstuvwxyz"


def test_encode_decode_roundtrip() -> None:
    s = "it's a test"
    ids = T.encode_text(s)
    assert min(ids) > T.EOS and T.decode_ids([T.BOS, *ids, T.EOS, T.PAD]) == s
    with pytest.raises(KeyError):
        T.encode_text("Nope!")


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Hello, World!", "hello world"),
        ("He paid $5 for 3 apples.", "he paid five dollars for three apples"),
        ("Born in 1984, not 2005.", "born in nineteen eighty four not two thousand five"),
        (
            "The 21st of 1,200,000 people",
            "the twenty first of one million two hundred thousand people",
        ),
        ("It costs 3.5% & more", "it costs three point five percent and more"),
        ("Mr. Smith met Dr. Jones", "mister smith met doctor jones"),
        ("Meet at 10:30 sharp", "meet at ten thirty sharp"),
        ("the 1960s were wild", "the nineteen sixties were wild"),
        ("Don't  'quote'   me", "don't quote me"),
        ("Café naïve résumé", "cafe naive resume"),
        ("I AM SHOUTING AT YOU", "i am shouting at you"),
        ("well-known `terms'", "well known terms"),
    ],
)
def test_normalize(raw: str, norm: str) -> None:
    assert T.normalize_text(raw) == norm
    assert T.encode_text(norm)


@pytest.mark.parametrize(
    "raw",
    [
        "The FBI knows.",
        "see http://x.org",
        "mail me@x.org",
        "Louis XIV ruled",
        "x = y + 1",
        "",
        "Q: why",
    ],
)
def test_hopeless_lines_are_empty(raw: str) -> None:
    assert T.normalize_text(raw) == ""


def test_speakable_has_the_label_words_and_light_punctuation() -> None:
    norm, speak = T.text_pair('"Well," he said; "it is 5 o\'clock!"')
    assert norm == "well he said it is five o'clock"
    assert speak == "well, he said, it is five o'clock!"
    assert T.normalize_text(speak) == norm


def test_spellers() -> None:
    assert T.spell_int(0) == "zero"
    assert T.spell_int(101) == "one hundred one"
    assert T.spell_int(2_000_019) == "two million nineteen"
    assert T.spell_ordinal(12) == "twelfth" and T.spell_ordinal(40) == "fortieth"
    assert T.spell_year(1905) == "nineteen oh five" and T.spell_year(1900) == "nineteen hundred"


def test_split_sentences() -> None:
    assert T.split_sentences("One two. Mr. Three four!  Five?") == [
        "One two.",
        "Mister Three four!",
        "Five?",
    ]


@pytest.mark.skipif(not T.FORTUNE_DIR.is_dir(), reason="fortunes package not installed")
def test_fortune_sentences() -> None:
    sents = [T.normalize_text(s) for s in T.fortune_sentences()]
    assert sum(T.MIN_WORDS <= len(s.split()) <= T.MAX_WORDS for s in sents) > 1000


@pytest.mark.skipif(not (T.WORDNET_DIR / "data.noun").exists(), reason="wordnet-base missing")
def test_wordnet_sentences() -> None:
    sents = list(T.wordnet_sentences())
    assert len(sents) > 100_000
    assert not any('"' in s for s in sents[:1000])


@pytest.mark.skipif(not T.FORTUNE_DIR.is_dir(), reason="fortunes package not installed")
def test_load_sentences_is_clean_unique_and_deterministic() -> None:
    sents = T.load_sentences(0)
    assert len(sents) > 50_000
    norms = [n for n, _ in sents]
    assert len(set(norms)) == len(norms)
    for norm, speak in sents[:2000]:
        assert T.MIN_WORDS <= len(norm.split()) <= T.MAX_WORDS
        assert T.decode_ids(T.encode_text(norm)) == norm
        assert T.normalize_text(speak) == norm
    assert T.load_sentences.__wrapped__(0) == sents
