"""The decoder's character vocabulary: ``<pad>=0, <bos>=1, <eos>=2``, space, apostrophe, a-z.

Torch-free, so the device's decoder and training share one definition.
"""

from __future__ import annotations

from collections.abc import Iterable

PAD, BOS, EOS = 0, 1, 2
VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", " ", "'", *"abcdefghijklmnopqrstuvwxyz")
_CHAR_ID = {c: i for i, c in enumerate(VOCAB) if i > EOS}


def encode_text(text: str) -> list[int]:
    """Normalised text -> character ids (no BOS/EOS); raises on characters outside VOCAB."""
    return [_CHAR_ID[c] for c in text]


def decode_ids(ids: Iterable[int]) -> str:
    """Character ids -> text; special ids are dropped."""
    return "".join(VOCAB[i] for i in ids if i > EOS)
