"""Whisper's byte-level BPE, decoding only: token ids -> text, in plain Python.

The server writes text from the ids the v2 decoder emits; it needs no tokenizer library.
A vocabulary file has one token a line, line i for id i (CTranslate2's
``vocabulary.txt``); tokens spell bytes with GPT-2's printable stand-ins. Special tokens
(``<|...|>``, from ``<|endoftext|>`` on) are dropped.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ["BpeVocabulary"]


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """GPT-2's map back from the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


class BpeVocabulary:
    """Token strings by id; ``decode`` turns ids into text."""

    def __init__(self, tokens: list[str]) -> None:
        if not tokens:
            raise ValueError("empty BPE vocabulary")
        self.tokens = tokens
        self.eot = tokens.index("<|endoftext|>") if "<|endoftext|>" in tokens else len(tokens)

    @classmethod
    def from_file(cls, path: str | Path) -> BpeVocabulary:
        """One token a line (CTranslate2's ``vocabulary.txt``)."""
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls(lines)

    def __len__(self) -> int:
        return len(self.tokens)

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``: special tokens dropped, bytes joined, invalid UTF-8 replaced."""
        byte_of = _byte_of_char()
        data = bytearray()
        for i in ids:
            if not 0 <= i < self.eot:
                continue
            data.extend(byte_of[c] for c in self.tokens[i] if c in byte_of)
        return data.decode("utf-8", errors="replace").strip()
