"""Text normalisation, packaged English sentence sources, and the character vocabulary
(defined in the torch-free ``edgetok.vocab``, re-exported here).

Labels and TTS input come from one token stream (``text_pair``): the TTS input keeps light
punctuation (for prosody) and ``normalize_text`` is the same words without it, so the
audio always says exactly the label.
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from edgetok.vocab import BOS as BOS
from edgetok.vocab import EOS as EOS
from edgetok.vocab import PAD as PAD
from edgetok.vocab import VOCAB as VOCAB
from edgetok.vocab import decode_ids as decode_ids
from edgetok.vocab import encode_text as encode_text

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
#: Debian packages the sentence sources read.
TEXT_PACKAGES: tuple[str, ...] = ("fortunes", "fortunes-min", "wordnet-base")

MIN_WORDS, MAX_WORDS = 3, 25


# --- number speller --------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def spell_int(n: int) -> str:
    """Cardinal words for 0 <= n < 10**15, e.g. 1234 -> 'one thousand two hundred thirty four'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + spell_int(rest))
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            head = spell_int(n // scale) + " " + name
            return head + ("" if rest == 0 else " " + spell_int(rest))
    raise ValueError(n)


def spell_ordinal(n: int) -> str:
    """Ordinal words, e.g. 21 -> 'twenty first'."""
    words = spell_int(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def spell_year(n: int) -> str:
    """Year-style words for 1100..2099 (1984 -> 'nineteen eighty four'), else cardinal."""
    if not 1100 <= n <= 2099 or 2000 <= n <= 2009:
        return spell_int(n)
    hi, lo = divmod(n, 100)
    if lo == 0:
        return spell_int(hi) + " hundred"
    return spell_int(hi) + (" oh " if lo < 10 else " ") + spell_int(lo)


def _plural(words: str) -> str:
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}".strip()


def _number(m: re.Match[str]) -> str:
    cur, digits, frac, suffix = m.group("cur"), m.group("int"), m.group("frac"), m.group("suf")
    n = int(digits.replace(",", ""))
    if n >= 10**15:
        return " @ "  # hopeless
    suffix = (suffix or "").lower()
    if suffix in ("st", "nd", "rd", "th") and not frac:
        return " " + spell_ordinal(n) + " "
    plain = "," not in digits and not frac and not cur
    words = spell_year(n) if plain and len(digits) == 4 else spell_int(n)
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    if suffix in ("s", "'s") and plain:
        words = _plural(words)
    elif suffix:
        words += " " + suffix
    if cur:
        unit = {"$": "dollar", "£": "pound", "€": "euro"}[cur]
        words += f" {unit}" + ("" if n == 1 and not frac else "s")
    return f" {words} "


_NUMBER = re.compile(
    r"(?P<cur>[$£€])?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?(?P<suf>'?[a-zA-Z]+)?"
)

# --- normalisation ---------------------------------------------------------------------

_ABBREVIATIONS = {
    "mr": "mister",
    "mrs": "missus",
    "dr": "doctor",
    "st": "saint",
    "jr": "junior",
    "sr": "senior",
    "vs": "versus",
    "etc": "et cetera",
    "prof": "professor",
    "capt": "captain",
    "gen": "general",
    "gov": "governor",
    "sgt": "sergeant",
    "lt": "lieutenant",
    "col": "colonel",
    "e.g": "for example",
    "i.e": "that is",
}
_ABBREV_RE = re.compile(
    r"\b(" + "|".join(re.escape(a) for a in _ABBREVIATIONS) + r")\.", re.IGNORECASE
)
_TRANSLATE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "`": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": " - ",
        "\u2014": " - ",
        "&": " and ",
        "%": " percent ",
        "+": " plus ",
    }
)
_HOPELESS = re.compile(r"[@/\\<>{}|_~^=\[\]#*]|https?:|www\.|[a-zA-Z]\.[a-zA-Z]")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|[.,;:!?]")
_ROMAN = re.compile(r"[ivx]{2,}")
_VOWEL = re.compile(r"[aeiouy]")
_ACRONYM = re.compile(r"\b[A-Z]{2,5}s?\b")
_SPEAK_PUNCT = {".": ".", "!": "!", "?": "?", ",": ",", ";": ",", ":": ","}


def _expand_abbreviations(s: str) -> str:
    s = re.sub(r"\b[Nn]o\.\s*(?=\d)", "number ", s)

    def sub(m: re.Match[str]) -> str:
        word = _ABBREVIATIONS[m.group(1).lower()]
        return word.capitalize() if m.group(1)[0].isupper() else word

    return _ABBREV_RE.sub(sub, s)


def _tokens(s: str) -> list[str]:
    """Raw text -> lowercase word and punctuation tokens, [] when the line is hopeless."""
    s = re.sub(r".\x08", "", s).translate(_TRANSLATE)
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c))
    s = _expand_abbreviations(s)
    if _HOPELESS.search(s.replace("...", " ")):
        return []
    letters = [c for c in s if c.isalpha()]
    if letters and sum(c.isupper() for c in letters) > 0.6 * len(letters):
        s = s.lower()  # shouting, not acronyms
    if _ACRONYM.search(s):
        return []
    s = re.sub(r"(\d+):(\d\d)\b", lambda m: f"{m.group(1)} {int(m.group(2)) or ''}", s)
    s = _NUMBER.sub(_number, s)
    if "@" in s or not s.isascii():
        return []
    tokens = _TOKEN.findall(s.lower().replace("-", " "))
    for tok in tokens:
        if tok in _SPEAK_PUNCT:
            continue
        if len(tok) > 20 or not _VOWEL.search(tok) or _ROMAN.fullmatch(tok):
            return []
        if len(tok) == 1 and tok not in ("a", "i"):
            return []
    return tokens


def text_pair(s: str) -> tuple[str, str]:
    """(label, TTS input): the label is case folded with numbers and symbols spelled out
    and punctuation dropped; the TTS input is the same words with , . ! ? kept for
    prosody. Both are '' when the line is hopeless."""
    words: list[str] = []
    speak: list[str] = []
    for tok in _tokens(s):
        if tok not in _SPEAK_PUNCT:
            words.append(tok)
            speak.append(tok)
        elif speak and speak[-1][-1] not in ",.!?":
            speak[-1] += _SPEAK_PUNCT[tok]
    return " ".join(words), " ".join(speak)


def normalize_text(s: str) -> str:
    """The label text of ``text_pair``: '' when the line is hopeless."""
    return text_pair(s)[0]


# --- sentence sources ------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences (abbreviations expanded first)."""
    text = re.sub(r"\s+", " ", _expand_abbreviations(text)).strip()
    return [p for p in _SENTENCE_END.split(text) if p]


def fortune_sentences(root: Path = FORTUNE_DIR) -> Iterator[str]:
    """Sentences from the fortune cookie files (top level only: no offensive or other
    language subdirectories), attribution lines dropped."""
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.is_symlink() or path.suffix in (".dat", ".u8"):
            continue
        for cookie in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [ln for ln in cookie.splitlines() if not ln.lstrip().startswith("--")]
            yield from split_sentences(" ".join(lines))


def wordnet_sentences(root: Path = WORDNET_DIR) -> Iterator[str]:
    """WordNet glosses (split on ';') and their quoted usage examples."""
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{pos}"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue
                gloss = line.split(" | ", 1)[1]
                yield from re.findall(r'"([^"]+)"', gloss)
                yield from re.sub(r'"[^"]*"(\s*-+[^;"]*)?', " ", gloss).split(";")


@functools.lru_cache(maxsize=2)
def load_sentences(seed: int = 0) -> tuple[tuple[str, str], ...]:
    """Unique (normalised, speakable) pairs of 3..25 words from the packaged sources, in a
    deterministic shuffled order. Dedupe is on the normalised text."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for raw in (*fortune_sentences(), *wordnet_sentences()):
        norm, speak = text_pair(raw)
        if MIN_WORDS <= norm.count(" ") + 1 <= MAX_WORDS and norm not in seen:
            seen.add(norm)
            out.append((norm, speak))
    out.sort()
    random.Random(seed).shuffle(out)
    return tuple(out)
